"""PretrainDataset: pure function of (seed, index), windows traceable to their file, nodata handling, volumes and
their foreground."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import rasterio
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from rasterio.windows import Window
from torch.utils.data._utils.pin_memory import pin_memory

from geomed_ssl.config import DataConfig
from geomed_ssl.data.catalog import Catalog, FileRecord, scan
from geomed_ssl.views.datasets import PretrainDataset, collate, foreground_levels
from geomed_ssl.data.readers import RasterReader
from geomed_ssl.data.stats import BandStats, compute_stats, normalize
from geomed_ssl.views.builder import build_views
from tests.data.conftest import gradient, write_nii, write_tif

TILED = dict(tiled=True, blockxsize=32, blockysize=32, compress="deflate")


def make_dataset(root, cfg, view="none", seed=0, **kw) -> PretrainDataset:
    catalog = scan(root, cfg)
    stats = compute_stats(catalog, cfg, seed=0)
    return PretrainDataset(catalog, stats, cfg, build_views(view, cfg, 2 if cfg.kind == "raster" else 3),
                           seed=seed, length=1000, **kw)


@pytest.fixture
def rasters(tmp_path):
    """Two tiled 4-band rasters with structured content; the second has a nodata stripe on its left."""
    a = gradient(4, 96, 128)
    b = gradient(4, 128, 96, scale=300.0)
    b[:, :, :24] = 0
    write_tif(tmp_path / "a.tif", a, nodata=0, **TILED)
    write_tif(tmp_path / "b.tif", b, nodata=0, **TILED)
    return tmp_path


def assert_same(s1, s2):
    assert torch.equal(s1["image"], s2["image"]) and torch.equal(s1["valid"], s2["valid"])
    assert s1["meta"] == s2["meta"]


def test_same_index_gives_the_same_sample_in_any_order_and_instance(rasters):
    cfg = DataConfig(patch_size=32, windows_per_read=4)
    ds1, ds2 = make_dataset(rasters, cfg, "mae", seed=5), make_dataset(rasters, cfg, "mae", seed=5)
    first = [ds1[i] for i in range(12)]
    for i in reversed(range(12)):  # other order, other instance, other cache state
        assert_same(first[i], ds2[i])
        assert_same(first[i], ds1[i])
    other = make_dataset(rasters, cfg, "mae", seed=6)
    assert any(not torch.equal(first[i]["image"], other[i]["image"]) for i in range(12))


def test_meta_window_rereads_the_same_normalised_pixels(rasters):
    cfg = DataConfig(patch_size=32, windows_per_read=4)
    ds = make_dataset(rasters, cfg, "none")
    for i in range(20):
        s = ds[i]
        r, c, h, w = s["meta"]["window"]
        with rasterio.open(s["meta"]["path"]) as src:
            assert 0 <= r and r + h <= src.height and 0 <= c and c + w <= src.width
            raw = src.read(window=Window(c, r, w, h))
            assert s["meta"]["transform"] == [float(v) for v in list(src.transform)[:6]]
        image, valid = normalize(raw, ds.stats, 0)
        np.testing.assert_array_equal(s["image"].numpy(), image)
        np.testing.assert_array_equal(s["valid"].numpy(), valid)
        assert s["meta"]["band_names"] == ds.records[0].band_names and s["meta"]["crs"]


def test_windows_of_one_group_share_one_region_read(rasters):
    cfg = DataConfig(patch_size=16, windows_per_read=8)
    ds = make_dataset(rasters, cfg, "none")
    paths = {ds[i]["meta"]["path"] for i in range(8, 16)}
    assert len(paths) == 1
    assert ds.raster_reader.counters["region_reads"] == 1  # redrawn windows hit the same region too
    assert ds.raster_reader.counters["region_hits"] >= 7


def test_mostly_nodata_windows_are_rejected(tmp_path):
    arr = gradient(2, 64, 64)
    arr[:, :, :32] = 0  # half nodata: about half the 16x16 windows fall below 0.5 valid
    write_tif(tmp_path / "n.tif", arr, nodata=0)
    cfg = DataConfig(patch_size=16, windows_per_read=4, min_valid_fraction=0.5)
    ds = make_dataset(tmp_path, cfg, "none")
    fractions = [ds[i]["valid"].float().mean().item() for i in range(40)]
    assert min(fractions) >= 0.5
    loose = make_dataset(tmp_path, DataConfig(patch_size=16, windows_per_read=4, min_valid_fraction=0.0))
    assert min(loose[i]["valid"].float().mean().item() for i in range(40)) < 0.5  # the rule, not luck


def test_windows_move_on_from_an_all_nodata_region(tmp_path):
    arr = gradient(2, 128, 128)
    arr[:, :, :64] = 0  # the left half's 32x32 blocks are all nodata
    write_tif(tmp_path / "half.tif", arr, nodata=0, **TILED)
    cfg = DataConfig(patch_size=16, windows_per_read=4, min_valid_fraction=0.9)
    walk = make_dataset(tmp_path, cfg, raster_reader=RasterReader(min_region=32), max_attempts=40)
    stay = make_dataset(tmp_path, cfg, raster_reader=RasterReader(min_region=32), max_attempts=40,
                        tries_per_region=40)
    assert min(walk[i]["valid"].float().mean().item() for i in range(40)) >= 0.9
    assert min(stay[i]["valid"].float().mean().item() for i in range(40)) > 0  # blank regions are passed over


def test_a_tile_mostly_nodata_never_gives_a_blank_window(tmp_path):
    """A swath-edge tile, valid in one corner: windows of regions drawn with no regard to validity were fed to
    training with no valid pixel at all (44 % of them on a 10 %-valid tile)."""
    arr = gradient(2, 256, 256)
    arr[:, :200] = 0
    arr[:, :, :200] = 0  # valid: the 56 x 56 bottom-right corner (5 %)
    write_tif(tmp_path / "edge.tif", arr, nodata=0, **TILED)
    cfg = DataConfig(patch_size=16, windows_per_read=4, min_valid_fraction=0.5)
    ds = make_dataset(tmp_path, cfg, raster_reader=RasterReader(min_region=32))
    fractions = np.array([ds[i]["valid"].float().mean().item() for i in range(60)])
    assert fractions.min() > 0 and (fractions >= 0.5).mean() > 0.7  # before: 80 % blank, 20 % above 0.5


def test_a_file_whose_regions_hold_no_valid_pixel_hands_the_window_to_another_file(tmp_path):
    write_tif(tmp_path / "blank.tif", np.zeros((2, 64, 64), np.uint16), nodata=0)
    write_tif(tmp_path / "full.tif", gradient(2, 64, 64), nodata=0)
    cfg = DataConfig(patch_size=16, min_valid_fraction=0.5)
    catalog = scan(tmp_path, cfg)
    for r in catalog.records:
        r.valid_fraction = 1.0  # as a scan that sampled another part of the file would say
    ds = PretrainDataset(catalog, compute_stats(catalog, cfg, seed=0), cfg, build_views("none", cfg, 2), length=100)
    samples = [ds[i] for i in range(40)]
    assert all(s["valid"].all() and s["meta"]["path"].endswith("full.tif") for s in samples)


def test_padding_past_a_small_file_is_invalid_and_zero(tmp_path):
    write_tif(tmp_path / "small.tif", gradient(3, 24, 20))  # smaller than the 32x32 window
    cfg = DataConfig(patch_size=32, min_valid_fraction=0.0)
    ds = make_dataset(tmp_path, cfg, "none")
    s = ds[0]
    r, c, h, w = s["meta"]["window"]
    assert r <= 0 and c <= 0 and (h, w) == (32, 32)
    assert s["valid"].sum().item() == 24 * 20
    assert (s["image"][:, ~s["valid"]] == 0).all()
    assert s["valid"][-r : -r + 24, -c : -c + 20].all()


def test_windows_of_a_small_scene_start_anywhere_uniformly(tmp_path):
    """An Indian Pines-sized scene (145x145, 64-px blocks): every window position is drawn, uniformly, not a grid."""
    write_tif(tmp_path / "scene.tif", gradient(2, 145, 145), **{**TILED, "blockxsize": 64, "blockysize": 64})
    ds = make_dataset(tmp_path, DataConfig(patch_size=36, windows_per_read=8, stats_windows=8), "none")
    ds.length = 2000
    starts = np.array([ds[i]["meta"]["window"][:2] for i in range(2000)])  # (N, 2) row, col
    for axis in range(2):
        assert starts[:, axis].min() == 0 and starts[:, axis].max() == 145 - 36
        counts = np.bincount(starts[:, axis] * 5 // (145 - 36 + 1), minlength=5)  # 5 equal bins of positions
        assert np.all(np.abs(counts - 400) < 80), counts
    assert len({tuple(s) for s in starts}) > 1500  # not a handful of grid positions


def test_stacked_channel_records_give_all_channels(tmp_path):
    red, nir = gradient(1, 48, 48), gradient(1, 48, 48, scale=5000.0)
    pr, pn = write_tif(tmp_path / "red.tif", red), write_tif(tmp_path / "nir.tif", nir)
    rec = FileRecord(path=str(pr), paths=[str(pr), str(pn)], kind="raster", shape=(48, 48), num_bands=2,
                     dtype="uint16", band_names=["red", "nir"], wavelengths=None, nodata=None, block_shape=(48, 48))
    catalog = Catalog([rec], [], "raster", ["red", "nir"], None)
    stats = BandStats(["red", "nir"], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1e9, 1e9], [1, 1])
    cfg = DataConfig(patch_size=16)
    s = PretrainDataset(catalog, stats, cfg, build_views("none", cfg, 2))[3]
    r, c, h, w = s["meta"]["window"]
    assert s["meta"]["paths"] == [str(pr), str(pn)] and s["image"].shape == (2, 16, 16)
    np.testing.assert_array_equal(s["image"][0].numpy(), red[0, r : r + h, c : c + w])
    np.testing.assert_array_equal(s["image"][1].numpy(), nir[0, r : r + h, c : c + w])


def test_stats_for_other_bands_are_refused(rasters):
    cfg = DataConfig(patch_size=16)
    catalog = scan(rasters, cfg)
    stats = BandStats(["x"], [0.0], [1.0], [0.0], [1.0], [1])
    with pytest.raises(Exception, match="statistics"):
        PretrainDataset(catalog, stats, cfg, build_views("none", cfg, 2))


def test_volume_patches_are_ras_boxes_with_affine(tmp_path):
    vol = np.arange(20 * 16 * 12, dtype=np.float32).reshape(20, 16, 12)
    write_nii(tmp_path / "v.nii.gz", vol, np.diag([-1.0, 1.0, 1.0, 1.0]))  # stored left-to-right flipped
    cfg = DataConfig(kind="volume", patch_size=8, intensity="none", windows_per_read=2)
    ds = make_dataset(tmp_path, cfg, "none")
    ras = vol[::-1]
    for i in range(6):
        s = ds[i]
        z, y, x, d, h, w = s["meta"]["box"]
        assert s["image"].shape == (1, 8, 8, 8) and s["valid"].all()
        expected, _ = normalize(ras[None, z : z + d, y : y + h, x : x + w], ds.stats, None)
        np.testing.assert_allclose(s["image"].numpy(), expected, rtol=1e-6)
        assert s["meta"]["affine"][0][0] == 1.0 and s["meta"]["transform"] is None
    mae = make_dataset(tmp_path, cfg, "mae")
    assert mae[0]["image"].shape == (1, 8, 8, 8) and mae[0]["valid"].dtype == torch.bool


def test_foreground_levels_put_air_and_a_constant_background_below_and_tissue_and_lungs_above():
    ct = np.full((1, 20, 20, 20), -1000.0, np.float32)  # air, as the CT window clips it
    ct[0, 4:16, 4:16, 4:16] = 40.0  # soft tissue
    ct[0, 7:13, 7:13, 7:13] = -850.0  # a lung
    brain = np.full((2, 20, 20, 20), -3.55, np.float32)  # a skull-stripped brain, standardised: constant outside
    brain[:, 5:15, 5:15, 5:15] = np.random.default_rng(0).normal(0, 1, (2, 10, 10, 10))
    assert -1000 < foreground_levels(ct)[0] < -850
    padded = ct.copy()
    padded[0, :, :3] = -3024  # outside the scanner's field of view, the file's nodata
    assert -1000 < foreground_levels(padded, nodata=-3024)[0] < -850
    assert (-3.55 < foreground_levels(brain)).all() and (foreground_levels(brain) < -2.5).all()
    assert foreground_levels(np.zeros((1, 8, 8, 8), np.float32))[0] == np.inf  # no spread: no foreground


def test_volume_windows_hold_a_quarter_foreground_unless_told_otherwise(tmp_path):
    """Most of a volume can be background (the air around a head, the zeros around a skull-stripped brain): windows
    with less than data.min_foreground_fraction of tissue are redrawn; 0 draws them anywhere, as before."""
    vol = np.zeros((48, 48, 48), np.float32)
    vol[10:38, 10:38, 10:38] = 100 + 50 * np.random.default_rng(0).random((28, 28, 28), dtype=np.float32)
    write_nii(tmp_path / "v.nii.gz", vol)
    shares = {}
    for fraction in (0.25, 0.0):
        cfg = DataConfig(kind="volume", patch_size=16, intensity="none", windows_per_read=1,
                         min_foreground_fraction=fraction)
        ds = make_dataset(tmp_path, cfg, "none")
        boxes = [ds[i]["meta"]["box"] for i in range(60)]
        shares[fraction] = np.array([(vol[z:z + d, y:y + h, x:x + w] > 0).mean() for z, y, x, d, h, w in boxes])
        assert_same(ds[7], make_dataset(tmp_path, cfg, "none")[7])  # still a pure function of (seed, index)
    assert shares[0.25].min() >= 0.25 and (shares[0.0] < 0.25).mean() > 0.1  # 18 % of these 60


def test_collate_stacks_tensors_views_and_keeps_meta_per_sample(rasters):
    cfg = DataConfig(patch_size=16)
    ds = make_dataset(rasters, cfg, "mae")
    batch = collate([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 4, 16, 16) and batch["valid"].shape == (3, 16, 16)
    assert len(batch["meta"]) == 3 and [m["path"] for m in batch["meta"]] == [ds[i]["meta"]["path"] for i in range(3)]
    # a leaf to the pin-memory thread and to Lightning's device transfer, which would walk every band name
    assert pin_memory({"meta": batch["meta"]})["meta"] is batch["meta"]
    assert apply_to_collection(batch, torch.Tensor, lambda t: t)["meta"] is batch["meta"]
    assert pickle.loads(pickle.dumps(batch["meta"])) == batch["meta"]
    multi = [{"views": {"global": [torch.zeros(2, 8, 8)] * 2, "local": [torch.ones(2, 4, 4)] * 3},
              "valid": {"global": [torch.ones(8, 8, dtype=torch.bool)] * 2, "local": []}, "meta": {"i": k}}
             for k in range(5)]
    b = collate(multi)
    assert len(b["views"]["global"]) == 2 and b["views"]["global"][0].shape == (5, 2, 8, 8)
    assert len(b["views"]["local"]) == 3 and b["views"]["local"][2].shape == (5, 2, 4, 4)
    assert b["valid"]["global"][1].shape == (5, 8, 8) and b["valid"]["local"] == []
    assert b["meta"] == [{"i": k} for k in range(5)]


def test_dataloader_worker_batches_match_the_main_process(rasters):
    cfg = DataConfig(patch_size=16, windows_per_read=4)
    ds = make_dataset(rasters, cfg, "mae", seed=2)
    ds[0]  # open handles in the parent first: the worker must not reuse them
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate,
                                         multiprocessing_context="fork")
    it = iter(loader)
    batches = [next(it) for _ in range(2)]
    expected = collate([ds[i] for i in range(4, 8)])
    assert torch.equal(batches[1]["image"], expected["image"]) and batches[1]["meta"] == expected["meta"]


def test_real_eurosat_and_ct_samples(shared_data):
    cfg = DataConfig(patch_size=32, sensor="sentinel2", include=["Forest/*"], stats_windows=16)
    ds = make_dataset(shared_data / "eurosat_ms_200", cfg, "mae")
    s = ds[0]
    assert s["image"].shape == (13, 32, 32) and torch.isfinite(s["image"]).all()
    assert s["meta"]["crs"] and len(s["meta"]["band_names"]) == 13
    ct = DataConfig(kind="volume", patch_size=16, include=["example_ct_sm.nii.gz"], stats_windows=8)
    s = make_dataset(shared_data / "abdomen_ct_totalseg", ct, "none")[0]
    assert s["image"].shape == (1, 16, 16, 16) and len(s["meta"]["affine"]) == 4
