"""SimCLR (Chen et al., 2020): two augmented crops of a window attract, every other crop of the global batch repels.

Encoder CLS -> projection MLP (BatchNorm over the global batch) -> NT-Xent at ``temperature`` over the ``2 N``
crops of the global batch, negatives gathered from every rank with gradients (lightly's NT-Xent bug under DDP is
tested against a single process). The encoder is exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from geomed_ssl.config import MethodConfig, setting
from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, MethodSettings
from geomed_ssl.methods.losses import nt_xent_loss
from geomed_ssl.methods.projection import simclr_projector
from geomed_ssl.methods.registry import register_method
from geomed_ssl.methods.siamese import TwoViewMethod, needs_batch_of_two
from geomed_ssl.models.encoder import EncoderConfig


@dataclass
class SimCLRSettings(MethodSettings):
    """The ``method:`` keys of ``name: simclr`` (defaults: SimCLR v1)."""

    temperature: float = setting(0.1, "NT-Xent softmax temperature (0.1 for batches of hundreds+, 0.2-0.5 for "
                                 "small ones)", bounds="> 0")
    proj_hidden_dim: int = setting(2048, "projection head hidden width", bounds=">= 1")
    proj_dim: int = setting(128, "projection output size (what the loss compares)", bounds=">= 1")
    proj_layers: int = setting(2, "projection head layers (v1: 2, v2: 3)", bounds=">= 1")

    def check(self, source: str, context: MethodContext) -> None:
        needs_batch_of_two(self, source, context, "simclr")


@register_method
class SimCLR(TwoViewMethod):
    """SimCLR over a :class:`ViTEncoder` with a projection head."""

    name = "simclr"
    Settings = SimCLRSettings
    settings: SimCLRSettings
    card = MethodCard(
        learns="to tell each window's two crops apart from every other crop in the global batch",
        cost="2x (both crops through encoder and head); gains from large global batches (negatives)",
        failure_modes="weak with small batches (few negatives): raise train.batch_size or use moco_v2; too strong "
                      "crops on tiny windows; embedding_std / collapse in metrics.csv",
        recipes=("recipes/simclr_sentinel2.yaml", "recipes/contrastive_ct.yaml"))

    def __init__(self, encoder_cfg: EncoderConfig, settings: SimCLRSettings | MethodConfig | Mapping[str, Any] |
                 None = None, max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s = self.settings
        self.projector = simclr_projector(encoder_cfg.embed_dim, s.proj_hidden_dim, s.proj_dim, s.proj_layers)

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        x1, x2 = self.two_views(batch)
        z = self.projector(self.represent(self.encoder, torch.cat([x1, x2])))  # (2B, P): one pass, one BN batch
        z1, z2 = z.chunk(2)
        loss = nt_xent_loss(z1, z2, self.settings.temperature, gather_distributed=True)
        return MethodOutput(loss, {"contrastive_loss": loss.detach(), **self.monitor(z1, step)})
