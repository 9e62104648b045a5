"""Small structured fixtures shared by the end-to-end tests (GeoTIFF and NIfTI folders made in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def dev_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """The ``[dev]`` extra of pyproject.toml: what the reference-equivalence tests import."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: pytest depends on tomli there
        import tomli as tomllib
    with pyproject.open("rb") as f:
        return list(tomllib.load(f)["project"]["optional-dependencies"]["dev"])


def missing_requirements(requirements: list[str]) -> list[str]:
    """Those of ``requirements`` (PEP 508 strings) not installed, or installed in a version they exclude."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        req = Requirement(text)
        try:
            found = version(req.name)
        except PackageNotFoundError:
            missing.append(f"{text} (not installed)")
            continue
        if not req.specifier.contains(found, prereleases=True):
            missing.append(f"{text} (found {found})")
    return missing


def pytest_configure(config: pytest.Config) -> None:
    # The equivalence tests against HF ViTMAE, lightly and MONAI's UNETR need the [dev] extras; without them the
    # run fails here instead of skipping the tests that check our numbers against the references.
    missing = missing_requirements(dev_requirements())
    if missing:
        raise pytest.UsageError(f"the test suite needs the [dev] extras, missing: {'; '.join(missing)}. Install them "
                                'with `pip install -e ".[dev]"`.')

# A tiny model and short schedule: every CLI run stays well under ~20 s on 2 cores.
TINY_BASE = [  # any method: a tiny encoder, batch and run
    "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.patch_size=4",
    "train.batch_size=8", "train.base_lr=0.05", "train.warmup_steps=5", "train.log_every=1",
    "train.preview_every=0", "data.num_workers=0", "data.stats_windows=32",
]
TINY = [*TINY_BASE, "method.decoder_embed_dim=32", "method.decoder_depth=1", "method.decoder_num_heads=2"]  # MAE
# recipes/mae_hyperspectral.yaml (vicreg_dense) made tiny: 16-px crops of 2-px tokens from 20-px windows, so the
# crops may sit at most 4 px apart
TINY_DENSE = [*TINY_BASE, "model.patch_size=2", "data.patch_size=20", "data.global_crop_size=16",
              "method.projector_dim=64", "method.matches=32", "method.max_shift=4", "train.batch_size=4"]


class BarCapture(L.Callback):
    """A progress bar (stderr) that keeps the metrics it shows at every step in ``bars``."""

    def __init__(self) -> None:
        from geomed_ssl.train.console import StderrProgressBar

        self.bar = StderrProgressBar(refresh_rate=1)
        self.bars: list[dict[str, float]] = []

    def callbacks(self) -> list[L.Callback]:
        return [self.bar, self]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.bars.append({k: float(v) for k, v in trainer.progress_bar_metrics.items()})


class KillAt(L.Callback):
    """A Lightning callback that simulates a kill: raises just before the optimizer step ``step + 1`` runs."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated kill")


def structured_raster(rng: np.random.Generator, bands: int, size: int) -> np.ndarray:
    """Smooth multi-band fields (sums of random plane waves) scaled like 16-bit reflectance: (bands, size, size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.zeros((size, size), np.float32)
    for _ in range(3):
        fy, fx, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
        base += np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
    gains = np.linspace(0.5, 1.5, bands, dtype=np.float32)[:, None, None]
    return (2000 + 800 * gains * base[None] + 50 * np.arange(bands)[:, None, None]).astype(np.uint16)


def write_geotiff(path: Path, array: np.ndarray, nodata: float | None = None, **extra) -> Path:
    import rasterio
    from affine import Affine

    profile = dict(driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0],
                   dtype=array.dtype, crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 5100000), nodata=nodata)
    profile.update(extra)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


def write_class_folders(root: Path, names: list[str], per_class: int, bands: int = 4) -> Path:
    """Folder-per-class 16x16 uint16 GeoTIFFs whose brightness differs by class (class c adds 1500 * c)."""
    rng = np.random.default_rng(5)
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = structured_raster(rng, bands, 16).astype(np.int32) + 1500 * c
            write_geotiff(root / name / f"{name}_{i}.tif", img.astype(np.uint16))
    return root


def structured_rasters(folder: Path, count: int, size: int = 48, seed: int = 0, bands: int = 4) -> Path:
    """``folder`` (made) holding ``scene_0.tif`` .. ``scene_<count-1>.tif``: :func:`structured_raster` GeoTIFFs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        write_geotiff(folder / f"scene_{i}.tif", structured_raster(rng, bands, size))
    return folder


@pytest.fixture(autouse=True)
def _output_folder_locks():
    """Output folders a test prepared directly (not through a command, which lets go itself) are unlocked after it."""
    from geomed_ssl.outlocks import released_after

    with released_after():
        yield


@pytest.fixture
def raster_dir(tmp_path: Path) -> Path:
    """Six 4-band 48x48 uint16 GeoTIFFs with smooth structure, plus a label file the recipe must exclude."""
    folder = structured_rasters(tmp_path / "rasters", 6)
    write_geotiff(folder / "scene_0_mask.tif", np.ones((1, 48, 48), np.uint8))
    return folder


@pytest.fixture
def volume_dir(tmp_path: Path) -> Path:
    """Four 32^3 single-channel NIfTI volumes with smooth blobs (MR-like intensities), 1.5 mm voxels."""
    import nibabel as nib

    rng = np.random.default_rng(1)
    folder = tmp_path / "volumes"
    folder.mkdir()
    zz, yy, xx = np.mgrid[0:32, 0:32, 0:32].astype(np.float32)
    for i in range(4):
        vol = np.zeros((32, 32, 32), np.float32)
        for _ in range(4):
            c = rng.uniform(6, 26, size=3)
            r = rng.uniform(3, 8)
            vol += rng.uniform(200, 800) * np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2) / (2 * r * r))
        affine = np.diag([1.5, 1.5, 1.5, 1.0])
        nib.save(nib.Nifti1Image(vol + 100, affine), str(folder / f"subject_{i}.nii.gz"))
    return folder
