"""Barlow Twins (Zbontar et al., 2021): the cross-correlation matrix of the two crops' embeddings, standardised over
the global batch, is pushed towards the identity; no negatives, no momentum encoder, no predictor.

Encoder CLS -> 3-layer projector (BatchNorm over the global batch) -> ``sum_i (1 - C_ii)^2 + lambda_offdiag *
sum_{i != j} C_ij^2``, with ``C`` (D, D) computed on the global batch (embeddings gathered with gradients; the same
loss on every rank). Redundancy reduction keeps it from collapsing; the collapse monitor watches the projections'
spread. The encoder is exported.

Its heads take both views in one BatchNorm batch, where the official code runs one pass per view
(:class:`~geomed_ssl.methods.siamese.TwoViewMethod` says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from geomed_ssl.config import MethodConfig, setting
from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, MethodSettings
from geomed_ssl.methods.losses import barlow_twins_terms
from geomed_ssl.methods.projection import barlow_twins_projector
from geomed_ssl.methods.registry import register_method
from geomed_ssl.methods.siamese import TwoViewMethod, needs_batch_of_two
from geomed_ssl.models.encoder import EncoderConfig


@dataclass
class BarlowTwinsSettings(MethodSettings):
    """The ``method:`` keys of ``name: barlow_twins`` (defaults: Barlow Twins, official code)."""

    proj_hidden_dim: int = setting(8192, "projector hidden width", bounds=">= 1")
    proj_dim: int = setting(8192, "projection output size (the cross-correlation matrix is proj_dim x proj_dim)",
                            bounds=">= 1")
    lambda_offdiag: float = setting(0.0051, "weight of the off-diagonal (redundancy) term", bounds=">= 0")

    def check(self, source: str, context: MethodContext) -> None:
        needs_batch_of_two(self, source, context, "barlow_twins")


@register_method
class BarlowTwins(TwoViewMethod):
    """Barlow Twins over a :class:`ViTEncoder`: one network, a wide projector, the cross-correlation loss."""

    name = "barlow_twins"
    Settings = BarlowTwinsSettings
    settings: BarlowTwinsSettings
    card = MethodCard(
        learns="embeddings whose dimensions agree across the two crops and are decorrelated from each other",
        cost="2x (two crops through one network with grad) + a proj_dim^2 matrix; wide projectors cost memory",
        failure_modes="small batches give noisy correlation estimates (global batch 64+ helps); a narrow projector "
                      "limits it; embedding_std / collapse in metrics.csv",
        recipes=("recipes/barlow_twins_sentinel2.yaml", "recipes/siamese_ct.yaml"))

    def __init__(self, encoder_cfg: EncoderConfig, settings: BarlowTwinsSettings | MethodConfig |
                 Mapping[str, Any] | None = None, max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s = self.settings
        self.projector = barlow_twins_projector(encoder_cfg.embed_dim, s.proj_hidden_dim, s.proj_dim)

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        x1, x2 = self.two_views(batch)
        z1, z2 = self.projector(self.represent(self.encoder, torch.cat([x1, x2]))).chunk(2)  # (B, P) each
        terms = barlow_twins_terms(z1, z2, gather_distributed=True)
        loss = terms.invariance + self.settings.lambda_offdiag * terms.redundancy
        return MethodOutput(loss, {"invariance": terms.invariance.detach(), "redundancy": terms.redundancy.detach(),
                                   **self.monitor(z1, step)})
