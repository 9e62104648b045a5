"""MoCo v2 (Chen et al., 2020): a query crop matches the key of its other crop, from a momentum encoder, against a
queue of keys of earlier batches.

Query: encoder CLS -> MLP head (no BatchNorm). Key: momentum copies of both (EMA, constant ``momentum``). Loss:
InfoNCE at ``temperature`` against the queue before this step's keys are added; then every rank's keys are
enqueued (the queue is a buffer: checkpointed, same on every rank). ``queue_size: auto`` is the data's distinct
windows / 2, at most 65536, logged at the start; an explicit length longer than the data is refused, since a window
would meet its own earlier key as a negative. The query encoder is exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from geomed_ssl.config import MethodConfig, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, MethodSettings
from geomed_ssl.methods.losses import QueueInfoNCELoss
from geomed_ssl.methods.momentum import MomentumPair, momentum_at, momentum_copy
from geomed_ssl.methods.projection import moco_v2_projector
from geomed_ssl.methods.registry import register_method
from geomed_ssl.methods.siamese import TwoViewMethod, needs_batch_of_two
from geomed_ssl.models.encoder import EncoderConfig

MAX_AUTO_QUEUE = 65536  # MoCo's ImageNet queue


@dataclass
class MoCoV2Settings(MethodSettings):
    """The ``method:`` keys of ``name: moco_v2`` (defaults: MoCo v2)."""

    temperature: float = setting(0.2, "InfoNCE softmax temperature", bounds="> 0")
    proj_hidden_dim: int = setting(2048, "projection head hidden width", bounds=">= 1")
    proj_dim: int = setting(128, "projection output size (the queued keys)", bounds=">= 1")
    queue_size: int | str = setting("auto", "negative keys kept; auto: half the data's distinct windows, at most "
                                    "65536", bounds=">= 1", choices=("auto",))
    momentum: float = setting(0.999, "key encoder EMA momentum (constant)", bounds="[0, 1]")

    def check(self, source: str, context: MethodContext) -> None:
        needs_batch_of_two(self, source, context, "moco_v2")
        if isinstance(self.queue_size, int) and context.samples is not None and self.queue_size > context.samples:
            raise ConfigError(f"{source}: method.queue_size {self.queue_size} is longer than the data, which holds "
                              f"{context.samples} distinct windows: windows would meet their own earlier keys as "
                              f"negatives; use queue_size: auto or at most {context.samples}.")

    def resolve_auto(self, context: MethodContext) -> list[str]:
        if self.queue_size != "auto" or context.samples is None:
            return []
        batch = (context.batch_size or 0) * context.world  # a step's own windows (every rank's: its keys are all
        # enqueued) are never among its queued negatives; so N processes of batch B fit what one of N*B does
        self.queue_size = max(1, min(MAX_AUTO_QUEUE, context.samples // 2, context.samples - batch))
        return [f"method.queue_size auto: {self.queue_size} negative keys (half of the data's {context.samples} "
                f"distinct windows, at most {MAX_AUTO_QUEUE} and the windows a step's global batch leaves out)."]

    def queue_length(self) -> int:
        """The queue length to build (``auto`` before the data is known: the largest)."""
        return self.queue_size if isinstance(self.queue_size, int) else MAX_AUTO_QUEUE


@register_method
class MoCoV2(TwoViewMethod):
    """MoCo v2 over a :class:`ViTEncoder`: query encoder + head, momentum key encoder + head, negative queue."""

    name = "moco_v2"
    Settings = MoCoV2Settings
    settings: MoCoV2Settings
    compares_batch = False  # each query against its own key and the queue; no BatchNorm
    card = MethodCard(
        learns="to match each crop's key from a slowly moving encoder among thousands of queued negatives",
        cost="~2.5x (query pass with grad, key pass without); queue_size x proj_dim floats",
        failure_modes="a queue longer than the data holds a window's own keys as negatives; a low momentum makes "
                      "the queued keys inconsistent; embedding_std / collapse in metrics.csv",
        recipes=("recipes/moco_v2_sentinel2.yaml", "recipes/contrastive_ct.yaml"))

    def __init__(self, encoder_cfg: EncoderConfig, settings: MoCoV2Settings | MethodConfig | Mapping[str, Any] |
                 None = None, max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s = self.settings
        self.projector = moco_v2_projector(encoder_cfg.embed_dim, s.proj_hidden_dim, s.proj_dim)
        self.key_encoder = momentum_copy(self.encoder)
        self.key_projector = momentum_copy(self.projector)
        self.contrast = QueueInfoNCELoss(s.queue_length(), s.proj_dim, s.temperature)

    def momentum_pairs(self) -> list[MomentumPair]:
        return [(self.encoder, self.key_encoder), (self.projector, self.key_projector)]

    def momentum(self, step: int) -> float:
        """Constant ``method.momentum``."""
        m = self.settings.momentum
        return momentum_at(self.clock(step), m, self.clock.total, final=m)

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        x_q, x_k = self.two_views(batch)
        q = self.projector(self.represent(self.encoder, x_q))  # (B, P)
        with torch.no_grad():
            k = self.key_projector(self.represent(self.key_encoder, x_k))  # (B, P)
        loss = self.contrast(q, k, update=True)
        return MethodOutput(loss, {"contrastive_loss": loss.detach(), **self.monitor(q, step)})
