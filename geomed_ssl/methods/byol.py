"""BYOL (Grill et al., 2020): an online network predicts a momentum target network's projection of the other crop;
no negatives.

Online: encoder CLS -> projector -> predictor. Target: EMA copies of encoder and projector, momentum cosine from
``momentum`` to 1. Loss: symmetrised negative cosine similarity, the mean of the two directions, in [-1, 1] (the
official loss sums ``2 - 2 cos`` over both directions, ``4 + 4 *`` this: the same minimum, gradients 4x larger, a
scale AdamW's per-parameter step all but removes). Nothing but the predictor and the slow target stops collapse, so
the collapse monitor matters here. The online encoder is exported.

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
from geomed_ssl.methods.losses import symmetric_negative_cosine
from geomed_ssl.methods.momentum import MomentumPair, momentum_at, momentum_copy
from geomed_ssl.methods.projection import byol_predictor, byol_projector
from geomed_ssl.methods.registry import register_method
from geomed_ssl.methods.siamese import TwoViewMethod, needs_batch_of_two
from geomed_ssl.models.encoder import EncoderConfig


@dataclass
class BYOLSettings(MethodSettings):
    """The ``method:`` keys of ``name: byol`` (defaults: BYOL)."""

    proj_hidden_dim: int = setting(4096, "projector and predictor hidden width", bounds=">= 1")
    proj_dim: int = setting(256, "projection output size", bounds=">= 1")
    momentum: float = setting(0.996, "target network EMA at step 0, cosine to 1 at train.max_steps",
                              bounds="[0, 1]")

    def check(self, source: str, context: MethodContext) -> None:
        needs_batch_of_two(self, source, context, "byol")


@register_method
class BYOL(TwoViewMethod):
    """BYOL over a :class:`ViTEncoder`: online encoder + projector + predictor, EMA target encoder + projector."""

    name = "byol"
    Settings = BYOLSettings
    settings: BYOLSettings
    views = ViewSpec(crops=2, asymmetric=True)
    card = MethodCard(
        learns="to predict a slowly moving target network's embedding of the other crop (no negatives)",
        cost="~3x (two crops through the online network with grad, two through the target)",
        failure_modes="collapse to a constant embedding (watch embedding_std / collapse); needs the predictor and a "
                      "high momentum; BatchNorm in the heads needs batches of 2+ per device",
        recipes=("recipes/byol_sentinel2.yaml", "recipes/siamese_ct.yaml"))

    def __init__(self, encoder_cfg: EncoderConfig, settings: BYOLSettings | MethodConfig | Mapping[str, Any] |
                 None = None, max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s = self.settings
        self.projector = byol_projector(encoder_cfg.embed_dim, s.proj_hidden_dim, s.proj_dim)
        self.predictor = byol_predictor(s.proj_dim, s.proj_hidden_dim)
        self.target_encoder = momentum_copy(self.encoder)
        self.target_projector = momentum_copy(self.projector)

    def momentum_pairs(self) -> list[MomentumPair]:
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def momentum(self, step: int) -> float:
        """Cosine from ``method.momentum`` to 1 over the run."""
        return momentum_at(self.clock(step), self.settings.momentum, self.clock.total)

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        x1, x2 = self.two_views(batch)
        x = torch.cat([x1, x2])  # (2B, C, *G)
        z = self.projector(self.represent(self.encoder, x))  # (2B, P)
        p1, p2 = self.predictor(z).chunk(2)
        with torch.no_grad():
            t1, t2 = self.target_projector(self.represent(self.target_encoder, x)).chunk(2)
        loss = symmetric_negative_cosine(p1, p2, t1, t2)
        return MethodOutput(loss, {"similarity_loss": loss.detach(), **self.monitor(z[: len(x1)], step)})
