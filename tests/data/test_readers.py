"""RasterReader / VolumeReader: exact pixels, boundless padding, stacked channels, RAS volumes, bounded caches."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from geomed_ssl.config import DataConfig
from geomed_ssl.data import readers as readers_mod
from geomed_ssl.data.catalog import FileRecord, scan
from geomed_ssl.data.readers import RasterReader, VolumeReader
from tests.data.conftest import gradient, write_nii, write_tif

TILED = dict(tiled=True, blockxsize=32, blockysize=32, compress="deflate")


def raster_record(path, arr, paths=None, block=(32, 32), nodata=None) -> FileRecord:
    c, h, w = arr.shape
    return FileRecord(path=str(path), paths=[str(p) for p in (paths or [path])], kind="raster", shape=(h, w),
                      num_bands=c, dtype=str(arr.dtype), band_names=[f"b{i}" for i in range(c)], wavelengths=None,
                      nodata=nodata, block_shape=block)


@pytest.fixture
def tif(tmp_path):
    arr = gradient(3, 96, 80)  # (3, 96, 80): band c = (c + 1) * 100 + row + col
    path = write_tif(tmp_path / "a.tif", arr, **TILED)
    return raster_record(path, arr), arr


def test_read_window_returns_exact_pixels_as_float32(tif):
    rec, arr = tif
    out = RasterReader().read_window(rec, 10, 20, 16, 24)
    assert out.dtype == np.float32 and out.shape == (3, 16, 24)
    np.testing.assert_array_equal(out, arr[:, 10:26, 20:44])


def test_a_corrupt_window_is_one_error_naming_the_file_and_gdals_own_reason(tmp_path):
    """rasterio's "Read failed. See previous exception for details." stood in the message (with a doubled full
    stop) where GDAL's reason, the exception it chains, was never shown."""
    from geomed_ssl.errors import DataError

    arr = gradient(2, 64, 64)
    path = write_tif(tmp_path / "c.tif", arr, **TILED)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 400] = bytes(400)  # a tile's compressed bytes
    path.write_bytes(bytes(raw))
    rec, reader = raster_record(path, arr), RasterReader()
    with pytest.raises(DataError) as info:
        for row in (0, 32):
            for col in (0, 32):
                reader.read_window(rec, row, col, 32, 32)
    text = str(info.value)
    assert f"of '{path}' (" in text and "Decod" in text and "Part of its pixel data is corrupt" in text
    assert "See previous exception" not in text and ".. " not in text


def test_window_cut_from_region_equals_direct_read(tif):
    rec, arr = tif
    reader = RasterReader(min_region=64)
    region = reader.region_at(rec, (16, 16), (1, 0))
    r, c, h, w = region
    out = reader.read_window(rec, r + 5, c + 7, 16, 16, region=region)
    np.testing.assert_array_equal(out, arr[:, r + 5 : r + 21, c + 7 : c + 23])
    reader.read_window(rec, r, c, 16, 16, region=region)
    assert reader.counters["region_reads"] == 1 and reader.counters["region_hits"] == 1


def test_window_past_the_edge_is_nan_padded(tif):
    rec, arr = tif
    out = RasterReader().read_window(rec, -4, 70, 16, 16)  # 4 rows above, 6 columns past the right edge
    assert np.isnan(out[:, :4]).all() and np.isnan(out[:, :, 10:]).all()
    np.testing.assert_array_equal(out[:, 4:, :10], arr[:, 0:12, 70:80])


def test_file_smaller_than_window_is_padded_inside_region(tmp_path):
    arr = gradient(2, 20, 24)
    rec = raster_record(write_tif(tmp_path / "s.tif", arr), arr, block=(20, 24))
    reader = RasterReader()
    region = reader.region_at(rec, (32, 32), (0, 0))
    assert region == (0, 0, 20, 24)
    out = reader.read_window(rec, -6, -4, 32, 32, region=region)
    assert np.isfinite(out).all(axis=0).sum() == 20 * 24
    np.testing.assert_array_equal(out[:, 6:26, 4:28], arr)


def test_regions_are_block_aligned_and_inside_the_file(tif):
    rec, _ = tif
    reader = RasterReader(min_region=48, cache_bytes=40_000)  # too small a cache to grow regions to 96 px
    (sr, tr, nr), (sc, tc, nc) = reader._axes(rec, (16, 16))
    assert (tr, tc) == (64, 64) and (sr, sc) == (79, 79)  # runs of whole 32-px blocks >= 48 - 16 + 1 starts
    assert RasterReader(min_region=48)._axes(rec, (16, 16))[1][:2] == (80, 96)  # 96 px a side, clipped to the file
    for i in range(nr):
        for j in range(nc):
            r, c, h, w = reader.region_at(rec, (16, 16), (i, j))
            assert 0 <= r and r + h <= 96 and 0 <= c and c + w <= 80
            assert r % 32 == 0 or r + h == 96  # the last origin is shifted to end at the edge


@pytest.mark.parametrize("block", [(32, 32), (1, 80), (256, 256)])
def test_every_window_position_is_equally_likely_block_seams_included(tif, block):
    """Regions of one block each tiled the axis: no window ever crossed a block seam (a grid of lines of a tiled
    scene never seen whole). Each window start now lies in one run, drawn with the odds of a uniform start."""
    rec, _ = tif
    rec.block_shape = block
    reader, rng = RasterReader(min_region=32), np.random.default_rng(0)
    counts = np.zeros((96 - 16 + 1, 80 - 16 + 1))
    for _ in range(20000):
        (r, c, h, w), starts = reader.draw_region(rec, (16, 16), rng)
        (r0, r1), (c0, c1) = starts
        assert r <= r0 and r1 + 16 <= r + h and c <= c0 and c1 + 16 <= c + w  # every window of the run fits
        counts[r0:r1 + 1, c0:c1 + 1] += 1 / ((r1 - r0 + 1) * (c1 - c0 + 1))  # the run's starts, each as likely
    assert counts.min() > 0.7 * counts.mean() and counts.max() < 1.3 * counts.mean()
    assert counts[32 - 16 + 1:32].sum() > 0  # windows across the first row seam


def test_stacked_channel_record_concatenates_files(tmp_path):
    a, b = gradient(1, 40, 40), gradient(2, 40, 40, scale=1000)
    pa, pb = write_tif(tmp_path / "red.tif", a), write_tif(tmp_path / "nir.tif", b)
    rec = raster_record(pa, np.concatenate([a, b]), paths=[pa, pb])
    out = RasterReader().read_window(rec, 3, 5, 8, 8)
    np.testing.assert_array_equal(out, np.concatenate([a, b])[:, 3:11, 5:13])


def test_open_handles_are_bounded(tmp_path):
    reader = RasterReader(max_open=2)
    recs = []
    for k in range(4):
        arr = gradient(1, 16, 16)
        recs.append(raster_record(write_tif(tmp_path / f"{k}.tif", arr), arr))
    for rec in recs:
        reader.read_window(rec, 0, 0, 4, 4)
        assert reader.open_handles <= 2
    assert reader.open_handles == 2


def test_region_cache_is_bounded_by_bytes(tif):
    rec, _ = tif
    reader = RasterReader(min_region=32, cache_bytes=3 * 32 * 32 * 2 * 3)  # three 32x32x3 uint16 regions
    for i in range(3):
        for j in range(2):
            reader.read_region(rec, reader.region_at(rec, (16, 16), (i, j)))
            assert reader.cached_region_bytes <= reader.cache_bytes
    assert reader.counters["region_reads"] == 6


def test_new_process_reopens_instead_of_reusing_handles(tif, monkeypatch):
    rec, arr = tif
    reader = RasterReader()
    reader.read_window(rec, 0, 0, 8, 8)
    assert reader.open_handles == 1
    monkeypatch.setattr(readers_mod.os, "getpid", lambda: -1)  # as seen from a forked worker
    assert reader.open_handles == 0
    np.testing.assert_array_equal(reader.read_window(rec, 0, 0, 8, 8), arr[:, :8, :8])
    clone = pickle.loads(pickle.dumps(reader))  # spawned workers get an empty reader
    assert clone.open_handles == 0 and clone.cached_region_bytes == 0


# ---- volumes ---------------------------------------------------------------------------------------------------
def volume_record(path, shape, channels=1, paths=None) -> FileRecord:
    return FileRecord(path=str(path), paths=[str(p) for p in (paths or [path])], kind="volume", shape=shape,
                      num_bands=channels, dtype="float32", band_names=[f"c{i}" for i in range(channels)],
                      wavelengths=None, nodata=None)


def test_volume_is_reoriented_to_ras(tmp_path):
    vol = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4)
    affine = np.diag([-2.0, 1.0, 1.0, 1.0])  # x runs right-to-left (LAS)
    path = write_nii(tmp_path / "v.nii.gz", vol, affine)
    reader = VolumeReader(DataConfig(kind="volume", intensity="none"))
    rec = volume_record(path, (6, 5, 4))
    out, aff = reader.load(rec)
    assert out.shape == (1, 6, 5, 4) and reader.volume_shape(rec) == (6, 5, 4)
    np.testing.assert_array_equal(out[0], vol[::-1])
    assert aff[0, 0] == 2.0 and aff[0, 3] == -10.0  # voxel 0 is now the leftmost (x = -10 mm)


def test_stacked_volume_channels_and_nan_padding(tmp_path):
    a = np.ones((8, 8, 8), np.float32)
    b = np.full((8, 8, 8), 2.0, np.float32)
    pa, pb = write_nii(tmp_path / "t1.nii", a), write_nii(tmp_path / "t2.nii", b)
    reader = VolumeReader(DataConfig(kind="volume", intensity="none"))
    box = reader.read_box(volume_record(pa, (8, 8, 8), 2, [pa, pb]), -2, 0, 4, 6, 4, 6)  # (2, 6, 4, 6)
    assert box.shape == (2, 6, 4, 6)
    assert np.isnan(box[:, :2]).all() and np.isnan(box[:, :, :, 4:]).all()
    assert (box[0, 2:, :, :4] == 1).all() and (box[1, 2:, :, :4] == 2).all()


def test_ct_window_is_applied_when_loading(tmp_path):
    vol = np.linspace(-2000, 3000, 4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)
    path = write_nii(tmp_path / "ct.nii.gz", vol)
    out, _ = VolumeReader(DataConfig(kind="volume", intensity="ct", ct_window=[-1000, 1000])).load(
        volume_record(path, (4, 4, 4)))
    assert out.min() == -1000 and out.max() == 1000


def test_spacing_resamples_shape_and_affine(tmp_path):
    path = write_nii(tmp_path / "v.nii.gz", np.random.default_rng(0).random((9, 9, 5), dtype=np.float32))
    reader = VolumeReader(DataConfig(kind="volume", intensity="none", spacing=[2.0, 2.0, 2.0]))
    rec = volume_record(path, (9, 9, 5))
    assert reader.volume_shape(rec) == (5, 5, 3)  # voxel centres 8 mm / 8 mm / 4 mm apart
    np.testing.assert_allclose(np.diag(reader.affine(rec))[:3], [2.0, 2.0, 2.0])


def test_spacing_never_blends_a_nodata_value_into_the_voxels_beside_it(tmp_path):
    """4-mm slices resampled to 1 mm: nodata (0) in the bottom two slices must not become made-up valid intensities
    (200, 400, 600) on the way to the 800 of the data; what touches nodata is nodata."""
    from geomed_ssl.geo.validity import valid_mask

    vol = np.full((4, 4, 8), 800, np.float32)
    vol[:, :, :2] = 0
    path = write_nii(tmp_path / "v.nii.gz", vol, np.diag([1.0, 1.0, 4.0, 1.0]))
    cfg = DataConfig(kind="volume", intensity="none", spacing=[1.0, 1.0, 1.0], nodata=0)
    out, _ = VolumeReader(cfg).load(volume_record(path, (4, 4, 8)))
    column = out[0, 1, 1]
    valid = valid_mask(out, 0)[1, 1]
    assert set(np.unique(column[valid]).tolist()) == {800.0}  # every valid voxel holds data, none a blend


def test_volume_cache_is_bounded(tmp_path):
    reader = VolumeReader(DataConfig(kind="volume", intensity="none"), max_cached=1)
    recs = [volume_record(write_nii(tmp_path / f"{k}.nii", np.zeros((4, 4, 4), np.float32)), (4, 4, 4))
            for k in range(2)]
    for rec in recs + recs:
        reader.read_box(rec, 0, 0, 0, 2, 2, 2)
        assert reader.cached_volumes == 1
    assert reader.counters == {"loads": 4, "hits": 0}
    reader.read_box(recs[1], 0, 0, 0, 2, 2, 2)
    assert reader.counters["hits"] == 1


def test_scan_records_read_back_through_the_reader(tmp_path):
    arr = gradient(4, 64, 64)
    write_tif(tmp_path / "x.tif", arr, **TILED)
    rec = scan(tmp_path, DataConfig(patch_size=32)).records[0]
    assert rec.block_shape == (32, 32)
    np.testing.assert_array_equal(RasterReader().read_window(rec, 32, 0, 32, 32), arr[:, 32:, :32])


def test_resampling_spreads_no_nodata_onto_valid_voxels() -> None:
    """NaN slices stay NaN and their valid neighbours stay valid: a voxel on a valid slice is the mean of valid
    voxels only (trilinear interpolation would give NaN wherever a NaN voxel has even a zero weight)."""
    from geomed_ssl.geo.voxels import resample_to_spacing

    arr = np.ones((1, 8, 8, 12), np.float32)
    arr[0, :, :, 4:8] = np.nan  # slices 4-7 without data
    out, _ = resample_to_spacing(arr, np.eye(4), [1.0, 1.0, 0.5])  # 23 slices: old slice s is new slice 2s
    valid = np.isfinite(out[0]).all(axis=(0, 1))
    assert valid[[0, 2, 6, 16, 18, 22]].all()  # old slices 0, 1, 3, 8, 9, 11: data
    assert not valid[8:15].any()  # between old slices 4 and 7
    assert np.allclose(out[0][:, :, valid], 1.0)
    clean, _ = resample_to_spacing(np.ones((1, 8, 8, 12), np.float32), np.eye(4), [1.0, 1.0, 0.5])
    assert np.isfinite(clean).all()
