"""``pretrain``: a folder of unlabeled files + a recipe → a run folder with checkpoints and an encoder export."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader, Sampler

from geomed_ssl.config import Recipe, apply_overrides, load_recipe, recipe_from_dict, spatial_dims, validate
from geomed_ssl.data.catalog import Catalog, scan
from geomed_ssl.data.datasets import PretrainDataset, collate
from geomed_ssl.data.stats import BandStats, compute_stats
from geomed_ssl.data.views import build_views
from geomed_ssl.errors import GeomedError
from geomed_ssl.methods import build_method, with_method_settings
from geomed_ssl.models.encoder import EncoderConfig
from geomed_ssl.outdirs import Inputs, check_out_dir, prepare_out_dir
from geomed_ssl.outfiles import atomic_path, atomic_write_text
from geomed_ssl.train.callbacks import ExportEncoder, MetricsCSV, Previews
from geomed_ssl.train.module import PretrainModule

log = logging.getLogger("geomed_ssl")


def quiet_lightning() -> None:
    """Lightning's start-up banners (GPU/TPU availability, tips) are noise for our users; warnings still show."""
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


@dataclass
class RunResult:
    """What a pretraining run produced."""

    run_dir: Path
    encoder_dir: Path
    steps: int
    catalog: Catalog


class StepOffsetSampler(Sampler[int]):
    """Indices of a stream that starts at the trainer's current step, so a resumed run reads the batches it missed.

    Micro-batch ``m`` of rank ``r`` takes indices ``(m * world + r) * batch + [0, batch)``; the dataset maps each
    index to a sample deterministically.
    """

    def __init__(self, batch_size: int, total_micro_batches: int, start: Callable[[], int], rank: int = 0,
                 world: int = 1):
        self.batch_size, self.total = batch_size, total_micro_batches
        self.start, self.rank, self.world = start, rank, world

    def __iter__(self) -> Iterator[int]:
        for m in range(self.start(), self.total):
            base = (m * self.world + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)

    def __len__(self) -> int:
        return self.total * self.batch_size


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: 32-bit on CPU (bf16 autocast is slower there), bf16-mixed on GPUs that support it, else 16-mixed."""
    if precision != "auto":
        return precision
    on_gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if not on_gpu:
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def prepare_run_dir(out: Path, resume: bool, overwrite: bool, inputs: Inputs | None = None,
                    create: bool = True) -> None:
    """RUN_DIR under the output-folder rule (:mod:`geomed_ssl.outdirs`): ``--resume`` continues a run of ours that
    has a checkpoint, ``--overwrite`` replaces one, anything else must be new or empty; ``create=False`` only
    checks (nothing is written)."""
    if resume and overwrite:
        raise GeomedError("--resume continues the run in --out and --overwrite replaces it; pass one of them.")
    kwargs = {"command": "pretrain", "inputs": inputs, "overwrite": overwrite, "resume": resume}
    check_out_dir(out, **kwargs)
    if resume and not (out / "checkpoints" / "last.ckpt").is_file():
        raise GeomedError(f"--resume: no checkpoint at {out / 'checkpoints' / 'last.ckpt'}; start the run without "
                          "--resume.")
    if create:
        prepare_out_dir(out, **kwargs)


def write_run_files(out: Path, recipe: Recipe, catalog: Catalog, stats: BandStats) -> None:
    """``config.yaml``, ``catalog.json`` and (unless a resumed run has it) ``stats.json``, each complete or not at
    all."""
    with atomic_path(out / "config.yaml") as tmp:
        recipe.save(tmp)
    atomic_write_text(out / "catalog.json", json.dumps(catalog.to_dict(), indent=1))
    if not (out / "stats.json").is_file():
        with atomic_path(out / "stats.json") as tmp:
            stats.save(tmp)


def pretrain(recipe: Recipe | str | Path | None, data_dir: str | Path, out_dir: str | Path, *, overrides: list[str] | None = None,
             resume: bool = False, overwrite: bool = False, strict: bool = False,
             callbacks: list[L.Callback] | None = None, progress: bool = True) -> RunResult:
    """Pretrain an encoder on the files under ``data_dir`` without labels; see ``docs/cli.md`` for the outputs."""
    out = Path(out_dir)
    inputs: dict[str, Any] = {"data folder": data_dir,
                              "recipe": None if isinstance(recipe, Recipe) or resume else recipe}
    prepare_run_dir(out, resume, overwrite, inputs, create=False)  # fail fast; RUN_DIR is made once all is valid
    if not resume:  # the whole recipe, the method's settings included, is checked before the run folder is made
        source = "recipe" if isinstance(recipe, Recipe) else str(recipe or "defaults")
        if isinstance(recipe, Recipe):
            validate(recipe, source)
        else:
            recipe = load_recipe(recipe, overrides)
        recipe = with_method_settings(recipe, source)
    if resume:  # the run continues with the recipe it was started with (plus any overrides, e.g. more steps)
        source = str(out / "config.yaml")
        saved = yaml.safe_load((out / "config.yaml").read_text())
        recipe = with_method_settings(recipe_from_dict(apply_overrides(saved, overrides, source), source), source,
                                      saved=True)
    inputs["kNN labels folder"] = recipe.data.val_labels

    catalog = scan(data_dir, recipe.data, strict=strict, names_by_position="error" if strict else "warn")
    log.info(catalog.summary())
    stats_path = out / "stats.json"
    if resume and stats_path.is_file():
        stats = BandStats.load(stats_path)
    else:
        stats = compute_stats(catalog, recipe.data, seed=recipe.train.seed)

    t = recipe.train
    quiet_lightning()
    L.seed_everything(t.seed, workers=True, verbose=False)
    enc_cfg = EncoderConfig.from_recipe(recipe.model, recipe.data, len(catalog.band_names), catalog.band_names,
                                        catalog.wavelengths, stats.to_dict(), bandwidths=catalog.bandwidths)
    method = build_method(recipe.method, enc_cfg, t.max_steps)
    view = build_views(method.view_kind, recipe.data, spatial_dims(recipe.data), patch_size=recipe.model.patch_size)
    dataset = PretrainDataset(catalog, stats, recipe.data, view, seed=t.seed)

    precision = resolve_precision(t.precision, t.accelerator)
    ckpt_dir = out / "checkpoints"
    extra = {"method": recipe.method.name, "recipe": recipe.to_dict()}
    checkpointer = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, filename="step-{step:06d}", auto_insert_metric_name=False, every_n_train_steps=t.checkpoint_every,
        save_top_k=-1, save_last=True, save_on_train_epoch_end=False,
    )
    cbs: list[L.Callback] = [checkpointer, MetricsCSV(out / "metrics.csv", t.log_every),
                             ExportEncoder(out / "encoder", t.checkpoint_every, extra)]
    if t.preview_every:
        plain = PretrainDataset(catalog, stats, recipe.data, build_views("none", recipe.data, spatial_dims(recipe.data)),
                                seed=t.seed + 1)
        renderer = preview_renderer if hasattr(method, "reconstruct") else attention_renderer
        cbs.append(Previews(out / "previews", t.preview_every, renderer(plain, enc_cfg)))
    if recipe.data.val_labels and recipe.data.knn_every:
        from geomed_ssl.train.knn_monitor import KNNMonitor

        cbs.insert(1, KNNMonitor.from_folder(recipe.data.val_labels, recipe.data, stats, enc_cfg.patch_size,
                                             recipe.data.knn_every))  # before MetricsCSV, which writes knn_acc
    if progress:
        cbs.append(L.pytorch.callbacks.TQDMProgressBar(refresh_rate=1))
    cbs += callbacks or []

    prepare_run_dir(out, resume, overwrite, inputs)
    write_run_files(out, recipe, catalog, stats)

    loggers = []
    try:
        import tensorboard  # noqa: F401

        loggers.append(L.pytorch.loggers.TensorBoardLogger(str(out), name="tensorboard", version=""))
    except ImportError:
        pass
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes, precision=precision,
        max_steps=t.max_steps, max_epochs=-1, gradient_clip_val=t.grad_clip, accumulate_grad_batches=t.accumulate_grad_batches,
        callbacks=cbs, logger=loggers or False, log_every_n_steps=min(t.log_every, t.max_steps), enable_progress_bar=progress,
        enable_model_summary=False, default_root_dir=str(out), num_sanity_val_steps=0,
        use_distributed_sampler=False, deterministic=False,
    )
    module = PretrainModule(method, recipe, effective_batch=t.batch_size * t.accumulate_grad_batches * trainer.world_size,
                            extra_state={"encoder": enc_cfg.to_dict(), "method": recipe.method.name})
    sampler = StepOffsetSampler(t.batch_size, t.max_steps * t.accumulate_grad_batches,
                                start=lambda: trainer.global_step * t.accumulate_grad_batches,
                                rank=trainer.global_rank, world=trainer.world_size)
    loader = DataLoader(dataset, batch_size=t.batch_size, sampler=sampler, num_workers=recipe.data.num_workers,
                        collate_fn=collate, persistent_workers=recipe.data.num_workers > 0, drop_last=True,
                        pin_memory=torch.cuda.is_available())
    ckpt_path = str(ckpt_dir / "last.ckpt") if resume else None
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path, weights_only=True)
    trainer.save_checkpoint(ckpt_dir / "last.ckpt")
    return RunResult(run_dir=out, encoder_dir=out / "encoder", steps=trainer.global_step, catalog=catalog)


def preview_renderer(dataset: PretrainDataset, enc_cfg: EncoderConfig) -> Callable:
    """A fixed batch of four un-augmented windows (from a dataset with the identity view), rendered by the
    method's ``reconstruct``."""
    from geomed_ssl.train.previews import render_reconstruction

    batch = collate([dataset[i * 97] for i in range(4)])

    def render(pl_module: L.LightningModule, step: int, path: Path) -> None:
        render_reconstruction(pl_module.method, batch, enc_cfg.band_names, enc_cfg.wavelengths, path)

    return render


def attention_renderer(dataset: PretrainDataset, enc_cfg: EncoderConfig) -> Callable:
    """For methods with no reconstruction (DINO): the exported encoder's last-layer CLS attention per head on one
    fixed un-augmented window."""
    from geomed_ssl.downstream.attention import save_attention_png

    image = dataset[0]["image"].numpy()  # (C, *S)

    def render(pl_module: L.LightningModule, step: int, path: Path) -> None:
        save_attention_png(pl_module.method.export_encoder(), image, enc_cfg.band_names, enc_cfg.wavelengths, path)

    return render
