"""Tiny GeoTIFF / NIfTI writers for the data tests (files are made in tmp_path)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(os.environ.get("GEOMED_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def gradient(bands: int, height: int, width: int, dtype: str = "uint16", scale: float = 100.0) -> np.ndarray:
    """(C, H, W) structured content: band c holds (c + 1) * scale + row + col."""
    c, r, q = np.meshgrid(np.arange(bands), np.arange(height), np.arange(width), indexing="ij")
    return ((c + 1) * scale + r + q).astype(dtype)


def write_tif(path: Path, array: np.ndarray, nodata: float | None = None, descriptions: list[str] | None = None,
              band_tags: list[dict] | None = None, imagery_tags: list[dict] | None = None,
              crs: str | None = "EPSG:32633", transform=None, **profile) -> Path:
    """Write a (C, H, W) array as a GeoTIFF with optional nodata, band descriptions and per-band tags."""
    import rasterio
    from rasterio.transform import from_origin

    c, h, w = array.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = dict(driver="GTiff", width=w, height=h, count=c, dtype=array.dtype.name, nodata=nodata, crs=crs,
                transform=transform or from_origin(500000.0, 5100000.0, 10.0, 10.0)) | profile
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", **opts) as dst:
            dst.write(array)
            for b in range(1, c + 1):
                if descriptions:
                    dst.set_band_description(b, descriptions[b - 1])
                if band_tags:
                    dst.update_tags(b, **band_tags[b - 1])
                if imagery_tags:
                    dst.update_tags(b, ns="IMAGERY", **imagery_tags[b - 1])
    return path


def write_nii(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write a (X, Y, Z) or (X, Y, Z, C) array as NIfTI (.nii or .nii.gz by the name)."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture
def shared_data() -> Path:
    """The read-only real sample data folder; tests using it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("shared sample data not available")
    return SHARED


@pytest.fixture
def make_tif():
    return write_tif


@pytest.fixture
def make_nii():
    return write_nii


@pytest.fixture
def grad():
    return gradient
