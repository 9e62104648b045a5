"""SimSiam (Chen & He, 2021): each crop's prediction regresses onto the other crop's projection from the same
network, with a stop-gradient; no negatives, no momentum encoder.

Encoder CLS -> 3-layer projector (output BatchNorm without affine) -> bottleneck predictor. Loss: symmetrised
negative cosine similarity, in [-1, 1] (-1: perfect agreement). The stop-gradient and the predictor are what keep
it from collapsing; the collapse monitor watches the projections' spread. The encoder is exported.

Its heads take both views in one BatchNorm batch, where the official code runs one pass per view
(:class:`~geomed_ssl.methods.siamese.TwoViewMethod` says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from geomed_ssl.config import MethodConfig, setting
from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, MethodSettings
from geomed_ssl.methods.losses import symmetric_negative_cosine
from geomed_ssl.methods.projection import simsiam_predictor, simsiam_projector
from geomed_ssl.methods.registry import register_method
from geomed_ssl.methods.siamese import TwoViewMethod, needs_batch_of_two
from geomed_ssl.models.encoder import EncoderConfig


@dataclass
class SimSiamSettings(MethodSettings):
    """The ``method:`` keys of ``name: simsiam`` (defaults: SimSiam)."""

    proj_hidden_dim: int = setting(2048, "projector hidden width", bounds=">= 1")
    proj_dim: int = setting(2048, "projection output size", bounds=">= 1")
    pred_hidden_dim: int = setting(512, "predictor bottleneck width (a quarter of proj_dim)", bounds=">= 1")

    def check(self, source: str, context: MethodContext) -> None:
        needs_batch_of_two(self, source, context, "simsiam")


@register_method
class SimSiam(TwoViewMethod):
    """SimSiam over a :class:`ViTEncoder`: projector + predictor, stop-gradient on the targets."""

    name = "simsiam"
    Settings = SimSiamSettings
    settings: SimSiamSettings
    card = MethodCard(
        learns="to predict the same network's embedding of the other crop through a stop-gradient",
        cost="2x (two crops through one network with grad); no second network, no queue",
        failure_modes="collapse when the predictor or the stop-gradient is weak or lr too high (watch "
                      "embedding_std / collapse); BatchNorm in the heads needs batches of 2+ per device",
        recipes=("recipes/simsiam_sentinel2.yaml", "recipes/siamese_ct.yaml"))

    def __init__(self, encoder_cfg: EncoderConfig, settings: SimSiamSettings | MethodConfig | Mapping[str, Any] |
                 None = None, max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s = self.settings
        self.projector = simsiam_projector(encoder_cfg.embed_dim, s.proj_hidden_dim, s.proj_dim)
        self.predictor = simsiam_predictor(s.proj_dim, s.pred_hidden_dim)

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        x1, x2 = self.two_views(batch)
        z = self.projector(self.represent(self.encoder, torch.cat([x1, x2])))  # (2B, P)
        z1, z2 = z.chunk(2)
        p1, p2 = self.predictor(z).chunk(2)
        loss = symmetric_negative_cosine(p1, p2, z1, z2)
        return MethodOutput(loss, {"similarity_loss": loss.detach(), **self.monitor(z1, step)})
