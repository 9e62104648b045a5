"""k-NN monitor during pretraining: every N steps, the exported encoder's CLS features of a small labelled
folder-per-class set, scored by 5-fold weighted k-NN (k=20, T=0.07; DINO's ``eval_knn``). A cheap signal that the
representation improves (or does not) while the self-supervised loss alone says little."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch

from geomed_ssl.config import as_tuple
from geomed_ssl.bands.conform import conform_record
from geomed_ssl.windows.crops import centre_crop
from geomed_ssl.data.stats import BandStats
from geomed_ssl.data.labelled import ImageDataset, scan_class_folders
from geomed_ssl.models.knn import kfold_knn_accuracy

log = logging.getLogger("geomed_ssl")


@torch.no_grad()
def cls_features(encoder: torch.nn.Module, images: Sequence[np.ndarray], batch: int = 64) -> torch.Tensor:
    """CLS tokens (N, D) of normalised images (C, *S); consecutive images of one shape share a forward pass."""
    param = next(encoder.parameters())
    feats: list[torch.Tensor] = []
    i = 0
    while i < len(images):
        j = i + 1
        while j < len(images) and j - i < batch and images[j].shape == images[i].shape:
            j += 1
        x = torch.from_numpy(np.stack(images[i:j])).to(device=param.device, dtype=param.dtype)  # (b, C, *S)
        feats.append(encoder(x)[:, 0].float().cpu())  # (b, D)
        i = j
    return torch.cat(feats)


class KNNMonitor(L.Callback):
    """Logs ``knn_acc`` (5-fold weighted k-NN accuracy of the exported encoder's CLS features) every ``every``
    optimiser steps and at the last step: into ``pl_module.last_logs`` (metrics.csv) and ``self.log`` (progress bar,
    TensorBoard). Put it before :class:`MetricsCSV` in the callback list."""

    def __init__(self, dataset: ImageDataset, labels: np.ndarray, every: int, window: Sequence[int],
                 folds: int = 5, k: int = 20, temperature: float = 0.07):
        self.dataset, self.labels, self.every = dataset, np.asarray(labels), int(every)
        self.window, self.k, self.temperature = tuple(window), k, temperature
        self.folds = max(2, min(folds, len(self.labels)))
        self.done_step = -1
        self.history: list[tuple[int, float]] = []

    @classmethod
    def from_folder(cls, root: str | Path, data_cfg: Any, stats: BandStats, patch_size: Sequence[int], every: int,
                    window: Sequence[int] | None = None) -> KNNMonitor:
        """Scan ``root`` (one subfolder per class; ``~`` expanded, as for the data folder) with the run's ``data``
        settings; its bands must be the run's."""
        root = Path(root).expanduser()
        records, labels, names = scan_class_folders(root, data_cfg)
        records = [conform_record(r, list(stats.band_names), stats.wavelengths) for r in records]  # as every command
        log.info(f"k-NN monitor: {len(records)} labelled images in {len(names)} classes from {root}, "
                 f"every {every} steps")
        dataset = ImageDataset(records, labels, stats, data_cfg, patch_size)
        nd = len(tuple(patch_size))
        size = window if window is not None else as_tuple(data_cfg.patch_size, nd, "data.patch_size")
        size = [max(p, s // p * p) for s, p in zip(size, patch_size)]
        return cls(dataset, labels, every, size)

    def evaluate(self, encoder: torch.nn.Module) -> float:
        """The k-fold accuracy in [0, 1] of ``encoder``'s CLS features."""
        images = [centre_crop(self.dataset.image(i)[0], self.window) for i in range(len(self.dataset))]
        was_training = encoder.training
        encoder.eval()
        try:
            feats = cls_features(encoder, images)
        finally:
            encoder.train(was_training)
        return kfold_knn_accuracy(feats, torch.from_numpy(self.labels), folds=self.folds, k=self.k,
                                  T=self.temperature)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero:  # every rank holds the same teacher; rank 0 scores it
            return
        if step == 0 or step == self.done_step or (step % self.every and step != trainer.max_steps):
            return
        self.done_step = step
        acc = self.evaluate(pl_module.method.export_encoder())
        self.history.append((step, acc))
        if isinstance(getattr(pl_module, "last_logs", None), dict):
            pl_module.last_logs["knn_acc"] = acc
        pl_module.log("knn_acc", acc, prog_bar=True, on_step=True, on_epoch=False, batch_size=1)
        log.info(f"step {step}: k-NN accuracy {acc:.3f}")
