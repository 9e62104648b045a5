"""MSN, Masked Siamese Networks (Assran et al., 2022): a view with some of its tokens dropped, and small views,
must fall on the same learnable prototypes as the unmasked view of the same window does through a momentum
encoder. Built for label efficiency: the paper's frozen features lead at 1-5 labelled images per class.

Views: two global crops and ``data.n_local_crops`` local (focal) crops. The first global crop is the target: the
momentum encoder and projector (no gradient) give its CLS projection. The anchors: the second global crop with
``mask_ratio`` of its tokens dropped before the blocks (random per sample; every unit of a grouped / spectral
position together) and every local crop unmasked, through the encoder's CLS and a 3-layer projector (BatchNorm,
GELU), run once per crop size as the official code does. Loss: :func:`~geomed_ssl.methods.losses.msn.msn_terms`
(cross-entropy to the sharpened, Sinkhorn-balanced target assignments, plus ``memax_weight`` x ME-MAX). Momentum:
linear from ``momentum`` towards 1, reaching it at 1.25 x the run; weight decay: cosine from ``weight_decay_start``
towards ``weight_decay_end``, also over 1.25 x the run (both official). The momentum encoder is exported (the paper
evaluates it). Sinkhorn gives each prototype an equal share of the global batch, so with more prototypes than the
global batch no target can exceed batch / prototypes and the sharpening is undone (the official runs keep the two
about equal): the first step warns then.

Differences from the official code: the dropped tokens are drawn per sample (the official run drops the same
positions in every image of a batch); the prototypes' gradient is averaged over processes as every other
parameter's (the official run sums it, so their rate grows with the GPU count); ``train.grad_clip`` covers the
prototypes too (the official clip covers the encoder and its head); the learning rate follows the trainer's
warmup-cosine to ``train.min_lr`` at the run's end (the official cosine spans 1.25 x the run and ends near 30 % of
the peak); the projector's layers start from PyTorch's default initialisation; flips and quarter turns follow
``augment:`` and the intensity ops are the toolkit's band-safe ones (no RGB colour jitter).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from geomed_ssl.config import MethodConfig, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, MethodSettings, PerSample
from geomed_ssl.methods.clustering import MultiCropMethod
from geomed_ssl.methods.distributed import all_reduce_sum_, rank, world_size
from geomed_ssl.methods.losses.msn import msn_terms
from geomed_ssl.methods.masking import consistent_noise, num_keep, random_masking
from geomed_ssl.methods.momentum import MomentumPair, momentum_copy
from geomed_ssl.methods.projection import msn_projector
from geomed_ssl.methods.registry import register_method
from geomed_ssl.methods.schedules import cosine
from geomed_ssl.methods.siamese import needs_batch_of_two
from geomed_ssl.models.encoder import EncoderConfig

SCHEDULE_STRETCH = 1.25  # the official momentum and weight-decay schedules span 1.25 x the run, so end short of it
log = logging.getLogger("geomed_ssl")


@dataclass
class MSNSettings(MethodSettings):
    """The ``method:`` keys of ``name: msn`` (defaults: the official ViT-S/16 run)."""

    proj_hidden_dim: int = setting(2048, "projector hidden width", bounds=">= 1")
    proj_dim: int = setting(256, "projection size compared with the prototypes", bounds=">= 1")
    n_prototypes: int = setting(1024, "learnable prototypes", bounds=">= 2")
    temperature: float = setting(0.1, "softmax temperature of the anchors' cosine scores to the prototypes",
                                 bounds="> 0")
    sharpen: float = setting(0.25, "target sharpening: the target's temperature is temperature x sharpen",
                             bounds="(0, 1]")
    mask_ratio: float = setting(0.15, "fraction of the masked anchor crop's tokens dropped (paper: 0.15 for "
                                "ViT-S/16, 0.3 for ViT-B/16, 0.7 for ViT-L/7)", bounds="[0, 1)")
    memax_weight: float = setting(1.0, "weight of mean-entropy maximisation of the anchors' average prediction "
                                  "(keeps every prototype in use)", bounds=">= 0")
    sinkhorn_iterations: int = setting(3, "Sinkhorn-Knopp iterations balancing the targets over the global batch "
                                       "(0: off)", bounds=">= 0")
    momentum: float = setting(0.996, "target encoder EMA at step 0, linear towards 1 (reached at 1.25 x "
                              "train.max_steps)", bounds="[0, 1]")
    weight_decay_start: float = setting(0.04, "weight decay at step 0, cosine towards weight_decay_end (replaces "
                                        "train.weight_decay)", bounds=">= 0")
    weight_decay_end: float = setting(0.4, "weight decay the cosine reaches at 1.25 x train.max_steps (official; "
                                      "at the run's end it is 0.9 of the way)", bounds=">= 0")

    def check(self, source: str, context: MethodContext) -> None:
        needs_batch_of_two(self, source, context, "msn")
        grid = context.crop_grid
        if self.mask_ratio > 0 and grid is not None:
            tokens = math.prod(grid)
            if num_keep(tokens, self.mask_ratio) == tokens:
                raise ConfigError(
                    f"{source}: method msn's mask_ratio {self.mask_ratio} drops no token of a crop of {tokens} "
                    f"token(s), so the masked anchor would be a second unmasked crop; use more tokens per crop (a "
                    "larger data.global_crop_size, or data.patch_size when that is null, or a smaller "
                    "model.patch_size), a larger method.mask_ratio, or mask_ratio 0 to say so.")


@register_method
class MSN(MultiCropMethod):
    """MSN over a :class:`ViTEncoder`: masked and focal anchors, momentum target, prototypes, ME-MAX."""

    name = "msn"
    Settings = MSNSettings
    settings: MSNSettings
    card = MethodCard(
        learns="to place a crop with hidden tokens, and small crops, on the same prototypes as the unmasked crop "
               "of the same window seen by a momentum encoder (soft clusters, every prototype kept in use)",
        cost="~2.4x MAE with 4 local crops at half size, about half MoCo v3's step (ViT-Ti, "
             "benchmarks/bench_methods_step.py): the masked crop and the local crops with grad, the target crop "
             "without; prototypes x proj_dim weights",
        failure_modes="all windows on one prototype (watch prototypes_used and embedding_std in metrics.csv; keep "
                      "memax_weight and sinkhorn on); more prototypes than the global batch flatten Sinkhorn's "
                      "targets (warned); BatchNorm in the projector needs batches of 2+ per device",
        recipes=("recipes/msn_sentinel2.yaml",))

    def __init__(self, encoder_cfg: EncoderConfig, settings: MSNSettings | MethodConfig | Mapping[str, Any] |
                 None = None, max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s = self.settings
        self.projector = msn_projector(encoder_cfg.embed_dim, s.proj_hidden_dim, s.proj_dim)
        bound = s.proj_dim ** -0.5  # the official uniform initialisation
        self.prototypes = nn.Parameter(torch.empty(s.n_prototypes, s.proj_dim).uniform_(-bound, bound))
        self.target_encoder = momentum_copy(self.encoder)
        self.target_projector = momentum_copy(self.projector)
        self._balance_checked = False

    def momentum_pairs(self) -> list[MomentumPair]:
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def momentum(self, step: int) -> float:
        """Linear from ``method.momentum`` towards 1, reached at 1.25 x the run (official)."""
        base = self.settings.momentum
        return min(1.0, base + (1.0 - base) * self.clock(step) / (SCHEDULE_STRETCH * max(1, self.clock.total)))

    def weight_decay(self, step: int) -> float | None:
        """Cosine from ``weight_decay_start`` towards ``weight_decay_end``, reached at 1.25 x the run (official)."""
        s = self.settings
        return cosine(self.clock(step), s.weight_decay_start, s.weight_decay_end,
                      round(SCHEDULE_STRETCH * self.max_steps))

    def export_encoder(self) -> nn.Module:
        """The momentum encoder, which the paper evaluates."""
        return self.target_encoder

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"prototypes"}

    def masked_cls(self, x: Tensor, batch: dict[str, Any], generator: torch.Generator) -> Tensor:
        """CLS token (B, D) of ``x`` (B, C, *S) with ``mask_ratio`` of its positions dropped, per sample."""
        enc = self.encoder
        tokens, grid = enc.embed(x)  # (B, T, D); T = U * N unit-major for grouped / spectral
        if self.settings.mask_ratio > 0:
            positions = math.prod(grid)
            noise = PerSample.from_batch(batch, generator, len(x)).rand(positions)  # (B, N)
            noise, keep = consistent_noise(noise, tokens.shape[1] // positions, self.settings.mask_ratio)
            tokens, _, _ = random_masking(tokens, self.settings.mask_ratio, noise, keep=keep)
        out, _ = enc.run_blocks(enc.add_cls(tokens))
        return out[:, 0]

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        s = self.settings
        globals_, locals_ = self.crops(batch)
        anchors = [self.projector(self.masked_cls(globals_[1], batch, generator))]  # (B, P)
        if locals_:  # one pass (and one BatchNorm batch) per crop size, as the official code
            anchors.append(self.projector(self.represent(self.encoder, torch.cat(locals_))))  # (N*B, P)
        with torch.no_grad():
            target = self.target_projector(self.represent(self.target_encoder, globals_[0]))  # (B, P)
        if not self._balance_checked:
            self._warn_if_sinkhorn_flattens(len(target) * world_size())  # every rank holds as many (drop_last)
        terms = msn_terms(torch.cat(anchors), target, self.prototypes, s.temperature, s.sharpen,
                          s.sinkhorn_iterations, distributed=True)
        loss = terms.cross_entropy + s.memax_weight * terms.memax
        logs = {"msn_loss": terms.cross_entropy.detach(), "memax": terms.memax.detach(),
                "prototypes_used": prototypes_used(terms.targets), **self.monitor(anchors[0], step)}
        return MethodOutput(loss, logs)

    def _warn_if_sinkhorn_flattens(self, total: int) -> None:
        """Once, on the first step: warn (rank 0) when Sinkhorn shares more prototypes than the global batch
        (``total`` windows) holds."""
        self._balance_checked = True
        s = self.settings
        if s.sinkhorn_iterations and s.n_prototypes > total and rank() == 0:
            log.warning(f"warning: msn: Sinkhorn gives each of the {s.n_prototypes} prototypes an equal share of the "
                        f"global batch of {total}, so no target can exceed {total}/{s.n_prototypes} and the "
                        f"sharpening is undone; use method.n_prototypes <= {total} (the official runs keep them about "
                        "equal), a larger train.batch_size, or method.sinkhorn_iterations=0.")


@torch.no_grad()
def prototypes_used(targets: Tensor) -> Tensor:
    """How many prototypes are some target's most likely one, over the global batch (MSN's logged ``np``)."""
    counts = torch.zeros(targets.shape[1], device=targets.device)
    counts.index_add_(0, targets.argmax(dim=1), torch.ones(targets.shape[0], device=targets.device))
    return (all_reduce_sum_(counts) > 0).sum().float()
