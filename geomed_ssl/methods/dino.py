"""DINO self-distillation with optional iBOT masked-patch loss, KoLeo regulariser and Sinkhorn-Knopp centering.

Student and teacher are the same :class:`ViTEncoder`; the teacher (exported) is an EMA of the student and never
receives gradients. The student sees every crop (its global crops blockwise-masked when iBOT is on), the teacher
only the unmasked global crops. Works on 2D and 3D token grids; every schedule is indexed by optimiser step (through
``self.clock``, which stretches the rest of a resumed run without a jump).

Trainer hooks (declared on ``SSLMethod``): ``before_optimizer_step(step)`` (drops last-layer grads while frozen),
``weight_decay(step)`` (set on the decaying param groups), ``momentum_pairs()`` / ``momentum(step)`` (the teacher
EMA, applied by the base ``after_step`` with the shared ``ema_update_``).

Spectral-aware embeddings: ``wavelength`` gives one token per position and runs as ``plain``. ``grouped`` and
``spectral`` give ``U`` tokens per position (band groups / chunks, unit-major). The iBOT mask is drawn on the
spatial grid and applied to every unit at a masked position (consistent masking, as ``method.group_masking:
consistent`` in MAE): masking a single group would let the student read the masked content off the other bands
at the same place. Student and teacher outputs are merged per position (the mean over units, as
``ViTEncoder.forward``) before the heads, so the iBOT loss pairs spatial tokens and costs the same as with
``plain`` whatever the band count; the CLS token (DINO loss, KoLeo) needs nothing special.

Nodata: each crop comes with its ``valid`` mask (``batch["valid"]``, from the multi-crop views); invalid pixels are
set to 0 before the student and the teacher see them, as MAE does (augmentations move them off the 0 that
normalisation gave them). A masked patch token enters the iBOT loss only when at least ``MIN_TOKEN_VALID`` (half)
of its pixels are valid in its global crop: predicting nodata teaches nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geomed_ssl.config import MethodConfig, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.views.builder import ViewSpec
from geomed_ssl.methods.base import (MethodCard, MethodContext, MethodOutput, MethodSettings, PerSample, SSLMethod,
                                     mean_over_ranks)
from geomed_ssl.methods.dino_losses import CENTERINGS, DINOLoss, IBOTPatchLoss, KoLeoLoss
from geomed_ssl.methods.distributed import rank
from geomed_ssl.methods.heads import DINOHead
from geomed_ssl.methods.masking import block_mask, ibot_masks  # noqa: F401  (block_mask: re-exported)
from geomed_ssl.methods.momentum import MomentumPair
from geomed_ssl.methods.monitor import batch_std
from geomed_ssl.methods.registry import register_method
from geomed_ssl.methods.schedules import cosine, linear_warmup, teacher_momentum, warn_frozen_run
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder



@dataclass
class DINOSettings(MethodSettings):
    """The ``method:`` keys of ``name: dino``; defaults are the official DINO / iBOT / DINOv2 values. Step counts
    left null are derived from ``train.max_steps``: teacher-temperature warmup over 30 %, prototypes frozen for the
    first 1 %."""

    out_dim: int = setting(65536, "prototypes K; small data (< ~100k windows): 4096-16384", bounds=">= 1")
    head_hidden_dim: int = setting(2048, "projection head MLP width", bounds=">= 1")
    head_bottleneck_dim: int = setting(256, "L2-normalised bottleneck before the prototype layer", bounds=">= 1")
    head_nlayers: int = setting(3, "projection head layers", bounds=">= 1")
    norm_last_layer: bool = setting(True, "weight-normalised prototypes with fixed norm (stabler; false: better, "
                                    "riskier)")
    freeze_last_layer_steps: int | None = setting(None, "prototypes frozen this many steps; null: 1 % of "
                                                  "train.max_steps", bounds=">= 0")
    momentum_teacher: float = setting(0.996, "teacher EMA momentum, cosine to 1 at train.max_steps", bounds="[0, 1]")
    student_temp: float = setting(0.1, "student softmax temperature", bounds="> 0")
    warmup_teacher_temp: float = setting(0.04, "teacher temperature at step 0, warming up linearly to teacher_temp",
                                         bounds="> 0")
    teacher_temp: float = setting(0.07, "teacher temperature after warmup (lower it if the teacher entropy stays "
                                  "near log K)", bounds="> 0")
    teacher_temp_warmup_steps: int | None = setting(None, "teacher temperature warmup steps; null: 30 % of "
                                                    "train.max_steps", bounds=">= 0")
    centering: str = setting("ema", "ema (DINO) | sinkhorn (Sinkhorn-Knopp, DINOv2) | none (collapses; for tests)",
                             choices=CENTERINGS)
    center_momentum: float = setting(0.9, "ema centering: momentum of the centre", bounds="[0, 1]")
    sinkhorn_iters: int = setting(3, "sinkhorn centering: iterations", bounds=">= 1")
    weight_decay_start: float = setting(0.04, "weight decay at step 0, cosine to weight_decay_end (replaces "
                                        "train.weight_decay)", bounds=">= 0")
    weight_decay_end: float = setting(0.4, "weight decay at train.max_steps", bounds=">= 0")
    ibot_loss_weight: float = setting(0.0, "> 0: iBOT masked-patch loss on the student's masked global crops",
                                      bounds=">= 0")
    ibot_mask_ratio: list[float] = setting([0.1, 0.5], "masked token fraction per masked crop, [min, max]",
                                           bounds="(0, 1)", length=2)
    ibot_mask_prob: float = setting(0.5, "fraction of global crops that are masked at all", bounds="[0, 1]")
    ibot_separate_head: bool = setting(False, "a separate projection head for the patch tokens")
    ibot_out_dim: int | None = setting(None, "prototypes of the separate patch head; null: out_dim", bounds=">= 1")
    koleo_loss_weight: float = setting(0.0, "> 0: KoLeo spreading regulariser on the student's CLS (DINOv2: 0.1)",
                                       bounds=">= 0")

    def check(self, source: str, context: MethodContext) -> None:
        warn_frozen_run(source, "freeze_last_layer_steps", self.freeze_last_layer_steps, context.max_steps)
        lo, hi = self.ibot_mask_ratio
        if lo > hi:
            raise ConfigError(f"{source}: method.ibot_mask_ratio must be [min, max] with min <= max, got "
                              f"{[lo, hi]}.")


COLLAPSE_STD_TOL = 1e-3  # teacher_std * sqrt(K) below this: every image gives the same output
COLLAPSE_ENTROPY_FRAC = 0.99  # teacher entropy above this fraction of log(K): uniform outputs
COLLAPSE_WARN_EVERY = 100  # steps between two collapse warnings
log = logging.getLogger("geomed_ssl")
MIN_TOKEN_VALID = 0.5  # a masked patch token counts in the iBOT loss when at least this fraction of it is valid


def zero_invalid(x: Tensor, valid: Tensor | None) -> Tensor:
    """``x`` (B, C, *S) with pixels where ``valid`` (B, *S) is False set to 0 (the normalised mean), as MAE does."""
    return x if valid is None else torch.where(valid.to(x.device)[:, None].bool(), x, 0.0)


def token_valid_fraction(valid: Tensor, patch: tuple[int, ...]) -> Tensor:
    """Valid fraction of every token patch: ``valid`` (B, *S) bool -> (B, N) float, tokens in row-major order."""
    pool = F.avg_pool2d if len(patch) == 2 else F.avg_pool3d
    return pool(valid.float()[:, None], kernel_size=patch, stride=patch).flatten(1)


@register_method
class DINO(SSLMethod):
    """DINO (+ iBOT, KoLeo, Sinkhorn-Knopp) over :class:`ViTEncoder` student / EMA teacher."""

    name = "dino"
    views = ViewSpec(crops=2, local_crops=True, asymmetric=True)
    embedding_pool = "cls"
    compares_batch = True  # the teacher's centre (EMA or Sinkhorn) and KoLeo are batch statistics
    card = MethodCard(
        learns="to match an EMA teacher's prototype distribution across crops (+ iBOT: masked patch tokens)",
        cost="~2x + 0.25x per local crop (student on every crop, teacher on the two global ones); the head's "
             "out_dim x bottleneck prototypes",
        failure_modes="collapse to a constant or uniform teacher (teacher_std, teacher_entropy, collapse); too "
                      "many prototypes for a small archive; NaN in fp16 without float32 losses",
        recipes=("recipes/dino_sentinel2.yaml", "recipes/dino_ct.yaml"))
    Settings = DINOSettings
    settings: DINOSettings

    def __init__(self, encoder_cfg: EncoderConfig,
                 settings: DINOSettings | MethodConfig | Mapping[str, Any] | None = None,
                 max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s = self.settings
        # derived from max_steps when left null
        self.teacher_temp_warmup_steps = (int(0.3 * max_steps) if s.teacher_temp_warmup_steps is None
                                          else s.teacher_temp_warmup_steps)
        self.freeze_last_layer_steps = (int(0.01 * max_steps) if s.freeze_last_layer_steps is None
                                        else s.freeze_last_layer_steps)
        self.ibot_out_dim = s.ibot_out_dim if s.ibot_separate_head and s.ibot_out_dim is not None else s.out_dim
        dim = encoder_cfg.embed_dim
        self.student = ViTEncoder(encoder_cfg)
        self.teacher = ViTEncoder(dataclasses.replace(encoder_cfg, drop_path=0.0))
        head_kw = dict(hidden_dim=s.head_hidden_dim, bottleneck_dim=s.head_bottleneck_dim,
                       nlayers=s.head_nlayers, norm_last_layer=s.norm_last_layer)
        self.student_head = DINOHead(dim, s.out_dim, **head_kw)
        self.use_ibot = s.ibot_loss_weight > 0
        self.student_patch_head: DINOHead | None = None
        if self.use_ibot:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
            if s.ibot_separate_head:
                self.student_patch_head = DINOHead(dim, self.ibot_out_dim, **head_kw)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher_head = copy.deepcopy(self.student_head)
        self.teacher_patch_head = copy.deepcopy(self.student_patch_head)
        for p in self._teacher_modules().parameters():
            p.requires_grad_(False)
        loss_kw = dict(student_temp=s.student_temp, center_momentum=s.center_momentum,
                       centering=s.centering, sinkhorn_iters=s.sinkhorn_iters)
        self.dino_loss = DINOLoss(s.out_dim, **loss_kw)
        self.ibot_loss = IBOTPatchLoss(self.ibot_out_dim, **loss_kw) if self.use_ibot else None
        self.koleo = KoLeoLoss()
        self._last_warning = -COLLAPSE_WARN_EVERY

    # ---- pairs and schedules -------------------------------------------------------------------------------
    def momentum_pairs(self) -> list[MomentumPair]:
        """Student -> teacher: encoder, head, and the separate iBOT patch head when there is one."""
        pairs: list[MomentumPair] = [(self.student, self.teacher), (self.student_head, self.teacher_head)]
        if self.student_patch_head is not None:
            pairs.append((self.student_patch_head, self.teacher_patch_head))
        return pairs

    def _teacher_modules(self) -> nn.ModuleList:
        return nn.ModuleList([t for _, t in self.momentum_pairs()])

    def teacher_temp(self, step: int) -> float:
        s = self.settings
        return linear_warmup(self.clock(step), s.warmup_teacher_temp, s.teacher_temp, self.teacher_temp_warmup_steps)

    def momentum(self, step: int) -> float:
        """Teacher EMA momentum: cosine from ``momentum_teacher`` to 1 over the run."""
        return teacher_momentum(self.clock(step), self.settings.momentum_teacher, self.max_steps)

    def weight_decay(self, step: int) -> float | None:
        """Weight decay of the decaying param groups at ``step`` (cosine 0.04 -> 0.4 by default)."""
        s = self.settings
        return cosine(self.clock(step), s.weight_decay_start, s.weight_decay_end, self.max_steps)

    # ---- forward passes ------------------------------------------------------------------------------------
    def _student_globals(self, x: Tensor, masks: Tensor | None) -> Tensor:
        """(2B, C, *S) -> normed tokens (2B, 1+N, D), one per position; masked tokens are the mask token at their
        position. ``masks`` (2B, *grid) masks every unit of a grouped / spectral position together, and the
        (2B, U*N, D) outputs are merged per position (mean over units) as in ``ViTEncoder.forward``."""
        tokens, grid = self.student.embed(x)  # (2B, T, D); T = N, or U*N unit-major
        units = tokens.shape[1] // math.prod(grid)
        if masks is not None:
            pos = self.student.pos_embed_for(grid, tokens).repeat(1, units, 1)  # (1, T, D)
            m = masks.reshape(masks.shape[0], -1).repeat(1, units)[..., None].to(tokens.device)  # (2B, T, 1)
            # the mask token replaces the whole token (content and group/channel embedding), as in plain iBOT
            tokens = torch.where(m, self.mask_token.to(tokens.dtype) + pos, tokens)
        out, _ = self.student.run_blocks(self.student.add_cls(tokens))  # (2B, 1+T, D)
        return torch.cat([out[:, :1], self.student.spatial_tokens(out[:, 1:], grid)], dim=1)  # (2B, 1+N, D)

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        s = self.settings
        views, valid = batch["views"], batch.get("valid") or {}
        valid_g = list(valid.get("global") or [None] * len(views["global"]))
        valid_l = [v for v in valid.get("local", []) if torch.is_tensor(v)]
        globals_ = [zero_invalid(x, v) for x, v in zip(views["global"], valid_g)]
        locals_ = [x for x in views.get("local", []) if torch.is_tensor(x)]  # collate turns no crops into []s
        if valid_l:
            locals_ = [zero_invalid(x, v) for x, v in zip(locals_, valid_l)]
        n_g = len(globals_)
        x_g = torch.cat(globals_)  # (2B, C, *S)
        t_temp = self.teacher_temp(step)

        masks = None
        if self.use_ibot:
            grid = self.student.patch_embed.grid_for(tuple(x_g.shape[2:]))
            rng = PerSample.from_batch(batch, generator, len(globals_[0]))
            # row c * B + i is global crop c of sample i: its mask comes from that sample's stream c
            gens = [rng.generator(i, stream=c) for c in range(n_g) for i in range(len(rng))]
            masks = ibot_masks(x_g.shape[0], grid, tuple(s.ibot_mask_ratio), s.ibot_mask_prob, gens)
            masks = masks.to(x_g.device)  # (2B, *grid)

        with torch.no_grad():
            t_tokens = self.teacher(x_g)  # (2B, 1+N, D), units merged per position
            t_cls = self.teacher_head(t_tokens[:, 0])  # (2B, K)
        s_tokens = self._student_globals(x_g, masks)  # (2B, 1+N, D)
        s_cls = [s_tokens[:, 0]]
        if locals_:
            s_cls.append(self.student(torch.cat(locals_))[:, 0])  # (nB, D): same-size crops in one pass
        s_views = self.student_head(torch.cat(s_cls)).unflatten(0, (n_g + len(locals_), -1))  # (2 + n, B, K)

        t_views = t_cls.unflatten(0, (n_g, -1))  # (2, B, K)
        t_probs = self.dino_loss.teacher_probs(t_views, t_temp)
        dino = self.dino_loss.loss_from_probs(t_probs, s_views)
        if s.centering == "ema":
            self.dino_loss.update_center(t_views)
        loss = dino

        zero = dino.new_zeros(())
        ibot = koleo = zero
        if masks is not None:  # also with no token masked, so DDP sees the iBOT parameters used
            flat = masks.reshape(masks.shape[0], -1)  # (2B, N): positions, every unit of one masked together
            if all(v is not None for v in valid_g):  # mostly-nodata tokens teach nothing: out of the loss
                frac = token_valid_fraction(torch.cat(valid_g).to(flat.device), tuple(self.student.cfg.patch_size))
                flat = flat & (frac >= MIN_TOKEN_VALID)
            patch_t = self.teacher_patch_head or self.teacher_head
            patch_s = self.student_patch_head or self.student_head
            with torch.no_grad():
                t_patch = patch_t(t_tokens[:, 1:][flat])  # (M, K')
            s_patch = patch_s(s_tokens[:, 1:][flat])  # (M, K')
            ibot = self.ibot_loss(s_patch, t_patch, flat, t_temp)
            loss = loss + s.ibot_loss_weight * ibot
        if s.koleo_loss_weight > 0:
            koleo = sum(self.koleo(c) for c in s_tokens[:, 0].chunk(n_g))
            loss = loss + s.koleo_loss_weight * koleo

        logs = self._monitor(t_cls.detach(), t_probs, dino.detach(), step)
        logs.update(loss=loss.detach(), dino_loss=dino.detach(), ibot_loss=ibot.detach(), koleo=koleo.detach(),
                    teacher_temp=torch.tensor(t_temp))
        return MethodOutput(loss=loss, logs=logs)

    # ---- collapse monitor ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _monitor(self, t_logits: Tensor, t_probs: Tensor, dino: Tensor, step: int) -> dict[str, Tensor]:
        """Teacher entropy, KL(teacher || student), teacher std; warns when the outputs collapse."""
        k = t_logits.shape[-1]
        # the global batch's mean, as the std below (every rank holds as many rows)
        entropy = mean_over_ranks(-(t_probs * torch.log(t_probs.clamp_min(1e-30))).sum(-1).mean())
        std = batch_std(F.normalize(t_logits.float(), dim=-1)).mean()  # over the global batch, mean over prototypes
        constant = bool(std * math.sqrt(k) < COLLAPSE_STD_TOL)
        uniform = bool(entropy > COLLAPSE_ENTROPY_FRAC * math.log(k))
        if (constant or uniform) and step - self._last_warning >= COLLAPSE_WARN_EVERY:
            self._last_warning = step
            kind = "constant (every image gives the same output)" if constant else "uniform (teacher entropy ~ log K)"
            if rank() == 0:  # a warning line as every other (the collapse monitor's too), said once, not per rank
                log.warning(f"warning: DINO collapse at step {step}: teacher outputs are {kind}; teacher_std="
                            f"{float(std):.2e}, teacher_entropy={float(entropy):.3f} of log(K)={math.log(k):.3f}. Keep "
                            "centering on, lower method.teacher_temp, raise method.momentum_teacher or lower "
                            "train.base_lr.")
        return {
            "teacher_entropy": entropy,
            "kl_teacher_student": dino - entropy,  # the loss is CE(teacher, student) averaged like the entropy
            "teacher_std": std,
            "collapse": torch.tensor(float(constant or uniform)),
        }

    # ---- trainer hooks -------------------------------------------------------------------------------------
    def before_optimizer_step(self, step: int) -> None:
        """Drop the last layers' gradients while frozen (the first ``freeze_last_layer_steps`` steps)."""
        if self.clock(step) >= self.freeze_last_layer_steps:
            return
        for head in (self.student_head, self.student_patch_head):
            if head is not None:
                for p in head.last_layer_parameters():
                    p.grad = None

    def export_encoder(self) -> ViTEncoder:
        """The teacher encoder (as official DINO)."""
        return self.teacher

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | ({"mask_token"} if self.use_ibot else set())
