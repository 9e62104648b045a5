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
    from tests.downstream.test_embed import make_encoder

    return make_encoder(described_rasters(root, names, "train"), root / "encoder")


def embedded(root: Path, folder: Path) -> Path:
    """An image-level embedding folder of ``folder`` made with a tiny encoder of its own data."""
    from geomed_ssl.downstream.embed import embed_folder
    from tests.downstream.test_embed import make_encoder

    embed_folder(make_encoder(folder, root / "encoder"), folder, root / "emb", level="image", progress=False)
    return root / "emb"


def one_class_embeddings(root: Path) -> list[str]:
    from tests.conftest import write_class_folders

    classes = write_class_folders(root / "classes", ["Forest"], per_class=3)
    return ["cluster", str(embedded(root, classes)), "--labels", "folders", "--out", str(root / "cl")]


def nifti_for_raster_model(root: Path) -> list[str]:
    import nibabel as nib

    from tests.downstream.test_evaluate import make_ft_dir

    ft = make_ft_dir(root)
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.float32), np.eye(4)), str(root / "ct.nii.gz"))
    return ["predict", str(ft), str(root / "ct.nii.gz"), "--out", str(root / "pred")]


def nifti_for_raster_encoder(root: Path) -> list[str]:
    import nibabel as nib

    enc = encoder_for_bands(root, ["B02", "B03"])
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.float32), np.eye(4)), str(root / "ct.nii.gz"))
    return ["attention", str(enc), str(root / "ct.nii.gz"), "--out", str(root / "a.png")]


def corrupt_file_for_classifier(root: Path) -> list[str]:
    from tests.downstream.test_evaluate import make_ft_dir

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
                    "--box", "0,20,8,16"],
         "reaches outside"),
    Case("nifti-given-to-a-raster-model", nifti_for_raster_model,
         "is a NIfTI volume but this model was trained on 2D GeoTIFF rasters"),
    Case("nifti-given-to-a-raster-encoder", nifti_for_raster_encoder,
         "is a NIfTI volume but encoder"),
    Case("corrupt-file-for-a-classifier-under-strict", corrupt_file_for_classifier, "broken.tif"),
]


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
