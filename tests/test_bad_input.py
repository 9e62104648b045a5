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
CONFIG_CASES: list[Case] = [
    Case("unknown-model-key",
         lambda r: ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(rasters(r)), "--out", str(r / "run"),
                    "--set", "model.depthh=3"],
         "model.depthh"),
]


# ---- exported encoders, models and checkpoints -------------------------------------------------------------------
EXPORT_CASES: list[Case] = []


# ---- data files, bands and labels ---------------------------------------------------------------------------------
DATA_CASES: list[Case] = []


# ---- training processes, checkpoints and resume ----------------------------------------------------------------
class Pickled:
    """Any class: a checkpoint holding one is refused by ``torch.load(weights_only=True)``."""


def stopped_run(root: Path, last_ckpt: object | None = None) -> Path:
    """A run folder as a run stopped early leaves it: its config.yaml and checkpoints/ (with ``last_ckpt``)."""
    import torch

    from geomed_ssl.config import load_recipe

    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    load_recipe("recipes/mae_sentinel2.yaml", ["data.sensor=null"]).save(run / "config.yaml")
    if last_ckpt is not None:
        torch.save(last_ckpt, run / "checkpoints" / "last.ckpt")
    return run


def resume_args(root: Path, run: Path) -> list[str]:
    return ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(rasters(root)), "--out", str(run), "--resume"]


TRAINING_CASES: list[Case] = [
    Case("resume-without-checkpoint-names-the-way-out",
         lambda r: resume_args(r, stopped_run(r)), "Start it again with --overwrite"),
    Case("resume-from-pickled-last-ckpt",
         lambda r: resume_args(r, stopped_run(r, {"state_dict": {}, "geomed_ssl": {}, "obj": Pickled()})),
         "pickled Python objects, which are never loaded"),
    Case("unknown-train-strategy",
         lambda r: ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(rasters(r)), "--out", str(r / "run"),
                    "--set", "train.strategy=ddp_sideways"], "train.accelerator / devices / strategy"),
    Case("negative-checkpoint-minutes",
         lambda r: ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(rasters(r)), "--out", str(r / "run"),
                    "--set", "train.checkpoint_minutes=-1"], "train.checkpoint_minutes"),
]


CASES = OUTDIR_CASES + CONFIG_CASES + EXPORT_CASES + DATA_CASES + TRAINING_CASES


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
