"""One harness for every self-supervised method that compares views (contrastive, siamese, clustering): a
method plugs in with one row of ``HARNESS`` (tiny head sizes) and gets, through the CLI on generated GeoTIFFs and
NIfTIs: a loss that falls on rasters and on volumes, an exact ``--resume``, an exported encoder that ``embed`` and
``finetune classify`` accept, and a run that does not collapse.

A toy method is defined and registered in this module (``Toy``, ``method.name=toy``) and goes through the same
harness: a new method is one file.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from geomed_ssl.cli import app
from geomed_ssl.config import setting
from geomed_ssl.views.builder import ViewSpec
from geomed_ssl.methods import MethodCard, MethodOutput, MethodSettings, register_method
from geomed_ssl.methods.losses import nt_xent_loss
from geomed_ssl.methods.siamese import TwoViewMethod
from tests.conftest import TINY_BASE, BarCapture, write_class_folders

runner = CliRunner()


@dataclass
class ToySettings(MethodSettings):
    temperature: float = setting(0.2, "softmax temperature", bounds="> 0")


@register_method
class Toy(TwoViewMethod):
    """The smallest contrastive method: CLS -> one linear layer -> NT-Xent between the two crops."""

    name = "toy"
    Settings = ToySettings
    views = ViewSpec(crops=2)
    card = MethodCard(learns="a test method", recipes=())

    def __init__(self, encoder_cfg: Any, settings: Any = None, max_steps: int = 1000) -> None:
        super().__init__(encoder_cfg, settings, max_steps)
        self.head = nn.Linear(encoder_cfg.embed_dim, 16)

    def training_loss(self, batch: dict, step: int, generator: torch.Generator) -> MethodOutput:
        x1, x2 = self.two_views(batch)
        z1, z2 = self.head(self.represent(self.encoder, torch.cat([x1, x2]))).chunk(2)
        loss = nt_xent_loss(z1, z2, self.settings.temperature)
        return MethodOutput(loss, self.monitor(z1, step))


# one row per method: the --set values that make its heads tiny (everything else is TINY_BASE)
HARNESS: dict[str, list[str]] = {
    "toy": [],
    "simclr": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.temperature=0.2"],
    "moco_v2": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.momentum=0.99"],
    "moco_v3": ["method.proj_hidden_dim=32", "method.proj_dim=16"],
    "byol": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.momentum=0.99"],
    "simsiam": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.pred_hidden_dim=8"],
    "barlow_twins": ["method.proj_hidden_dim=32", "method.proj_dim=16"],
    "vicreg": ["method.proj_hidden_dim=32", "method.proj_dim=16"],
    # n_prototypes / memory_size stay auto: sized from the data and logged
    "swav": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.freeze_prototypes_steps=5",
             "data.n_local_crops=2"],
    "deepcluster": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.heads=2", "method.recluster_every=10",
                    "data.n_local_crops=2"],
    # prototypes no more than the batch (4 on volumes), which Sinkhorn shares them out of
    "msn": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.n_prototypes=4", "data.n_local_crops=2"],
}
# one window per read, so a batch holds different windows (8 crops of one 16 px image would be each other's
# negatives); milder intensity ops than the recipes' so that 40 tiny steps show the loss falling
COMMON = ["data.windows_per_read=1", "train.warmup_steps=3", "augment.jitter_p=0.5", "augment.gamma_p=0",
          "augment.blur_p=0", "augment.band_dropout_p=0"]
RASTER = [*COMMON, "data.sensor=null", "data.patch_size=16", "data.global_crop_size=16"]
VOLUME = [*COMMON, "data.patch_size=16", "train.batch_size=4", "train.base_lr=0.1"]  # the rasters' peak lr at batch 4
# the 6 volumes are 6 distinct windows and a batch of 4 holds most of them: MoCo v2's auto queue (3 keys) is then
# mostly the batch's own volumes, false negatives whose noise hides the trend in 30 steps; one queued key keeps the
# queue path exercised without that
# likewise 6 windows give DeepCluster 2 auto prototypes, and each k-means re-fit relabels them: one fit (at step 0)
# on volumes; the raster runs re-cluster every 10 steps, across the resume too
VOLUME_ONLY: dict[str, list[str]] = {"moco_v2": ["method.queue_size=1"], "deepcluster": ["method.recluster_every=30"]}
STEPS, VOLUME_STEPS, RESUME_AT = 40, 30, 30


def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def metrics(run: Path) -> dict[int, dict[str, float]]:
    with (run / "metrics.csv").open() as f:
        return {int(r["step"]): {k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)}


def pretrain(recipe: str, data: Path, out: Path, *extra: str, resume: bool = False) -> Any:
    args = ["pretrain", recipe, "--data", str(data), "--out", str(out)]
    result = runner.invoke(app, args + (["--resume"] if resume else []) + sets(*extra))
    assert result.exit_code == 0, result.output
    return result


def write_volumes(folder: Path, n: int = 6, size: int = 18) -> Path:
    """Single-channel NIfTI volumes, 1.5 mm voxels, each a plane-wave texture of its own direction and frequency
    (so crops of one volume look alike and differ from the others')."""
    import nibabel as nib

    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    grid = np.mgrid[0:size, 0:size, 0:size].astype(np.float32)
    for i in range(n):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        wave = np.sin((0.3 + 0.15 * i) * np.tensordot(direction, grid, axes=1) + rng.uniform(0, 6))
        vol = 400 + 100 * i + 200 * wave + rng.normal(0, 10, grid.shape[1:])
        nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([1.5, 1.5, 1.5, 1.0])),
                 str(folder / f"subject_{i}.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ssl_data")
    return {"classes": write_class_folders(root / "classes", ["water", "field", "forest"], per_class=4),
            "volumes": write_volumes(root / "volumes")}


@pytest.fixture(scope="module", params=list(HARNESS))
def method_runs(request, data, tmp_path_factory) -> dict[str, Any]:
    """One method through the harness: a raster run, its resumed copy from the middle, a volume run, embed and a
    linear probe on the exported encoder."""
    name, tiny = request.param, HARNESS[request.param]
    root = tmp_path_factory.mktemp(name)
    base = [*TINY_BASE, f"method.name={name}", *tiny]
    raster = root / "raster"
    pretrain("recipes/mae_sentinel2.yaml", data["classes"], raster, *base, *RASTER, f"train.max_steps={STEPS}",
             f"train.checkpoint_every={RESUME_AT}")
    resumed = root / "resumed"  # the run as a kill after the checkpoint of step RESUME_AT leaves it
    shutil.copytree(raster, resumed)
    (resumed / "checkpoints" / "last.ckpt").unlink()
    pretrain("recipes/mae_sentinel2.yaml", data["classes"], resumed, resume=True)
    volume = root / "volume"
    pretrain("recipes/mae_mri.yaml", data["volumes"], volume, *base, *VOLUME, *VOLUME_ONLY.get(name, []),
             f"train.max_steps={VOLUME_STEPS}",
             f"train.checkpoint_every={VOLUME_STEPS}")
    embed = runner.invoke(app, ["embed", str(raster), str(data["classes"]), "--out", str(root / "emb")])
    probe = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", str(raster),
                                "--data", str(data["classes"]), "--out", str(root / "probe"), "--labels-per-class",
                                "2", "--linear-probe", *sets("data.sensor=null", "data.patch_size=16",
                                                             "finetune.max_steps=5", "data.num_workers=0")])
    return {"name": name, "raster": raster, "resumed": resumed, "volume": volume, "embed": embed, "probe": probe,
            "emb_dir": root / "emb"}


def falls(curve: dict[int, dict[str, float]], n: int) -> tuple[float, float]:
    """Mean loss of steps 2..n+1 and of the last n (step 1 meets the initial state: MoCo's random queue)."""
    steps = sorted(curve)
    first = np.mean([curve[s]["loss"] for s in steps[1:n + 1]])
    last = np.mean([curve[s]["loss"] for s in steps[-n:]])
    return float(first), float(last)


def test_loss_falls_on_rasters(method_runs) -> None:
    first, last = falls(metrics(method_runs["raster"]), 8)
    assert last < first, (method_runs["name"], first, last)


def test_loss_falls_on_volumes(method_runs) -> None:
    curve = metrics(method_runs["volume"])
    assert sorted(curve) == list(range(1, VOLUME_STEPS + 1)) and all(np.isfinite(r["loss"]) for r in curve.values())
    first, last = falls(curve, 8)
    assert last < first, (method_runs["name"], first, last)


def test_resume_continues_the_same_loss_curve(method_runs) -> None:
    full, resumed = metrics(method_runs["raster"]), metrics(method_runs["resumed"])
    assert sorted(resumed) == list(range(1, STEPS + 1))
    later = range(RESUME_AT + 1, STEPS + 1)
    np.testing.assert_allclose([resumed[s]["loss"] for s in later], [full[s]["loss"] for s in later], rtol=0,
                               atol=1e-5)


def test_exported_encoder_is_accepted_by_embed_and_finetune(method_runs) -> None:
    assert method_runs["embed"].exit_code == 0, method_runs["embed"].output
    assert method_runs["probe"].exit_code == 0, method_runs["probe"].output
    vectors = np.load(method_runs["emb_dir"] / "vectors.npy")
    assert vectors.shape == (12, 32) and np.isfinite(vectors).all()


def test_embeddings_stay_spread_and_the_monitor_logs_them(method_runs) -> None:
    last = metrics(method_runs["raster"])[STEPS]
    assert last["collapse"] == 0.0 and last["embedding_std"] > 0


def test_forced_collapse_warns_in_the_log_and_the_progress_bar(data, tmp_path, monkeypatch, caplog) -> None:
    from geomed_ssl.train.pretrain import pretrain as run

    # every window represented by the same vector: the collapse a siamese method must not fall into
    monkeypatch.setattr(TwoViewMethod, "represent", staticmethod(lambda encoder, x: encoder(x)[:, 0] * 0))
    capture = BarCapture()
    overrides = [*TINY_BASE, *RASTER, "method.name=simsiam", *HARNESS["simsiam"], "train.max_steps=2",
                 "train.checkpoint_every=2"]
    run("recipes/mae_sentinel2.yaml", data["classes"], tmp_path / "run", overrides=overrides, progress=False,
        callbacks=capture.callbacks())
    assert any("simsiam collapse at step 0" in r.getMessage() for r in caplog.records)
    assert capture.bars and all(bar.get("collapse") == 1.0 for bar in capture.bars)
