"""Classification on the ViT encoder (linear probe or MLP head) and layer-wise lr-decay optimiser groups.

The linear probe follows MAE's: ``BatchNorm1d(affine=False)`` then a ``Linear`` on pooled features (the CLS token
or the mean of the patch tokens of the encoder's normed output). ``features(x)`` gives those pooled features so a
trainer can cache them once and fit ``model.head`` on the cache. Freezing the encoder is the trainer's job.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from geomed_ssl.config import CLS_HEADS, POOLS
from geomed_ssl.errors import ConfigError
from geomed_ssl.models.encoder import ViTEncoder


def build_head(kind: str, dim: int, num_classes: int, dropout: float = 0.0) -> nn.Sequential:
    """``linear``: BatchNorm1d(affine=False) + Linear (weights N(0, 0.01), zero bias, as MAE's probe);
    ``mlp``: Linear(D, D) - GELU - Dropout - Linear(D, K)."""
    if kind == "linear":
        head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
        nn.init.trunc_normal_(head[1].weight, std=0.01)
        nn.init.zeros_(head[1].bias)
        return head
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, num_classes))
    raise ConfigError(f"classification head '{kind}' is unknown; choose one of: {', '.join(CLS_HEADS)}.")


class ClassificationModel(nn.Module):
    """ViT encoder + pooled features + a linear or MLP head: images (B, C, *S) -> logits (B, K)."""

    def __init__(self, encoder: ViTEncoder, num_classes: int, head: str = "linear", pool: str = "cls",
                 dropout: float = 0.0) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"classification pool '{pool}' is unknown; choose one of: {', '.join(POOLS)}.")
        if num_classes < 1:
            raise ConfigError(f"classification num_classes must be at least 1, got {num_classes}.")
        self.encoder = encoder
        self.pool, self.head_kind, self.num_classes = pool, head, num_classes
        self.head = build_head(head, encoder.embed_dim, num_classes, dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, *S) -> pooled normed features (B, D): the CLS token or the mean of the patch tokens."""
        tokens = self.encoder(x)  # (B, 1+N, D)
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, *S) -> logits (B, K)."""
        return self.head(self.features(x))

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())


def _layer_id(name: str, depth: int) -> int:
    """BEiT/MAE rule: the embedding stage (patch embedding, the grouped / spectral tokens' ``unit_pool``, CLS and
    positions) -> 0, block i -> i + 1, everything else -> depth + 1."""
    if not name.startswith("encoder."):
        return depth + 1
    name = name[len("encoder."):]
    if name.startswith(("patch_embed.", "unit_pool.", "cls_token", "pos_embed", "mask_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_groups(model: nn.Module, encoder_depth: int, decay: float, base_lr: float,
                       weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups with layer-wise lr decay for a model holding its ViT as ``model.encoder``
    (``SegmentationModel``, ``ClassificationModel``).

    Layer ids: patch embedding (and ``unit_pool``) / CLS / positions 0, block ``i`` ``i + 1``, the encoder's final
    norm and every non-encoder parameter (decoder, head) ``depth + 1``; the lr scale is ``decay ** (depth + 1 - id)``, so the head
    trains at ``base_lr``. Parameters with ndim <= 1 and the encoder's ``no_weight_decay()`` names get no weight
    decay. Frozen parameters (``requires_grad=False``) are left out. Each group carries ``lr`` (already scaled),
    ``lr_scale`` (for schedulers that set ``lr = schedule * lr_scale``), ``weight_decay`` and ``layer_id``.
    """
    if not 0 < decay <= 1:
        raise ConfigError(f"layer-wise lr decay must be in (0, 1], got {decay}.")
    encoder = getattr(model, "encoder", None)
    skip = {f"encoder.{n}" for n in encoder.no_weight_decay()} if hasattr(encoder, "no_weight_decay") else set()
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lid = _layer_id(name, encoder_depth)
        no_decay = param.ndim <= 1 or name in skip
        key = (lid, no_decay)
        if key not in groups:
            scale = decay ** (encoder_depth + 1 - lid)
            groups[key] = {"params": [], "lr": base_lr * scale, "lr_scale": scale,
                           "weight_decay": 0.0 if no_decay else weight_decay, "layer_id": lid}
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]
