"""Rotation prediction (Gidaris et al., 2018): which of 0/90/180/270 degrees was a window turned by? The pieces
and the registered method ``rotation``: the encoder's CLS and mean patch token through an MLP head, 4-way
cross-entropy. Its views keep the window's orientation (no flips or quarter turns), else the task is unlearnable.

2D windows turn in the (H, W) plane; volumes about a chosen spatial axis (0, 1 or 2 of (D, H, W)), in the plane
of the other two. The plane must be square, since a quarter turn would otherwise change the window's shape.
Label ``k`` is ``torch.rot90(x, k, plane)``: k quarter turns from the plane's first axis towards its second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from geomed_ssl.config import MAX_EMBED_DIM, MethodConfig, setting
from geomed_ssl.views.builder import ViewSpec
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, PerSample, SSLMethod
from geomed_ssl.methods.mim import prepare_image
from geomed_ssl.methods.pretext import PretextSettings, classification_output, mlp_head
from geomed_ssl.methods.registry import register_method
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

NUM_ROTATIONS = 4


def rotation_plane(spatial: tuple[int, ...], axis: int | None = None) -> tuple[int, int]:
    """Tensor dims of the rotation plane for a (B, C, *spatial) batch: (2, 3) in 2D, the two spatial axes other
    than ``axis`` (default 0, the first) in 3D. Refuses a non-square plane or an axis out of range."""
    nd = len(spatial)
    if nd == 2:
        if axis is not None:
            raise ConfigError(f"rotation axis={axis} is for volumes; 2D windows always turn in their (H, W) plane.")
        plane = (0, 1)
    elif nd == 3:
        axis = 0 if axis is None else axis
        if axis not in (0, 1, 2):
            raise ConfigError(f"rotation axis must be 0, 1 or 2 (a spatial axis of (D, H, W)), got {axis}.")
        plane = tuple(a for a in range(3) if a != axis)
    else:
        raise ConfigError(f"rotation prediction needs 2D or 3D windows, got {nd}D.")
    if spatial[plane[0]] != spatial[plane[1]]:
        raise ConfigError(f"rotation needs a square plane to turn by 90 degrees; the window {spatial} has sides "
                          f"{spatial[plane[0]]} and {spatial[plane[1]]} there: use a square window (or another "
                          "axis).")
    return 2 + plane[0], 2 + plane[1]


def rotate(x: torch.Tensor, k: torch.Tensor, plane: tuple[int, int]) -> torch.Tensor:
    """Turn sample ``i`` of (B, C, *S) by ``k[i]`` quarter turns in ``plane``; same shape."""
    out = torch.empty_like(x)
    k = k.to(x.device)
    for r in range(NUM_ROTATIONS):
        sel = k == r
        if bool(sel.any()):
            out[sel] = torch.rot90(x[sel], r, plane)
    return out


def uniform_ints(draws: torch.Tensor, high: int | torch.Tensor) -> torch.Tensor:
    """Uniform draws in [0, 1) -> integers in [0, high) (long, same shape)."""
    high = torch.as_tensor(high, device=draws.device)
    return torch.minimum((draws * high).long(), high - 1)


def turn_invariant(valid: torch.Tensor, plane: tuple[int, int]) -> torch.Tensor:
    """The pixels of a (B, *S) bool mask that stay valid under every quarter turn in ``plane`` (dims of a
    (B, C, *S) batch): the same after any turn, so a window's nodata (a scene's collar) cannot give its turn away."""
    dims, valid = (plane[0] - 1, plane[1] - 1), valid.bool()
    out = valid
    for r in range(1, NUM_ROTATIONS):
        out = out & torch.rot90(valid, r, dims)
    return out


def rotation_batch(x: torch.Tensor, draws: torch.Tensor | None = None, axis: int | None = None,
                   all_rotations: bool = False,
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated windows and their labels.

    Args:
        x: (B, C, *S), 2D or 3D.
        draws: (B,) uniform [0, 1) draws, one per sample (its own stream: :class:`PerSample`), giving its turn;
            unused with ``all_rotations``.
        axis: for volumes, the spatial axis to turn about (default 0).
        all_rotations: every sample in all 4 rotations (RotNet's training batch), rotation-major.
        valid: (B, *S) bool, the valid pixels; pixels outside :func:`turn_invariant` of it are set to 0 first.

    Returns:
        rotated (B, C, *S), or (4B, C, *S) with ``all_rotations``; labels (B,) or (4B,) long in [0, 4).
    """
    plane = rotation_plane(tuple(x.shape[2:]), axis)
    if valid is not None:
        x = torch.where(turn_invariant(valid.to(x.device), plane)[:, None], x, 0.0)
    if all_rotations:
        rotated = torch.cat([torch.rot90(x, r, plane) for r in range(NUM_ROTATIONS)])
        labels = torch.arange(NUM_ROTATIONS, device=x.device).repeat_interleave(x.shape[0])
        return rotated, labels
    labels = uniform_ints(draws.to(x.device), NUM_ROTATIONS)
    return rotate(x, labels, plane), labels


@dataclass
class RotationSettings(PretextSettings):
    """The ``method:`` keys of ``name: rotation``."""

    head_hidden_dim: int = setting(256, "hidden width of the classification head (an MLP on the CLS token and the "
                                   "mean patch token, concatenated)", bounds=f"[1, {MAX_EMBED_DIM}]")
    axis: int = setting(0, "volumes: the spatial axis of (D, H, W), i.e. R, A, S, turned about (its plane must be "
                        "square in voxels; pretrain warns when its voxels are not square in mm); 2D windows always "
                        "turn in their plane", bounds="[0, 2]")

    def check(self, source: str, context: MethodContext) -> None:
        if context.window is not None:
            try:
                rotation_plane(tuple(context.window), self.axis if len(context.window) == 3 else None)
            except ConfigError as err:
                raise ConfigError(f"{source}: method 'rotation': {err}") from None


@register_method
class Rotation(SSLMethod):
    """Predict which of four quarter turns each window was given."""

    name = "rotation"
    views = ViewSpec(intensity=False, scale=(0.2, 1.0), orientation=False)
    card = MethodCard(
        learns="the canonical orientation of scenes: shadows, slopes, anatomy's up and down (a 4-way classifier)",
        cost="1x (one encoder pass per window)",
        failure_modes="nadir imagery and axial slices have no canonical orientation (north-up tiles of fields or "
                      "water are rotation invariant): the task then stays at chance (accuracy ~0.25) and teaches "
                      "little; useful where orientation is real (oblique views, anatomy, sun angle)",
        recipes=("recipes/pretext_sentinel2.yaml",))
    Settings = RotationSettings
    settings: RotationSettings

    def __init__(self, encoder_cfg: EncoderConfig,
                 settings: RotationSettings | MethodConfig | Mapping[str, Any] | None = None,
                 max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        self.encoder = ViTEncoder(encoder_cfg)
        self.head = mlp_head(2 * encoder_cfg.embed_dim, self.settings.head_hidden_dim, NUM_ROTATIONS)
        self.axis = self.settings.axis if encoder_cfg.spatial_dims == 3 else None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, 4) logits from the CLS and the mean patch token."""
        tokens = self.encoder(image)  # (B, 1+N, D)
        return self.head(torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1))

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        image, valid = prepare_image(batch)
        draws = PerSample.from_batch(batch, generator).rand(1)[:, 0]  # (B,): each sample's own turn
        rotated, labels = rotation_batch(image, draws, self.axis, valid=valid)
        return classification_output(self(rotated), labels)
