from __future__ import annotations

import numpy as np
import pytest

from geomed_ssl.config import DataConfig
from geomed_ssl.data.catalog import Catalog, FileRecord, scan
from geomed_ssl.bands.ranges import far_from_stats, warn_far_from_stats
from geomed_ssl.data.stats import BandStats, compute_stats, normalize
from geomed_ssl.data.intensity import intensity_args, preprocess_intensity
from geomed_ssl.geo.validity import valid_mask
from geomed_ssl.errors import DataError
from geomed_ssl.once import forget_said


def _whole_file_cfg(size: int, **kw) -> DataConfig:
    """Windows as large as the file: every window sees every pixel, so stats equal numpy's over the file."""
    return DataConfig(patch_size=size, stats_windows=4, **kw)


def _clipped(flat: np.ndarray) -> np.ndarray:
    """(C, n) values clipped per band to their own [p1, p99], as normalize clips them."""
    p1, p99 = np.percentile(flat, [1, 99], axis=1)
    return np.clip(flat, p1[:, None], p99[:, None])


def test_stats_match_numpy_on_known_data(tmp_path, make_tif, grad):
    arr = grad(3, 32, 32)
    make_tif(tmp_path / "a.tif", arr)
    cfg = _whole_file_cfg(32)
    stats = compute_stats(scan(tmp_path, cfg), cfg)
    flat = arr.reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(stats.mean, _clipped(flat).mean(1))
    np.testing.assert_allclose(stats.std, _clipped(flat).std(1))
    np.testing.assert_allclose(stats.p1, np.percentile(flat, 1, axis=1))
    np.testing.assert_allclose(stats.p99, np.percentile(flat, 99, axis=1))
    assert stats.count == [4 * 32 * 32] * 3 and stats.band_names == ["band_1", "band_2", "band_3"]


def test_mean_and_std_are_those_of_the_clipped_values_so_normalised_data_is_standard(tmp_path, make_tif, grad):
    arr = grad(2, 32, 32).astype(np.float32)
    arr[:, :2, :2] = 60000.0  # a few saturated pixels pull the unclipped mean and std far off
    make_tif(tmp_path / "a.tif", arr)
    cfg = _whole_file_cfg(32)
    stats = compute_stats(scan(tmp_path, cfg), cfg)
    flat = arr.reshape(2, -1).astype(np.float64)
    assert not np.allclose(stats.std, flat.std(1), rtol=0.1)  # not the statistics of the unclipped values
    out, _ = normalize(arr, stats, None)  # what the network is fed
    np.testing.assert_allclose(out.reshape(2, -1).mean(1), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.reshape(2, -1).std(1), 1.0, atol=1e-4)
    assert stats.version == 3


def test_stats_exclude_nodata_and_nan(tmp_path, make_tif, grad):
    arr = grad(2, 32, 32, "float32")
    arr[:, :8] = -9999.0  # nodata pixels (all bands)
    arr[0, 8:12, :] = np.nan  # NaN in one band makes the pixel invalid
    make_tif(tmp_path / "a.tif", arr, nodata=-9999.0)
    cfg = _whole_file_cfg(32)
    stats = compute_stats(scan(tmp_path, cfg), cfg)
    keep = arr[:, 12:, :].reshape(2, -1).astype(np.float64)
    np.testing.assert_allclose(stats.mean, _clipped(keep).mean(1), rtol=1e-6)
    np.testing.assert_allclose(stats.std, _clipped(keep).std(1), rtol=1e-6)
    assert stats.count == [4 * keep.shape[1]] * 2


def test_uint16_data_gets_its_real_range_not_a_0_255_default(tmp_path, make_tif):
    rng = np.random.default_rng(0)
    for i in range(3):
        make_tif(tmp_path / f"s{i}.tif", rng.integers(1000, 60000, size=(2, 48, 48)).astype(np.uint16))
    cfg = DataConfig(patch_size=32, stats_windows=16)
    stats = compute_stats(scan(tmp_path, cfg), cfg)
    assert all(25000 < m < 36000 for m in stats.mean) and all(s > 10000 for s in stats.std)
    assert all(p > 1000 for p in stats.p1) and all(55000 < p < 60000 for p in stats.p99)


def test_constant_band_std_is_floored_not_zero(tmp_path, make_tif, grad):
    arr = grad(2, 32, 32)
    arr[1] = 5
    make_tif(tmp_path / "a.tif", arr)
    cfg = _whole_file_cfg(32)
    stats = compute_stats(scan(tmp_path, cfg), cfg)
    assert stats.std[1] == 1e-6 and stats.mean[1] == 5.0


def test_same_seed_same_stats_and_windows_stay_inside_files(tmp_path, make_tif, grad):
    make_tif(tmp_path / "a.tif", grad(2, 64, 80))
    make_tif(tmp_path / "b.tif", grad(2, 40, 40))  # between half and full window: windows clipped to the file
    cfg = DataConfig(patch_size=48, stats_windows=8)
    cat = scan(tmp_path, cfg)
    seen = []

    def spy(rec, start, size):
        assert all(0 <= s and s + n <= dim for s, n, dim in zip(start, size, rec.shape))
        seen.append((rec.path, start, size))
        return grad(2, 80, 80)[:, start[0]:start[0] + size[0], start[1]:start[1] + size[1]].astype(np.float32)

    a, b = compute_stats(cat, cfg, seed=3, read_window=spy), compute_stats(cat, cfg, seed=3, read_window=spy)
    assert a == b and len(seen) == 16 and a != compute_stats(cat, cfg, seed=4, read_window=spy)


def _fake_catalog(shape=(16, 16)) -> Catalog:
    rec = FileRecord(path="x.tif", paths=["x.tif"], kind="raster", shape=shape, num_bands=2, dtype="float32",
                     band_names=["B02", "B03"], wavelengths=None, nodata=None)
    return Catalog([rec], [], "raster", ["B02", "B03"], None)


def test_band_without_valid_samples_is_data_error_naming_the_band():
    cfg = DataConfig(patch_size=16, stats_windows=2)
    with pytest.raises(DataError, match=r"\['B02', 'B03'\] have no valid pixels"):
        compute_stats(_fake_catalog(), cfg, read_window=lambda r, s, n: np.full((2, *n), np.nan, np.float32))


def test_normalize_clips_scores_and_zeroes_invalid_pixels():
    stats = BandStats(["a", "b"], mean=[10.0, 0.0], std=[2.0, 1.0], p1=[0.0, -1.0], p99=[20.0, 1.0], count=[1, 1])
    arr = np.array([[[10.0, 100.0, -5.0, 0.0]], [[0.5, 0.0, np.nan, 0.0]]])  # (2, 1, 4)
    out, valid = normalize(arr, stats, nodata=0.0)
    assert out.dtype == np.float32 and valid.tolist() == [[True, True, False, False]]
    np.testing.assert_allclose(out[:, 0, :2], [[0.0, 5.0], [0.5, 0.0]])  # 100 clipped to p99=20
    assert (out[:, ~valid] == 0).all() and np.isfinite(out).all()


def test_normalize_refuses_a_band_count_mismatch():
    stats = BandStats(["a"], [0.0], [1.0], [0.0], [1.0], [1])
    with pytest.raises(DataError, match="2 bands but the statistics have 1"):
        normalize(np.zeros((2, 4, 4)), stats, None)


def test_valid_mask_needs_all_bands_finite_and_not_all_nodata():
    arr = np.array([[0, 0, 3, np.nan], [0, 5, 0, 1]], dtype=np.float32)  # (2, 4)
    assert valid_mask(arr, 0.0).tolist() == [False, True, True, False]


def test_stats_json_round_trip_and_bad_files(tmp_path):
    stats = BandStats(["B02", "B8A"], [1.5, 2.0], [0.5, 1e-6], [0.0, 1.0], [3.0, 4.0], [10, 10])
    stats.save(tmp_path / "stats.json")
    assert BandStats.load(tmp_path / "stats.json") == stats
    assert stats.to_dict()["version"] == 3 and stats.to_dict()["bands"][1]["name"] == "B8A"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        BandStats.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="lacks"):
        BandStats.from_dict({"version": 1, "bands": [{"name": "a", "mean": 1.0}]})
    with pytest.raises(DataError, match="cannot read"):
        BandStats.load(tmp_path / "missing.json")


def test_version_1_statistics_are_used_as_they_are_with_a_one_time_note(caplog, monkeypatch):
    forget_said()  # what earlier tests in this process said is said again
    old = {"version": 1, "bands": [{"name": "B02", "mean": 1200.0, "std": 300.0, "p1": 500.0, "p99": 2500.0,
                                    "count": 10}]}
    with caplog.at_level("INFO", logger="geomed_ssl"):
        a = BandStats.from_dict(old, source="encoder x")
        b = BandStats.from_dict(old, source="encoder x")
    assert a == b and a.mean == [1200.0] and a.std == [300.0] and a.version == 1
    assert a.to_dict()["version"] == 1  # re-saved (a resumed run, a fine-tuned model) it keeps its meaning
    notes = [r.getMessage() for r in caplog.records if "version-1" in r.getMessage()]
    assert len(notes) == 1 and "encoder x" in notes[0] and "used as they are" in notes[0]
    with pytest.raises(DataError, match="version 1, 2 or 3"):
        BandStats.from_dict({**old, "version": 4})


def test_far_from_stats_flags_bands_whose_range_barely_meets_the_training_range():
    stats = BandStats(["B02", "B03", "B04"], [1500.0] * 3, [300.0] * 3, [1000.0] * 3, [2000.0] * 3, [1] * 3)
    reflectance = [[0.0, 0.01, 0.15, 0.2]] * 3  # 0-0.15 into a DN 1000-2000 encoder: everything clipped to p1
    assert far_from_stats(reflectance, stats) == [0, 1, 2]
    same_units = [[900.0, 1100.0, 1900.0, 2100.0], [0.0, 0.0, 20000.0, 20000.0], [1400.0, 1450.0, 1460.0, 1500.0]]
    assert far_from_stats(same_units, stats) == [1]  # only the band spread over 0..20000 (95 % clipped)
    assert far_from_stats([[float("nan")] * 4] * 3, stats) == []  # no valid value: nothing to say
    # a dark class just under the training p1 (EuroSAT forests in B01: 958..983 against 997..2196) is no units error
    dark = [[950.0, 958.0, 983.0, 990.0], [2100.0, 2150.0, 2240.0, 2300.0], [600.0, 650.0, 700.0, 710.0]]
    assert far_from_stats(dark, stats) == [2]  # 650..700 lies more than a quarter of the span below 1000


def test_far_from_stats_warning_names_the_file_and_bands(caplog):
    stats = BandStats(["B02", "B03"], [1500.0] * 2, [300.0] * 2, [1000.0] * 2, [2000.0] * 2, [1] * 2)
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        named = warn_far_from_stats([("a.tif", [[0.0, 0.01, 0.15, 0.2], [900.0, 1100.0, 1900.0, 2000.0]]),
                                     ("b.tif", [[0.0, 0.01, 0.15, 0.2]] * 2)], stats)
    assert named == ["a.tif", "b.tif"]
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "'a.tif'" in msg and "1 more file" in msg and "B02 0.01..0.15 (trained on 1000..2000)" in msg
    assert "B03" not in msg.split("(p1..p99)")[0].split("band(s)")[1]


def test_preprocess_intensity_ct_clips_to_window_and_keeps_nodata():
    cfg = DataConfig(kind="volume", intensity="auto", ct_window=[-200.0, 300.0], nodata=-3000.0)
    arr = np.array([[-1000.0, 0.0, 900.0, -3000.0, np.nan]])
    out = preprocess_intensity(arr, cfg)  # auto: min -1000 < -500 -> CT
    np.testing.assert_array_equal(out[0, :4], [-200.0, 0.0, 300.0, -3000.0])
    assert np.isnan(out[0, 4]) and out.dtype == np.float32


def test_preprocess_intensity_mr_scales_percentiles_to_unit_range():
    cfg = DataConfig(kind="volume", intensity="mr")
    arr = np.linspace(0, 100, 101)[None]  # (1, 101)
    out = preprocess_intensity(arr, cfg)
    assert out.min() == 0.0 and out.max() == 1.0 and out[0, 50] == pytest.approx(0.5)
    ref = preprocess_intensity(arr, cfg, percentiles=[[0.0, 200.0]])  # the whole volume's percentiles win
    assert ref[0, 100] == pytest.approx(0.5)
    assert preprocess_intensity(arr, DataConfig(intensity="none"))[0, 100] == 100.0


@pytest.mark.parametrize("mode", ["mr", "ct"])
def test_an_infinite_voxel_stays_missing_after_clipping(mode: str) -> None:
    """Clipping made +inf a valid 1.0 (MR) or the window's top (CT); docs/cli.md counts a voxel only when finite."""
    arr = np.array([[-1000.0, 0.0, 50.0, 100.0, np.inf, -np.inf]])
    out = preprocess_intensity(arr, DataConfig(kind="volume", intensity=mode))
    assert np.isnan(out[0, 4:]).all() and np.isfinite(out[0, :4]).all()
    assert valid_mask(out, None).tolist() == [True] * 4 + [False] * 2


def test_volume_stats_use_ct_window(tmp_path, make_nii):
    vol = np.full((16, 16, 16), -1000.0, np.float32)
    vol[4:12, 4:12, 4:12] = 2000.0
    make_nii(tmp_path / "ct.nii.gz", vol)
    cfg = DataConfig(kind="volume", patch_size=16, stats_windows=2, ct_window=[-1000.0, 1000.0])
    stats = compute_stats(scan(tmp_path, cfg), cfg)
    assert stats.p99 == [1000.0] and stats.p1 == [-1000.0]
    assert stats.mean[0] == pytest.approx(-1000 + 2000 * (8**3 / 16**3))


def test_a_volume_that_fits_in_an_eighth_of_ram_is_decoded_once_for_its_windows(tmp_path, make_nii, monkeypatch):
    """Each window of a .nii.gz decompresses it from the start: a 1.2 GB CT's 256 windows took 8 minutes. A volume
    over the fixed 1 GiB is decoded once when an eighth of the machine's memory holds it, windowed otherwise."""
    import geomed_ssl.data.stats as stats_module

    make_nii(tmp_path / "ct.nii.gz", np.zeros((16, 16, 16), np.float32))
    record = scan(tmp_path, DataConfig(kind="volume", patch_size=16)).records[0]
    monkeypatch.setattr(stats_module, "WHOLE_VOLUME_BYTES", 1024)  # this volume is 16 KB
    for ram, decoded in ((8 * 16 * 1024, True), (8 * 1024, False)):
        monkeypatch.setattr(stats_module, "physical_memory", lambda ram=ram: ram)
        assert (stats_module._FileWindows(record).volume is not None) is decoded


def test_real_eurosat_stats_are_reflectance_scale(shared_data):
    order = "B01 B02 B03 B04 B05 B06 B07 B08 B09 B10 B11 B12 B8A".split()
    cfg = DataConfig(sensor="sentinel2", band_names=order, patch_size=64, stats_windows=32)
    stats = compute_stats(scan(shared_data / "eurosat_ms_200", cfg), cfg)
    mean = dict(zip(stats.band_names, stats.mean))
    assert 5 < mean["B10"] < 30 and 1500 < mean["B8A"] < 3500 and 700 < mean["B04"] < 1300


def test_intensity_args_decide_ct_or_mr_from_the_records_value_range():
    rec = FileRecord(path="v.nii", paths=["v.nii"], kind="volume", shape=(8, 8, 8), num_bands=2, dtype="float32",
                     band_names=["a", "b"], wavelengths=None, nodata=None,
                     value_range=[[float("nan")] * 4, [-1024.0, -1000.0, 900.0, 3000.0]])
    args = intensity_args(rec, DataConfig(kind="volume"))  # an all-invalid band (NaN minimum) does not vote
    assert args["kind_hint"] == "ct" and args["percentiles"][1] == [-1000.0, 900.0]
    rec.value_range = [[0.0, 5.0, 400.0, 800.0]] * 2
    assert intensity_args(rec, DataConfig(kind="volume")) == {"kind_hint": "mr",
                                                              "percentiles": [[5.0, 400.0]] * 2}
    assert intensity_args(rec, DataConfig(kind="volume", intensity="none"))["kind_hint"] == "none"
    rec.value_range = None
    assert intensity_args(rec, DataConfig(kind="volume")) == {"kind_hint": None, "percentiles": None}


def test_volume_stats_describe_the_intensities_the_reader_gives(tmp_path, make_nii):
    from geomed_ssl.data.readers import VolumeReader

    vol = np.random.default_rng(0).gamma(2.0, 100.0, (16, 16, 16)).astype(np.float32)  # MR-like
    make_nii(tmp_path / "mr.nii.gz", vol)
    cfg = DataConfig(kind="volume", patch_size=16, stats_windows=2)
    catalog = scan(tmp_path, cfg)
    stats = compute_stats(catalog, cfg)
    loaded, _ = VolumeReader(cfg).load(catalog.records[0])  # (1, 16, 16, 16), same voxels (no reorientation)
    assert stats.mean[0] == pytest.approx(float(loaded.mean()), rel=1e-5)
    assert stats.p99[0] == pytest.approx(float(np.percentile(loaded, 99)), rel=1e-4)


@pytest.mark.parametrize("layout", [{"interleave": "pixel"}, {"tiled": True, "blockxsize": 16, "blockysize": 16}],
                         ids=["strips", "tiles"])
def test_a_raster_read_over_and_over_is_read_once_with_the_same_statistics(tmp_path, monkeypatch, layout):
    import rasterio
    from rasterio.transform import from_origin

    from geomed_ssl.geo import gdal_read

    arr = np.random.default_rng(0).normal(1000, 200, (5, 48, 40)).astype(np.int16)
    arr[:, :6, :9] = -9999  # nodata
    arr[2, 30:33, 4:20] = -9999  # one band's gap inside valid pixels
    path = tmp_path / "cube.tif"
    with rasterio.open(path, "w", driver="GTiff", height=48, width=40, count=5, dtype="int16", nodata=-9999,
                       transform=from_origin(0, 0, 20, 20), crs="EPSG:32615", **layout) as ds:
        ds.write(arr)  # strips one row high spanning the width, or 16x16 tiles
    cfg = DataConfig(patch_size=12, stats_windows=40)  # 40 windows of 12x12 px: 3 times the file's pixels
    reads = []
    real = gdal_read.read_masked
    monkeypatch.setattr(gdal_read, "read_masked",
                        lambda ds, win=None, *a, **k: reads.append(win) or real(ds, win, *a, **k))
    once = compute_stats(scan(path, cfg), cfg, seed=3)
    assert reads == [None]  # the whole file, once
    monkeypatch.setattr(gdal_read, "WHOLE_RASTER_BYTES", 0)  # too large to hold: a read per window, as before
    reads.clear()
    windowed = compute_stats(scan(path, cfg), cfg, seed=3)
    assert None not in reads and len(reads) >= 40
    assert once.to_dict() == windowed.to_dict()


def test_a_constant_band_is_said_once_when_the_statistics_are_computed(tmp_path, make_tif, grad, caplog) -> None:
    import logging

    from geomed_ssl.data.catalog import scan
    from geomed_ssl.data.stats import compute_stats

    arr = grad(3, 32, 32).astype(np.float32) + 1
    arr[2] = 7.0
    make_tif(tmp_path / "a.tif", arr)
    cfg = DataConfig(patch_size=16, band_names=["B1", "B2", "B3"])
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        stats = compute_stats(scan(tmp_path, cfg), cfg)
    said = [r.getMessage() for r in caplog.records if "(nearly) constant" in r.getMessage()]
    assert len(said) == 1 and "['B3']" in said[0] and "B3: 7 at both" in said[0] and stats.std[2] > 0


def test_ct_statistics_clip_at_the_window_not_at_percentiles_of_mostly_air(tmp_path, make_nii):
    """An abdomen is mostly air and soft tissue: the 99th percentile of its windows sat near 250 HU, and normalize
    clipped there again, so bone at 400 and 800 HU (ribs, vertebrae) fed the model one and the same value."""
    vol = np.full((32, 32, 32), -1000.0, np.float32)
    vol[4:28, 4:28, 4:28] = 40.0  # soft tissue
    vol[14:18, 14:18, 4:28] = 400.0  # a spine of two bone densities, ~1 % of the voxels
    vol[15:17, 15:17, 4:28] = 800.0
    make_nii(tmp_path / "ct.nii.gz", vol)
    cfg = DataConfig(kind="volume", patch_size=32, stats_windows=4, ct_window=[-1000.0, 1000.0])
    stats = compute_stats(scan(tmp_path, cfg), cfg)
    assert (stats.p1, stats.p99) == ([-1000.0], [1000.0])
    out, _ = normalize(np.array([[-1000.0, 40.0, 400.0, 800.0, 1500.0]], np.float32), stats, None)
    assert np.all(np.diff(out[0][:4]) > 0) and out[0][3] < out[0][4] + 1e-6  # distinct up to the window's top


def test_small_windows_of_large_tiles_read_the_file_once(tmp_path, monkeypatch) -> None:
    """A window decodes every tile it touches: 8-px windows of a 64-band raster in 32-px tiles decode a tile each
    (their pixels alone are a tenth of the file), so the file is read once, as a 400-band cube in 256-px tiles
    should have been (its statistics took 47 s where one read takes 3)."""
    import rasterio
    from rasterio.transform import from_origin

    from geomed_ssl.geo import gdal_read

    arr = np.random.default_rng(1).integers(1, 4000, (64, 64, 64)).astype(np.uint16)
    path = tmp_path / "cube.tif"
    with rasterio.open(path, "w", driver="GTiff", height=64, width=64, count=64, dtype="uint16",
                       transform=from_origin(0, 0, 20, 20), crs="EPSG:32615", tiled=True, blockxsize=32,
                       blockysize=32) as ds:
        ds.write(arr)
    cfg = DataConfig(patch_size=8, stats_windows=8)  # 8 x 64 px: an eighth of the pixels, 8 whole tiles decoded
    reads = []
    real = gdal_read.read_masked
    monkeypatch.setattr(gdal_read, "read_masked",
                        lambda ds, win=None, *a, **k: reads.append(win) or real(ds, win, *a, **k))
    once = compute_stats(scan(path, cfg), cfg, seed=3)
    assert reads == [None]
    monkeypatch.setattr(gdal_read, "WHOLE_RASTER_BYTES", 0)
    assert compute_stats(scan(path, cfg), cfg, seed=3).to_dict() == once.to_dict()  # the same values either way


def test_files_held_together_share_the_budget_for_whole_reads(tmp_path, monkeypatch) -> None:
    """A stack's files are read for each window together: each may be read whole only within its share of the
    budget, else 13 single-band scenes of a Sentinel-2 tile would all be held at once."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from geomed_ssl.geo import gdal_read

    path = tmp_path / "band.tif"
    with rasterio.open(path, "w", driver="GTiff", height=64, width=64, count=1, dtype="uint16",
                       transform=from_origin(0, 0, 20, 20), crs="EPSG:32615", tiled=True, blockxsize=32,
                       blockysize=32) as ds:
        ds.write(np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64))
    calls = []
    real = gdal_read.read_masked
    monkeypatch.setattr(gdal_read, "read_masked", lambda ds, win=None, *a, **k: calls.append(win) or real(ds, win,
                                                                                                          *a, **k))
    monkeypatch.setattr(gdal_read, "WHOLE_RASTER_BYTES", 3 * 64 * 64 * 2)  # one file fits, four do not
    with rasterio.open(path) as ds:
        alone = gdal_read.window_reads(ds, windows=8, size=(8, 8))
        shared = gdal_read.window_reads(ds, windows=8, size=(8, 8), together=4)
        assert calls == [None]  # alone: read whole at once; one of four: a read per window
        np.testing.assert_array_equal(alone(Window(3, 5, 8, 8)), shared(Window(3, 5, 8, 8)))
        assert len(calls) == 2
