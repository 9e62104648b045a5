"""Pixels GDAL marks missing without a nodata value (an internal mask band, a .msk sidecar) and a stacked file's
own nodata are invalid everywhere: in the reader, the catalog's valid share and the prediction (nodata there)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geomed_ssl.config import DataConfig
from geomed_ssl.data.catalog import scan
from geomed_ssl.geo.gdal_read import read_masked
from geomed_ssl.data.readers import RasterReader
from tests.conftest import structured_raster


def masked_tif(path: Path, internal: bool) -> np.ndarray:
    """A 4-band uint16 64x64 GeoTIFF without nodata whose GDAL mask hides the left half (internal or .msk)."""
    arr = (structured_raster(np.random.default_rng(0), 4, 64) + 500).astype(np.uint16)
    mask = np.full((64, 64), 255, np.uint8)
    mask[:, :32] = 0
    profile = dict(driver="GTiff", height=64, width=64, count=4, dtype="uint16", crs="EPSG:32633",
                   transform=from_origin(500000, 5000000, 10, 10))
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=internal):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(arr)
            dst.write_mask(mask)
    assert Path(str(path) + ".msk").exists() != internal
    return arr


@pytest.mark.parametrize("internal", [True, False])
def test_masked_pixels_are_invalid_in_reads_catalog_and_prediction(tmp_path: Path, internal: bool) -> None:
    import torch

    from geomed_ssl.data.stats import compute_stats
    from geomed_ssl.inference.predict import predict_raster

    folder = tmp_path / "scenes"
    folder.mkdir()
    arr = masked_tif(folder / "scene.tif", internal)
    cfg = DataConfig(patch_size=32, exclude=["*.msk"])
    catalog = scan(folder, cfg)
    (record,) = catalog.records
    assert record.valid_fraction == pytest.approx(0.5, abs=0.05)
    window = RasterReader().read_window(record, 0, 0, 64, 64)
    assert np.isnan(window[:, :, :32]).all() and np.array_equal(window[:, :, 32:], arr[:, :, 32:].astype(np.float32))
    stats = compute_stats(catalog, cfg, seed=0)
    assert min(stats.p1) >= float(arr[:, :, 32:].min())  # the hidden half never reaches the statistics
    torch.manual_seed(0)
    model = torch.nn.Conv2d(4, 3, 1).eval()
    predict_raster(model, folder / "scene.tif", tmp_path / "pred.tif", stats, window=(32, 32), num_classes=3)
    with rasterio.open(tmp_path / "pred.tif") as out:
        labels = out.read(1)
        assert out.nodata == 255
    assert (labels[:, :32] == 255).all() and (labels[:, 32:] != 255).all()


def test_a_stacked_files_missing_pixels_are_those_of_data_nodata_else_its_own_tag(tmp_path: Path) -> None:
    """A file of a data.channels stack marks its own pixels missing (NaN): at data.nodata when given (which
    replaces its tag, as a single file's), else at its own tag; a single file is read as stored."""
    arr = np.full((1, 8, 8), 7, np.uint16)
    arr[0, :2] = 65535
    arr[0, 7] = 0
    path = tmp_path / "b03.tif"
    with rasterio.open(path, "w", driver="GTiff", height=8, width=8, count=1, dtype="uint16", nodata=65535) as dst:
        dst.write(arr)
    with rasterio.open(path) as ds:
        own = read_masked(ds, None, None, stacked=True)
        replaced = read_masked(ds, None, 0.0, stacked=True)
        nan = read_masked(ds, None, float("nan"), stacked=True)  # data.nodata=nan: missing already, tag replaced
        single = read_masked(ds, None, 0.0)  # one file: the caller's nodata is applied later, as a value
    assert np.isnan(own[0, :2]).all() and (own[0, 2:] != 65535).all() and not np.isnan(own[0, 2:]).any()
    assert np.isnan(replaced[0, 7]).all() and (replaced[0, :2] == 65535).all()
    assert nan.dtype == np.uint16 and np.array_equal(nan, arr)
    assert single.dtype == np.uint16 and np.array_equal(single, arr)


def test_data_nodata_still_overrides_a_files_tag_in_the_reader_and_the_catalog(tmp_path: Path) -> None:
    """A file tagged nodata=0 where 0 is real data, read with data.nodata=65535: 0 stays data everywhere."""
    arr = np.full((1, 32, 32), 9, np.uint16)
    arr[0, :16] = 0
    (tmp_path / "d").mkdir()
    with rasterio.open(tmp_path / "d" / "s.tif", "w", driver="GTiff", height=32, width=32, count=1, dtype="uint16",
                       nodata=0) as dst:
        dst.write(arr)
    catalog = scan(tmp_path / "d", DataConfig(patch_size=16, nodata=65535))
    (record,) = catalog.records
    window = RasterReader().read_window(record, 0, 0, 32, 32)
    assert record.valid_fraction == 1.0 and not np.isnan(window).any()


def test_files_with_different_scale_tags_are_one_warning_naming_both(tmp_path: Path, caplog) -> None:
    """One file stores reflectance as float, another as int16 with scale 0.0001 / offset -0.1: read as stored they
    differ by 10^4, which the scan says."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    base = dict(driver="GTiff", height=32, width=32, count=1, crs="EPSG:32633",
                transform=from_origin(500000, 5000000, 10, 10))
    with rasterio.open(folder / "float_reflectance.tif", "w", dtype="float32", **base) as dst:
        dst.write(np.full((1, 32, 32), 0.15, np.float32))
    with rasterio.open(folder / "int_scaled.tif", "w", dtype="int16", **base) as dst:
        dst.write(np.full((1, 32, 32), 2500, np.int16))
        dst.scales, dst.offsets = (0.0001,), (-0.1,)
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        catalog = scan(folder, DataConfig(patch_size=16))
    assert len(catalog.records) == 2
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "different scale / offset tags" in text and "int_scaled.tif" in text and "float_reflectance.tif" in text
    caplog.clear()
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        scan(folder, DataConfig(patch_size=16, include=["int_*"]))  # one scale throughout: nothing to say
    assert "scale / offset" not in " ".join(r.getMessage() for r in caplog.records)


def test_stacked_band_files_keep_their_scale_tags(tmp_path: Path) -> None:
    """data.channels stacks: the record carries each file's scale / offset (1 / 0 for a file without), so the
    mixed-scaling warning sees them too."""
    base = dict(driver="GTiff", height=32, width=32, count=1, dtype="int16", crs="EPSG:32633",
                transform=from_origin(500000, 5000000, 10, 10))
    (tmp_path / "s1").mkdir()
    for name, offset in (("B1.tif", 0.0), ("B2.tif", -1000.0)):
        with rasterio.open(tmp_path / "s1" / name, "w", **base) as dst:
            dst.write(np.full((1, 32, 32), 2500, np.int16))
            dst.offsets = (offset,)
    (record,) = scan(tmp_path, DataConfig(patch_size=16, channels=["B1.tif", "B2.tif"])).records
    assert record.value_scaling == [[1.0, 1.0], [0.0, -1000.0]]


def test_a_stack_reads_each_files_own_nodata_as_missing(tmp_path: Path) -> None:
    """data.channels stacks B02 (nodata 0) and B03 (nodata 65535): the left half, nodata in both, is missing in
    both bands, not read as 65535 in the second."""
    folder = tmp_path / "scenes" / "s1"
    folder.mkdir(parents=True)
    for name, nodata in (("B02", 0), ("B03", 65535)):
        arr = np.full((1, 32, 32), 900, np.uint16)
        arr[0, :, :16] = nodata
        with rasterio.open(folder / f"{name}.tif", "w", driver="GTiff", height=32, width=32, count=1,
                           dtype="uint16", nodata=nodata) as dst:
            dst.write(arr)
    catalog = scan(tmp_path / "scenes", DataConfig(patch_size=16, channels=["B02.tif", "B03.tif"]))
    (record,) = catalog.records
    window = RasterReader().read_window(record, 0, 0, 32, 32)
    assert np.isnan(window[1, :, :16]).all() and (window[:, :, 16:] == 900).all()


def test_a_stack_reads_the_same_pixels_missing_whichever_channel_comes_first(tmp_path: Path) -> None:
    """The first file's nodata tag was the stack's: a hole in it was a per-band gap, the same hole in a later file hid
    the pixel, and its value (0) hid another file's real zeros. Now every file marks its own pixels alike."""
    from geomed_ssl.geo.validity import valid_mask

    folder = tmp_path / "scenes" / "s1"
    folder.mkdir(parents=True)
    b5 = np.full((1, 32, 32), 500, np.uint16)
    b5[0, :8, :8] = 0  # a hole, tagged
    b3 = np.full((1, 32, 32), 300, np.uint16)
    b3[0, 20:24, 20:24] = 0  # real zeros, no tag
    for name, arr, nodata in (("B5", b5, 0), ("B3", b3, None)):
        with rasterio.open(folder / f"{name}.tif", "w", driver="GTiff", height=32, width=32, count=1,
                           dtype="uint16", nodata=nodata) as dst:
            dst.write(arr)
    masks = []
    for channels in (["B5.tif", "B3.tif"], ["B3.tif", "B5.tif"]):
        (record,) = scan(tmp_path / "scenes", DataConfig(patch_size=16, channels=channels)).records
        assert record.nodata is None
        window = RasterReader().read_window(record, 0, 0, 32, 32)
        masks.append(valid_mask(window, record.nodata))
        b3_read = window[channels.index("B3.tif")]
        assert (b3_read[20:24, 20:24] == 0).all()  # B3's zeros stay data
    assert np.array_equal(masks[0], masks[1]) and not masks[0][:8, :8].any() and masks[0][8:, 8:].all()
    (record,) = scan(tmp_path / "scenes", DataConfig(patch_size=16, channels=["B5.tif", "B3.tif"], nodata=0)).records
    assert record.nodata == 0.0  # data.nodata still names the stack's value
    import torch

    from geomed_ssl.data.stats import BandStats
    from geomed_ssl.inference.predict import predict_raster

    stats = BandStats(["B5", "B3"], [400.0, 300.0], [50.0, 50.0], [0.0, 0.0], [600.0, 600.0], [100, 100])
    torch.manual_seed(0)
    for channels in (["B5.tif", "B3.tif"], ["B3.tif", "B5.tif"]):  # predict reads the stack so, in either order
        out = tmp_path / f"pred_{channels[0]}"
        predict_raster(torch.nn.Conv2d(2, 3, 1).eval(), folder, out, stats, band_names=[c[:2] for c in channels],
                       window=(16, 16), num_classes=3, data_cfg=DataConfig(channels=channels))
        with rasterio.open(out) as dst:
            labels = dst.read(1)
        assert (labels[:8, :8] == dst.nodata).all() and (labels[8:, 8:] != dst.nodata).all()


def test_an_upper_case_msk_sidecar_masks_reads_as_in_the_catalog(tmp_path: Path) -> None:
    """GDAL takes S.TIF.MSK beside an upper-case S.TIF: the window reader (which does not list folders) finds it
    too, so training reads the pixels the catalog counted as missing as missing."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    masked_tif(folder / "S.TIF", internal=False)
    Path(str(folder / "S.TIF") + ".msk").rename(str(folder / "S.TIF") + ".MSK")
    (record,) = scan(folder, DataConfig(patch_size=32, exclude=["*.MSK"])).records
    assert record.valid_fraction == pytest.approx(0.5, abs=0.05)
    window = RasterReader().read_window(record, 0, 0, 64, 64)
    assert np.isnan(window[:, :, :32]).all() and not np.isnan(window[:, :, 32:]).any()


def rgba_tif(path: Path, alpha: bool = True) -> np.ndarray:
    """An RGB uint8 64x64 GeoTIFF, with (``alpha``) a 4th alpha band hiding its left quarter, as drone orthophotos
    come."""
    rgb = (structured_raster(np.random.default_rng(1), 3, 64) % 200 + 20).astype(np.uint8)
    band4 = np.full((1, 64, 64), 255, np.uint8)
    band4[:, :, :16] = 0
    profile = dict(driver="GTiff", height=64, width=64, count=4 if alpha else 3, dtype="uint8", crs="EPSG:32633",
                   transform=from_origin(500000, 5000000, 10, 10), photometric="RGB")
    with rasterio.open(path, "w", **profile, **({"alpha": "YES"} if alpha else {})) as dst:
        dst.write(np.concatenate([rgb, band4]) if alpha else rgb)
    return rgb


def test_an_alpha_band_is_the_mask_not_a_band_in_the_catalog_reads_and_prediction(tmp_path: Path) -> None:
    """An RGBA orthophoto trains as its 3 colour bands with the alpha band as the mask, and its model predicts the
    same map on the RGBA file and on an RGB copy of it."""
    import torch

    from geomed_ssl.data.stats import compute_stats
    from geomed_ssl.inference.raster import predict_raster

    (tmp_path / "rgba").mkdir()
    rgb = rgba_tif(tmp_path / "rgba" / "ortho.tif")
    rgba_tif(tmp_path / "ortho_rgb.tif", alpha=False)
    cfg = DataConfig(patch_size=32)
    catalog = scan(tmp_path / "rgba", cfg)
    (record,) = catalog.records
    assert record.num_bands == 3 and catalog.band_names == ["band_1", "band_2", "band_3"]
    assert record.valid_fraction == pytest.approx(0.75, abs=0.05)
    window = RasterReader().read_window(record, 0, 0, 64, 64)
    assert window.shape[0] == 3 and np.isnan(window[:, :, :16]).all()
    assert np.array_equal(window[:, :, 16:], rgb[:, :, 16:].astype(np.float32))
    stats = compute_stats(catalog, cfg, seed=0)
    assert stats.band_names == ["band_1", "band_2", "band_3"]
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 1).eval()
    maps = []
    for src in (tmp_path / "rgba" / "ortho.tif", tmp_path / "ortho_rgb.tif"):
        out = tmp_path / f"{src.stem}_pred.tif"
        predict_raster(model, src, out, stats, window=(32, 32), num_classes=3)
        with rasterio.open(out) as f:
            maps.append(f.read(1))
    assert (maps[0][:, :16] == 255).all() and np.array_equal(maps[0][:, 16:], maps[1][:, 16:])


@pytest.mark.parametrize(("bands", "dtype"), [(4, "float32"), (6, "uint8")])
def test_an_alpha_band_gdal_does_not_read_as_a_mask_still_masks(tmp_path: Path, bands: int, dtype: str) -> None:
    """GDAL reads alpha as the mask only for 2 or 4 bands of Byte / UInt16: a float RGBA mosaic or a 5-band drone
    mosaic with alpha is masked where alpha is 0 all the same, and the alpha band is not read as a band."""
    from rasterio.enums import ColorInterp

    data = np.full((bands, 32, 32), 100, dtype)
    data[-1] = 255
    data[-1, :, :8] = 0
    (tmp_path / "m").mkdir()
    with rasterio.open(tmp_path / "m" / "mosaic.tif", "w", driver="GTiff", height=32, width=32, count=bands,
                       dtype=dtype, crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10)) as dst:
        dst.colorinterp = [ColorInterp.undefined] * (bands - 1) + [ColorInterp.alpha]  # before the pixels: kept
        dst.write(data)
    (record,) = scan(tmp_path / "m", DataConfig(patch_size=16)).records
    assert record.num_bands == bands - 1 and record.valid_fraction == pytest.approx(0.75, abs=0.05)
    window = RasterReader().read_window(record, 0, 0, 32, 32)
    assert np.isnan(window[:, :, :8]).all() and (window[:, :, 8:] == 100).all()


def test_a_model_that_took_the_alpha_band_as_a_band_is_told_why_the_file_now_lacks_it(tmp_path: Path) -> None:
    """Models trained before alpha bands were masks list band_4: the mismatch says it is the alpha band and how to
    read such files again."""
    import torch

    from geomed_ssl.data.stats import BandStats
    from geomed_ssl.errors import DataError
    from geomed_ssl.inference.raster import predict_raster

    rgba_tif(tmp_path / "ortho.tif")
    names = [f"band_{i}" for i in range(1, 5)]
    stats = BandStats(names, [100.0] * 4, [30.0] * 4, [0.0] * 4, [255.0] * 4, [100] * 4)
    with pytest.raises(DataError, match=r"Band 4 of .* is an alpha band.*gdal_translate -colorinterp_4 undefined"):
        predict_raster(torch.nn.Conv2d(4, 3, 1), tmp_path / "ortho.tif", tmp_path / "p.tif", stats, window=(32, 32),
                       num_classes=3)


def test_a_run_resumed_from_before_stacks_read_each_files_tag_is_not_told_its_data_changed(tmp_path: Path) -> None:
    """A stack's record carried its first file's tag as its nodata; now none (each file's own is read): a resumed
    run's comparison with its catalog.json must not name every stack as changed."""
    import json

    from geomed_ssl.train.run_files import catalog_changes

    folder = tmp_path / "scenes" / "s1"
    folder.mkdir(parents=True)
    for name in ("B5", "B3"):
        with rasterio.open(folder / f"{name}.tif", "w", driver="GTiff", height=32, width=32, count=1,
                           dtype="uint16", nodata=0) as dst:
            dst.write(np.full((1, 32, 32), 300, np.uint16))
    catalog = scan(tmp_path / "scenes", DataConfig(patch_size=16, channels=["B5.tif", "B3.tif"]))
    before = json.loads(json.dumps(catalog.to_dict()))
    before["records"][0]["nodata"] = 0.0  # as an earlier version wrote it
    assert catalog_changes(before, catalog) == ([], [], [])
    before["records"][0]["value_range"][0][3] += 1  # a file that did change still shows
    assert len(catalog_changes(before, catalog)[2]) == 1


def test_data_nodata_replaces_every_stacked_files_tag_in_the_catalog_and_the_reads_alike(tmp_path: Path) -> None:
    """With data.nodata set the catalog read a stacked file's own tag as data (and said so) while training read
    its pixels as missing."""
    from geomed_ssl.geo.validity import valid_mask

    folder = tmp_path / "scenes" / "s1"
    folder.mkdir(parents=True)
    b02 = np.full((1, 32, 32), 300, np.int16)
    b02[0, :, :16] = 0
    for name, arr, nodata in (("B02", b02, 0), ("B03", np.full((1, 32, 32), 200, np.int16), None)):
        with rasterio.open(folder / f"{name}.tif", "w", driver="GTiff", height=32, width=32, count=1,
                           dtype="int16", nodata=nodata) as dst:
            dst.write(arr)
    cfg = DataConfig(patch_size=16, channels=["B02.tif", "B03.tif"])
    (own,) = scan(tmp_path / "scenes", cfg).records
    window = RasterReader().read_window(own, 0, 0, 32, 32)
    assert own.valid_fraction == pytest.approx(0.5) and valid_mask(window, own.nodata).mean() == 0.5
    (replaced,) = scan(tmp_path / "scenes", DataConfig(patch_size=16, channels=cfg.channels, nodata=-1)).records
    window = RasterReader().read_window(replaced, 0, 0, 32, 32)
    assert replaced.valid_fraction == 1.0 and valid_mask(window, replaced.nodata).all()
    assert replaced.replaced_nodata == 0.0  # and the catalog says so, as for a single file
    (zero,) = scan(tmp_path / "scenes", DataConfig(patch_size=16, channels=cfg.channels, nodata=0)).records
    window = RasterReader().read_window(zero, 0, 0, 32, 32)  # data.nodata=0: B02's zeros missing, in both
    assert zero.valid_fraction == pytest.approx(0.5) and valid_mask(window, zero.nodata).mean() == 0.5
    (nan,) = scan(tmp_path / "scenes", DataConfig(patch_size=16, channels=cfg.channels, nodata=float("nan"))).records
    window = RasterReader().read_window(nan, 0, 0, 32, 32)  # NaN replaces B02's tag: its zeros are data
    assert nan.valid_fraction == 1.0 and valid_mask(window, nan.nodata).all()


def test_a_data_band_written_as_alpha_is_warned_about_and_a_real_alpha_band_only_noted(tmp_path: Path,
                                                                                         caplog) -> None:
    """GDAL writes a 4-band 8-bit GeoTIFF as RGBA unless told otherwise, so an RGB + NIR file's NIR band is
    tagged alpha and read as the mask: a band whose values lie between 0 and its maximum is a warning with the
    fix; an alpha band holding 0 and 255 only stays a note."""
    from geomed_ssl.once import command_scope

    rng = np.random.default_rng(0)
    for name, alpha in [("rgbn", rng.integers(1, 200, (32, 32))), ("rgba", np.where(rng.random((32, 32)) < 0.2,
                                                                                          0, 255))]:
        data = np.concatenate([rng.integers(1, 200, (3, 32, 32)), alpha[None]]).astype("uint8")
        (tmp_path / name).mkdir()
        with rasterio.open(tmp_path / name / f"{name}.tif", "w", driver="GTiff", height=32, width=32, count=4,
                           dtype="uint8", crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10)) as dst:
            dst.write(data)
    with command_scope(), caplog.at_level("INFO", logger="geomed_ssl"):
        scan(tmp_path / "rgbn", DataConfig(patch_size=16))
        scan(tmp_path / "rgba", DataConfig(patch_size=16))
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "tagged alpha" in r.getMessage()]
    assert len(warned) == 1 and "rgbn.tif" in warned[0].getMessage()
    assert "gdal_translate -colorinterp_4 undefined" in warned[0].getMessage()
    assert any("rgba.tif" in r.getMessage() and "is an alpha band" in r.getMessage() for r in caplog.records)
