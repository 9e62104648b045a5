"""Labelled data: class-folder datasets scanned into records and classes, whole images with their class."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from geomed_ssl.config import DataConfig
from geomed_ssl.data.labelled import scan_class_folders
from geomed_ssl.errors import DataError
from tests.conftest import structured_raster, write_class_folders, write_geotiff


def test_problem_files_in_class_folders_are_a_warning_and_an_error_under_strict(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for name in ("Forest", "River"):
        (tmp_path / name).mkdir()
        for i in range(2):
            write_geotiff(tmp_path / name / f"{name}_{i}.tif", structured_raster(rng, 3, 16))
    (tmp_path / "River" / "broken.tif").write_bytes(b"not a tiff at all")
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        records, _, _ = scan_class_folders(tmp_path, DataConfig(patch_size=16))
    assert len(records) == 4 and any("broken.tif" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match="broken.tif"):
        scan_class_folders(tmp_path, DataConfig(patch_size=16), strict=True)


def test_image_dataset_gives_whole_images_centre_cropped_to_the_patch_with_their_class(tmp_path):
    from geomed_ssl.data.labelled import ImageDataset
    from geomed_ssl.data.stats import BandStats

    rng = np.random.default_rng(0)
    arrays = {name: structured_raster(rng, 3, 18) for name in ("Forest", "River")}
    for name, arr in arrays.items():
        (tmp_path / name).mkdir()
        write_geotiff(tmp_path / name / f"{name}.tif", arr)
    cfg = DataConfig(patch_size=16)
    records, labels, _ = scan_class_folders(tmp_path, cfg)
    identity = BandStats(band_names=records[0].band_names, mean=[0.0] * 3, std=[1.0] * 3, p1=[-1e9] * 3,
                         p99=[1e9] * 3, count=[1] * 3)
    item = ImageDataset(records, labels, identity, cfg, (8, 8))[1]
    assert int(item["target"]) == 1
    np.testing.assert_allclose(item["image"].numpy(), arrays["River"][:, 1:17, 1:17])


def test_hidden_folders_and_files_are_neither_classes_nor_images(tmp_path, caplog):
    root = write_class_folders(tmp_path / "classes", ["forest", "sea"], per_class=2)
    (root / ".ipynb_checkpoints").mkdir()
    shutil.copy(next((root / "forest").glob("*.tif")), root / ".ipynb_checkpoints" / "x.tif")
    shutil.copy(next((root / "sea").glob("*.tif")), root / "sea" / "._copy.tif")
    with caplog.at_level("INFO", logger="geomed_ssl"):
        records, labels, names = scan_class_folders(root, DataConfig(patch_size=16))
    assert names == ["forest", "sea"] and len(records) == 4 and np.bincount(labels).tolist() == [2, 2]
    assert "skipped 2 hidden" in caplog.text
