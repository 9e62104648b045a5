"""Dense VICReg (VICRegL-style, Bardes et al. 2022) for pixel-accurate features: two overlapping crops of a window at
a known pixel offset, each through the encoder; the per-pixel features (tokens upsampled to pixels) of pixels both
crops cover are pulled together by the VICReg loss, with a variance and covariance term over all matched pixels of
the batch so that neighbouring but different pixels stay apart. An optional global term (``global_weight``) applies
VICReg to the crops' mean tokens as well.

Why this design: on Indian Pines (200 bands, fields a few pixels wide, 5 labels per class) it was the only
pretraining among those measured that beat both the same network from random initialisation and the random forest
under a frozen per-pixel probe (``benchmarks/research/``: MAE on pixels, VICReg on centre tokens of neighbouring
windows, strong augmentation, larger tokens all lost; numbers in ``recipes/mae_hyperspectral.yaml``).

Views: :class:`~geomed_ssl.views.builder.ViewSpec` with ``shift`` = ``method.max_shift`` (two unresized crops and
their ``offset``, crop 2's origin minus crop 1's). Each crop gets its own random flip / quarter turn here
(``dihedral``), drawn per sample (:class:`PerSample`) and undone on its token map before matching, so matched
features describe the same ground pixels. Volumes (3D) work the same way with a flip per axis instead (no turns)
and trilinear upsampling (BraTS numbers: docs/benchmarks_medical.md).
With ``data.date_pairs`` crop 2 comes from another date of the same ground (another file on the grid), so matched
features are one place at two dates (``recipes/vicreg_dense_sentinel2.yaml``).

Shapes: crops (B, C, *S), S = (T, T) or (T, T, T); tokens (B, N, D) with N = prod(S / p); maps (B, D, *S); matched
features (B * m, D).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from geomed_ssl.config import MethodConfig, setting
from geomed_ssl.views.builder import ViewSpec
from geomed_ssl.methods.base import MethodCard, MethodOutput, MethodSettings, PerSample, SSLMethod
from geomed_ssl.methods.losses import vicreg_terms
from geomed_ssl.methods.monitor import CollapseMonitor
from geomed_ssl.methods.projection import vicreg_expander
from geomed_ssl.methods.registry import register_method
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

STREAM_DIHEDRAL, STREAM_MATCH = 1, 2


@dataclass
class VICRegDenseSettings(MethodSettings):
    """The ``method:`` keys of ``name: vicreg_dense``."""

    max_shift: int = setting(4, "largest offset in px between the two crops' origins, per axis (the window must "
                             "hold a crop plus this)", bounds="[1, 256]")
    neighbourhood: int = setting(3, "a pixel of crop 1 is matched with a pixel up to this many px from the same "
                                 "ground pixel in crop 2 (0: the same pixel)", bounds="[0, 64]")
    matches: int = setting(128, "matched pixels per crop pair", bounds="[1, 65536]")
    projector_dim: int = setting(256, "width of the projector's hidden and output layers", bounds="[2, 16384]")
    projector_layers: int = setting(3, "projector layers (Linear-BN-ReLU, last a plain Linear)", bounds="[1, 8]")
    invariance_weight: float = setting(25.0, "VICReg weight of the matched pixels' mean squared distance",
                                       bounds=">= 0")
    variance_weight: float = setting(25.0, "VICReg weight of the std hinge", bounds=">= 0")
    covariance_weight: float = setting(1.0, "VICReg weight of the off-diagonal covariance", bounds=">= 0")
    global_weight: float = setting(0.0, "weight of a VICReg term on the two crops' mean tokens (0: dense only)",
                                   bounds=">= 0")
    dihedral: bool = setting(True, "each crop gets its own random flip / quarter turn (non-square crops: half "
                             "turns; volumes: a flip per axis), undone before matching")


def match_pixels(offset: torch.Tensor, size: tuple[int, ...], matches: int, neighbourhood: int,
                 per_sample: PerSample, valid1: torch.Tensor | None = None,
                 valid2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel (voxel) pairs to match, as flat indices (B, m) into crop 1 and crop 2 (both ``size``: (T, T) or
    (T, T, T)).

    ``offset`` (B, n_dims) = origin of crop 2 - origin of crop 1, so pixel p of crop 1 is pixel p - offset of crop 2.
    Crop-1 pixels are drawn among those whose partner, moved by up to ``neighbourhood`` px per axis, is still in
    crop 2 (where that leaves none: every shared pixel, partners clamped), and among them those valid in both crops
    (``valid1``/``valid2`` (B, *size) bool; none valid: all of them); each partner is moved by a uniform draw in
    [-neighbourhood, neighbourhood] per axis, or not at all where the move would land on crop 2's nodata. Every draw
    comes from the sample's own stream."""
    nd, nb = len(size), int(neighbourhood)
    coords = torch.meshgrid(*[torch.arange(t) for t in size], indexing="ij")
    strides = [math.prod(size[k + 1:]) for k in range(nd)]  # row-major flat index
    idx1, idx2 = [], []
    for i in range(len(per_sample)):
        g = per_sample.generator(i, STREAM_MATCH)
        d = [int(v) for v in offset[i, :nd]]
        allowed = None
        for margin in (nb, 0):  # partners that stay inside crop 2 whatever the move; else the plain overlap
            ok = torch.ones(size, dtype=torch.bool)
            for c, dk, t in zip(coords, d, size):
                ok &= (c >= dk + margin) & (c < t + dk - margin)
            if ok.any():
                allowed = ok
                break
        if allowed is None:
            raise ValueError(f"crops of {list(size)} px shifted by {d} share no pixel")
        if valid1 is not None and valid2 is not None:
            partner_ok = torch.zeros_like(allowed)
            at = torch.nonzero(allowed, as_tuple=True)
            partner_ok[at] = valid2[i].cpu()[tuple(a - dk for a, dk in zip(at, d))]
            both = allowed & valid1[i].cpu() & partner_ok
            if both.any():
                allowed = both
        flat = torch.nonzero(allowed.reshape(-1), as_tuple=True)[0]  # candidate crop-1 pixels
        pick = flat[torch.randint(0, len(flat), (matches,), generator=g)]
        move = (torch.randint(-nb, nb + 1, (matches, nd), generator=g) if nb
                else torch.zeros(matches, nd, dtype=torch.long))
        partner, still = torch.zeros_like(pick), torch.zeros_like(pick)  # moved, and where the shift alone puts it
        for k in range(nd):
            a_k = (pick // strides[k]) % size[k]
            partner += (a_k - d[k] + move[:, k]).clamp(0, size[k] - 1) * strides[k]
            still += (a_k - d[k]).clamp(0, size[k] - 1) * strides[k]
        if valid2 is not None:  # a move onto crop 2's nodata: the unmoved partner (valid where any pair was)
            partner = torch.where(valid2[i].cpu().reshape(-1)[partner], partner, still)
        idx1.append(pick)
        idx2.append(partner)
    return torch.stack(idx1), torch.stack(idx2)


def dihedral(x: torch.Tensor, code: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Per-sample geometry of crops ``x``. 2D (B, C, H, W), square: ``code`` (B, 2) long holds (flip 0/1, quarter
    turns 0-3) of the last two axes. 3D (B, C, D, H, W): ``code`` (B, 3) holds a flip 0/1 per spatial axis (no
    turns: a volume's axes differ in spacing and anatomy). ``inverse`` undoes them."""
    out = []
    if x.dim() == 5:
        for xi, flips in zip(x, code.tolist()):
            axes = [1 + k for k, f in enumerate(flips) if f]  # flips are their own inverse
            out.append(xi.flip(axes) if axes else xi)
        return torch.stack(out)
    for xi, (flip, k) in zip(x, code.tolist()):
        if inverse:
            xi = torch.rot90(xi, -k, (-2, -1))
            out.append(xi.flip(-1) if flip else xi)
        else:
            out.append(torch.rot90(xi.flip(-1) if flip else xi, k, (-2, -1)))
    return torch.stack(out)


@register_method
class VICRegDense(SSLMethod):
    """Dense VICReg on the matched pixels of two crops at a known offset, plus an optional global VICReg term."""

    name = "vicreg_dense"
    Settings = VICRegDenseSettings
    settings: VICRegDenseSettings
    views = ViewSpec(crops=2, shift=4, intensity=True)  # the instance's: shift = method.max_shift
    compares_batch = True  # variance and covariance over the batch's matched pixels
    card = MethodCard(
        learns="per-pixel features that agree across two shifted, augmented crops of the same ground and differ "
               "between pixels (VICReg variance / covariance over every matched pixel of the batch)",
        cost="2x (two crops through the encoder; a small projector on the matched pixels)",
        failure_modes="strong intensity augmentation erases the spectral differences it should keep (measured: "
                      "weak scale / noise wins); the loss plateaus high (~15-20 of ~50 at start) when it works; "
                      "on volumes (BraTS, frozen linear probe, 3000 steps) it is ahead of random init of the same "
                      "network on average over splits of new patients, not on every split, and UNETR fine-tunes of "
                      "its 4-voxel tokens failed; small tokens on 3D crops cost memory fast",
        recipes=("recipes/mae_hyperspectral.yaml", "recipes/vicreg_dense_sentinel2.yaml",
                 "recipes/vicreg_dense_mri.yaml"))

    @classmethod
    def views_for(cls, settings: MethodSettings) -> ViewSpec:
        """Two crops ``method.max_shift`` px apart at most."""
        return dataclasses.replace(cls.views, shift=int(settings.max_shift))

    def __init__(self, encoder_cfg: EncoderConfig,
                 settings: VICRegDenseSettings | MethodConfig | Mapping[str, Any] | None = None,
                 max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        m = self.settings
        self.encoder = ViTEncoder(encoder_cfg)
        d = encoder_cfg.embed_dim
        self.projector = vicreg_expander(d, m.projector_dim, m.projector_dim, m.projector_layers)
        self.global_projector = (vicreg_expander(d, m.projector_dim, m.projector_dim, m.projector_layers)
                                 if m.global_weight > 0 else None)
        self.monitor = CollapseMonitor("vicreg_dense")

    def pixel_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, C, *S) -> per-pixel (voxel) features (B, D, *S) (final normed tokens upsampled bilinearly, or
        trilinearly for volumes) and the tokens (B, N, D)."""
        tokens = self.encoder(x)[:, 1:]  # (B, N, D), CLS dropped
        grid = self.encoder.patch_embed.grid_for(tuple(x.shape[2:]))
        fmap = tokens.transpose(1, 2).reshape(x.shape[0], -1, *grid)  # (B, D, *g)
        if tuple(grid) != tuple(x.shape[2:]):
            mode = "bilinear" if x.dim() == 4 else "trilinear"
            fmap = F.interpolate(fmap, size=tuple(x.shape[2:]), mode=mode, align_corners=False)
        return fmap, tokens

    def _weighted(self, za: torch.Tensor, zb: torch.Tensor) -> tuple[torch.Tensor, Any]:
        m = self.settings
        t = vicreg_terms(za, zb)
        return (m.invariance_weight * t.invariance + m.variance_weight * t.variance
                + m.covariance_weight * t.covariance), t

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        """Loss of one micro-batch: ``batch["views"]["global"]`` two (B, C, *S) crops, ``batch["offset"]`` (B, n_dims),
        ``batch["valid"]["global"]`` two (B, *S) masks; flips / turns and matched pixels drawn per sample."""
        m = self.settings
        x1, x2 = batch["views"]["global"]
        valid = batch["valid"]["global"] if isinstance(batch.get("valid"), dict) else None
        v1, v2 = (valid[0].bool(), valid[1].bool()) if valid else (None, None)
        if v1 is not None:  # nodata never reaches the encoder
            x1, x2 = torch.where(v1[:, None], x1, 0.0), torch.where(v2[:, None], x2, 0.0)
        b, size = x1.shape[0], tuple(x1.shape[2:])
        per_sample = PerSample.from_batch(batch, generator, b)
        maps, tokens = [], []
        for view, x in enumerate((x1, x2)):
            code = None
            if m.dihedral and x.dim() == 4:
                r = per_sample.rand(2, stream=STREAM_DIHEDRAL + 10 * view)  # (B, 2)
                turns = (r[:, 1] * 4).long().clamp(max=3)
                if size[0] != size[1]:  # an odd quarter turn would make a non-square crop another shape
                    turns = 2 * (turns // 2)
                code = torch.stack([(r[:, 0] < 0.5).long(), turns], 1)
                x = dihedral(x, code)
            elif m.dihedral:
                code = (per_sample.rand(3, stream=STREAM_DIHEDRAL + 10 * view) < 0.5).long()  # (B, 3) flips
                x = dihedral(x, code)
            fmap, tok = self.pixel_map(x)
            maps.append(dihedral(fmap, code, inverse=True) if code is not None else fmap)
            tokens.append(tok)
        i1, i2 = match_pixels(batch["offset"].cpu(), size, m.matches, m.neighbourhood, per_sample, v1, v2)
        d = maps[0].shape[1]
        f1 = torch.gather(maps[0].flatten(2), 2, i1.to(x1.device)[:, None].expand(-1, d, -1))  # (B, D, m)
        f2 = torch.gather(maps[1].flatten(2), 2, i2.to(x1.device)[:, None].expand(-1, d, -1))
        f1, f2 = f1.transpose(1, 2).reshape(-1, d), f2.transpose(1, 2).reshape(-1, d)  # (B * m, D)
        p1, p2 = self.projector(f1), self.projector(f2)
        loss, terms = self._weighted(p1, p2)
        logs = {"dense_loss": loss.detach(), "invariance": terms.invariance.detach(),
                "variance": terms.variance.detach(), "covariance": terms.covariance.detach()}
        if self.global_projector is not None:
            g_loss, _ = self._weighted(self.global_projector(tokens[0].mean(1)),
                                       self.global_projector(tokens[1].mean(1)))
            loss = loss + m.global_weight * g_loss
            logs["global_loss"] = g_loss.detach()
        logs.update(self.monitor(p1, step))  # embedding_std and the 0 / 1 collapse flag of every method, warned
        return MethodOutput(loss=loss, logs=logs)
