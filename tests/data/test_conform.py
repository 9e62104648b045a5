"""The one band rule as the readers apply it: a conformed record reads the model's bands, by name, in its order."""

from __future__ import annotations

import numpy as np
import pytest

from geomed_ssl.config import DataConfig
from geomed_ssl.data.catalog import scan
from geomed_ssl.bands.conform import conform_catalog, conform_record
from geomed_ssl.data.readers import RasterReader, VolumeReader
from geomed_ssl.data.stats import compute_stats
from geomed_ssl.errors import DataError


def test_conformed_raster_record_reads_the_named_bands_in_the_models_order(tmp_path, make_tif, grad):
    arr = grad(4, 32, 32)
    make_tif(tmp_path / "a.tif", arr, descriptions=["B04", "B02", "B03", "B09"])
    record = scan(tmp_path, DataConfig(patch_size=32)).records[0]
    picked = conform_record(record, ["B02", "B03", "B04"])
    assert picked.band_names == ["B02", "B03", "B04"] and picked.num_bands == 3 and picked.band_index == [1, 2, 0]
    assert picked.value_range == [record.value_range[i] for i in (1, 2, 0)]
    out = RasterReader().read_window(picked, 0, 0, 32, 32)
    np.testing.assert_array_equal(out, arr[[1, 2, 0]].astype(np.float32))
    reader = RasterReader()  # the region cache keeps the file's own bands and the picked ones apart
    region = (0, 0, 32, 32)
    assert reader.read_window(record, 0, 0, 8, 8, region=region).shape[0] == 4
    assert reader.read_window(picked, 0, 0, 8, 8, region=region).shape[0] == 3


def test_conforming_twice_composes_and_statistics_follow_the_picked_bands(tmp_path, make_tif, grad):
    arr = grad(3, 32, 32)
    make_tif(tmp_path / "a.tif", arr, descriptions=["x", "y", "z"])
    cfg = DataConfig(patch_size=32, stats_windows=2)
    catalog = conform_catalog(conform_catalog(scan(tmp_path, cfg), ["z", "y"]), ["y"])
    assert catalog.band_names == ["y"] and catalog.records[0].band_index == [1]
    stats = compute_stats(catalog, cfg)
    assert stats.p1[0] == pytest.approx(np.percentile(arr[1].astype(np.float64), 1))


def test_conformed_volume_record_reads_the_named_channels(tmp_path, make_nii):
    vol = np.stack([np.full((8, 8, 8), v, np.float32) for v in (1.0, 2.0, 3.0)], axis=-1)
    make_nii(tmp_path / "v.nii.gz", vol)
    cfg = DataConfig(kind="volume", patch_size=8, intensity="none")
    record = scan(tmp_path, cfg).records[0]
    picked = conform_record(record, ["band_3", "band_1"])
    reader = VolumeReader(cfg)
    assert reader.load(picked)[0][:, 0, 0, 0].tolist() == [3.0, 1.0]
    assert reader.load(record)[0][:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0]


def test_a_4d_volumes_frames_left_out_are_a_warning_and_a_rasters_extra_bands_a_note(tmp_path, make_nii, make_tif,
                                                                                      grad, caplog):
    """A time series given to a one-channel model was cut to its first frame with a note only."""
    import logging

    make_nii(tmp_path / "vols" / "fmri.nii.gz", np.random.default_rng(0).normal(size=(8, 8, 8, 2)).astype(np.float32))
    with caplog.at_level(logging.INFO, logger="geomed_ssl"):
        conform_catalog(scan(tmp_path / "vols", DataConfig(kind="volume", patch_size=8)), ["band_1"])
    (record,) = [r for r in caplog.records if "bands of 1 file(s)" in r.getMessage()]
    assert record.levelno == logging.WARNING and "2 frames are read as channels and only 1 of them kept" in \
        record.getMessage()
    caplog.clear()
    make_tif(tmp_path / "tifs" / "scene.tif", grad(3, 16, 16))
    with caplog.at_level(logging.INFO, logger="geomed_ssl"):
        conform_catalog(scan(tmp_path / "tifs", DataConfig(patch_size=16)), ["band_1", "band_2"])
    (record,) = [r for r in caplog.records if "bands of 1 file(s)" in r.getMessage()]
    assert record.levelno == logging.INFO and "frames" not in record.getMessage()


def test_a_missing_band_is_refused_naming_the_file(tmp_path, make_tif, grad):
    make_tif(tmp_path / "a.tif", grad(2, 32, 32), descriptions=["B02", "B03"])
    record = scan(tmp_path, DataConfig(patch_size=32)).records[0]
    with pytest.raises(DataError, match=r"a\.tif.*missing \['B04'\]"):
        conform_record(record, ["B02", "B04"])
    assert conform_record(record, ["B02", "B03"]) is record
