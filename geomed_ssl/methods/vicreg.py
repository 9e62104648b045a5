"""VICReg (Bardes, Ponce & LeCun, 2022): variance-invariance-covariance regularisation of the two crops' embeddings;
no negatives, no momentum encoder, no predictor, no normalisation of the embeddings.

Encoder CLS -> 3-layer expander -> ``invariance_weight * mse(z1, z2) + variance_weight * (hinge on each dimension's
std over the batch) + covariance_weight * (squared off-diagonal covariances / D)``, the statistics over the global
batch (embeddings gathered with gradients; the same loss on every rank). The variance hinge is what prevents
collapse; the collapse monitor watches it too. The encoder is exported.

Its heads take both views in one BatchNorm batch, where the official code runs one pass per view
(:class:`~geomed_ssl.methods.siamese.TwoViewMethod` says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from geomed_ssl.config import MethodConfig, setting
from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, MethodSettings
from geomed_ssl.methods.losses import vicreg_terms
from geomed_ssl.methods.projection import vicreg_expander
from geomed_ssl.methods.registry import register_method
from geomed_ssl.methods.siamese import TwoViewMethod, needs_batch_of_two
from geomed_ssl.models.encoder import EncoderConfig


@dataclass
class VICRegSettings(MethodSettings):
    """The ``method:`` keys of ``name: vicreg`` (defaults: VICReg)."""

    proj_hidden_dim: int = setting(8192, "expander hidden width", bounds=">= 1")
    proj_dim: int = setting(8192, "expander output size (the covariance matrix is proj_dim x proj_dim)",
                            bounds=">= 1")
    invariance_weight: float = setting(25.0, "weight of the mean squared error between the crops (lambda)",
                                       bounds=">= 0")
    variance_weight: float = setting(25.0, "weight of the std hinge that keeps every dimension spread (mu)",
                                     bounds=">= 0")
    covariance_weight: float = setting(1.0, "weight of the off-diagonal covariance term (nu)", bounds=">= 0")

    def check(self, source: str, context: MethodContext) -> None:
        needs_batch_of_two(self, source, context, "vicreg")


@register_method
class VICReg(TwoViewMethod):
    """VICReg over a :class:`ViTEncoder`: one network, a wide expander, the three-term loss."""

    name = "vicreg"
    Settings = VICRegSettings
    settings: VICRegSettings
    card = MethodCard(
        learns="embeddings invariant to the crops while every dimension keeps its spread and dimensions decorrelate",
        cost="2x (two crops through one network with grad) + a proj_dim^2 covariance; wide expanders cost memory",
        failure_modes="the three weights trade off (keep invariance_weight = variance_weight); high lr makes the "
                      "variance term dominate; embedding_std / collapse in metrics.csv",
        recipes=("recipes/vicreg_sentinel2.yaml", "recipes/siamese_ct.yaml"))

    def __init__(self, encoder_cfg: EncoderConfig, settings: VICRegSettings | MethodConfig | Mapping[str, Any] |
                 None = None, max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s = self.settings
        self.projector = vicreg_expander(encoder_cfg.embed_dim, s.proj_hidden_dim, s.proj_dim)

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        x1, x2 = self.two_views(batch)
        z1, z2 = self.projector(self.represent(self.encoder, torch.cat([x1, x2]))).chunk(2)  # (B, P) each
        t = vicreg_terms(z1, z2, gather_distributed=True)
        s = self.settings
        loss = s.invariance_weight * t.invariance + s.variance_weight * t.variance + s.covariance_weight * t.covariance
        return MethodOutput(loss, {"invariance": t.invariance.detach(), "variance": t.variance.detach(),
                                   "covariance": t.covariance.detach(), **self.monitor(z1, step)})
