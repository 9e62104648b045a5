"""Shared fixtures of the compare tests: a labelled scene, a tiny pretraining run and an exported encoder, made
once per session (each takes seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY, structured_raster, write_geotiff

FT = ["finetune.max_steps=4", "finetune.batch_size=4", "finetune.warmup_steps=1", "finetune.feature_size=8",
      "data.sensor=null"]


def sets(*items: str) -> list[str]:
    return [arg for item in [*FT, *items] for arg in ("--set", item)]


def labelled_scene(root: Path, size: int = 64, seed: int = 3) -> tuple[Path, Path]:
    """One 4-band scene whose three classes are thresholds of its first band, and its label raster (0 =
    unlabelled): ``root/images``, ``root/labels``."""
    rng = np.random.default_rng(seed)
    img = structured_raster(rng, 4, size)
    level = img[0].astype(float)
    cls = np.digitize(level, np.quantile(level, [1 / 3, 2 / 3])) + 1  # classes 1..3
    cls[::7, ::5] = 0
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    write_geotiff(root / "images" / "scene.tif", img)
    write_geotiff(root / "labels" / "scene_gt.tif", cls[None].astype(np.uint8))
    return root / "images", root / "labels"


@pytest.fixture(scope="session")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return labelled_scene(tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RUN_DIR of a 3-step tiny MAE on unlabelled 4-band rasters (config.yaml beside its encoder)."""
    from geomed_ssl.train.pretrain import pretrain

    root = tmp_path_factory.mktemp("pre")
    rng = np.random.default_rng(0)
    (root / "raw").mkdir()
    for i in range(3):
        write_geotiff(root / "raw" / f"s{i}.tif", structured_raster(rng, 4, 48))
    pretrain("recipes/mae_sentinel2.yaml", root / "raw", root / "run", progress=False,
             overrides=[*TINY, "data.sensor=null", "data.patch_size=16", "train.max_steps=3"])
    return root / "run"


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory, scene: tuple[Path, Path]) -> Path:
    """An exported encoder folder (no config.yaml beside it) for the scene's bands."""
    from tests.embeddings.test_extract import make_encoder

    return make_encoder(scene[0], tmp_path_factory.mktemp("enc") / "encoder")
