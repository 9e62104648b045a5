"""SwAV (Caron et al., 2020): online clustering by swapped prediction. The global crops' embeddings are assigned to
learned prototypes with Sinkhorn-Knopp (equal mass per prototype over the global batch); every other crop, global or
local (multi-crop), predicts those codes.

Encoder CLS -> projector -> L2-normalised embedding -> prototypes (cosine scores). Codes: Sinkhorn over the global
batch (sums all-reduced under DDP), optionally enlarged by a queue of the last ``queue_size`` global-crop
embeddings once it is full (every rank enqueues every rank's rows). The prototypes are L2-normalised after every
update and frozen for the first ``freeze_prototypes_steps`` steps. ``n_prototypes: auto`` is a quarter of the
data's distinct windows (2 to 3000), logged at the start. The encoder is exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from geomed_ssl.config import MethodConfig, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, MethodSettings
from geomed_ssl.methods.clustering import MultiCropMethod, PrototypeSettings, check_prototypes
from geomed_ssl.methods.distributed import rank, world_size
from geomed_ssl.methods.losses import swav_loss
from geomed_ssl.methods.projection import Prototypes, swav_projector
from geomed_ssl.methods.queue import FeatureQueue
from geomed_ssl.methods.registry import register_method
from geomed_ssl.methods.schedules import warn_frozen_run
from geomed_ssl.methods.siamese import needs_batch_of_two
from geomed_ssl.models.encoder import EncoderConfig


@dataclass
class SwAVSettings(PrototypeSettings, MethodSettings):
    """The ``method:`` keys of ``name: swav`` (defaults: SwAV, official code)."""

    proj_hidden_dim: int = setting(2048, "projector hidden width", bounds=">= 1")
    proj_dim: int = setting(128, "embedding size scored against the prototypes", bounds=">= 1")
    n_prototypes: int | str = setting("auto", "prototypes (clusters); auto: a quarter of the data's distinct "
                                      "windows, between 2 and 3000", bounds=">= 2", choices=("auto",))
    temperature: float = setting(0.1, "softmax temperature of the predictions", bounds="> 0")
    epsilon: float = setting(0.05, "Sinkhorn entropic regularisation (lower: harder codes)", bounds="> 0")
    sinkhorn_iterations: int = setting(3, "Sinkhorn-Knopp iterations", bounds=">= 1")
    freeze_prototypes_steps: int | None = setting(None, "steps at the start during which the prototypes do not "
                                                  "learn; null: 10 % of train.max_steps", bounds=">= 0")
    queue_size: int = setting(0, "past global-crop embeddings added to Sinkhorn's batch once the queue is full "
                              "(0: no queue; helps when the global batch is smaller than ~n_prototypes)",
                              bounds=">= 0")

    def check(self, source: str, context: MethodContext) -> None:
        needs_batch_of_two(self, source, context, "swav")
        warn_frozen_run(source, "freeze_prototypes_steps", self.freeze_prototypes_steps, context.max_steps)
        check_prototypes(self.n_prototypes, source, context)
        if self.queue_size and context.samples is not None and self.queue_size > context.samples:
            raise ConfigError(f"{source}: method.queue_size {self.queue_size} is longer than the data, which holds "
                              f"{context.samples} distinct windows: windows would be counted twice in the codes; "
                              f"use at most {context.samples} (or 0).")

    def resolve_auto(self, context: MethodContext) -> list[str]:
        return self.resolve_prototypes(context)


@register_method
class SwAV(MultiCropMethod):
    """SwAV over a :class:`ViTEncoder`: projector, prototypes, Sinkhorn codes, multi-crop, optional queue."""

    name = "swav"
    Settings = SwAVSettings
    settings: SwAVSettings
    card = MethodCard(
        learns="to predict, from any crop, the balanced cluster assignment (Sinkhorn codes) of the global crops",
        cost="2x for the global crops + ~N/4x for N local crops at half size; prototypes x proj_dim weights",
        failure_modes="all windows in one prototype when the global batch is far smaller than n_prototypes (use "
                      "auto, or a queue); codes too soft with a high epsilon; embedding_std / collapse in metrics.csv",
        recipes=("recipes/swav_sentinel2.yaml", "recipes/clustering_ct.yaml"))

    def __init__(self, encoder_cfg: EncoderConfig, settings: SwAVSettings | MethodConfig | Mapping[str, Any] |
                 None = None, max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s = self.settings
        self.freeze_prototypes_steps = (int(0.1 * max_steps) if s.freeze_prototypes_steps is None
                                        else s.freeze_prototypes_steps)
        self.projector = swav_projector(encoder_cfg.embed_dim, s.proj_hidden_dim, s.proj_dim)
        self.prototypes = Prototypes(s.proj_dim, s.prototype_count())
        self.queue = FeatureQueue(s.queue_size, (2, s.proj_dim), init="empty") if s.queue_size else None

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        globals_, locals_ = self.crops(batch)
        z = self.embed(globals_, locals_)  # (2 + N, B, P)
        scores = self.prototypes(z)  # (2 + N, B, K)
        queue_scores = None
        if self.queue is not None and self.queue.is_full:
            with torch.no_grad():
                # every rank holds the same queue (every rank's rows) and Sinkhorn sums over ranks: each takes its
                # own share, so the queue enters the global batch once, as in one process
                queued = self.queue.contents()[rank()::world_size()]  # (Q / world, 2, P)
                queue_scores = [self.prototypes(queued[:, i]) for i in range(2)]  # 2 x (Q / world, K)
        s = self.settings
        loss = swav_loss(list(scores[:2]), list(scores[2:]), s.temperature, s.epsilon, s.sinkhorn_iterations,
                         queue_scores, distributed=True)
        if self.queue is not None:
            self.queue.enqueue(z[:2].detach().transpose(0, 1))  # (B, 2, P), every rank's rows
        return MethodOutput(loss, {"swav_loss": loss.detach(), **self.monitor(z[0], step)})

    def before_optimizer_step(self, step: int) -> None:
        """Drop the prototypes' gradients while frozen (the first ``freeze_prototypes_steps`` steps)."""
        if self.clock(step) < self.freeze_prototypes_steps:
            for p in self.prototypes.parameters():
                p.grad = None

    def after_step(self, step: int) -> None:
        """Keep every prototype on the unit sphere."""
        super().after_step(step)
        self.prototypes.normalize_()
