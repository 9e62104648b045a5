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
         "is or contains the encoder being exported"),
]


# ---- data files, bands and labels ---------------------------------------------------------------------------------
DATA_CASES: list[Case] = []


CASES = OUTDIR_CASES + CONFIG_CASES + EXPORT_CASES + TIMM_EXPORT_CASES + DATA_CASES


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
