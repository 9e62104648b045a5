"""MoCo v3 (Chen, Xie & He, 2021), the contrastive recipe designed for ViTs: no queue, a predictor on the query
branch, a symmetric loss, and a momentum encoder whose momentum follows a cosine from ``momentum`` to 1.

Base: encoder CLS -> 3-layer projector -> 2-layer predictor (BatchNorms over the global batch). Momentum: EMA copies
of encoder and projector. Loss: ``ctr(q1, k2) + ctr(q2, k1)``, each query against the keys of the whole global
batch at ``temperature``, scaled by ``2 * temperature`` (official code). The base encoder is exported.

Its heads take both views in one BatchNorm batch, where the official code runs one pass per view
(:class:`~geomed_ssl.methods.siamese.TwoViewMethod` says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from geomed_ssl.config import MethodConfig, setting
from geomed_ssl.views.builder import ViewSpec
from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, MethodSettings
from geomed_ssl.methods.losses import moco_v3_loss
from geomed_ssl.methods.momentum import MomentumPair, momentum_at, momentum_copy
from geomed_ssl.methods.projection import moco_v3_predictor, moco_v3_projector
from geomed_ssl.methods.registry import register_method
from geomed_ssl.methods.siamese import TwoViewMethod, needs_batch_of_two
from geomed_ssl.models.encoder import EncoderConfig


@dataclass
class MoCoV3Settings(MethodSettings):
    """The ``method:`` keys of ``name: moco_v3`` (defaults: MoCo v3 ViT)."""

    temperature: float = setting(0.2, "contrastive softmax temperature", bounds="> 0")
    proj_hidden_dim: int = setting(4096, "projector and predictor hidden width", bounds=">= 1")
    proj_dim: int = setting(256, "projection output size", bounds=">= 1")
    momentum: float = setting(0.99, "momentum encoder EMA at step 0, cosine to 1 at train.max_steps",
                              bounds="[0, 1]")
    freeze_patch_embed: bool = setting(False, "keep the patch embedding at its random initialisation (the MoCo v3 "
                                              "paper's stability measure; with spectral, grouped or wavelength "
                                              "embeddings their band / group embeddings too)")

    def check(self, source: str, context: MethodContext) -> None:
        needs_batch_of_two(self, source, context, "moco_v3")


@register_method
class MoCoV3(TwoViewMethod):
    """MoCo v3 over a :class:`ViTEncoder`: base encoder + projector + predictor, momentum encoder + projector."""

    name = "moco_v3"
    Settings = MoCoV3Settings
    settings: MoCoV3Settings
    views = ViewSpec(crops=2, asymmetric=True)
    card = MethodCard(
        learns="to predict, from each crop, the momentum encoder's key of the other crop among the global batch",
        cost="~3x (two crops through the base encoder with grad, two through the momentum encoder)",
        failure_modes="unstable ViT training at high lr (loss spikes): lower train.base_lr, keep warmup; weak with "
                      "small global batches; embedding_std / collapse in metrics.csv",
        recipes=("recipes/moco_v3_sentinel2.yaml", "recipes/moco_v3_sentinel2_small.yaml",
                 "recipes/contrastive_ct.yaml"))

    def __init__(self, encoder_cfg: EncoderConfig, settings: MoCoV3Settings | MethodConfig | Mapping[str, Any] |
                 None = None, max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s = self.settings
        if s.freeze_patch_embed:
            self.encoder.patch_embed.requires_grad_(False)
        self.projector = moco_v3_projector(encoder_cfg.embed_dim, s.proj_hidden_dim, s.proj_dim)
        self.predictor = moco_v3_predictor(s.proj_dim, s.proj_hidden_dim)
        self.momentum_encoder = momentum_copy(self.encoder)
        self.momentum_projector = momentum_copy(self.projector)

    def momentum_pairs(self) -> list[MomentumPair]:
        return [(self.encoder, self.momentum_encoder), (self.projector, self.momentum_projector)]

    def momentum(self, step: int) -> float:
        """Cosine from ``method.momentum`` to 1 over the run."""
        return momentum_at(self.clock(step), self.settings.momentum, self.clock.total)

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        x1, x2 = self.two_views(batch)
        x = torch.cat([x1, x2])  # (2B, C, *G): one pass per network
        q1, q2 = self.predictor(self.projector(self.represent(self.encoder, x))).chunk(2)  # (B, P) each
        with torch.no_grad():
            k1, k2 = self.momentum_projector(self.represent(self.momentum_encoder, x)).chunk(2)
        loss = moco_v3_loss(q1, q2, k1, k2, self.settings.temperature)
        return MethodOutput(loss, {"contrastive_loss": loss.detach(), **self.monitor(q1, step)})
