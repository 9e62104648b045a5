"""What every fine-tuning run shares: the encoder it starts from (pretrained, or the same architecture at random
initialisation) with its statistics, the inputs it reads, class weights, the data settings its model records, and
the Lightning fit (layer-wise lr decay, warmup + cosine). ``segment.py`` and ``classify.py`` build
their runs from these."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, SequentialSampler

from geomed_ssl.once import said_set
from geomed_ssl.checkpoint import load_encoder, read_encoder_config
from geomed_ssl.config import FinetuneConfig, Recipe, sets_key, spatial_dims
from geomed_ssl.cpus import fit_threads_to_quota
from geomed_ssl.data.catalog import Catalog
from geomed_ssl.data.stats import BandStats, compute_stats
from geomed_ssl.errors import ConfigError, DataError, GeomedError, RunStopped
from geomed_ssl.labels.sampling import LabelSelection
from geomed_ssl.models.cls_heads import layer_decay_groups
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
from geomed_ssl.models.model_data import (catalog_for_encoder, check_value_ranges, encoder_naming, export_data,
                                         training_scale, warn_other_scale)
from geomed_ssl.models.probe import check_class_weights
from geomed_ssl.outfiles import atomic_path
from geomed_ssl.train.callbacks import MetricsCSV
from geomed_ssl.train.checkpointing import stop_safe_worker_init
from geomed_ssl.train.console import has_bar, progress_callbacks, quiet_lightning
from geomed_ssl.config.lr_check import warn_schedule
from geomed_ssl.train.supervised import SupervisedModule
from geomed_ssl.train.trainer import (cluster_plugins, daemon_children, loader_workers, probe_trainer,
                                      resolve_precision, worker_death, worker_died)

log = logging.getLogger("geomed_ssl")


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced."""

    out_dir: Path
    metrics: dict[str, Any]
    selection: LabelSelection | None


RANDOM_INIT = "none (random initialisation)"  # what a random-init encoder says it came from (compare's per-seed ones)


def from_scratch(recipe: Recipe, encoder_path: str | Path | None) -> Recipe:
    """``recipe`` for fine-tuning ``encoder_path``: at random initialisation (``none``, or a random encoder saved as
    such, compare's ``encoder_none_seed<seed>``) with ``finetune.layer_decay`` 1, every block at the full rate, as
    networks trained from scratch are; layer-wise decay keeps a pretrained encoder's early blocks near what
    pretraining learned, and a random one's has nothing to keep (Indian Pines, 5 labels per class, a depth-3 ViT:
    random init fine-tuned 0.644 with decay 0.75, 0.686 without)."""
    if recipe.finetune.layer_decay == 1.0:
        return recipe
    if encoder_path is not None and str(encoder_path).lower() != "none":
        try:
            if read_encoder_config(encoder_path)[1].get("method") != RANDOM_INIT:
                return recipe
        except Exception:  # noqa: BLE001 - not an encoder export (a fine-tune folder, a bad path: said elsewhere)
            return recipe
    chosen = recipe.finetune.layer_decay != FinetuneConfig().layer_decay  # a value set on purpose: said under --quiet
    (log.warning if chosen else log.info)(
        "%srandom initialisation: every block trains at finetune.base_lr (finetune.layer_decay %s is for pretrained "
        "encoders)", "warning: " if chosen else "", recipe.finetune.layer_decay)
    return dataclasses.replace(recipe, finetune=dataclasses.replace(recipe.finetune, layer_decay=1.0))


def encoder_and_stats(encoder_path: str | Path | None, recipe: Recipe, catalog: Catalog,
                      ) -> tuple[ViTEncoder, BandStats, str, Catalog]:
    """The pretrained encoder with its statistics and the catalog read as it needs (bands picked and ordered by
    name: ``model_data.catalog_for_encoder``; values checked against the statistics), or — with ``none`` — the
    same architecture from the recipe at random initialisation, with statistics computed on the images."""
    if encoder_path is None or str(encoder_path).lower() == "none":
        stats = compute_stats(catalog, recipe.data, seed=recipe.labels.seed)
        cfg = EncoderConfig.from_recipe(recipe.model, recipe.data, len(catalog.band_names), catalog.band_names,
                                        catalog.wavelengths, stats.to_dict(), bandwidths=catalog.bandwidths,
                                        scale=training_scale(catalog.records, recipe.data.spacing))
        torch.manual_seed(recipe.train.seed)
        return ViTEncoder(cfg), stats, RANDOM_INIT, catalog
    cfg, meta = read_encoder_config(encoder_path)
    if cfg.stats is None:
        raise GeomedError(f"encoder '{encoder_path}' carries no normalisation statistics; re-export it with "
                          "`geomed-ssl pretrain`.")
    if cfg.spatial_dims != spatial_dims(recipe.data):
        raise ConfigError(f"encoder '{encoder_path}' is {cfg.spatial_dims}D but data.kind is "
                          f"'{recipe.data.kind}'.")
    try:
        catalog = catalog_for_encoder(cfg, catalog)
    except DataError as err:
        pretrained_on = export_data(meta)
        given, sensor = pretrained_on.get("wavelengths"), pretrained_on.get("sensor")
        if given and "another sensor's bands" in str(err):  # wavelengths the pretraining recipe set, not the files'
            raise DataError(f"{err} If these are the files it was pretrained on, whose wavelengths its recipe set "
                            f"(data.wavelengths {given}), give them again: --set \"data.wavelengths={given}\".") \
                from None
        if sensor and sensor != recipe.data.sensor and "another sensor's bands" in str(err):  # a shipped recipe's
            raise DataError(f"{err} This recipe reads bands named by position as data.sensor '{recipe.data.sensor}' "
                            f"would; the encoder was pretrained with data.sensor '{sensor}': if that is this data's "
                            f"sensor, --set data.sensor={sensor}.") from None
        raise
    encoder = load_encoder(encoder_path, bands=catalog.band_names, wavelengths=catalog.wavelengths,
                           bandwidths=catalog.bandwidths)
    stats = BandStats.from_dict(encoder.config.stats, source=f"encoder {encoder_path}")
    check_value_ranges(catalog.records, stats)
    warn_other_scale(catalog.records, cfg.scale, recipe.data.spacing, f"encoder '{encoder_path}'")
    encoder.config.scale = training_scale(catalog.records, recipe.data.spacing) or cfg.scale  # the model's own:
    return encoder.train(), stats, str(encoder_path), catalog  # predict and evaluate compare with the fine-tune data


def with_encoder_naming(recipe: Any, encoder: str | Path | None, overrides: Sequence[str] | None = None,
                        ) -> tuple[Any, dict[str, Any]]:
    """``recipe`` with the encoder's band naming and reading (:func:`encoder_naming`) for each key it and its
    ``--set`` values leave unset, and the keys taken. Without it a recipe of another run (a shipped one) names the
    bands of files without descriptions by its sensor's order, which need not be the encoder's, and reads its
    no-data fill as data (scored, and scored well). A sensor the recipe names is its own (cross-sensor fine-tuning
    of a wavelength encoder); where it reads the data as another sensor's bands, the refusal names the encoder's."""
    if encoder is None or str(encoder).lower() == "none":
        return recipe, {}
    taken = {k: v for k, v in encoder_naming(read_encoder_config(encoder)[1]).items()
             if getattr(recipe.data, k) is None and not sets_key(overrides, f"data.{k}")}
    if not taken:
        return recipe, {}
    return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, **taken)), taken


def data_meta(data: Any) -> dict[str, Any]:
    """The ``data`` settings a fine-tuned model's config.json records: how to read its inputs (volumes: spacing,
    intensity, CT window; nodata; stacked channels) and how to name their bands and pick a folder's files."""
    return {"kind": data.kind, "spacing": data.spacing, "intensity": data.intensity, "ct_window": data.ct_window,
            "nodata": data.nodata, "channels": data.channels, "sensor": data.sensor, "band_names": data.band_names,
            "wavelengths": data.wavelengths, "include": data.include, "exclude": data.exclude}


def class_weights_from_counts(counts: np.ndarray, mode: Any) -> torch.Tensor | None:
    """Loss weights from the training counts per class: null → none; "balanced" → inverse frequency (mean 1 over
    the classes present); a list → as given."""
    check_class_weights(mode, len(counts))
    if mode is None:
        return None
    k = len(counts)
    if mode == "balanced":
        counts = np.asarray(counts, float)
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / k, 0.0)
        return torch.tensor(w / w[w > 0].mean(), dtype=torch.float32)
    return torch.tensor([float(v) for v in mode], dtype=torch.float32)


def finetune_inputs(recipe: Any, encoder: str | Path | None, **paths: str | Path | None) -> dict[str, Any]:
    """What a fine-tune reads, by role, for the output-folder rule (``--out`` may not be or hold any of them)."""
    roles = {"images": "images folder", "labels": "labels", "data": "data folder"}
    inputs: dict[str, Any] = {roles[k]: v for k, v in paths.items()}
    inputs["encoder"] = None if encoder is None or str(encoder).lower() == "none" else encoder
    inputs["recipe"] = None if isinstance(recipe, Recipe) else recipe
    return inputs


def save_recipe(recipe: Recipe, path: Path) -> None:
    """``config.yaml``, complete or not at all."""
    with atomic_path(path) as tmp:
        recipe.save(tmp)


def seed_new_head(recipe: Recipe) -> None:
    """Seed torch from ``labels.seed`` before a head is built: its first weights must not depend on what ran
    earlier in this process (``compare`` runs many fine-tunes in one, and a resumed compare runs fewer)."""
    torch.manual_seed(recipe.labels.seed)


_ONE_DEVICE: set[tuple[str, str, int]] = said_set()  # the device settings said to apply to pretrain only


def check_trainer_settings(recipe: Recipe) -> None:
    """The Trainer :func:`fit_supervised` builds (this process, one device), tried before FT_DIR is made: a
    precision or accelerator Lightning refuses is one ``ConfigError``. Says so when the recipe asks for more
    devices (every head: the probes too)."""
    t = recipe.train
    asked = (str(t.devices), t.strategy, t.num_nodes)
    if (str(t.devices) not in ("1", "auto") or t.num_nodes != 1 or t.strategy != "auto") and asked not in _ONE_DEVICE:
        _ONE_DEVICE.add(asked)  # once per command: a compare runs many fine-tunes
        log.warning(f"fine-tuning runs in one process on one device; train.devices={t.devices}, "
                    f"train.strategy={t.strategy}, train.num_nodes={t.num_nodes} apply to pretrain only.")
    probe_trainer(recipe.train.accelerator, 1, "auto", 1, recipe.train.precision)


def fit_supervised(model: torch.nn.Module, dataset: Any, recipe: Recipe, num_classes: int, out: Path,
                   weights: torch.Tensor | None, input_key: str = "image", progress: bool = True) -> None:
    """Train with Lightning: layer-wise lr decay, warmup + cosine; in this process, on one device
    (``train.devices`` / ``strategy`` / ``num_nodes`` are for ``pretrain``)."""
    f, t = recipe.finetune, recipe.train
    quiet_lightning()
    L.seed_everything(recipe.labels.seed, workers=True, verbose=False)
    encoder = getattr(model, "encoder", None)
    if encoder is not None:
        encoder.requires_grad_(True)  # the module freezes per step; groups must hold every parameter
        groups = layer_decay_groups(model, encoder.config.depth, f.layer_decay, f.base_lr, f.weight_decay)
    else:
        groups = [{"params": list(model.parameters()), "lr": f.base_lr, "weight_decay": f.weight_decay}]
    warn_schedule(f.base_lr, f.warmup_steps, f.max_steps, "finetune")
    module = SupervisedModule(model, f, num_classes, groups, weights, input_key)
    workers = loader_workers(recipe.data.num_workers)
    loader = DataLoader(dataset, batch_size=f.batch_size, num_workers=workers,
                        sampler=SequentialSampler(range(f.max_steps * f.batch_size)), drop_last=True,
                        persistent_workers=workers > 0, worker_init_fn=stop_safe_worker_init if workers else None)
    cbs: list[L.Callback] = [*progress_callbacks(progress, t.log_every),
                             MetricsCSV(out / "metrics_train.csv", t.log_every)]  # no checkpoints: nothing resumes a
    # fine-tune (a stopped one starts again), and a ViT-B's optimiser state would be 3x its model, per kept fine-tune
    fit_threads_to_quota()  # from Python too, not only through the CLI (one process)
    trainer = L.Trainer(accelerator=t.accelerator, devices=1, strategy="auto", num_nodes=1,
                        precision=resolve_precision(t.precision, t.accelerator), max_steps=f.max_steps, max_epochs=-1,
                        gradient_clip_val=t.grad_clip, callbacks=cbs, logger=False, enable_progress_bar=has_bar(cbs),
                        enable_model_summary=False, num_sanity_val_steps=0, enable_checkpointing=False,
                        plugins=[*cluster_plugins()],
                        log_every_n_steps=min(t.log_every, f.max_steps))
    children = daemon_children()
    try:
        trainer.fit(module, train_dataloaders=loader)
    except SystemExit as stop:  # Lightning ends a SIGTERM (SIGTERMException) or a Ctrl-C (sys.exit(1)) this way
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        name = "SIGTERM" if isinstance(stop, SIGTERMException) else "SIGINT"
        raise RunStopped(name, f"fine-tuning stopped by {name} at step {trainer.global_step} of {f.max_steps}; "
                               f"'{out}' holds no model: run the same command again with --overwrite.") from None
    except RuntimeError as err:
        if not worker_died(err):
            raise
        raise worker_death(err, f"'{out}' holds no model: run the same command again with --overwrite.",
                           children) from None
    model.eval()


def no_model(out: Path) -> Callable[[str], str]:
    """The line of a fine-tune stopped (by the signal named) before its model was saved."""
    return lambda name: (f"fine-tuning stopped by {name} before its model was saved; '{out}' holds no model: run the "
                         "same command again with --overwrite.")


def not_evaluated(out: Path, data_args: Sequence[str]) -> Callable[[str], str]:
    """The line of a fine-tune stopped (by the signal named) during its final evaluation, the model saved:
    ``data_args`` are what ``evaluate`` takes to score it (``--images``, IMG_DIR, ... / ``--data``, DIR)."""
    import shlex

    command = shlex.join(["geomed-ssl", "evaluate", str(out), *map(str, data_args)])
    return lambda name: (f"fine-tuning stopped by {name} during its final evaluation: the model in '{out / 'model'}' "
                         f"is complete, its metrics.json is not written. `{command}` scores it on every labelled "
                         "sample it did not train on (its held-out test set too, and with a blocks or images split "
                         "or labels.test_fraction more than that); the finetune command again with --overwrite "
                         "trains it afresh and writes the fine-tune's own metrics.")
