"""What the contrastive and siamese methods share: two augmented global crops of each window, an encoder whose CLS
token is the representation, the batch-size rule, and the collapse monitor. Each method (``simclr.py``,
``moco_v2.py``, ``moco_v3.py``, ``byol.py``, ``simsiam.py``) adds its heads and loss in its own small file.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from geomed_ssl.config import MethodConfig
from geomed_ssl.views.builder import ViewSpec
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodContext, MethodSettings, SSLMethod
from geomed_ssl.methods.monitor import CollapseMonitor
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder


def zero_invalid(x: Tensor, valid: Tensor | None) -> Tensor:
    """``x`` (B, C, *S) with pixels where ``valid`` (B, *S) is False set to 0 (the normalised mean), as MAE does."""
    return x if valid is None else torch.where(valid.to(x.device)[:, None].bool(), x, 0.0)


def needs_batch_of_two(settings: MethodSettings, source: str, context: MethodContext, name: str) -> None:
    """Refuse ``train.batch_size`` 1: the method compares the samples of a batch (negatives, BatchNorm)."""
    if context.batch_size is not None and context.batch_size < 2:
        raise ConfigError(f"{source}: method '{name}' compares the windows of a batch (negatives, BatchNorm or "
                          f"statistics over the batch), so train.batch_size must be at least 2 per device, got "
                          f"{context.batch_size}.")


class TwoViewMethod(SSLMethod):
    """Base of the methods that compare two augmented global crops of each window: ``self.encoder`` (exported),
    ``self.monitor`` (collapse), :meth:`two_views` and :meth:`represent`. Subclasses add heads and the loss.

    The encoder runs on both views at once, and so do the heads: each head BatchNorm normalises the two views
    together, a batch of 2B (SimCLR's official code does so; BYOL's, SimSiam's, MoCo v3's, Barlow Twins' and VICReg's
    run one pass per view). Measured level on EuroSAT and steadier at the few samples per view of 3D runs
    (docs/benchmarks_eurosat.md, "The heads once per view")."""

    views = ViewSpec(crops=2)
    embedding_pool = "cls"  # :meth:`represent`
    compares_batch = True  # negatives, BatchNorm over the batch or batch statistics

    def __init__(self, encoder_cfg: EncoderConfig, settings: MethodSettings | MethodConfig | Mapping[str, Any] | None
                 = None, max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        self.encoder = ViTEncoder(encoder_cfg)
        self.monitor = CollapseMonitor(self.name)

    @staticmethod
    def two_views(batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """The two global crops (B, C, *G) each, nodata pixels set to 0."""
        views, valid = batch["views"]["global"], (batch.get("valid") or {}).get("global") or [None, None]
        return zero_invalid(views[0], valid[0]), zero_invalid(views[1], valid[1])

    @staticmethod
    def represent(encoder: ViTEncoder, x: Tensor) -> Tensor:
        """The representation of ``x`` (B, C, *S): the encoder's CLS token (B, D)."""
        return encoder(x)[:, 0]
