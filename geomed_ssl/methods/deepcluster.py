"""DeepCluster-v2 (Caron et al., 2020, with SwAV): spherical k-means over a memory bank of recent embeddings gives
prototypes; every crop (multi-crop) is trained to predict the cluster of its window (cross-entropy at a
temperature against the prototypes), for ``heads`` independent clusterings.

Adaptation to a stream of random windows (no window is drawn twice, so there is no per-index label from the last
epoch): the memory bank is a FIFO of the last ``memory_size`` windows' L2-normalised global-crop embeddings (every
rank enqueues every rank's rows); every ``recluster_every`` steps k-means (``kmeans_iterations`` Lloyd rounds from
centroids drawn from the memory with the step's generator) re-fits each head's centroids on it and copies them into
that head's prototypes; a window's label for head ``h`` is the centroid nearest to its (detached) embedding of
global crop ``h % 2``. Until the memory holds ``n_prototypes`` windows no label exists and the loss is 0 (a global
batch of ``n_prototypes`` or more clusters at the first step). ``n_prototypes`` and ``memory_size`` default to
``auto`` (capped by the data, logged). The encoder is exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from geomed_ssl.config import MethodConfig, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodCard, MethodContext, MethodOutput, MethodSettings
from geomed_ssl.methods.clustering import MultiCropMethod, PrototypeSettings, check_prototypes
from geomed_ssl.methods.distributed import broadcast_, is_distributed
from geomed_ssl.methods.kmeans import assign, kmeans, sample_centroids
from geomed_ssl.methods.losses import IGNORE, deepcluster_loss
from geomed_ssl.methods.projection import Prototypes, swav_projector
from geomed_ssl.methods.queue import FeatureQueue
from geomed_ssl.methods.registry import register_method
from geomed_ssl.methods.siamese import needs_batch_of_two
from geomed_ssl.models.encoder import EncoderConfig

MAX_AUTO_MEMORY = 65536


@dataclass
class DeepClusterSettings(PrototypeSettings, MethodSettings):
    """The ``method:`` keys of ``name: deepcluster`` (defaults: DeepCluster-v2, sized for streams of windows)."""

    proj_hidden_dim: int = setting(2048, "projector hidden width", bounds=">= 1")
    proj_dim: int = setting(128, "embedding size clustered and scored against the prototypes", bounds=">= 1")
    n_prototypes: int | str = setting("auto", "clusters per head; auto: a quarter of the data's distinct windows, "
                                      "between 2 and 3000", bounds=">= 2", choices=("auto",))
    heads: int = setting(3, "independent k-means clusterings, each with its prototypes", bounds=">= 1")
    temperature: float = setting(0.1, "softmax temperature of the predictions", bounds="> 0")
    memory_size: int | str = setting("auto", "windows in the memory bank k-means runs on; auto: the data's distinct "
                                     "windows, at most 65536, at least n_prototypes", bounds=">= 2",
                                     choices=("auto",))
    recluster_every: int = setting(100, "steps between two k-means runs (DeepCluster-v2: once an epoch)",
                                   bounds=">= 1")
    kmeans_iterations: int = setting(10, "Lloyd iterations per k-means run", bounds=">= 1")

    def check(self, source: str, context: MethodContext) -> None:
        needs_batch_of_two(self, source, context, "deepcluster")
        check_prototypes(self.n_prototypes, source, context)
        if isinstance(self.memory_size, int):
            if isinstance(self.n_prototypes, int) and self.memory_size < self.n_prototypes:
                raise ConfigError(f"{source}: method.memory_size {self.memory_size} is smaller than "
                                  f"method.n_prototypes {self.n_prototypes}: k-means needs a window per cluster; "
                                  f"raise memory_size or use memory_size: auto.")
            if context.samples is not None and self.memory_size > context.samples:
                raise ConfigError(f"{source}: method.memory_size {self.memory_size} is longer than the data, which "
                                  f"holds {context.samples} distinct windows: windows would be clustered twice; use "
                                  f"memory_size: auto or at most {context.samples}.")

    def resolve_auto(self, context: MethodContext) -> list[str]:
        if context.samples is None:
            return []
        notes = self.resolve_prototypes(context)
        if self.memory_size == "auto":
            self.memory_size = max(self.prototype_count(), min(MAX_AUTO_MEMORY, context.samples))
            notes.append(f"method.memory_size auto: {self.memory_size} windows in the memory bank (the data's "
                         f"{context.samples} distinct windows, at most {MAX_AUTO_MEMORY}).")
        return notes

    def memory_length(self) -> int:
        """The memory bank to build (``auto`` before the data is known: the largest)."""
        return self.memory_size if isinstance(self.memory_size, int) else MAX_AUTO_MEMORY


@register_method
class DeepCluster(MultiCropMethod):
    """DeepCluster-v2 over a :class:`ViTEncoder`: projector, k-means prototypes per head, memory bank, multi-crop."""

    name = "deepcluster"
    Settings = DeepClusterSettings
    settings: DeepClusterSettings
    card = MethodCard(
        learns="to predict, from any crop, its window's k-means cluster over a memory bank of recent embeddings",
        cost="2x for the global crops + ~N/4x for N local crops at half size; k-means over the memory every "
             "recluster_every steps (memory x prototypes x kmeans_iterations x heads)",
        failure_modes="empty or giant clusters when the memory is small next to n_prototypes (use auto); labels "
                      "drift if recluster_every is long and lr high; embedding_std / collapse in metrics.csv",
        recipes=("recipes/deepcluster_sentinel2.yaml", "recipes/clustering_ct.yaml"))

    def __init__(self, encoder_cfg: EncoderConfig, settings: DeepClusterSettings | MethodConfig |
                 Mapping[str, Any] | None = None, max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        s = self.settings
        k = s.prototype_count()
        self.projector = swav_projector(encoder_cfg.embed_dim, s.proj_hidden_dim, s.proj_dim)
        self.prototypes = Prototypes(s.proj_dim, [k] * s.heads)
        self.memory = FeatureQueue(s.memory_length(), (2, s.proj_dim), init="empty")
        self.register_buffer("centroids", torch.zeros(s.heads, k, s.proj_dim))  # (H, K, P), k-means' last fit
        self.register_buffer("clustered_at", torch.tensor(-1, dtype=torch.long))  # step of that fit; -1: none

    @torch.no_grad()
    def recluster(self, step: int, generator: torch.Generator) -> None:
        """k-means on the memory for every head (head ``h`` on global crop ``h % 2``); centroids -> prototypes.
        Every rank holds the same memory and draws the same initial centroids; rank 0's fit is then given to all,
        since a GPU's ``index_add_`` sums in no fixed order and would round each rank's centroids differently."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        cpu = torch.Generator().manual_seed(seed)
        memory = self.memory.contents()  # (M, 2, P)
        for h in range(self.settings.heads):
            x = memory[:, h % 2]  # (M, P)
            init = sample_centroids(x, self.centroids.shape[1], cpu, distributed=is_distributed())
            centroids = kmeans(x, init, self.settings.kmeans_iterations, spherical=True).centroids.contiguous()
            if is_distributed():
                broadcast_(centroids, src=0)
            self.centroids[h].copy_(centroids)
            self.prototypes.set_(h, centroids)
        self.clustered_at.fill_(step)

    def before_optimizer_step(self, step: int) -> None:
        """Drop the prototypes' gradients at every step: they are the k-means centroids, changed only by
        :meth:`recluster` (the official DeepCluster-v2 freezes them for all its iterations), so no optimiser step or
        weight decay moves them off the centroids the labels come from."""
        for p in self.prototypes.parameters():
            p.grad = None

    def targets(self, z: Tensor) -> Tensor:
        """Labels (H, B) of the windows whose global-crop embeddings are ``z`` (2, B, P): the nearest centroid of
        head ``h`` to crop ``h % 2``; ``IGNORE`` everywhere before the first k-means."""
        if int(self.clustered_at) < 0:
            return torch.full((self.settings.heads, z.shape[1]), IGNORE, dtype=torch.long, device=z.device)
        return torch.stack([assign(z[h % 2].detach(), self.centroids[h]) for h in range(self.settings.heads)])

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        globals_, locals_ = self.crops(batch)
        z = self.embed(globals_, locals_)  # (2 + N, B, P)
        self.memory.enqueue(z[:2].detach().transpose(0, 1))  # (B, 2, P), every rank's rows
        last = int(self.clustered_at)
        due = last < 0 or (step - last >= self.settings.recluster_every and step != last)
        if due and len(self.memory) >= self.centroids.shape[1]:
            self.recluster(step, generator)
        labels = self.targets(z[:2])  # (H, B)
        loss = deepcluster_loss(self.prototypes(z), labels, self.settings.temperature)
        return MethodOutput(loss, {"cluster_loss": loss.detach(), **self.monitor(z[0], step)})
