from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from geomed_ssl.config import DataConfig
from geomed_ssl.data.catalog import Catalog, glob_match, reoriented_shape, scan
from geomed_ssl.errors import ConfigError, DataError


def _reasons(cat: Catalog) -> dict[str, str]:
    return {p.path.rsplit("/", 1)[-1]: p.reason for p in cat.problems}


def test_scan_records_header_metadata(tmp_path, make_tif, grad):
    make_tif(tmp_path / "a.tif", grad(4, 40, 48), nodata=0, descriptions=["B02", "B03", "B04", "B08"],
             tiled=True, blockxsize=16, blockysize=16)
    cat = scan(tmp_path, DataConfig(patch_size=32, sensor="sentinel2"))
    (rec,) = cat.records
    assert rec.shape == (40, 48) and rec.num_bands == 4 and rec.dtype == "uint16" and rec.nodata == 0.0
    assert rec.band_names == ["B02", "B03", "B04", "B08"] and rec.wavelengths[2] == pytest.approx(0.665)
    assert "32633" in rec.crs and rec.transform == [10.0, 0.0, 500000.0, 0.0, -10.0, 5100000.0]
    assert rec.block_shape == (16, 16) and rec.valid_fraction == 1.0 and rec.paths == [rec.path]
    assert rec.value_range[0][0] == 100 and rec.value_range[0][3] == 100 + 39 + 47
    assert cat.band_names == rec.band_names and cat.problems == []


def test_central_wavelength_imagery_tag_read_from_file(tmp_path, make_tif, grad):
    make_tif(tmp_path / "a.tif", grad(2, 32, 32), imagery_tags=[{"CENTRAL_WAVELENGTH_UM": "0.49"},
                                                                {"CENTRAL_WAVELENGTH_UM": "0.842"}])
    assert scan(tmp_path, DataConfig(patch_size=32)).wavelengths == [0.49, 0.842]


def test_nodata_from_config_overrides_file(tmp_path, make_tif, grad):
    arr = grad(2, 32, 32)
    arr[:, :16] = 7
    make_tif(tmp_path / "a.tif", arr, nodata=0)
    rec = scan(tmp_path, DataConfig(patch_size=32, nodata=7)).records[0]
    assert rec.nodata == 7.0 and rec.valid_fraction == pytest.approx(0.5)


def test_corrupt_bytes_with_tif_extension_is_reported(tmp_path, make_tif, grad):
    make_tif(tmp_path / "good.tif", grad(2, 32, 32))
    (tmp_path / "bad.tif").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 700, dtype=np.uint8)))
    assert "not a readable GeoTIFF" in _reasons(scan(tmp_path, DataConfig(patch_size=32)))["bad.tif"]


def test_text_file_named_tif_is_reported_as_not_an_image(tmp_path, make_tif, grad):
    make_tif(tmp_path / "good.tif", grad(2, 32, 32))
    (tmp_path / "notes.tif").write_text("these are my field notes\n" * 10)
    assert "text file" in _reasons(scan(tmp_path, DataConfig(patch_size=32)))["notes.tif"]


def test_empty_file_is_reported(tmp_path, make_tif, grad):
    make_tif(tmp_path / "good.tif", grad(2, 32, 32))
    (tmp_path / "empty.tif").write_bytes(b"")
    assert _reasons(scan(tmp_path, DataConfig(patch_size=32)))["empty.tif"] == "empty file (0 bytes)"


def test_all_nodata_file_is_reported(tmp_path, make_tif, grad):
    make_tif(tmp_path / "good.tif", grad(2, 32, 32))
    make_tif(tmp_path / "blank.tif", np.zeros((2, 32, 32), np.uint16), nodata=0)
    make_tif(tmp_path / "nan.tif", np.full((2, 32, 32), np.nan, np.float32))
    reasons = _reasons(scan(tmp_path, DataConfig(patch_size=32)))
    assert "all pixels are nodata" in reasons["blank.tif"] and "nodata=0" in reasons["blank.tif"]
    assert "all pixels are nodata or NaN" in reasons["nan.tif"]


def test_a_volume_of_one_value_is_warned_about_as_blank(tmp_path, caplog) -> None:
    """A blank scan (all zero, no nodata set) gave a map 60 % foreground at prediction and trained without a word."""
    import logging

    import nibabel as nib

    vol = np.arange(16 ** 3, dtype=np.float32).reshape(16, 16, 16)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "scan.nii.gz"))
    catalog = scan(tmp_path, DataConfig(kind="volume", patch_size=8))
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        catalog.warn_problems()
    assert "blank" not in caplog.text
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), np.eye(4)), str(tmp_path / "blank.nii.gz"))
    catalog = scan(tmp_path, DataConfig(kind="volume", patch_size=8))
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        catalog.warn_problems()
    assert "1 volume(s) hold one value in every voxel (blank scans?), e.g. '" in caplog.text
    assert "blank.nii.gz': nothing to learn from or predict" in caplog.text


def test_file_smaller_than_half_the_window_is_reported_but_half_size_is_kept(tmp_path, make_tif, grad):
    make_tif(tmp_path / "good.tif", grad(2, 64, 64))
    make_tif(tmp_path / "half.tif", grad(2, 32, 40))
    make_tif(tmp_path / "tiny.tif", grad(2, 31, 64))
    cat = scan(tmp_path, DataConfig(patch_size=64))
    assert sorted(r.path.rsplit("/", 1)[-1] for r in cat.records) == ["good.tif", "half.tif"]
    assert "smaller than half the 64x64 window" in _reasons(cat)["tiny.tif"]


def test_truncated_deflate_tiled_geotiff_is_caught(tmp_path, make_tif, grad):
    make_tif(tmp_path / "good.tif", grad(2, 32, 32))
    full = make_tif(tmp_path / "full.tif", grad(3, 128, 128) * 7 % 997, compress="deflate", tiled=True,
                    blockxsize=32, blockysize=32).read_bytes()
    (tmp_path / "full.tif").write_bytes(full[: len(full) * 2 // 3])
    reason = _reasons(scan(tmp_path, DataConfig(patch_size=32)))["full.tif"]
    assert "truncated or corrupt" in reason


def test_mixed_band_counts_keep_majority_and_name_the_counts(tmp_path, make_tif, grad):
    for i in range(3):
        make_tif(tmp_path / f"s{i}.tif", grad(4, 32, 32))
    make_tif(tmp_path / "mask.tif", grad(1, 32, 32, "uint8", 1))
    cat = scan(tmp_path, DataConfig(patch_size=32))
    assert len(cat) == 3 and cat.band_names == ["band_1", "band_2", "band_3", "band_4"]
    assert "has 1 band(s)" in _reasons(cat)["mask.tif"] and "3 of 4 files have 4" in _reasons(cat)["mask.tif"]


def test_same_bands_in_another_order_are_read_by_name_in_the_others_order(tmp_path, make_tif, grad, caplog):
    """A file storing the described bands in another order is not skipped (half an archive of mixed exports would
    drop out): it is read by name, as the other files' order."""
    import logging

    from geomed_ssl.data.readers import RasterReader

    arr = grad(2, 32, 32)
    for i in range(2):
        make_tif(tmp_path / f"s{i}.tif", arr, descriptions=["B04", "B08"])
    make_tif(tmp_path / "swapped.tif", arr[::-1].copy(), descriptions=["B08", "B04"])
    make_tif(tmp_path / "other.tif", arr, descriptions=["B04", "B05"])
    with caplog.at_level(logging.INFO, logger="geomed_ssl"):
        catalog = scan(tmp_path, DataConfig(patch_size=32))
    assert "1 file(s) store the same bands as the others in another order" in caplog.text
    assert "other band names" in _reasons(catalog)["other.tif"] and "swapped.tif" not in _reasons(catalog)
    swapped = next(r for r in catalog.records if r.path.endswith("swapped.tif"))
    assert swapped.band_names == ["B04", "B08"]
    np.testing.assert_array_equal(RasterReader().read_window(swapped, 0, 0, 32, 32), arr.astype(np.float32))


def test_strict_scan_raises_listing_every_problem(tmp_path, make_tif, grad):
    make_tif(tmp_path / "good.tif", grad(2, 32, 32))
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "notes.tif").write_text("hello")
    with pytest.raises(DataError, match=r"(?s)2 problem.*empty\.tif: empty file.*notes\.tif: not an image"):
        scan(tmp_path, DataConfig(patch_size=32), strict=True)


def test_missing_root_is_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan(tmp_path / "nope", DataConfig())


def test_nothing_usable_says_what_was_found_and_what_to_check(tmp_path, make_nii):
    make_nii(tmp_path / "a.nii.gz", np.ones((8, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"no usable raster files.*1 file found, 0 with .tif.*data.kind: volume"):
        scan(tmp_path, DataConfig(patch_size=8))


def test_exclude_globs_drop_label_files_in_the_same_tree(tmp_path, make_tif, grad):
    for sub in ("x", "y/z"):
        make_tif(tmp_path / sub / "scene.tif", grad(2, 32, 32))
        make_tif(tmp_path / sub / "scene_seg.tif", grad(2, 32, 32))
        make_tif(tmp_path / sub / "cloud_MASK.tif", grad(2, 32, 32))
    cat = scan(tmp_path, DataConfig(patch_size=32, exclude=["*seg*", "*mask*"]))
    assert sorted(r.path[len(str(tmp_path)) + 1:] for r in cat.records) == ["x/scene.tif", "y/z/scene.tif"]


def test_folders_the_toolkit_wrote_inside_the_data_are_not_read_as_data(tmp_path, make_tif, grad, caplog):
    """``predict FT images/scene.tif --out images/p`` puts a one-band class map inside the images folder: the next
    scan of that folder must not take it for an image (its own root is still read when given)."""
    import logging

    from geomed_ssl.outdirs import prepare_out_dir

    make_tif(tmp_path / "scene.tif", grad(2, 32, 32))
    out = prepare_out_dir(tmp_path / "p", command="predict")
    make_tif(out / "scene_pred.tif", grad(1, 32, 32))
    make_tif(tmp_path / "user" / "more.tif", grad(2, 32, 32))  # a plain subfolder of the user's is data
    with caplog.at_level(logging.INFO, logger="geomed_ssl"):
        cat = scan(tmp_path, DataConfig(patch_size=32))
    assert sorted(r.path[len(str(tmp_path)) + 1:] for r in cat.records) == ["scene.tif", "user/more.tif"]
    assert not cat.problems and "skipped 1 folder(s)" in caplog.text and "(outputs, not data): p" in caplog.text
    assert [r.path for r in scan(out, DataConfig(patch_size=32)).records] == [str(out / "scene_pred.tif")]


def test_include_double_star_matches_zero_or_more_folders():
    assert glob_match("a.tif", "**/*.tif") and glob_match("x/y/a.tif", "**/*.tif")
    assert glob_match("x/a.tif", "x/**/a.tif") and glob_match("x/y/z/a.tif", "x/**/a.tif")
    assert not glob_match("y/a.tif", "x/**/*.tif")
    assert glob_match("deep/dir/lulc_mask.tif", "lulc_mask.tif")  # a bare name also matches the file name


def test_include_restricts_to_matching_files(tmp_path, make_tif, grad):
    make_tif(tmp_path / "2020" / "a.tif", grad(2, 32, 32))
    make_tif(tmp_path / "2021" / "b.tif", grad(2, 32, 32))
    cat = scan(tmp_path, DataConfig(patch_size=32, include=["2021/**/*"]))
    assert [r.path.rsplit("/", 1)[-1] for r in cat.records] == ["b.tif"]


def test_volume_record_has_affine_spacing_orientation_and_channels(tmp_path, make_nii):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    vol = np.random.default_rng(0).normal(size=(20, 18, 16, 2)).astype(np.float32)
    make_nii(tmp_path / "v.nii.gz", vol, affine)
    rec = scan(tmp_path, DataConfig(kind="volume", patch_size=16)).records[0]
    assert rec.kind == "volume" and rec.shape == (20, 18, 16) and rec.num_bands == 2
    assert rec.spacing == [2.0, 2.0, 3.0] and rec.orientation == "RAS" and rec.affine[2][2] == 3.0
    assert rec.crs is None and rec.block_shape is None


def test_truncated_nifti_gz_is_caught(tmp_path, make_nii):
    make_nii(tmp_path / "ok.nii.gz", np.ones((16, 16, 16), np.float32))
    data = make_nii(tmp_path / "cut.nii.gz", np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32))
    data.write_bytes(data.read_bytes()[:5000])
    assert "truncated or corrupt" in _reasons(scan(tmp_path, DataConfig(kind="volume", patch_size=16)))["cut.nii.gz"]


def test_channels_stack_single_channel_files_of_a_folder(tmp_path, make_nii):
    for pat in ("p1", "p2"):
        for i, name in enumerate(("flair", "t1c", "seg")):
            make_nii(tmp_path / pat / f"{pat}_{name}.nii.gz", np.full((16, 16, 16), i + 1, np.float32))
    cat = scan(tmp_path, DataConfig(kind="volume", patch_size=16, channels=["*flair*", "*t1c*"]))
    assert len(cat) == 2 and cat.band_names == ["flair", "t1c"]
    rec = cat.records[0]
    assert [p.rsplit("/", 1)[-1] for p in rec.paths] == ["p1_flair.nii.gz", "p1_t1c.nii.gz"]
    assert rec.num_bands == 2 and rec.path == rec.paths[0]


def test_folder_missing_a_channel_is_a_problem_naming_folder_and_glob(tmp_path, make_nii):
    make_nii(tmp_path / "p1" / "flair.nii.gz", np.ones((16, 16, 16), np.float32))
    make_nii(tmp_path / "p1" / "t1c.nii.gz", np.ones((16, 16, 16), np.float32))
    make_nii(tmp_path / "p2" / "flair.nii.gz", np.ones((16, 16, 16), np.float32))
    cat = scan(tmp_path, DataConfig(kind="volume", patch_size=16, channels=["*flair*", "*t1c*"]))
    assert len(cat) == 1 and "missing channel '*t1c*'" in _reasons(cat)["p2"]


def test_channels_stack_each_case_of_a_folder_of_several_as_nnunet_lays_them_out(tmp_path, make_nii, monkeypatch):
    """nnU-Net's imagesTr: case_000_0000.nii.gz, case_000_0001.nii.gz, ... in one folder; a case short of a channel
    is a problem naming the case; one channel file scanned alone is its case."""
    for case, channels in (("case_000", (0, 1)), ("case_001", (1, 0)), ("case_002", (0,))):
        for c in channels:
            make_nii(tmp_path / "imagesTr" / f"{case}_{c:04d}.nii.gz", np.full((16, 16, 16), c + 1, np.float32))
    make_nii(tmp_path / "labelsTr" / "case_000.nii.gz", np.ones((16, 16, 16), np.uint8))
    cfg = DataConfig(kind="volume", patch_size=16, channels=["*_0000.nii.gz", "*_0001.nii.gz"])
    cat = scan(tmp_path, cfg)  # labelsTr/case_000.nii.gz is no channel of a case
    assert [(r.case, [Path(p).name for p in r.paths]) for r in cat.records] == [
        ("case_000", ["case_000_0000.nii.gz", "case_000_0001.nii.gz"]),
        ("case_001", ["case_001_0000.nii.gz", "case_001_0001.nii.gz"])]
    assert [Path(p.path).name for p in cat.problems] == ["case_002"]
    assert "case 'case_002' has no file of channel '*_0001.nii.gz'" in cat.problems[0].reason
    import geomed_ssl.data.catalog as catalog

    probed, real_probe = [], catalog.probe_file
    monkeypatch.setattr(catalog, "probe_file", lambda path, *a, **k: probed.append(Path(path).name)
                        or real_probe(path, *a, **k))
    one = scan(tmp_path / "imagesTr" / "case_001_0001.nii.gz", cfg)
    monkeypatch.undo()
    assert len(one) == 1 and one.records[0].case == "case_001" and one.problems == []
    assert probed == ["case_001_0000.nii.gz", "case_001_0001.nii.gz"]  # its case's files only, not the folder's
    with pytest.raises(DataError, match=r"case_002_0000\.nii\.gz': case 'case_002' has no file of channel"):
        scan(tmp_path / "imagesTr" / "case_002_0000.nii.gz", cfg)
    back = Catalog.from_dict(json.loads(json.dumps(cat.to_dict())))
    assert back.records[1].case == "case_001"
    assert cat.summary().startswith("2 usable volume samples (stacked from 4 files by data.channels; 2 of them cases "
                                    "of a shared folder)")
    assert "orientation: RAS (2 samples)" in cat.summary()  # the samples counted, not their files


def test_channels_on_different_grids_are_a_problem_naming_both_files(tmp_path, make_nii):
    make_nii(tmp_path / "p1" / "flair.nii.gz", np.ones((16, 16, 16), np.float32))
    make_nii(tmp_path / "p1" / "t1c.nii.gz", np.ones((16, 16, 16), np.float32), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(DataError, match=r"flair\.nii\.gz and t1c\.nii\.gz do not share one voxel grid: affines "
                                        r"differing by up to 1 \(orientations RAS and RAS\)"):
        scan(tmp_path, DataConfig(kind="volume", patch_size=16, channels=["*flair*", "*t1c*"]))
    rounded = np.diag([1.0001, 1, 1, 1])
    rounded[1, 3] = 0.0004  # float32 header rounding between two contrasts of one session: one grid
    make_nii(tmp_path / "p1" / "t1c.nii.gz", np.ones((16, 16, 16), np.float32), rounded)
    assert len(scan(tmp_path, DataConfig(kind="volume", patch_size=16, channels=["*flair*", "*t1c*"]))) == 1


@pytest.mark.parametrize(("crs", "origin", "step", "shift"), [
    ("EPSG:32633", (500000.0, 5100000.0), 10.0, 30.0),  # 3 px at a UTM northing of 5.1e6 m (numpy's rtol: 51 m)
    ("EPSG:4326", (14.0, 46.0), 1e-4, 1e-4),  # 1 px east at 14° of longitude
])
def test_band_files_a_few_pixels_apart_are_refused_at_any_coordinates(tmp_path, make_tif, crs, origin, step,
                                                                      shift):
    from rasterio.transform import from_origin

    band = np.ones((1, 32, 32), np.float32)
    make_tif(tmp_path / "s1" / "B1.tif", band, crs=crs, transform=from_origin(*origin, step, step))
    moved = (origin[0] + shift, origin[1]) if crs == "EPSG:4326" else (origin[0], origin[1] + shift)
    make_tif(tmp_path / "s1" / "B2.tif", band, crs=crs, transform=from_origin(*moved, step, step))
    with pytest.raises(DataError, match=r"B1\.tif and B2\.tif do not share one pixel grid: origin shifted by"):
        scan(tmp_path, DataConfig(patch_size=16, channels=["B1.tif", "B2.tif"]))


def test_band_files_in_one_crs_written_two_ways_stack(tmp_path, make_tif):
    from rasterio.crs import CRS

    band = np.ones((1, 32, 32), np.float32)
    make_tif(tmp_path / "s1" / "B1.tif", band)
    make_tif(tmp_path / "s1" / "B2.tif", band, crs=CRS.from_epsg(32633).to_proj4())
    assert len(scan(tmp_path, DataConfig(patch_size=16, channels=["B1.tif", "B2.tif"]))) == 1


def test_catalog_json_round_trip_and_summary(tmp_path, make_tif, grad):
    make_tif(tmp_path / "a.tif", grad(3, 32, 32), tiled=True, blockxsize=16, blockysize=16)
    (tmp_path / "empty.tif").write_bytes(b"")
    cat = scan(tmp_path, DataConfig(patch_size=32))
    back = Catalog.from_dict(json.loads(json.dumps(cat.to_dict())))
    assert back == cat and back.records[0].block_shape == (16, 16)
    text = cat.summary()
    assert "1 usable raster file" in text and "band_1 band_2 band_3" in text and "empty.tif: empty file" in text
    assert "32x32" in text


def test_real_eurosat_all_200_usable_with_13_bands(shared_data):
    order = "B01 B02 B03 B04 B05 B06 B07 B08 B09 B10 B11 B12 B8A".split()
    cat = scan(shared_data / "eurosat_ms_200", DataConfig(sensor="sentinel2", band_names=order))
    assert len(cat) == 200 and cat.problems == [] and cat.band_names == order
    assert cat.wavelengths[-1] == pytest.approx(0.865)


def test_real_brain_t1_excluding_aseg_gives_one_volume(shared_data):
    cat = scan(shared_data / "brain_t1_aseg", DataConfig(kind="volume", exclude=["*aseg*"], patch_size=32))
    assert len(cat) == 1 and cat.records[0].shape == (160, 192, 224) and cat.problems == []


def test_reoriented_shape_follows_axis_codes(tmp_path, make_nii):
    affine = np.array([[0, 0, 1.0, 0], [-1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])  # axes: P? S? R?
    make_nii(tmp_path / "v.nii", np.ones((10, 12, 14), np.float32), affine)
    rec = scan(tmp_path, DataConfig(kind="volume", patch_size=8)).records[0]
    assert rec.orientation == "PSR" and reoriented_shape(rec) == (14, 10, 12)


def test_unknown_sensor_aborts_the_scan_with_a_config_error(tmp_path, make_tif, grad):
    make_tif(tmp_path / "a.tif", grad(2, 32, 32))
    with pytest.raises(ConfigError, match="modis"):
        scan(tmp_path, DataConfig(patch_size=32, sensor="modis"))


def test_channel_glob_matching_two_files_is_a_problem(tmp_path, make_tif, grad):
    for name in ("red_1.tif", "red_2.tif", "nir.tif"):
        make_tif(tmp_path / "a" / name, grad(1, 32, 32))
    for name in ("red.tif", "nir.tif"):
        make_tif(tmp_path / "b" / name, grad(1, 32, 32))
    cat = scan(tmp_path, DataConfig(patch_size=32, channels=["*red*", "*nir*"]))
    assert len(cat) == 1 and cat.band_names == ["red", "nir"] and "matches 2 files" in _reasons(cat)["a"]


def test_a_folder_whose_files_name_no_case_and_one_glob_over_several_files_stay_refused(tmp_path, make_nii):
    """Cases need two or more globs whose wildcards name them: p1/flair.nii.gz beside p1/flair_n4.nii.gz is one
    subject with a glob too wide (never a case 'n4'), and one glob over imagesTr is a file per sample."""
    for name in ("flair", "flair_n4", "t1c", "t1c_n4"):
        make_nii(tmp_path / "p1" / f"{name}.nii.gz", np.ones((16, 16, 16), np.float32))
    for i in range(2):
        make_nii(tmp_path / "imagesTr" / f"case_{i}_0000.nii.gz", np.ones((16, 16, 16), np.float32))
    with pytest.raises(DataError, match=r"p1: channel glob '\*flair\*' matches 2 files"):
        scan(tmp_path / "p1", DataConfig(kind="volume", patch_size=16, channels=["*flair*", "*t1c*"]))
    with pytest.raises(DataError, match=r"imagesTr: channel glob '\*_0000.nii.gz' matches 2 files .* leave "
                                        r"data.channels unset"):
        scan(tmp_path / "imagesTr", DataConfig(kind="volume", patch_size=16, channels=["*_0000.nii.gz"]))


def test_band_names_assigned_by_position_are_a_warning_naming_files_and_the_fix(tmp_path, make_tif, grad, caplog):
    for i in range(3):
        make_tif(tmp_path / f"e{i}.tif", grad(13, 32, 32))  # EuroSAT-like: 13 undescribed bands
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        cat = scan(tmp_path, DataConfig(patch_size=32, sensor="sentinel2"))
    (msg,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "3 file(s)" in msg and "by position" in msg and "sentinel2" in msg and "data.band_names" in msg
    assert cat.records[0].band_source == "sensor" and "by POSITION" in cat.summary()


def test_strict_refuses_band_names_assigned_by_position(tmp_path, make_tif, grad):
    make_tif(tmp_path / "e.tif", grad(13, 32, 32))
    with pytest.raises(DataError, match="assigned by position.*--strict"):
        scan(tmp_path, DataConfig(patch_size=32, sensor="sentinel2"), names_by_position="error")


def test_names_stated_by_the_files_or_the_recipe_raise_no_position_warning(tmp_path, make_tif, grad, caplog):
    order = "B01 B02 B03 B04 B05 B06 B07 B08 B09 B10 B11 B12 B8A".split()
    make_tif(tmp_path / "a" / "e.tif", grad(13, 32, 32))
    make_tif(tmp_path / "b" / "d.tif", grad(13, 32, 32), descriptions=order)
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        by_recipe = scan(tmp_path / "a", DataConfig(patch_size=32, sensor="sentinel2", band_names=order),
                         names_by_position="error")
        described = scan(tmp_path / "b", DataConfig(patch_size=32, sensor="sentinel2"), names_by_position="error")
    assert by_recipe.band_names == described.band_names == order and not caplog.records


def test_band_widths_of_the_bundled_sample_come_from_its_fwhm_tags():
    from geomed_ssl.sample import SAMPLE_DIR

    cat = scan(SAMPLE_DIR / "indian_pines.tif", DataConfig(patch_size=32))
    assert cat.bandwidths is not None and len(cat.bandwidths) == 200 and all(w is not None for w in cat.bandwidths)
    assert all(0.005 < w < 0.02 for w in cat.bandwidths)  # AVIRIS FWHM ~10 nm
    assert cat.records[0].bandwidths == cat.bandwidths and Catalog.from_dict(cat.to_dict()).bandwidths == cat.bandwidths


def test_distinct_windows_pairs_each_voxel_size_with_its_own_axis(tmp_path) -> None:
    """A PSR volume (file axes: posterior, superior, right) with 0.8 / 1.2 / 3 mm voxels, counted at 1 mm: the
    catalog's shape is in RAS order, its voxel sizes in the file's; they must be paired on the same axis."""
    import nibabel as nib

    from geomed_ssl.config import DataConfig
    from geomed_ssl.data.catalog import scan

    affine = np.array([[0, 0, 3.0, 0], [-0.8, 0, 0, 0], [0, 1.2, 0, 0], [0, 0, 0, 1]])
    vol = np.random.default_rng(0).random((30, 10, 4)).astype(np.float32)
    (tmp_path / "v").mkdir()
    nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "v" / "psr.nii.gz"))
    catalog = scan(tmp_path / "v", DataConfig(kind="volume", patch_size=4, intensity="none"))
    # at 1 mm: R 12, A 24, S 12 voxels -> 3 x 6 x 3 windows of 4
    assert catalog.distinct_windows((4, 4, 4), spacing=(1.0, 1.0, 1.0)) == 54


def test_a_volumes_size_is_judged_on_the_grid_the_reader_resamples_it_to(tmp_path, make_nii):
    """A 3 mm CT of 20 slices is 39 slices at data.spacing 1.5 mm (over half a 64-voxel window); 40 slices of
    0.5 mm are 14 at 1.5 mm (under half)."""
    vol = np.random.default_rng(0).normal(100, 10, (20, 20, 20)).astype(np.float32)
    make_nii(tmp_path / "coarse" / "ct.nii.gz", vol, np.diag([3.0, 3.0, 3.0, 1.0]))
    fine = np.random.default_rng(1).normal(100, 10, (40, 40, 40)).astype(np.float32)
    make_nii(tmp_path / "fine" / "ct.nii.gz", fine, np.diag([0.5, 0.5, 0.5, 1.0]))
    resampled = DataConfig(kind="volume", patch_size=64, spacing=[1.5, 1.5, 1.5])
    assert len(scan(tmp_path / "coarse", resampled).records) == 1
    with pytest.raises(DataError, match="20x20x20, smaller than half"):  # nothing usable: an error
        scan(tmp_path / "coarse", DataConfig(kind="volume", patch_size=64))
    with pytest.raises(DataError, match="14x14x14, smaller than half"):
        scan(tmp_path / "fine", resampled)


def test_one_named_file_that_cannot_be_used_says_why_not_which_globs_to_check(tmp_path):
    (tmp_path / "scene.tif").write_bytes(b"II*\x00 not really a tiff")
    with pytest.raises(DataError, match=r"^cannot use '.*scene\.tif': ") as err:
        scan(tmp_path / "scene.tif", DataConfig(patch_size=32))
    assert "data.include" not in str(err.value)


def test_a_file_made_nodata_by_one_empty_band_names_that_band(tmp_path, make_tif, grad):
    make_tif(tmp_path / "good.tif", grad(3, 32, 32))
    arr = grad(3, 32, 32).astype(np.float32)
    arr[1] = np.nan
    make_tif(tmp_path / "nanband.tif", arr)
    reasons = _reasons(scan(tmp_path, DataConfig(patch_size=32)))
    assert reasons["nanband.tif"].startswith("band 2 holds no finite value")


def test_a_folder_hidden_by_its_name_is_said_once_but_a_label_folder_beside_the_images_is_not(caplog) -> None:
    from geomed_ssl.data.catalog import select

    exclude = ["*mask*", "*label*", "*lulc*"]
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        keep = select(["images/a.tif", "labels/a.tif", "masks/a.tif"], ["**/*"], exclude, "/r")  # labels mirror images
        assert select(["images/a.tif", "labels/b.tif"], ["images/**"], exclude, "/r") == [True, False]
        assert select(["a/x.tif", "labels/y.tif"], ["**/*"], ["labels/**"], "/r") == [True, False]  # asked for
    assert keep == [True, False, False] and caplog.text == ""
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        keep = select(["Forest/a.tif", "Unlabelled/u.tif", "Unlabelled/v.tif"], ["**/*"], exclude, "/r")
    assert keep == [True, False, False] and "'Unlabelled' (2 files)" in caplog.text


def test_a_tie_between_band_counts_is_refused_naming_both_groups(tmp_path, make_tif, grad):
    """A PlanetScope delivery holds one 8-band *_udm2 mask beside each 4-band scene: the tie was broken for the larger
    count, so the encoder trained on cloud-mask bits and every scene was skipped."""
    make_tif(tmp_path / "20230601_3B_AnalyticMS_SR.tif", grad(4, 32, 32))
    make_tif(tmp_path / "20230601_3B_udm2_like.tif", grad(8, 32, 32))
    with pytest.raises(DataError, match=r"1 with 4 bands.*1 with 8 bands.*data.include.*data.exclude"):
        scan(tmp_path, DataConfig(patch_size=16))


def test_a_scene_beside_its_single_band_label_map_keeps_the_scene(tmp_path, make_tif, grad):
    """The bundled sample (indian_pines.tif, 200 bands, beside indian_pines_gt.tif) under a recipe that does not
    exclude *_gt*: the label map is a problem file, not a reason to stop."""
    from geomed_ssl.sample import SAMPLE_DIR

    make_tif(tmp_path / "scene.tif", grad(4, 32, 32))
    make_tif(tmp_path / "gt.tif", grad(1, 32, 32))
    cat = scan(tmp_path, DataConfig(patch_size=16))
    assert [r.num_bands for r in cat.records] == [4] and "taken for the images" in _reasons(cat)["gt.tif"]
    assert [r.num_bands for r in scan(SAMPLE_DIR, DataConfig(patch_size=16)).records] == [200]


@pytest.mark.parametrize("name", ["LC08_L2SP_190027_20230601_20230607_02_T1_QA_PIXEL.TIF",
                                  "LC08_L2SP_190027_20230601_20230607_02_T1_ST_QA.TIF",
                                  "20230601_101010_3B_udm2.tif", "T33TVM_20230601T100559_SCL_20m.tif",
                                  "MSK_CLDPRB_20m.tif", "T33TVM_20230601T100559_TCI_10m.tif"])
def test_providers_quality_layers_are_left_out_by_the_raster_recipes(tmp_path, make_tif, grad, name):
    from geomed_ssl.config import load_recipe

    make_tif(tmp_path / "scene.tif", grad(4, 32, 32))
    make_tif(tmp_path / name, grad(4, 32, 32))
    for recipe in ("mae_sentinel2", "mae_hyperspectral", "vicreg_dense_sentinel2", "moco_v3_sentinel2_small"):
        data = load_recipe(f"recipes/{recipe}.yaml", ["data.sensor=null", "data.patch_size=16",
                                                      "data.band_names=null"]).data
        cat = scan(tmp_path, data)
        assert [r.path.rsplit("/", 1)[-1] for r in cat.records] == ["scene.tif"] and name in cat.excluded[0], recipe


def test_a_float_fill_near_flt_max_is_nodata_whichever_way_the_tag_was_rounded(tmp_path, make_tif, grad):
    """A tag written as -3.4e+38 (R, %g) beside a fill of -3.4028235e+38 (numpy's float32 min) marks the fill, as
    GDAL's mask says: the collar is neither valid nor in the statistics."""
    from geomed_ssl.data.stats import compute_stats

    arr = grad(2, 32, 32).astype(np.float32) + 1
    arr[:, :, :8] = np.finfo(np.float32).min
    make_tif(tmp_path / "a.tif", arr, nodata=-3.4e38)
    catalog = scan(tmp_path, DataConfig(patch_size=16))
    assert catalog.records[0].valid_fraction == pytest.approx(0.75)
    stats = compute_stats(catalog, DataConfig(patch_size=16))
    assert min(stats.p1) > 0 and max(abs(m) for m in stats.mean) < 1e6


def test_data_nodata_replacing_a_files_own_fill_is_said(tmp_path, make_tif, grad, caplog):
    """One folder of -9999-tagged files and 0-collared untagged ones: data.nodata=0 mends the untagged files and
    undoes the tagged ones' tags; said once, naming the file and both values. Nothing when the file holds no -9999."""
    import logging

    tagged = grad(2, 32, 32).astype(np.float32) + 1
    tagged[:, :, :8] = -9999
    make_tif(tmp_path / "tagged.tif", tagged, nodata=-9999)
    plain = grad(2, 32, 32).astype(np.float32) + 1
    plain[:, :, :8] = 0
    make_tif(tmp_path / "untagged.tif", plain)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        scan(tmp_path, DataConfig(patch_size=16, nodata=0))
    said = [r.getMessage() for r in caplog.records if "replaces the nodata value" in r.getMessage()]
    assert len(said) == 1 and "data.nodata=0 replaces the nodata value -9999 of 'tagged.tif'" in said[0]
    caplog.clear()
    (tmp_path / "tagged.tif").unlink()
    make_tif(tmp_path / "tagged.tif", grad(2, 32, 32).astype(np.float32) + 1, nodata=-9999)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        scan(tmp_path, DataConfig(patch_size=16, nodata=0))
    assert "replaces the nodata value" not in caplog.text
