"""The callbacks of a pretraining run, in the order their hooks must run, and the previews it renders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from geomed_ssl.config import Recipe, spatial_dims
from geomed_ssl.data.catalog import Catalog
from geomed_ssl.data.stats import BandStats
from geomed_ssl.models.encoder import EncoderConfig
from geomed_ssl.train.callbacks import ExportEncoder, MetricsCSV, Previews
from geomed_ssl.train.checkpointing import RunCheckpoints, StopRequest
from geomed_ssl.train.console import ConsoleSettings, progress_callbacks
from geomed_ssl.train.run_log import WorkerRunLog
from geomed_ssl.views.builder import build_views
from geomed_ssl.views.datasets import PretrainDataset, collate


def knn_monitor(recipe: Recipe, stats: BandStats, enc_cfg: EncoderConfig) -> L.Callback | None:
    """The k-NN monitor of ``data.val_labels`` every ``data.knn_every`` steps (None: off)."""
    if not (recipe.data.val_labels and recipe.data.knn_every):
        return None
    from geomed_ssl.train.knn_monitor import KNNMonitor

    return KNNMonitor.from_folder(recipe.data.val_labels, recipe.data, stats, enc_cfg.patch_size,
                                  recipe.data.knn_every)


def run_callbacks(out: Path, recipe: Recipe, method: Any, catalog: Catalog, stats: BandStats,
                  enc_cfg: EncoderConfig, stop: StopRequest, progress: bool,
                  knn: L.Callback | None = None) -> list[L.Callback]:
    """Console, progress, metrics.csv, checkpoints, encoder export, previews and the k-NN monitor (each writes on
    rank 0 only), in the order their batch-end hooks must run: a step's metrics row before its checkpoint, so a kill
    between the two never leaves a checkpoint whose row is lost (a resume rewrites the rows after its step)."""
    t = recipe.train
    extra = {"method": recipe.method.name, "recipe": recipe.to_dict()}
    cbs: list[L.Callback] = [ConsoleSettings(), *progress_callbacks(progress, t.log_every),
                             MetricsCSV(out / "metrics.csv", t.log_every),
                             RunCheckpoints(out / "checkpoints", t.checkpoint_every, t.checkpoint_minutes, stop,
                                            t.keep_checkpoints),
                             ExportEncoder(out / "encoder", t.checkpoint_every, extra), WorkerRunLog(out)]
    if t.preview_every:
        identity = build_views("none", recipe.data, spatial_dims(recipe.data))
        plain = PretrainDataset(catalog, stats, recipe.data, identity, seed=t.seed + 1)
        renderer = ReconstructionPreview if method.reconstructs() else AttentionPreview
        cbs.append(Previews(out / "previews", t.preview_every, renderer(plain, enc_cfg)))
    if knn is not None:
        cbs.insert(next(i for i, c in enumerate(cbs) if isinstance(c, MetricsCSV)), knn)  # MetricsCSV writes knn_acc
    return cbs


class ReconstructionPreview:
    """For methods with ``reconstruct`` (MAE): a fixed batch of four un-augmented windows (from a dataset with the
    identity view), rendered by the method. A class, not a closure, so a spawned process can receive it."""

    def __init__(self, dataset: PretrainDataset, enc_cfg: EncoderConfig) -> None:
        self.batch = collate([dataset[i * 97] for i in range(4)])
        self.band_names, self.wavelengths = enc_cfg.band_names, enc_cfg.wavelengths

    def __call__(self, pl_module: L.LightningModule, step: int, path: Path) -> None:
        from geomed_ssl.viz.previews import render_reconstruction

        render_reconstruction(pl_module.method, self.batch, self.band_names, self.wavelengths, path)


class AttentionPreview:
    """For methods with no reconstruction (DINO): the exported encoder's last-layer CLS attention per head on one
    fixed un-augmented window."""

    def __init__(self, dataset: PretrainDataset, enc_cfg: EncoderConfig) -> None:
        self.image = dataset[0]["image"].numpy()  # (C, *S)
        self.band_names, self.wavelengths = enc_cfg.band_names, enc_cfg.wavelengths

    def __call__(self, pl_module: L.LightningModule, step: int, path: Path) -> None:
        from geomed_ssl.viz.attention import save_attention_png

        save_attention_png(pl_module.method.export_encoder(), self.image, self.band_names, self.wavelengths, path)
