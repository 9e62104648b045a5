"""Bad input, one table: each case builds its inputs in a fresh folder, runs one CLI command in-process, and must
exit with code 2, print one ``error:`` line containing the expected text (no traceback), and create, change or
delete nothing under that folder.

Each concern keeps its own list below (output folders, recipes, methods, exports, data); ``CASES`` joins them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from typer.testing import CliRunner

from geomed_ssl.cli import app
from tests.conftest import structured_raster, write_geotiff

runner = CliRunner()


@dataclass
class Case:
    """``setup(root)`` writes the inputs under ``root`` and returns the CLI arguments; ``message`` must appear in
    the error line."""

    id: str
    setup: Callable[[Path], list[str]]
    message: str


def rasters(root: Path, n: int = 2, bands: int = 4, size: int = 32) -> Path:
    """``n`` small structured GeoTIFFs in ``root/data``."""
    folder = root / "data"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        write_geotiff(folder / f"scene_{i}.tif", structured_raster(rng, bands, size))
    return folder


def recipe_file(root: Path, text: str) -> Path:
    path = root / "recipe.yaml"
    path.write_text(text)
    return path


# ---- output folders: refused before anything is created or deleted --------------------------------------------
def encoder(root: Path) -> Path:
    """A tiny encoder export (random weights, statistics of ``rasters(root)``) in ``root/enc``."""
    from tests.embeddings.test_extract import make_encoder

    return make_encoder(rasters(root), root / "enc")


def made_by_older_version(folder: Path, kind: str, foreign: str | None = None) -> Path:
    """A folder as an earlier version wrote it (no manifest; its own files say what it is), plus a ``foreign``
    file of the user's when given."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "run":  # every version's config.yaml holds these sections, every checkpoint our section
        import torch

        (folder / "config.yaml").write_text("data: {}\nmodel: {}\nmethod: {name: mae}\ntrain: {}\n")
        (folder / "checkpoints").mkdir()
        torch.save({"state_dict": {}, "geomed_ssl": {"method": "mae"}}, folder / "checkpoints" / "last.ckpt")
    elif kind == "finetune":
        (folder / "model").mkdir()
        (folder / "model" / "config.json").write_text(json.dumps({"format": "geomed-ssl-model"}))
        (folder / "metrics.json").write_text("{}")
    elif kind == "embed":
        (folder / "manifest.json").write_text(json.dumps({"format": "geomed-ssl-embeddings", "complete": True}))
    elif kind == "cluster":
        (folder / "summary.json").write_text(json.dumps({"method": "kmeans", "emb_dir": "/somewhere"}))
    if foreign:
        (folder / foreign).write_text("the user's own notes")
    return folder


def not_ours(root: Path) -> Path:
    """A folder of the user's (not made by geomed-ssl)."""
    folder = root / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    return folder


def other_tools_run(root: Path) -> Path:
    """Another tool's training run: a Lightning-CLI ``config.yaml`` and a checkpoint without our section."""
    import torch

    folder = root / "other"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("seed_everything: 0\ntrainer: {max_steps: 10}\nmodel: {lr: 0.1}\n")
    torch.save({"state_dict": {}, "global_step": 10}, folder / "checkpoints" / "last.ckpt")
    return folder


def users_png(root: Path) -> Path:
    """A figure of the user's."""
    path = root / "figure.png"
    path.write_bytes(b"\x89PNG the user's figure")
    return path


def pretrain_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(data), "--out", str(out), *extra]


def segment_args(root: Path, out: Path, *extra: str, enc: str = "none", labels: Path | None = None) -> list[str]:
    data = rasters(root)
    return ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", enc, "--images", str(data),
            "--labels", str(labels or data), "--out", str(out), *extra]


def class_folders(root: Path) -> Path:
    from tests.conftest import write_class_folders

    return write_class_folders(root / "classes", ["a", "b"], per_class=2)


def linked_data(root: Path) -> Path:
    """``root/link`` -> ``root/data``: the data folder reached through a symbolic link."""
    rasters(root)
    (root / "link").symlink_to(root / "data", target_is_directory=True)
    return root / "link"


def labels_csv(root: Path) -> Path:
    (root / "labels").mkdir()
    path = root / "labels" / "truth.csv"
    path.write_text("file,label\nscene_0.tif,a\n")
    return path


OUTDIR_CASES: list[Case] = [
    # pretrain
    Case("pretrain-out-is-the-data", lambda r: pretrain_args(rasters(r), rasters(r), "--overwrite"),
         "is the data folder"),
    Case("pretrain-out-inside-the-data", lambda r: pretrain_args(rasters(r), r / "data" / "run"),
         "lies inside the data folder"),
    Case("pretrain-out-contains-the-data", lambda r: pretrain_args(rasters(r), r, "--overwrite"),
         "contains the data folder"),
    Case("pretrain-out-inside-the-data-through-a-symlink", lambda r: pretrain_args(rasters(r), linked_data(r) / "run"),
         "lies inside the data folder"),
    Case("pretrain-overwrite-a-folder-not-ours", lambda r: pretrain_args(rasters(r), not_ours(r), "--overwrite"),
         "was not made by geomed-ssl"),
    Case("pretrain-out-under-a-file", lambda r: pretrain_args(rasters(r), users_png(r) / "run"),
         "figure.png', which is a file, not a folder"),
    Case("predict-out-under-a-file",
         lambda r: ["predict", str(predicting_model(r)), str(rasters(r)), "--out", str(users_png(r) / "p")],
         "figure.png', which is a file, not a folder"),
    Case("pretrain-resume-a-folder-not-ours", lambda r: pretrain_args(rasters(r), not_ours(r), "--resume"),
         "was not made by geomed-ssl"),
    Case("pretrain-overwrite-an-old-run-holding-a-foreign-file",
         lambda r: pretrain_args(rasters(r), made_by_older_version(r / "run", "run", "notes.txt"), "--overwrite"),
         "also holds 'notes.txt'"),
    Case("pretrain-overwrite-another-tools-run", lambda r: pretrain_args(rasters(r), other_tools_run(r), "--overwrite"),
         "was not made by geomed-ssl"),
    Case("pretrain-overwrite-a-folder-another-command-made",
         lambda r: pretrain_args(rasters(r), made_by_older_version(r / "emb", "embed"), "--overwrite"),
         "holds the output of `geomed-ssl embed`"),
    Case("pretrain-existing-run-without-a-flag",
         lambda r: pretrain_args(rasters(r), made_by_older_version(r / "run", "run")), "pass --resume"),
    Case("pretrain-out-is-a-file", lambda r: pretrain_args(rasters(r), recipe_file(r, "x: 1\n")), "is a file"),
    Case("pretrain-resume-and-overwrite-together",
         lambda r: pretrain_args(rasters(r), made_by_older_version(r / "run", "run"), "--resume", "--overwrite"),
         "pass one of them"),
    # finetune segment / classify
    Case("segment-out-is-the-images", lambda r: segment_args(r, r / "data", "--overwrite"), "is the images folder"),
    Case("segment-out-contains-the-labels",
         lambda r: segment_args(r, r / "labels", labels=labels_csv(r)), "contains the labels"),
    Case("segment-out-inside-the-encoder", lambda r: segment_args(r, encoder(r) / "ft", enc=str(r / "enc")),
         "lies inside the encoder"),
    Case("segment-overwrite-a-folder-not-ours", lambda r: segment_args(r, not_ours(r), "--overwrite"),
         "was not made by geomed-ssl"),
    Case("classify-out-inside-the-data",
         lambda r: ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", "none", "--data",
                    str(class_folders(r)), "--out", str(r / "classes" / "ft"), "--labels-per-class", "1"],
         "lies inside the data folder"),
    Case("classify-overwrite-an-old-fine-tune-holding-a-foreign-file",
         lambda r: ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", "none", "--data",
                    str(class_folders(r)), "--out", str(made_by_older_version(r / "ft", "finetune", "notes.txt")),
                    "--labels-per-class", "1", "--overwrite"],
         "also holds 'notes.txt'"),
    # embed
    Case("embed-out-is-the-data", lambda r: ["embed", str(encoder(r)), str(r / "data"), "--out", str(r / "data"),
                                             "--overwrite"], "is the data folder"),
    Case("embed-out-is-the-encoder", lambda r: ["embed", str(encoder(r)), str(r / "data"), "--out", str(r / "enc"),
                                                "--overwrite"], "is the encoder"),
    Case("embed-into-a-folder-not-ours", lambda r: ["embed", str(encoder(r)), str(r / "data"), "--out",
                                                    str(not_ours(r))], "was not made by geomed-ssl"),
    Case("embed-overwrite-a-folder-not-ours",
         lambda r: ["embed", str(encoder(r)), str(r / "data"), "--out", str(not_ours(r)), "--overwrite"],
         "was not made by geomed-ssl"),
    Case("embed-unknown-pool", lambda r: ["embed", str(encoder(r)), str(r / "data"), "--out", str(r / "emb"),
                                          "--pool", "max"], "pool (--pool) must be one of auto, cls, mean, got 'max'"),
    # cluster
    Case("cluster-out-is-the-embeddings",
         lambda r: ["cluster", str(made_by_older_version(r / "emb", "embed")), "--out", str(r / "emb"), "--overwrite"],
         "is the embedding folder"),
    Case("cluster-out-inside-the-embeddings",
         lambda r: ["cluster", str(made_by_older_version(r / "emb", "embed")), "--out", str(r / "emb" / "cl")],
         "lies inside the embedding folder"),
    Case("cluster-out-contains-the-labels",
         lambda r: ["cluster", str(made_by_older_version(r / "emb", "embed")), "--labels", str(labels_csv(r)),
                    "--out", str(r / "labels"), "--overwrite"], "contains the labels"),
    Case("cluster-overwrite-any-folder",
         lambda r: ["cluster", str(made_by_older_version(r / "emb", "embed")), "--out", str(not_ours(r)),
                    "--overwrite"], "was not made by geomed-ssl"),
    Case("cluster-overwrite-an-old-cluster-folder-holding-a-foreign-file",
         lambda r: ["cluster", str(made_by_older_version(r / "emb", "embed")), "--out",
                    str(made_by_older_version(r / "cl", "cluster", "notes.txt")), "--overwrite"],
         "also holds 'notes.txt'"),
    # predict, evaluate, similar: they add to a folder of their own, never to another
    Case("predict-out-inside-an-input-folder",
         lambda r: ["predict", str(made_by_older_version(r / "ft", "finetune")), str(rasters(r)), "--out",
                    str(r / "data" / "pred")], "lies inside the input"),
    Case("predict-out-contains-the-fine-tune",
         lambda r: ["predict", str(made_by_older_version(r / "ft", "finetune")), str(rasters(r) / "scene_0.tif"),
                    "--out", str(r)], "contains the fine-tune folder"),
    Case("predict-into-a-folder-not-ours",
         lambda r: ["predict", str(made_by_older_version(r / "ft", "finetune")), str(rasters(r)), "--out",
                    str(not_ours(r))], "was not made by geomed-ssl"),
    Case("evaluate-out-is-the-images",
         lambda r: ["evaluate", str(made_by_older_version(r / "ft", "finetune")), "--images", str(rasters(r)),
                    "--labels", str(r / "data"), "--out", str(r / "data")], "is the images folder"),
    Case("evaluate-out-is-the-fine-tune",
         lambda r: ["evaluate", str(made_by_older_version(r / "ft", "finetune")), "--images", str(rasters(r)),
                    "--labels", str(r / "data"), "--out", str(r / "ft")], "is the fine-tune folder"),
    Case("evaluate-images-and-class-folders",
         lambda r: ["evaluate", str(made_by_older_version(r / "ft", "finetune")), "--images", str(rasters(r)),
                    "--data", str(r / "data")], "classification), not both"),
    Case("embed-include-twice", lambda r: ["embed", str(encoder(r)), str(r / "data"), "--out", str(r / "emb"),
                                           "--include", "*.tif", "--set", "data.include=['a*']"],
         "with --include or with --set data.include=[...], not both"),
    Case("similar-out-inside-the-embeddings",
         lambda r: ["similar", str(made_by_older_version(r / "emb", "embed")), "--query",
                    str(rasters(r) / "scene_0.tif"), "--out", str(r / "emb" / "q")],
         "lies inside the embedding folder"),
    Case("similar-out-contains-the-query",
         lambda r: ["similar", str(made_by_older_version(r / "emb", "embed")), "--query",
                    str(rasters(r) / "scene_0.tif"), "--out", str(r / "data")], "contains the query file"),
    # attention: one PNG, never written over an input
    Case("attention-out-is-the-image",
         lambda r: ["attention", str(encoder(r)), str(r / "data" / "scene_0.tif"), "--out",
                    str(r / "data" / "scene_0.tif")], "is the image"),
    Case("attention-out-is-a-folder",
         lambda r: ["attention", str(encoder(r)), str(r / "data" / "scene_0.tif"), "--out", str(r / "data")],
         "is a folder"),
    Case("attention-out-replaces-a-users-png",
         lambda r: ["attention", str(encoder(r)), str(r / "data" / "scene_0.tif"), "--out", str(users_png(r))],
         "already exists, and outside a folder geomed-ssl made no file is replaced"),
    Case("attention-out-inside-the-encoder",
         lambda r: ["attention", str(encoder(r)), str(r / "data" / "scene_0.tif"), "--out", str(r / "enc" / "a.png")],
         "lies inside the encoder"),
    # demo: replaces only a folder it made
    Case("demo-into-a-folder-not-ours", lambda r: ["demo", "--out", str(not_ours(r))], "was not made by geomed-ssl"),
    Case("demo-into-a-pretraining-run", lambda r: ["demo", "--out", str(made_by_older_version(r / "run", "run"))],
         "holds the output of `geomed-ssl pretrain`"),
]


# ---- recipes and --set values: one line naming the key, the value and what is allowed ---------------------------
def pretrain_with(*sets: str, recipe: str = "recipes/mae_sentinel2.yaml") -> Callable[[Path], list[str]]:
    """``pretrain RECIPE`` on two small rasters with ``--set`` values."""
    return lambda r: ["pretrain", recipe, "--data", str(rasters(r)), "--out", str(r / "run"),
                      *[a for s in sets for a in ("--set", s)]]


def pretrain_recipe(text: str) -> Callable[[Path], list[str]]:
    """``pretrain`` of a recipe file holding ``text``."""
    return lambda r: ["pretrain", str(recipe_file(r, text)), "--data", str(rasters(r)), "--out", str(r / "run")]


def finetune_with(*sets: str) -> Callable[[Path], list[str]]:
    """``finetune classify`` (random init) on two class folders with ``--set`` values."""
    def setup(r: Path) -> list[str]:
        for name in ("a", "b"):
            rasters(r / "classes" / name, n=2)
        return ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", "none", "--data",
                str(r / "classes"), "--out", str(r / "ft"), "--labels-per-class", "1", *[a for s in sets for a in ("--set", s)]]
    return setup


def command(*args: str) -> Callable[[Path], list[str]]:
    """A command whose paths are given relative to the case folder (``{r}`` is replaced by it)."""
    return lambda r: [a.replace("{r}", str(r)) for a in args]


CONFIG_CASES: list[Case] = [
    Case("unknown-model-key", pretrain_with("model.depthh=3"), "model.depthh"),
    Case("max-steps-not-a-number", pretrain_with("train.max_steps=abc"),
         "train.max_steps must be an integer in [1, 1000000000], got 'abc'"),
    Case("num-heads-zero", pretrain_with("model.num_heads=0"), "model.num_heads must be an integer in [1, 256], got 0"),
    Case("embed-dim-a-word", pretrain_with("model.embed_dim=big"),
         "model.embed_dim must be an integer in [1, 8192], got 'big'"),
    Case("batch-size-fractional", pretrain_with("train.batch_size=2.5"),
         "train.batch_size must be an integer in [1, 1048576], got 2.5"),
    Case("batch-size-boolean", pretrain_with("train.batch_size=true"),
         "train.batch_size must be an integer in [1, 1048576], got true"),
    Case("depth-negative", pretrain_with("model.depth=-1"), "model.depth must be an integer in [1, 128], got -1"),
    Case("choice-misspelt", pretrain_with("data.kind=rastr"), "data.kind must be one of raster, volume, got 'rastr'"),
    Case("recipe-top-level-list", pretrain_recipe("- data\n- model\n"), "a recipe is a mapping of sections"),
    Case("section-not-a-mapping", pretrain_recipe("data: 5\n"),
         "section 'data' must be a mapping of key: value, got 5"),
    Case("finetune-max-steps-negative", finetune_with("finetune.max_steps=-3"),
         "finetune.max_steps must be an integer in [1, 1000000000], got -3"),
    Case("finetune-batch-size-zero", finetune_with("finetune.batch_size=0"),
         "finetune.batch_size must be an integer in [1, 1048576], got 0"),
    # the method's own settings, checked by the named method before the run folder exists
    Case("mask-ratio-zero", pretrain_with("method.mask_ratio=0"),
         "method.mask_ratio must be a number in (0, 1), got 0"),
    Case("mask-ratio-keeps-no-token",
         pretrain_with("method.mask_ratio=0.8", "data.patch_size=16", "model.patch_size=8"),
         "method.mask_ratio 0.8 hides every token of the 4 per window"),
    Case("method-unknown-key", pretrain_with("method.maskratio=0.5"),
         "unknown key 'method.maskratio'. Did you mean 'method.mask_ratio'? Valid keys for method 'mae': mask_ratio,"),
    Case("method-unknown-name", pretrain_with("method.name=simclrr"),
         "method.name 'simclrr' is unknown; available: barlow_twins, beit, byol, cae"),
    Case("mae-key-in-dino-recipe", pretrain_with("method.mask_ratio=0.5", recipe="recipes/dino_sentinel2.yaml"),
         "unknown key 'method.mask_ratio'. Did you mean 'method.ibot_mask_ratio'? Valid keys for method 'dino': "
         "out_dim,"),
    Case("dino-setting-out-of-range", pretrain_with("method.name=dino", "method.teacher_temp=0"),
         "method.teacher_temp must be a number > 0, got 0"),
    Case("decoder-heads-do-not-divide", pretrain_with("method.decoder_embed_dim=30", "method.decoder_num_heads=4"),
         "method.decoder_embed_dim (30) must be divisible by method.decoder_num_heads (4)"),
    Case("inspect-checks-method-settings",
         lambda r: ["inspect", str(rasters(r)), "--recipe", "recipes/mae_sentinel2.yaml", "--set", "method.foo=1"],
         "unknown key 'method.foo'"),
    # numeric command-line options: the same one-line message in every command
    Case("embed-batch-size-zero", command("embed", "{r}/enc", "{r}/data", "--out", "{r}/emb", "--batch-size", "0"),
         "--batch-size must be an integer >= 1, got 0"),
    Case("embed-min-valid-above-one", command("embed", "{r}/enc", "{r}/data", "--out", "{r}/emb", "--min-valid", "2"),
         "--min-valid must be a number in [0, 1], got 2.0"),
    Case("embed-pca-negative", command("embed", "{r}/enc", "{r}/data", "--out", "{r}/emb", "--pca", "-1"),
         "--pca must be an integer >= 0, got -1"),
    Case("predict-batch-size-zero", command("predict", "{r}/ft", "{r}/a.tif", "--out", "{r}/p", "--batch-size", "0"),
         "--batch-size must be an integer >= 1, got 0"),
    Case("predict-overlap-one", command("predict", "{r}/ft", "{r}/a.tif", "--out", "{r}/p", "--overlap", "1"),
         "--overlap must be a number in [0, 1), got 1.0"),
    Case("predict-band-names-trailing-comma", command("predict", "{r}/ft", "{r}/a.tif", "--out", "{r}/p",
                                                      "--band-names", "B02,B03,B04,"),
         "--band-names 'B02,B03,B04,': give a comma-separated list without empty entries"),
    Case("cluster-k-one", command("cluster", "{r}/emb", "--out", "{r}/c", "--k", "1"),
         "--k must be an integer >= 2, got 1"),
    Case("cluster-min-cluster-size-one", command("cluster", "{r}/emb", "--out", "{r}/c", "--method", "hdbscan",
                                                 "--min-cluster-size", "1"),
         "--min-cluster-size must be an integer >= 2, got 1"),
    Case("cluster-k-with-hdbscan", command("cluster", "{r}/emb", "--out", "{r}/c", "--method", "hdbscan", "--k", "5"),
         "--k is k-means' number of clusters; HDBSCAN finds its own number"),
    Case("cluster-min-cluster-size-with-kmeans", command("cluster", "{r}/emb", "--out", "{r}/c", "--min-cluster-size",
                                                         "5"),
         "--min-cluster-size is HDBSCAN's; k-means takes --k"),
    Case("similar-top-zero", command("similar", "{r}/emb", "--query", "{r}/a.tif", "--top", "0"),
         "--top must be an integer >= 1, got 0"),
    Case("finetune-labels-per-class-zero", command("finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder",
                                                   "none", "--data", "{r}", "--out", "{r}/ft", "--labels-per-class",
                                                   "0"),
         "--labels-per-class must be an integer >= 1, got 0"),
    Case("finetune-label-fraction-zero", command("finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder",
                                                 "none", "--images", "{r}", "--out", "{r}/ft", "--label-fraction", "0"),
         "--label-fraction must be a number in (0, 1], got 0.0"),
    Case("demo-steps-huge", command("demo", "--out", "{r}/demo", "--steps", "99999999999999999999"),
         "--steps must be an integer in [1, 1000000000]"),
    Case("demo-steps-zero", command("demo", "--out", "{r}/demo", "--steps", "0"),
         "--steps must be an integer in [1, 1000000000], got 0"),
]


# ---- the contrastive / siamese methods: refused before training, naming the fix -----------------------------------
METHOD_CASES: list[Case] = [
    Case("method-setting-of-another-method", pretrain_with("method.name=simclr", "method.queue_size=10"),
         "unknown key 'method.queue_size'. Valid keys for method 'simclr': temperature, proj_hidden_dim, proj_dim, "
         "proj_layers."),
    Case("queue-longer-than-the-data", pretrain_with("method.name=moco_v2", "method.queue_size=1000",
                                                     "data.sensor=null", "data.patch_size=16"),
         "method.queue_size 1000 is longer than the data, which holds 8 distinct windows"),
    Case("contrastive-batch-of-one", pretrain_with("method.name=simclr", "train.batch_size=1"),
         "method 'simclr' compares the windows of a batch (negatives, BatchNorm or statistics over the batch), so "
         "train.batch_size must be at least 2 per device, got 1."),
    Case("siamese-batch-of-one", pretrain_with("method.name=byol", "train.batch_size=1"),
         "train.batch_size must be at least 2 per device, got 1."),
    Case("views-do-not-fit-the-window", pretrain_with("method.name=simclr", "data.sensor=null", "data.patch_size=16",
                                                      "data.global_crop_size=32"),
         "data.global_crop_size [32, 32] does not fit in data.patch_size [16, 16]"),
    Case("spectral-shift-without-wavelengths", pretrain_with("method.name=simclr", "data.sensor=null",
                                                             "augment.spectral_shift_p=0.5"),
         "augment.spectral_shift_p needs every band's centre wavelength"),
    Case("augment-range-reversed", pretrain_with("augment.gamma=[1.5, 0.7]"),
         "augment.gamma must be [min, max] with min <= max, got [1.5, 0.7]"),
    Case("methods-unknown-name", command("methods", "simclrr"),
         "method 'simclrr' is unknown; available: barlow_twins, beit, byol"),
    Case("prototypes-above-the-data", pretrain_with("method.name=swav", "method.n_prototypes=100", "data.sensor=null",
                                                    "data.patch_size=16"),
         "method.n_prototypes 100 is more than the data's 8 distinct windows"),
    Case("memory-smaller-than-the-prototypes", pretrain_with("method.name=deepcluster", "method.n_prototypes=6",
                                                             "method.memory_size=4"),
         "method.memory_size 4 is smaller than method.n_prototypes 6: k-means needs a window per cluster"),
    Case("clustering-batch-of-one", pretrain_with("method.name=deepcluster", "train.batch_size=1"),
         "method 'deepcluster' compares the windows of a batch"),
]


# ---- exported encoders, models and checkpoints -------------------------------------------------------------------
def tiny_export(root: Path, encoder: dict | None = None, weights: str = "safetensors") -> Path:
    """A random-init 4-band encoder export of ``root/data``'s rasters in ``root/enc`` whose config.json encoder
    entries are then replaced by ``encoder``; ``weights="pickle"``: model.safetensors is a torch.save pickle."""
    import dataclasses
    import json

    import torch

    from geomed_ssl.checkpoint import save_encoder
    from geomed_ssl.config import DataConfig
    from geomed_ssl.data.stats import BandStats
    from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

    data = rasters(root)
    names = [f"B{i}" for i in range(1, 5)]
    stats = BandStats(names, [2000.0] * 4, [500.0] * 4, [1000.0] * 4, [3000.0] * 4, [100] * 4).to_dict()
    cfg = EncoderConfig(in_chans=4, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=2, num_heads=2,
                        band_names=names, stats=stats)
    out = save_encoder(ViTEncoder(cfg), root / "enc",
                       {"method": "mae", "recipe": {"data": dataclasses.asdict(DataConfig(band_names=names))}})
    meta = json.loads((out / "config.json").read_text())
    meta["encoder"].update(encoder or {})
    (out / "config.json").write_text(json.dumps(meta))
    if weights == "pickle":
        torch.save(ViTEncoder(cfg).state_dict(), out / "model.safetensors")
    elif weights == "nan":
        with_nan_weights(out)
    assert data.is_dir()
    return out


def with_nan_weights(folder: Path) -> Path:
    """``folder``'s model.safetensors with NaN in its first floating-point tensor, as a diverged run writes it."""
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(folder / "model.safetensors"))
    return folder


def embed_export(encoder: dict | None = None, weights: str = "safetensors") -> Callable[[Path], list[str]]:
    """``embed`` with a tampered export."""
    return lambda r: ["embed", str(tiny_export(r, encoder, weights)), str(r / "data"), "--out", str(r / "emb")]


def tiny_model(root: Path, head: dict | None = None) -> Path:
    """A random-init fine-tuned segmentation model in ``root/ft`` whose config.json head is updated by ``head``."""
    import json

    from geomed_ssl.checkpoint import save_model
    from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
    from geomed_ssl.models.seg_decoder import SegmentationModel

    cfg = EncoderConfig(in_chans=4, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=2, num_heads=2)
    model = SegmentationModel(ViTEncoder(cfg), 2, [0, 1], feature_size=8)
    meta = {"task": "segment", "classes": [{"name": "a", "value": 1}, {"name": "b", "value": 2}], "window": [16, 16],
            "head": {"kind": "unetr", "layers": [0, 1], "feature_size": 8}}
    save_model(model, root / "ft" / "model", meta)
    path = root / "ft" / "model" / "config.json"
    saved = json.loads(path.read_text())
    saved["head"].update(head or {})
    path.write_text(json.dumps(saved))
    return root / "ft"


def predicting_model(root: Path) -> Path:
    """A random-init fine-tuned segmentation model with statistics for 4 bands named band_1..band_4 (what
    ``rasters`` writes): ``root/ftp``, ready for ``predict`` / ``evaluate``."""
    from geomed_ssl.checkpoint import save_model
    from geomed_ssl.data.stats import BandStats
    from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
    from geomed_ssl.models.seg_decoder import SegmentationModel

    names = [f"band_{i}" for i in range(1, 5)]
    stats = BandStats(names, [1000.0] * 4, [300.0] * 4, [100.0] * 4, [3000.0] * 4, [100] * 4).to_dict()
    cfg = EncoderConfig(in_chans=4, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=2, num_heads=2,
                        band_names=names, stats=stats)
    meta = {"task": "segment", "classes": [{"name": "a", "value": 1}, {"name": "b", "value": 2}], "window": [16, 16],
            "head": {"kind": "unetr", "layers": [0, 1], "feature_size": 8}}
    save_model(SegmentationModel(ViTEncoder(cfg), 2, [0, 1], feature_size=8), root / "ftp" / "model", meta)
    return root / "ftp"


def truncated(path: Path) -> Path:
    """``path`` cut to half its bytes (a download or a write that stopped)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def constant_labels(root: Path, value: int, folder: str = "labels") -> Path:
    """Label rasters for ``rasters(root)`` holding ``value`` everywhere (1: one class; 0: nothing labelled)."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(2):
        write_geotiff(root / folder / f"scene_{i}_gt.tif", np.full((1, 32, 32), value, np.uint8))
    return root / folder


def two_class_labels(root: Path) -> Path:
    """Label rasters for ``rasters(root)``: class 1 on the left half, class 2 on the right."""
    labels = np.ones((1, 32, 32), np.uint8)
    labels[..., 16:] = 2
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(2):
        write_geotiff(root / "labels" / f"scene_{i}_gt.tif", labels)
    return root / "labels"


def make_ft_dir(root: Path, **kwargs) -> Path:
    from tests.inference.test_finetuned import make_ft_dir as make

    return make(root, **kwargs)


def volume_missing_a_channel(root: Path) -> list[str]:
    """A two-channel volume model given a one-channel NIfTI."""
    import nibabel as nib

    ft = make_ft_dir(root, kind="volume", bands=2)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32), np.eye(4)),
             str(root / "t1.nii.gz"))
    return ["predict", str(ft), str(root / "t1.nii.gz"), "--out", str(root / "p")]


def label_volume_of_no_grid(root: Path) -> list[str]:
    """A fine-tune whose second label volume has an sform of zeros: a ValueError traceback from its reorientation."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    (root / "lab").mkdir()
    for i in range(2):
        vol = rng.random((24, 24, 24)).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(root / "img" / f"c{i}.nii.gz"))
        label = nib.Nifti1Image((vol > 0.5).astype(np.uint8) + 1, np.eye(4))
        if i == 1:
            label.set_sform(np.zeros((4, 4)), code=1)
            label.set_qform(None, code=0)
        nib.save(label, str(root / "lab" / f"c{i}.nii.gz"))
    return ["finetune", "segment", "recipes/mae_ct.yaml", "--encoder", "none", "--images", str(root / "img"),
            "--labels", str(root / "lab"), "--out", str(root / "ft"), "--set", "data.patch_size=16", "--set",
            "data.spacing=null", "--set", "model.patch_size=8"]


BAD_INPUT_CASES: list[Case] = [
    Case("finetune-label-volume-affine-of-zeros", label_volume_of_no_grid,
         "c1.nii.gz' has an affine that maps no 3D grid"),
    Case("recipe-section-written-twice",
         pretrain_recipe("train:\n  batch_size: 8\nmodel:\n  depth: 2\ntrain:\n  base_lr: 0.1\n"),
         "'train' is written twice (lines 1 and 5)"),
    Case("recipe-empty", pretrain_recipe("\n"), "is empty"),
    Case("recipe-binary", lambda r: ["pretrain", str(_binary(r)), "--data", str(rasters(r)), "--out", str(r / "run")],
         "is not a text (YAML) file"),
    Case("set-invalid-yaml-is-one-line", pretrain_with("data.exclude=[a"), "the value is not valid YAML"),
    Case("segment-labels-of-one-class",
         lambda r: segment_args(r, r / "ft", "--labels-per-class", "2", "--set", "data.sensor=null",
                                labels=constant_labels(r, 1)), "the labels hold one class only"),
    Case("compare-labels-of-one-class",
         lambda r: compare_args(r, scene=(rasters(r), constant_labels(r, 1))), "the labels hold one class only"),
    Case("evaluate-labels-all-unlabelled",
         lambda r: ["evaluate", str(predicting_model(r)), "--images", str(rasters(r)), "--labels",
                    str(constant_labels(r, 0, "zeros")), "--out", str(r / "ev")], "no labelled pixels or voxels"),
    Case("similar-query-is-a-folder",
         lambda r: ["similar", str(embedded(r, rasters(r))), "--query", str(r / "data")], "is a folder"),
    Case("attention-image-is-a-folder",
         lambda r: ["attention", str(encoder(r)), str(r / "data"), "--out", str(r / "a.png")], "is a folder"),
    Case("predict-truncated-scene",
         lambda r: ["predict", str(predicting_model(r)), str(truncated(rasters(r) / "scene_0.tif")), "--out",
                    str(r / "p")],
         "cannot predict"),
    Case("cluster-truncated-vectors",
         lambda r: ["cluster", str(truncated(embedded(r, rasters(r)) / "vectors.npy").parent), "--out", str(r / "cl")],
         "cannot be read"),
    Case("cluster-min-cluster-size-above-the-rows",
         lambda r: ["cluster", str(embedded(r, rasters(r))), "--out", str(r / "cl"), "--method", "hdbscan",
                    "--min-cluster-size", "100000"], "is larger than the 2 rows clustered"),
    Case("predict-unknown-blend",
         lambda r: ["predict", str(predicting_model(r)), str(rasters(r)), "--out", str(r / "p"), "--blend", "gauss"],
         "--blend must be one of"),
    Case("predict-scene-missing-a-band-of-the-model",
         lambda r: ["predict", str(predicting_model(r)), str(rasters(r, bands=3)), "--out", str(r / "p")],
         "missing ['band_4']"),
    Case("predict-volume-missing-a-channel-of-the-model", volume_missing_a_channel, "missing ['band_2']"),
    Case("predict-classifier-images-missing-a-band",
         lambda r: ["predict", str(make_ft_dir(r, task="classify")), str(rasters(r, bands=3)), "--out", str(r / "p")],
         "missing ['band_4']"),
    Case("evaluate-scene-missing-a-band-of-the-model",
         lambda r: ["evaluate", str(predicting_model(r)), "--images", str(rasters(r, bands=3)), "--labels",
                    str(constant_labels(r, 1)), "--out", str(r / "ev")], "missing ['band_4']"),
]



def _binary(root: Path) -> Path:
    path = root / "recipe.yaml"
    path.write_bytes(b"\xce\xff\x00 not text")
    return path


EXPORT_CASES: list[Case] = [
    Case("export-embed-dim-huge", embed_export({"embed_dim": 131072}),
         "config.json: encoder.embed_dim must be an integer in [1, 8192], got 131072"),
    Case("export-depth-1e8", embed_export({"depth": 1e8}),
         "config.json: encoder.depth must be an integer in [1, 128], got 100000000.0"),
    Case("export-negative-dim", embed_export({"embed_dim": -32}),
         "config.json: encoder.embed_dim must be an integer in [1, 8192], got -32"),
    Case("export-string-dim", embed_export({"in_chans": "four"}),
         "config.json: encoder.in_chans must be an integer in [1, 4096], got 'four'"),
    Case("export-too-many-tokens", embed_export({"img_size": [4096, 4096]}), "gives 1048576 tokens, more than 65536"),
    Case("export-shapes-disagree-with-config", embed_export({"embed_dim": 64}),
         "model.safetensors does not match its config.json: tensor 'cls_token' has shape [1, 1, 32], the config "
         "describes [1, 1, 64]"),
    Case("export-pickle-renamed-safetensors", embed_export(weights="pickle"),
         "model.safetensors is not a readable safetensors file"),
    Case("export-nan-weights", embed_export(weights="nan"), "NaN or infinite value(s)"),
    Case("finetune-from-nan-weights",
         lambda r: ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder",
                    str(tiny_export(r, weights="nan")), "--images", str(r / "data"), "--labels",
                    str(two_class_labels(r)), "--out", str(r / "ft")], "NaN or infinite value(s)"),
    Case("predict-with-nan-weights",
         lambda r: ["predict", str(with_nan_weights(predicting_model(r) / "model").parent), str(rasters(r)), "--out",
                    str(r / "p")], "NaN or infinite value(s)"),
    Case("model-feature-size-huge",
         lambda r: ["predict", str(tiny_model(r, {"feature_size": 10 ** 9})), str(rasters(r)), "--out", str(r / "p")],
         "config.json: head.feature_size must be an integer in [1, 1024], got 1000000000"),
    Case("model-layers-not-integers",
         lambda r: ["predict", str(tiny_model(r, {"layers": ["a"]})), str(rasters(r)), "--out", str(r / "p")],
         "config.json: head.layers must be a list of integers, each >= 0, got ['a']"),
]


# ---- `export`: encoders with no equivalent in the asked format -------------------------------------------------
def encoder_run(root: Path, **cfg) -> Path:
    """``root/run/encoder``: an untrained encoder export (plain 2D, 4 bands, unless ``cfg`` says otherwise)."""
    from geomed_ssl.checkpoint import save_encoder
    from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

    args = {**dict(in_chans=4, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=1, num_heads=2), **cfg}
    save_encoder(ViTEncoder(EncoderConfig(**args)), root / "run" / "encoder")
    return root / "run"


TIMM_EXPORT_CASES: list[Case] = [
    Case("export-3d-encoder-to-timm",
         lambda r: ["export", str(encoder_run(r, spatial_dims=3, img_size=(16, 16, 16), patch_size=(8, 8, 8),
                                             embed_dim=36)), "--format", "timm", "--out", str(r / "timm")],
         "is a 3D (volume) encoder; timm has no 3D VisionTransformer, so it has no timm equivalent"),
    Case("export-spectral-encoder-to-timm",
         lambda r: ["export", str(encoder_run(r, embedding="spectral")), "--out", str(r / "timm")],
         "has a 'spectral' patch embedding, which has no timm equivalent"),
    Case("export-unknown-format",
         lambda r: ["export", str(encoder_run(r)), "--format", "onnx", "--out", str(r / "x")],
         "--format 'onnx' is unknown; available: timm"),
    Case("export-into-the-encoder-folder",
         lambda r: ["export", str(encoder_run(r)), "--out", str(r / "run"), "--overwrite"],
         "contains the encoder"),
]


# ---- data files, bands and labels ---------------------------------------------------------------------------------
def undescribed_s2(root: Path) -> Path:
    """Two 13-band GeoTIFFs without band descriptions (EuroSAT-like)."""
    return rasters(root, bands=13)


def described_rasters(root: Path, names: list[str], folder: str = "data") -> Path:
    """Two small GeoTIFFs whose bands carry the descriptions ``names``."""
    import rasterio

    data = root / folder
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        path = write_geotiff(data / f"scene_{i}.tif", structured_raster(rng, len(names), 32))
        with rasterio.open(path, "r+") as ds:
            for b, name in enumerate(names, start=1):
                ds.set_band_description(b, name)
    return data


def encoder_for_bands(root: Path, names: list[str]) -> Path:
    from tests.embeddings.test_extract import make_encoder

    return make_encoder(described_rasters(root, names, "train"), root / "encoder")


def embedded(root: Path, folder: Path) -> Path:
    """An image-level embedding folder of ``folder`` made with a tiny encoder of its own data."""
    from geomed_ssl.embeddings.extract import embed_folder
    from tests.embeddings.test_extract import make_encoder

    embed_folder(make_encoder(folder, root / "encoder"), folder, root / "emb", level="image", progress=False)
    return root / "emb"


def one_class_embeddings(root: Path) -> list[str]:
    from tests.conftest import write_class_folders

    classes = write_class_folders(root / "classes", ["Forest"], per_class=3)
    return ["cluster", str(embedded(root, classes)), "--labels", "folders", "--k", "2", "--out", str(root / "cl")]


def nifti_for_raster_model(root: Path) -> list[str]:
    import nibabel as nib

    from tests.inference.test_finetuned import make_ft_dir

    ft = make_ft_dir(root)
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.float32), np.eye(4)), str(root / "ct.nii.gz"))
    return ["predict", str(ft), str(root / "ct.nii.gz"), "--out", str(root / "pred")]


def nifti_for_raster_encoder(root: Path) -> list[str]:
    import nibabel as nib

    enc = encoder_for_bands(root, ["B02", "B03"])
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.float32), np.eye(4)), str(root / "ct.nii.gz"))
    return ["attention", str(enc), str(root / "ct.nii.gz"), "--out", str(root / "a.png")]


def volumes_for_a_raster_encoder(root: Path) -> list[str]:
    """finetune segment on NIfTI volumes with a 2D encoder: the encoder's sensor named the volumes' bands first, so
    the error was about the sensor profile's 13 bands, not the encoder's dimensionality."""
    import nibabel as nib

    enc = encoder_for_bands(root, ["B02", "B03"])
    (root / "vols").mkdir()
    vol = np.random.default_rng(0).random((24, 24, 24)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(root / "vols" / "t1.nii.gz"))
    nib.save(nib.Nifti1Image((vol > 0.5).astype(np.uint8) + 1, np.eye(4)), str(root / "vols" / "t1_seg.nii.gz"))
    return ["finetune", "segment", "recipes/mae_mri.yaml", "--encoder", str(enc), "--images", str(root / "vols"),
            "--labels", str(root / "vols"), "--out", str(root / "ft")]


def corrupt_file_for_classifier(root: Path) -> list[str]:
    from tests.inference.test_finetuned import make_ft_dir

    ft = make_ft_dir(root, task="classify")
    data = rasters(root)
    (data / "broken.tif").write_bytes(b"not a tiff")
    return ["predict", str(ft), str(data), "--out", str(root / "pred"), "--strict"]


DATA_CASES: list[Case] = [
    Case("band-names-by-position-under-strict",
         lambda r: ["inspect", str(undescribed_s2(r)), "--recipe", "recipes/mae_sentinel2.yaml", "--strict"],
         "assigned by position from sensor profile 'sentinel2'"),
    Case("embed-data-missing-a-band-of-the-encoder",
         lambda r: ["embed", str(encoder_for_bands(r, ["B02", "B03", "B04"])),
                    str(described_rasters(r, ["B03", "B02", "B11"])), "--out", str(r / "emb")],
         "missing ['B04']"),
    Case("labels-source-with-one-class", one_class_embeddings, "gives 1 class ('Forest')"),
    Case("similar-box-outside-the-file",
         lambda r: ["similar", str(embedded(r, rasters(r))), "--query", str(r / "data" / "scene_0.tif"),
                    "--box", "0,40,8,16"],
         "starts outside"),
    Case("nifti-given-to-a-raster-model", nifti_for_raster_model,
         "is a NIfTI volume but this model was trained on 2D GeoTIFF rasters"),
    Case("nifti-given-to-a-raster-encoder", nifti_for_raster_encoder,
         "is a NIfTI volume but encoder"),
    Case("volumes-fine-tuned-from-a-raster-encoder", volumes_for_a_raster_encoder,
         "is 2D (rasters) but data.kind is 'volume' (volumes are to be fine-tuned): give an encoder pretrained on "
         "volumes, or --encoder none."),
    Case("corrupt-file-for-a-classifier-under-strict", corrupt_file_for_classifier, "broken.tif"),
]


# ---- `compare`: budgets, names, encoders and labels, refused before the output folder exists -------------------
def labelled(root: Path, bands: int = 4, size: int = 32, label_size: int | None = None,
             names: list[str] | None = None) -> tuple[Path, Path]:
    """Two small scenes (``root/data``; band descriptions ``names`` if given) and label rasters in
    ``root/labels`` (``label_size`` pixels a side: another grid when it differs)."""
    data = described_rasters(root, names) if names else rasters(root, bands=bands, size=size)
    (root / "labels").mkdir()
    side = label_size or size
    for i in range(2):
        write_geotiff(root / "labels" / f"scene_{i}_gt.tif", (np.arange(side * side).reshape(1, side, side) % 3 + 1)
                      .astype(np.uint8))
    return data, root / "labels"


def compare_args(root: Path, *extra: str, enc: str = "none", scene: tuple[Path, Path] | None = None) -> list[str]:
    data, labels = scene or labelled(root)
    return ["compare", enc, "--recipe", "recipes/mae_sentinel2.yaml", "--images", str(data), "--labels", str(labels),
            "--out", str(root / "cmp"), "--set", "data.sensor=null", *extra]


COMPARE_CASES: list[Case] = [
    Case("compare-budget-zero", lambda r: compare_args(r, "--labels-per-class", "0,5"), "got '0'"),
    Case("compare-budget-negative", lambda r: compare_args(r, "--labels-per-class=-2,5"), "got '-2'"),
    Case("compare-budget-not-a-number", lambda r: compare_args(r, "--labels-per-class", "1,five"), "got 'five'"),
    Case("compare-fraction-above-one", lambda r: compare_args(r, "--label-fraction", "0.1,1.5"), "got '1.5'"),
    Case("compare-both-budget-kinds", lambda r: compare_args(r, "--labels-per-class", "5", "--label-fraction", "0.1"),
         "not both"),
    Case("compare-empty-budget-list", lambda r: compare_args(r, "--labels-per-class", "1,,5"), "without empty"),
    Case("compare-unknown-protocol", lambda r: compare_args(r, "--protocol", "linear,svm"), "unknown name 'svm'"),
    Case("compare-unknown-baseline", lambda r: compare_args(r, "--baselines", "rf,xgboost"), "unknown name 'xgboost'"),
    Case("compare-band-stats-for-segmentation", lambda r: compare_args(r, "--baselines", "band_stats"),
         "applies to classification"),
    Case("compare-encoder-missing-a-band-of-the-data",
         lambda r: compare_args(r, enc=str(encoder_for_bands(r, ["B02", "B03", "B04"])),
                                scene=labelled(r, names=["B03", "B02", "B11"])), "missing ['B04']"),
    Case("compare-label-map-on-another-grid", lambda r: compare_args(r, scene=labelled(r, label_size=24)),
         "is not on the pixel grid"),
    Case("compare-images-and-class-folders", lambda r: [*compare_args(r), "--data", str(class_folders(r))],
         "one of the two"),
    Case("compare-out-is-the-images", lambda r: [*compare_args(r), "--out", str(r / "data")],
         "is the images folder"),
    Case("compare-encoder-is-an-image-file",
         lambda r: ["compare", str(rasters(r) / "scene_0.tif"), "--images", str(r / "data"), "--labels",
                    str(constant_labels(r, 1)), "--out", str(r / "cmp")], "is a file, not a folder"),
    Case("compare-no-recipe-for-none", lambda r: [a for a in compare_args(r) if a not in
                                                  ("--recipe", "recipes/mae_sentinel2.yaml")], "--recipe"),
]


# ---- training processes, checkpoints and resume ----------------------------------------------------------------
class Pickled:
    """Any class: a checkpoint holding one is refused by ``torch.load(weights_only=True)``."""


def stopped_run(root: Path, last_ckpt: object | None = None) -> Path:
    """A run folder as a run stopped early leaves it: its manifest, config.yaml and checkpoints/ (with
    ``last_ckpt``)."""
    import torch

    from geomed_ssl.config import load_recipe
    from geomed_ssl.outdirs import write_manifest

    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    write_manifest(run, "pretrain")
    load_recipe("recipes/mae_sentinel2.yaml", ["data.sensor=null"]).save(run / "config.yaml")
    if last_ckpt is not None:
        torch.save(last_ckpt, run / "checkpoints" / "last.ckpt")
    return run


def broken_config(run: Path) -> Path:
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "train: {max_steps: 5}\n")
    return run


def resume_args(root: Path, run: Path) -> list[str]:
    return ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(rasters(root)), "--out", str(run), "--resume"]


TRAINING_CASES: list[Case] = [
    Case("resume-without-checkpoint-names-the-way-out",
         lambda r: resume_args(r, stopped_run(r)), "Start it again with --overwrite"),
    Case("resume-with-a-section-written-twice",  # a hand-edited config.yaml is read as recipes are, never guessed
         lambda r: resume_args(r, broken_config(stopped_run(r))), "config.yaml' is not valid YAML"),
    Case("resume-from-pickled-last-ckpt",
         lambda r: resume_args(r, stopped_run(r, {"state_dict": {}, "geomed_ssl": {}, "obj": Pickled()})),
         "pickled Python objects, which are never loaded"),
    Case("unknown-train-strategy",
         lambda r: ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(rasters(r)), "--out", str(r / "run"),
                    "--set", "train.strategy=ddp_sideways"], "train.accelerator / devices / strategy"),
    Case("strategy-that-writes-from-every-rank", pretrain_with("data.sensor=null", "train.strategy=deepspeed"),
         "train.strategy 'deepspeed' is not supported: checkpoints and exports are written by rank 0 alone"),
    # every Trainer setting Lightning can refuse is tried before the run folder exists (data.sensor=null: data that
    # is fine, so only the setting can fail)
    Case("precision-whose-package-is-missing", pretrain_with("data.sensor=null", "train.precision=transformer-engine"),
         "train.accelerator / devices / strategy / num_nodes / precision"),
    Case("accelerator-whose-package-is-missing", pretrain_with("data.sensor=null", "train.accelerator=tpu"),
         "train.accelerator / devices / strategy / num_nodes / precision"),
    Case("accelerator-lightning-does-not-have", pretrain_with("data.sensor=null", "train.accelerator=hpu"),
         "train.accelerator must be one of auto, cpu, gpu, cuda, mps, tpu, got 'hpu'"),
    Case("finetune-precision-whose-package-is-missing", finetune_with("data.sensor=null", "train.precision=transformer-engine"),
         "train.accelerator / devices / strategy / num_nodes / precision"),
    # seeds numpy / Lightning accept, step counts whose arithmetic fits 64 bits
    Case("seed-above-32-bits", pretrain_with("data.sensor=null", "train.seed=4294967296"),
         "train.seed must be an integer in [0, 4294967295], got 4294967296"),
    Case("labels-seed-above-32-bits", finetune_with("data.sensor=null", "labels.seed=4294967296"),
         "labels.seed must be an integer in [0, 4294967295], got 4294967296"),
    Case("max-steps-astronomical", pretrain_with("data.sensor=null", "train.max_steps=1e300"),
         "train.max_steps must be an integer in [1, 1000000000], got '1e300'"),
    Case("finetune-max-steps-astronomical", finetune_with("data.sensor=null", "finetune.max_steps=1e300"),
         "finetune.max_steps must be an integer in [1, 1000000000]"),
    Case("batch-size-astronomical", pretrain_with("data.sensor=null", "train.batch_size=1e30"),
         "train.batch_size must be an integer in [1, 1048576]"),
    Case("negative-checkpoint-minutes",
         lambda r: ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(rasters(r)), "--out", str(r / "run"),
                    "--set", "train.checkpoint_minutes=-1"], "train.checkpoint_minutes"),
]


HS = "recipes/mae_hyperspectral.yaml"  # method vicreg_dense: two crops at a known offset
DENSE_CASES: list[Case] = [
    Case("dense-crops-and-shift-overflow-the-window",
         pretrain_with("data.patch_size=20", "data.global_crop_size=18", recipe=HS),
         "data.patch_size [20, 20] cannot hold two [18, 18] crops shifted by up to 8 px (method.max_shift)"),
    Case("dense-shift-not-smaller-than-the-crop",
         pretrain_with("data.patch_size=48", "data.global_crop_size=16", "method.max_shift=16", recipe=HS),
         "data.global_crop_size [16, 16] must exceed the crop shift 16 px"),
    Case("dense-crop-not-whole-tokens", pretrain_with("data.global_crop_size=31", recipe=HS),
         "data.global_crop_size [31, 31] is not a multiple of model.patch_size [2, 2]"),
    Case("dense-negative-global-weight", pretrain_with("method.global_weight=-1", recipe=HS),
         "method.global_weight must be a number >= 0, got -1"),
    # model.tokens_per_position / group_width (the pooled spectral tokens the recipe's header recommends)
    Case("tokens-per-position-zero", pretrain_with("model.tokens_per_position=0", recipe=HS),
         "model.tokens_per_position must be null or an integer in [1, 256], got 0"),
    Case("several-tokens-per-position-on-plain", pretrain_with("model.tokens_per_position=2", recipe=HS),
         "model.tokens_per_position 2 needs model.embedding=grouped or spectral ('plain' gives one"),
    Case("more-pooled-tokens-than-band-groups",  # 4 bands, 2 per group: 2 groups to pool into 3 tokens
         pretrain_with("model.embedding=grouped", "model.group_width=2", "model.tokens_per_position=3", recipe=HS),
         "model.tokens_per_position 3 is more than the 2 band groups / chunks per position"),
    Case("mae-with-two-pooled-tokens", pretrain_with("model.embedding=spectral", "model.tokens_per_position=2"),
         "method mae predicts each band group's / chunk's bands from its own token, or every band from one token"),
]


# ---- masked-image-modelling variants and pretext tasks (issue 14): refused before training --------------------
def volumes(root: Path) -> Path:
    """Two 32^3 single-channel NIfTI volumes in ``root/vol``."""
    import nibabel as nib

    folder = root / "vol"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        nib.save(nib.Nifti1Image(rng.normal(500, 50, (32, 32, 32)).astype(np.float32), np.eye(4)),
                 str(folder / f"v{i}.nii.gz"))
    return folder


def pretrain_volumes_with(*sets: str) -> Callable[[Path], list[str]]:
    return lambda r: ["pretrain", "recipes/mae_mri.yaml", "--data", str(volumes(r)), "--out", str(r / "run"),
                      "--set", "data.patch_size=16", "--set", "model.patch_size=4",
                      *[a for s in sets for a in ("--set", s)]]


def single_band_rasters_with(*sets: str) -> Callable[[Path], list[str]]:
    return lambda r: ["pretrain", "recipes/pretext_sentinel2.yaml", "--data", str(rasters(r, bands=1)), "--out",
                      str(r / "run"), "--set", "data.sensor=null", *[a for s in sets for a in ("--set", s)]]


PRETEXT_CASES: list[Case] = [
    Case("simmim-mask-patch-not-dividing-the-window",
         pretrain_with("method.name=simmim", "method.mask_patch_size=24"),
         "method.mask_patch_size (24, 24) does not divide the window (64, 64)"),
    Case("jigsaw-grid-larger-than-the-window",
         pretrain_with("method.name=jigsaw", "method.grid=4", "data.patch_size=3", "model.patch_size=1"),
         "jigsaw grid 4x4 is larger than the (3, 3) window"),
    Case("cross-band-split-leaves-a-side-empty",
         pretrain_with("method.name=cross_band", "method.bands_a=[0,1,2,3]", "data.sensor=null"),
         "cross_band split leaves group B empty"),
    Case("cross-band-on-single-band-data", single_band_rasters_with(),
         "cross_band needs at least 2 bands (one to see, one to predict); the data has 1"),
    Case("beit-codebook-larger-than-the-patches",
         pretrain_with("method.name=beit", "method.codebook_size=100000", "data.sensor=null"),
         "method.codebook_size=100000 is larger than the"),
    Case("jigsaw-on-volumes", pretrain_volumes_with("method.name=jigsaw"), "method 'jigsaw' is 2D-only"),
    Case("context-on-volumes", pretrain_volumes_with("method.name=context"), "method 'context' is 2D-only"),
    Case("cae-with-grouped-tokens", pretrain_with("method.name=cae", "model.embedding=grouped", "data.sensor=null"),
         "method 'cae' needs one token per position"),
]


CASES = (OUTDIR_CASES + CONFIG_CASES + METHOD_CASES + DENSE_CASES + PRETEXT_CASES + EXPORT_CASES + TIMM_EXPORT_CASES
         + DATA_CASES + COMPARE_CASES + TRAINING_CASES + BAD_INPUT_CASES)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime (ns)."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_exit_2_and_touches_nothing(case: Case, tmp_path: Path) -> None:
    root = tmp_path / "case"
    root.mkdir()
    args = case.setup(root)
    before = snapshot(root)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert case.message in errors[0], result.output
    assert snapshot(root) == before, "the command created, changed or deleted files"


@pytest.mark.parametrize("err", [PermissionError(13, "Permission denied", "/data/runs/x"),
                                 OSError(30, "Read-only file system", "/mnt/ro/x"),
                                 OSError(30, "Read-only file system", "/mnt/ro/.partial-77.0a1b2c3d-x")])
def test_a_folder_the_user_cannot_write_is_one_line_not_a_traceback(monkeypatch, tmp_path: Path,
                                                                    err: OSError) -> None:
    """As root (these tests) chmod does not stop a write, so the refusal is played by the folder set-up."""
    import geomed_ssl.train.pretrain as pretrain_mod

    def refuse(*args: object, **kwargs: object) -> None:
        raise err

    monkeypatch.setattr(pretrain_mod, "prepare_run_dir", refuse)
    result = runner.invoke(app, pretrain_args(rasters(tmp_path), tmp_path / "run", "--set", "train.max_steps=1"))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    named = err.filename.replace(".partial-77.0a1b2c3d-", "")  # the file asked for, not its temporary name
    assert len(errors) == 1 and f"cannot write '{named}'" in errors[0] and err.strerror in errors[0]


def test_inspect_takes_one_file_too(tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(rasters(tmp_path) / "scene_0.tif")])
    assert result.exit_code == 0, result.output
    assert "1 usable raster file" in result.output and "does not exist" not in result.output


def test_a_ctrl_c_while_python_shuts_down_after_a_command_ends_it_without_a_traceback(tmp_path: Path) -> None:
    """A library's exit hook still running (data-loader workers joined) when the user presses Ctrl-C: the console
    script ends at once with 130, where Python printed a KeyboardInterrupt traceback from inside the hook."""
    import subprocess
    import sys

    script = tmp_path / "console.py"
    script.write_text("import atexit, os, signal, sys, time\nfrom geomed_ssl.cli import run\n"
                      "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(5)))\n"
                      f"sys.argv = ['geomed-ssl', 'inspect', {str(rasters(tmp_path))!r}]\nrun()\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert "2 usable raster files" in done.stdout  # the command itself ran to its end


def test_damaged_files_of_our_own_folders_are_one_line_naming_them(tmp_path: Path) -> None:
    """An embedding table, a results.csv or a compare.json overwritten by garbage (a full disk, a bad copy)."""
    from geomed_ssl.compare.results import read_rows
    from geomed_ssl.compare.run import _check_resumed
    from geomed_ssl.config import load_recipe
    from geomed_ssl.embeddings.store import read_columns
    from geomed_ssl.errors import GeomedError

    garbage = bytes(range(256)) * 4
    (tmp_path / "embeddings.parquet").write_bytes(garbage)
    with pytest.raises(GeomedError, match=r"embeddings.parquet' cannot be read .*re-run the embedding"):
        read_columns(tmp_path, ["file"])
    (tmp_path / "results.csv").write_bytes(garbage)
    with pytest.raises(GeomedError, match=r"results.csv' is damaged .*--overwrite"):
        read_rows(tmp_path / "results.csv")
    (tmp_path / "compare.json").write_text("{x")
    with pytest.raises(GeomedError, match=r"compare.json' is damaged"):
        _check_resumed(tmp_path, load_recipe(None), "{}")


def test_a_folder_standing_at_an_output_files_name_is_one_line(tmp_path: Path) -> None:
    """predict computes the scene, then meets a folder named like its class map: one line, exit 2."""
    args = ["predict", str(predicting_model(tmp_path)), str(rasters(tmp_path) / "scene_0.tif"), "--out",
            str(tmp_path / "pred")]
    assert runner.invoke(app, args).exit_code == 0  # the folder is the toolkit's
    (tmp_path / "pred" / "scene_0_pred.tif").unlink()
    (tmp_path / "pred" / "scene_0_pred.tif").mkdir()
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "a folder stands where a file is to be written" in result.output and "Traceback" not in result.output
    assert "scene_0_pred.tif" in result.output


def test_a_ctrl_c_in_a_command_without_a_stop_of_its_own_is_one_line_and_exit_130(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """embed, predict, evaluate, cluster, similar, inspect: a Ctrl-C ends them with a line saying what is kept, not
    silently (Typer's own handling) or with a traceback."""
    from geomed_ssl.data import catalog

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    write_geotiff(tmp_path / "a.tif", structured_raster(np.random.default_rng(0), 3, 32))
    monkeypatch.setattr(catalog, "scan", interrupted)
    result = runner.invoke(app, ["inspect", str(tmp_path / "a.tif")])
    assert result.exit_code == 130 and "stopped: interrupted (Ctrl-C). Every output file written" in result.output


def test_a_sigterm_in_a_command_without_a_training_loop_is_one_line_and_exit_143(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """A scheduler's SIGTERM (or `kill`) to inspect / embed / predict / evaluate / cluster / similar: the line and
    143, not a silent kill; the process's own SIGTERM handler comes back after the command."""
    import os
    import signal
    import time

    from geomed_ssl.data import catalog

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises first

    before = signal.getsignal(signal.SIGTERM)
    write_geotiff(tmp_path / "a.tif", structured_raster(np.random.default_rng(0), 3, 32))
    monkeypatch.setattr(catalog, "scan", terminated)
    result = runner.invoke(app, ["inspect", str(tmp_path / "a.tif")])
    assert result.exit_code == 143 and "stopped: interrupted (SIGTERM). Every output file written" in result.output
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_a_sigterm_before_training_starts_is_one_line_and_exit_143(tmp_path: Path, monkeypatch, command: str) -> None:
    """Pretraining and fine-tuning handled SIGTERM only inside Lightning's loop: one during the scan or the
    statistics killed the process without a word."""
    import os
    import signal
    import time

    from geomed_ssl.finetune import segment
    from geomed_ssl.train import pretrain

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises first

    before = signal.getsignal(signal.SIGTERM)
    data = rasters(tmp_path / "data")
    if command == "pretrain":
        monkeypatch.setattr(pretrain, "scan", terminated)
        args = ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(data), "--out", str(tmp_path / "run")]
    else:
        from tests.embeddings.test_extract import make_encoder

        enc = make_encoder(data, tmp_path / "enc")
        monkeypatch.setattr(segment, "scan", terminated)
        args = ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", str(enc), "--images", str(data),
                "--labels", str(data), "--out", str(tmp_path / "ft")]
    result = runner.invoke(app, args)
    assert result.exit_code == 143 and "stopped: interrupted (SIGTERM)" in result.output, result.output
    assert signal.getsignal(signal.SIGTERM) is before


def test_class_weights_all_zero_are_refused_before_the_fine_tune_folder_is_made(tmp_path: Path) -> None:
    data = rasters(tmp_path, bands=13)
    labels = tmp_path / "labels"
    labels.mkdir()
    for f in sorted(data.glob("*.tif")):
        write_geotiff(labels / f.name, (np.arange(32 * 32).reshape(1, 32, 32) % 3 + 1).astype(np.uint8), nodata=0)
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--images", str(data), "--labels", str(labels), "--out", str(tmp_path / "ft"),
                                 "--set", "finetune.class_weights=[0,0,0]"])
    assert result.exit_code == 2 and "every class weighs 0" in result.output, result.output
    assert not (tmp_path / "ft").exists()


def test_inside_a_training_loop_the_commands_sigterm_handler_stands_aside() -> None:
    """Lightning calls the handler it found after its own (a checkpoint at the next step): ours must not raise
    there, mid-step; before Lightning's is set (strategy set-up, a resume's restore) it stops the block."""
    import os
    import signal

    from geomed_ssl.errors import RunStopped
    from geomed_ssl.process import stops_as

    heard = []
    with pytest.raises(RunStopped):
        with stops_as(lambda name: name):
            ours = signal.getsignal(signal.SIGTERM)

            def lightnings(signum, frame):  # as Lightning's _HandlersCompose: its own, then the one it found
                heard.append(signum)
                ours(signum, frame)

            signal.signal(signal.SIGTERM, lightnings)
            os.kill(os.getpid(), signal.SIGTERM)  # stood aside: nothing raised here
            assert heard == [signal.SIGTERM]
            signal.signal(signal.SIGTERM, ours)  # Lightning's teardown puts ours back
            os.kill(os.getpid(), signal.SIGTERM)  # the stop


def test_a_crafted_or_damaged_model_config_is_one_line_before_anything_is_allocated(tmp_path: Path) -> None:
    """A fine-tuned model's config.json from someone else: a window of 30000 px allocated 8 GB of blending weights
    before failing, a class value that is no number and statistics with a NaN std (every vector NaN, exit 0) went
    through, a config nested 200,000 deep crashed with a RecursionError. Each is one line now."""
    import json

    from geomed_ssl.errors import GeomedError
    from geomed_ssl.inference.finetuned import predict_dir

    scenes = rasters(tmp_path / "data")

    def crafted(name: str, change) -> Path:
        ft = predicting_model(tmp_path / name)
        path = ft / "model" / "config.json"
        meta = json.loads(path.read_text())
        change(meta)
        path.write_text(json.dumps(meta))
        return ft

    cases = [
        (lambda m: m.update(window=[30000, 30000]), "'window' .* holds 56250000 tokens"),
        (lambda m: m.update(window=[16]), "'window' must give 2 sizes"),
        (lambda m: m["classes"][0].update(value="x"), r"classes\[0\].value"),
        (lambda m: m["encoder"]["stats"]["bands"][0].update(std=float("nan")), "statistics of band 'band_1' are not"),
        (lambda m: m["encoder"]["stats"]["bands"][1].update(mean="abc"), "not a number"),
    ]
    for i, (change, message) in enumerate(cases):
        with pytest.raises(GeomedError, match=message):
            predict_dir(crafted(f"c{i}", change), scenes, tmp_path / f"p{i}", device="cpu")
        assert not (tmp_path / f"p{i}").exists()
    deep = predicting_model(tmp_path / "deep")
    (deep / "model" / "config.json").write_text("[" * 200000 + "]" * 200000)
    with pytest.raises(GeomedError, match="nested too deeply"):
        predict_dir(deep, scenes, tmp_path / "pd", device="cpu")


def test_an_error_a_data_loader_worker_raised_is_shown_as_its_own_message() -> None:
    """PyTorch raises a worker's error again with the worker's traceback as its message: the CLI printed ~30 lines
    with the useful sentence last."""
    from torch.utils.data import DataLoader, Dataset

    from geomed_ssl.errors import DataError, message_of

    class Damaged(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> None:
            raise DataError("cannot read window (0, 0) of 's3.tif'; leave it out with data.exclude.")

    with pytest.raises(DataError) as err:
        list(DataLoader(Damaged(), num_workers=1))
    assert str(err.value).startswith("Caught DataError in DataLoader worker")
    assert message_of(err.value) == "cannot read window (0, 0) of 's3.tif'; leave it out with data.exclude."
    assert message_of(DataError("plain")) == "plain"


def test_plain_tiffs_give_no_rasterio_warning_per_file(tmp_path: Path) -> None:
    """38-Cloud patches carry no georeference: every command printed rasterio's two-line NotGeoreferencedWarning
    for each file it opened, where the catalog says once that they are placed nowhere."""
    import warnings

    import rasterio

    from geomed_ssl.cli import app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(2):
            with rasterio.open(tmp_path / f"p{i}.tif", "w", driver="GTiff", height=48, width=48, count=4,
                               dtype="uint16") as dst:
                dst.write(np.random.default_rng(i).integers(1, 5000, (4, 48, 48)).astype(np.uint16))
    from tests.embeddings.test_extract import make_encoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = make_encoder(tmp_path, tmp_path.parent / f"{tmp_path.name}_enc")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(app, ["embed", str(enc), str(tmp_path), "--out", str(tmp_path.parent / "e"),
                                          "--level", "patch"])
        assert result.exit_code == 0, result.output
        assert not [w for w in caught if "geotransform" in str(w.message)]
        warnings.warn("Dataset has no geotransform, gcps, or rpcs.", UserWarning)  # the caller's own filters are back
    assert [w for w in caught if "geotransform" in str(w.message)]


def test_the_cli_leaves_the_warning_filters_libraries_add_during_a_command() -> None:
    """The first version restored the whole filter list after each command, dropping the filters of libraries the
    command imported first (torch's, lightning's) for the rest of a notebook's process."""
    import warnings

    from geomed_ssl.cli_options import drop_filter, quiet_plain_tiffs

    entry = quiet_plain_tiffs()
    warnings.filterwarnings("ignore", message="a library's own filter")
    drop_filter(entry)
    assert entry not in warnings.filters
    assert any(f[1] is not None and f[1].pattern == "a library's own filter" for f in warnings.filters)


def test_a_sigterm_while_lightning_sets_up_stops_the_block() -> None:
    """Before Lightning sets its handler (strategy set-up, a resume's restore) a SIGTERM was ignored, and the run
    trained on to its last step."""
    import os
    import signal

    import lightning as L
    import torch

    from geomed_ssl.errors import RunStopped
    from geomed_ssl.process import stops_as

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def setup(self, stage: str) -> None:
            os.kill(os.getpid(), signal.SIGTERM)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=2)
    trainer = L.Trainer(max_steps=50, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    with pytest.raises(RunStopped):
        with stops_as(lambda name: name):
            trainer.fit(Tiny(), train_dataloaders=data)
    assert trainer.global_step == 0
