"""Bad input, one table: each case builds its inputs in a fresh folder, runs one CLI command in-process, and must
exit with code 2, print one ``error:`` line containing the expected text (no traceback), and create, change or
delete nothing under that folder.

Each concern keeps its own list below (output folders, recipes, exports, data); ``CASES`` joins them.
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
OUTDIR_CASES: list[Case] = []


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
            rasters(r / name, n=2)
        return ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", "none", "--data", str(r),
                "--out", str(r / "ft"), "--labels-per-class", "1", *[a for s in sets for a in ("--set", s)]]
    return setup


def command(*args: str) -> Callable[[Path], list[str]]:
    """A command whose paths are given relative to the case folder (``{r}`` is replaced by it)."""
    return lambda r: [a.replace("{r}", str(r)) for a in args]


CONFIG_CASES: list[Case] = [
    Case("unknown-model-key", pretrain_with("model.depthh=3"), "model.depthh"),
    Case("max-steps-not-a-number", pretrain_with("train.max_steps=abc"),
         "train.max_steps must be an integer >= 1, got 'abc'"),
    Case("num-heads-zero", pretrain_with("model.num_heads=0"), "model.num_heads must be an integer in [1, 256], got 0"),
    Case("embed-dim-a-word", pretrain_with("model.embed_dim=big"),
         "model.embed_dim must be an integer in [1, 8192], got 'big'"),
    Case("batch-size-fractional", pretrain_with("train.batch_size=2.5"),
         "train.batch_size must be an integer >= 1, got 2.5"),
    Case("batch-size-boolean", pretrain_with("train.batch_size=true"),
         "train.batch_size must be an integer >= 1, got true"),
    Case("depth-negative", pretrain_with("model.depth=-1"), "model.depth must be an integer in [1, 128], got -1"),
    Case("choice-misspelt", pretrain_with("data.kind=rastr"), "data.kind must be one of raster, volume, got 'rastr'"),
    Case("recipe-top-level-list", pretrain_recipe("- data\n- model\n"), "a recipe is a mapping of sections"),
    Case("section-not-a-mapping", pretrain_recipe("data: 5\n"),
         "section 'data' must be a mapping of key: value, got 5"),
    Case("finetune-max-steps-negative", finetune_with("finetune.max_steps=-3"),
         "finetune.max_steps must be an integer >= 1, got -3"),
    Case("finetune-batch-size-zero", finetune_with("finetune.batch_size=0"),
         "finetune.batch_size must be an integer >= 1, got 0"),
    # the method's own settings, checked by the named method before the run folder exists
    Case("mask-ratio-zero", pretrain_with("method.mask_ratio=0"),
         "method.mask_ratio must be a number in (0, 1), got 0"),
    Case("mask-ratio-keeps-no-token",
         pretrain_with("method.mask_ratio=0.8", "data.patch_size=16", "model.patch_size=8"),
         "method.mask_ratio 0.8 hides every token of the 4 per window"),
    Case("method-unknown-key", pretrain_with("method.maskratio=0.5"),
         "unknown key 'method.maskratio'. Valid keys for method 'mae': mask_ratio,"),
    Case("method-unknown-name", pretrain_with("method.name=simclr"),
         "method.name 'simclr' is unknown; available: dino"),
    Case("mae-key-in-dino-recipe", pretrain_with("method.mask_ratio=0.5", recipe="recipes/dino_sentinel2.yaml"),
         "unknown key 'method.mask_ratio'. Valid keys for method 'dino': out_dim,"),
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
    Case("cluster-k-one", command("cluster", "{r}/emb", "--out", "{r}/c", "--k", "1"),
         "--k must be an integer >= 2, got 1"),
    Case("cluster-min-cluster-size-one", command("cluster", "{r}/emb", "--out", "{r}/c", "--method", "hdbscan",
                                                 "--min-cluster-size", "1"),
         "--min-cluster-size must be an integer >= 2, got 1"),
    Case("similar-top-zero", command("similar", "{r}/emb", "--query", "{r}/a.tif", "--top", "0"),
         "--top must be an integer >= 1, got 0"),
    Case("finetune-labels-per-class-zero", command("finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder",
                                                   "none", "--data", "{r}", "--out", "{r}/ft", "--labels-per-class",
                                                   "0"),
         "--labels-per-class must be an integer >= 1, got 0"),
    Case("finetune-label-fraction-zero", command("finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder",
                                                 "none", "--images", "{r}", "--out", "{r}/ft", "--label-fraction", "0"),
         "--label-fraction must be a number in (0, 1], got 0.0"),
    Case("demo-steps-zero", command("demo", "--out", "{r}/demo", "--steps", "0"),
         "--steps must be an integer >= 1, got 0"),
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
    from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

    data = rasters(root)
    names = [f"B{i}" for i in range(1, 5)]
    cfg = EncoderConfig(in_chans=4, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=2, num_heads=2,
                        band_names=names)
    out = save_encoder(ViTEncoder(cfg), root / "enc",
                       {"method": "mae", "recipe": {"data": dataclasses.asdict(DataConfig(band_names=names))}})
    meta = json.loads((out / "config.json").read_text())
    meta["encoder"].update(encoder or {})
    (out / "config.json").write_text(json.dumps(meta))
    if weights == "pickle":
        torch.save(ViTEncoder(cfg).state_dict(), out / "model.safetensors")
    assert data.is_dir()
    return out


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
    Case("model-feature-size-huge",
         lambda r: ["predict", str(tiny_model(r, {"feature_size": 10 ** 9})), str(rasters(r)), "--out", str(r / "p")],
         "config.json: head.feature_size must be an integer in [1, 1024], got 1000000000"),
    Case("model-layers-not-integers",
         lambda r: ["predict", str(tiny_model(r, {"layers": ["a"]})), str(rasters(r)), "--out", str(r / "p")],
         "config.json: head.layers must be a list of integers, each >= 0, got ['a']"),
]


# ---- data files, bands and labels ---------------------------------------------------------------------------------
DATA_CASES: list[Case] = []


CASES = OUTDIR_CASES + CONFIG_CASES + EXPORT_CASES + DATA_CASES


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
