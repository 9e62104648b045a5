"""The archive as a whole: grids in the summary, mixed pixel sizes and fill-value files warned about, and no
warning for what real archives hold (several UTM zones, hazy dates, dark classes)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from affine import Affine

from geomed_ssl.config import DataConfig
from geomed_ssl.data.catalog import scan
from geomed_ssl.data.survey import value_outliers, warn_survey
from geomed_ssl.geo.grids import crs_name
from tests.data.conftest import SHARED


def scenes(folder, make_tif, n: int = 4, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    return [make_tif(folder / f"s{i}.tif", rng.integers(800, 2200, (3, 32, 32)).astype(np.uint16))
            for i in range(n)]


def test_fill_value_files_are_named_and_natural_variety_is_not(tmp_path, make_tif, caplog) -> None:
    scenes(tmp_path, make_tif)
    make_tif(tmp_path / "dark.tif", np.random.default_rng(1).integers(30, 200, (3, 32, 32)).astype(np.uint16))
    make_tif(tmp_path / "hazy.tif", np.random.default_rng(2).integers(2500, 4000, (3, 32, 32)).astype(np.uint16))
    catalog = scan(tmp_path, DataConfig(patch_size=32))
    assert value_outliers(catalog.records, catalog.band_names) == []  # a dark class, a hazy date: data
    filled = np.random.default_rng(3).integers(800, 2200, (3, 32, 32)).astype(np.uint16)
    filled[1] = 65535
    make_tif(tmp_path / "filled.tif", filled)
    make_tif(tmp_path / "zeros.tif", np.zeros((3, 32, 32), np.uint16))
    catalog = scan(tmp_path, DataConfig(patch_size=32))
    found = {p.rsplit("/", 1)[-1]: why for p, _, why in value_outliers(catalog.records, catalog.band_names)}
    assert set(found) == {"filled.tif", "zeros.tif"}
    assert found["filled.tif"].startswith("band_2 65535..65535") and "constant (0)" in found["zeros.tif"]
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(catalog)
    assert "far from the rest of the archive" in caplog.text and "data.nodata" in caplog.text


def test_the_summary_names_crss_and_pixel_sizes_and_mixed_sizes_are_warned_about(tmp_path, make_tif, caplog):
    scenes(tmp_path, make_tif, n=2)
    make_tif(tmp_path / "coarse.tif", np.full((3, 32, 32), 1000, np.uint16),
             transform=Affine(20, 0, 500000, 0, -20, 5100000))
    catalog = scan(tmp_path, DataConfig(patch_size=32))
    summary = catalog.summary()
    assert "CRS: EPSG:32633 (3 files)" in summary and "pixel size: 10 x 10 m (2 files), 20 x 20 m (1 file)" in summary
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(catalog)
    assert "several pixel sizes" in caplog.text
    assert crs_name(None, "none") == "none"


def test_a_transform_without_a_crs_is_not_said_to_be_in_pixels(tmp_path, make_tif) -> None:
    make_tif(tmp_path / "a.tif", np.full((3, 32, 32), 1000, np.uint16), crs=None)
    summary = scan(tmp_path, DataConfig(patch_size=32)).summary()
    assert "pixel size: 10 x 10 (units of the transform; no CRS) (1 file)" in summary


def test_pixel_sizes_in_degrees_are_compared_on_the_ground(tmp_path, make_tif, caplog) -> None:
    """0.0001° is 11 m wide at the equator and 3.8 m at 70° N: the same degrees are two ground sizes, and a 10 m UTM
    file beside 9e-5° at the equator is one."""
    tile = np.full((3, 32, 32), 1000, np.uint16)
    make_tif(tmp_path / "a" / "equator.tif", tile, crs="EPSG:4326", transform=Affine(1e-4, 0, 14, 0, -1e-4, 0.5))
    make_tif(tmp_path / "a" / "north.tif", tile, crs="EPSG:4326", transform=Affine(1e-4, 0, 14, 0, -1e-4, 70))
    catalog = scan(tmp_path / "a", DataConfig(patch_size=32))
    summary = catalog.summary()
    assert "11.1 x 11.1 m (1 file)" in summary and "3.81 x 11.1 m (1 file)" in summary
    assert "degrees as metres on the ground" in summary
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(catalog)
    assert "several pixel sizes" in caplog.text
    make_tif(tmp_path / "b" / "utm.tif", tile)
    make_tif(tmp_path / "b" / "wgs84.tif", tile, crs="EPSG:4326", transform=Affine(9e-5, 0, 14, 0, -9e-5, 0.1))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path / "b", DataConfig(patch_size=32)))
    assert "several pixel sizes" not in caplog.text


def test_rasters_without_georeferencing_are_left_out_of_the_pixel_size_warning(tmp_path, make_tif, caplog) -> None:
    """A plain TIFF (or one placed by GCPs / RPCs only) has no ground pixel size to compare."""
    make_tif(tmp_path / "utm.tif", np.full((3, 32, 32), 1000, np.uint16))
    make_tif(tmp_path / "plain.tif", np.full((3, 32, 32), 1000, np.uint16), crs=None, transform=Affine.identity())
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path, DataConfig(patch_size=32)))
    assert "several pixel sizes" not in caplog.text


def test_real_archives_raise_no_false_alarm(caplog) -> None:
    """EuroSAT (eight UTM zones, reprojected pixels of 9.9-10.0 m, ten classes) and the Slovenia tile (a hazy date)
    are data, not outliers; the Landsat-8 red patches hold three all-zero files without nodata."""
    import pytest

    if not SHARED.is_dir():
        pytest.skip("shared sample data not available")
    for name in ("eurosat_ms_200", "sentinel2_slovenia"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
            warn_survey(scan(SHARED / name, DataConfig(patch_size=32)), flat_bands=True)
        assert "warning" not in caplog.text, name
    red = scan(SHARED / "landsat8_clouds" / "train_red", DataConfig(patch_size=32))
    assert len(value_outliers(red.records, red.band_names)) == 3


def test_a_zero_collar_without_a_nodata_tag_or_mask_is_warned_about(tmp_path, make_tif, caplog) -> None:
    """Orthophotos and SAR GRD files are distributed with a 0 fill outside their footprint and often no tag: it was
    trained and scored as data, without a word."""
    rng = np.random.default_rng(4)
    scenes(tmp_path / "plain", make_tif, n=2)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path / "plain", DataConfig(patch_size=32)))
    assert "collar" not in caplog.text
    ortho = rng.integers(20, 255, (3, 32, 32)).astype(np.uint8)
    ortho[:, :, :6] = 0  # the collar, no nodata tag
    (tmp_path / "ortho").mkdir()
    make_tif(tmp_path / "ortho" / "tile.tif", ortho)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path / "ortho", DataConfig(patch_size=32)))
    assert "tile.tif' has 0 at its 1st percentile in every band" in caplog.text and "data.nodata=0" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path / "ortho", DataConfig(patch_size=32, nodata=0)))
    assert "collar" not in caplog.text


@pytest.mark.parametrize("fill", [-9999.0, float(np.finfo(np.float32).min)])
def test_a_collar_of_another_fill_value_without_a_tag_is_warned_about_with_that_value(tmp_path, make_tif, caplog,
                                                                                      fill) -> None:
    """-9999 or -3.4e38 filling a float file's collar with no tag: the same warning, naming the value to set; a dark
    class that is each band's minimum but differs between bands is not one."""
    rng = np.random.default_rng(5)
    scene = rng.uniform(900, 4000, (3, 32, 32)).astype(np.float32)
    scene[:, :, :6] = fill
    make_tif(tmp_path / "tile.tif", scene)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path, DataConfig(patch_size=32)))
    assert f"has {fill:g} at its 1st percentile in every band" in caplog.text
    assert f"data.nodata={fill:g}" in caplog.text
    from geomed_ssl.data.survey import untagged_fill

    assert untagged_fill([[5.0, 5.0, 90.0, 99.0], [7.0, 7.0, 80.0, 85.0]]) is None
    assert untagged_fill([[372.0, 372.0, 900.0, 1200.0]]) is None  # one band: a lake flattened in a DEM
    assert untagged_fill([[-32767.0, -32767.0, 900.0, 1200.0]]) == -32767.0  # one band, a known fill


@pytest.mark.parametrize("n_reflectance", [1, 3, 5])
def test_files_in_reflectance_beside_files_in_digital_numbers_are_warned_about_whichever_are_more(
        tmp_path, make_tif, caplog, n_reflectance) -> None:
    """DN (0..10000) and reflectance (0..1) in one folder: said whichever group is larger (the archive's median
    hides the minority only when it is small); dark and bright scenes of one unit are not."""
    rng = np.random.default_rng(6)
    for i in range(6):
        dn = rng.uniform(300, 4000 if i % 2 else 900, (3, 32, 32)).astype(np.float32)
        make_tif(tmp_path / f"s{i}.tif", dn / 10000 if i < n_reflectance else dn)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path, DataConfig(patch_size=32)))
    assert "reflectance beside digital numbers" in caplog.text
    caplog.clear()
    for i in range(n_reflectance):
        (tmp_path / f"s{i}.tif").unlink()
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path, DataConfig(patch_size=32)))
    assert "reflectance beside digital numbers" not in caplog.text


def test_one_band_spanning_a_thousandfold_is_no_unit_mismatch(tmp_path, make_tif, caplog) -> None:
    """Elevation tiles (a coast at 0.2-2.7 m, an alpine one at 1800-3300 m) differ 1000-fold in one band: no
    reflectance-beside-DN warning for single-band rasters."""
    rng = np.random.default_rng(7)
    make_tif(tmp_path / "coast.tif", rng.uniform(0.2, 2.7, (1, 32, 32)).astype(np.float32))
    make_tif(tmp_path / "alps.tif", rng.uniform(1800, 3300, (1, 32, 32)).astype(np.float32))
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path, DataConfig(patch_size=32)))
    assert "reflectance beside digital numbers" not in caplog.text


def test_a_folder_without_one_windows_worth_of_valid_pixels_is_refused(tmp_path, make_tif, caplog) -> None:
    """Two 64x64 files nodata but for a 3x3 corner pretrained "successfully" on blank windows (loss 0). Now
    refused, naming the file; a folder where only some files are so sparse gets a warning naming them."""
    from geomed_ssl.data.survey import check_fillable
    from geomed_ssl.errors import DataError

    rng = np.random.default_rng(0)
    sparse = np.zeros((3, 64, 64), np.uint16)
    sparse[:, :3, :3] = rng.integers(100, 200, (3, 3, 3))
    (tmp_path / "sparse").mkdir()
    for i in range(2):
        make_tif(tmp_path / "sparse" / f"s{i}.tif", sparse, nodata=0)
    cfg = DataConfig(patch_size=16)
    with pytest.raises(DataError, match=r"no file holds enough valid pixels for one 16x16 window at data.min_valid_"
                                        r"fraction 0.5 \(the most: '.*s[01].tif', about 9 valid of the 128"):
        check_fillable(scan(tmp_path / "sparse", cfg), (16, 16), 0.5)
    check_fillable(scan(tmp_path / "sparse", cfg), (16, 16), 0.0)  # no threshold asked for: nothing to check
    make_tif(tmp_path / "sparse" / "full.tif", rng.integers(100, 200, (3, 64, 64)).astype(np.uint16), nodata=0)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        check_fillable(scan(tmp_path / "sparse", cfg), (16, 16), 0.5)
    assert "2 of 3 file(s) hold fewer valid pixels than one 16x16 window" in caplog.text
    caplog.clear()
    small = rng.integers(100, 200, (3, 10, 10)).astype(np.uint16)  # smaller than the window but all valid: padded
    (tmp_path / "small").mkdir()
    make_tif(tmp_path / "small" / "chip.tif", small, nodata=0)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        check_fillable(scan(tmp_path / "small", DataConfig(patch_size=16)), (16, 16), 0.5)
    assert "valid pixels" not in caplog.text


def test_data_spacing_on_rasters_is_said_to_do_nothing(tmp_path, make_tif, caplog) -> None:
    scenes(tmp_path / "plain", make_tif, n=1)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path / "plain", DataConfig(patch_size=32)), spacing=[2.0, 2.0])
    assert "data.spacing [2.0, 2.0] is for volumes" in caplog.text


def test_blank_volumes_are_warned_about_by_inspect_and_pretrain_and_a_folder_of_them_refused(tmp_path,
                                                                                            caplog) -> None:
    """A folder of all-zero volumes pretrained "successfully" on nothing (statistics of std 1e-6), and inspect
    said nothing: the survey both run warns about blank volumes, and pretraining refuses a folder of nothing else."""
    import nibabel as nib

    from geomed_ssl.data.survey import check_fillable
    from geomed_ssl.errors import DataError

    (tmp_path / "blank").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 24), np.float32), np.eye(4)), str(tmp_path / "blank" / "zero.nii.gz"))
    cfg = DataConfig(kind="volume", patch_size=16)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path / "blank", cfg))
    assert "1 volume(s) hold one value in every voxel (blank scans?)" in caplog.text
    with pytest.raises(DataError, match=r"every volume holds one value in every voxel \(blank scans\?\), e.g. "
                                        r"'.*zero.nii.gz': there is nothing to learn from"):
        check_fillable(scan(tmp_path / "blank", cfg), (16, 16, 16), 0.5)
    vol = np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "blank" / "scan.nii.gz"))
    check_fillable(scan(tmp_path / "blank", cfg), (16, 16, 16), 0.5)  # one scan holds data: trained on, warned


def test_a_time_series_nifti_read_as_channels_is_warned_about_and_a_few_contrasts_are_not(tmp_path, caplog) -> None:
    """A 4D NIfTI's 4th axis is read as channels (the Decathlon's FLAIR / T1 / T1c / T2 stacks); a 20-volume fMRI
    silently became a 20-channel model."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    for name, frames in (("contrasts", 4), ("bold", 20)):
        (tmp_path / name).mkdir()
        vol = rng.normal(size=(20, 20, 20, frames)).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / name / "scan.nii.gz"))
    cfg = DataConfig(kind="volume", patch_size=16)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path / "contrasts", cfg))
    assert "4th axis" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path / "bold", cfg))
    assert "scan.nii.gz' reads as 20 channels, from the 4th axis of 4D NIfTI: a time series" in caplog.text
    assert "split the file (fslsplit)" in caplog.text
    caplog.clear()
    (tmp_path / "stack").mkdir()
    for name, frames in (("flair", 20), ("t1", 1)):  # a series stacked beside a 3D contrast (data.channels)
        vol = rng.normal(size=(20, 20, 20, frames)).astype(np.float32).squeeze()
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "stack" / f"{name}.nii.gz"))
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path / "stack", DataConfig(kind="volume", patch_size=16, channels=["*flair*", "*t1*"])))
    assert "reads as 21 channels, from the 4th axis of 4D NIfTI" in caplog.text


def test_volumes_read_as_ct_that_do_not_look_like_ct_are_warned_about(tmp_path, caplog) -> None:
    """An MR scan in a CT folder (the abdomen sample's example_mr_sm) was clipped to the HU window without a word."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    (tmp_path / "mixed").mkdir()
    ct = rng.normal(0, 300, (24, 24, 24)).astype(np.float32)
    ct[:4] = -1024  # air
    nib.save(nib.Nifti1Image(ct, np.eye(4)), str(tmp_path / "mixed" / "ct.nii.gz"))
    cfg = DataConfig(kind="volume", patch_size=16, intensity="ct")
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path / "mixed", cfg), intensity="ct")
    assert "do not look like CT" not in caplog.text
    mr = rng.uniform(0, 800, (24, 24, 24)).astype(np.float32)
    nib.save(nib.Nifti1Image(mr, np.eye(4)), str(tmp_path / "mixed" / "mr.nii.gz"))
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path / "mixed", cfg), intensity="auto")  # auto reads it as MR: nothing to say
    assert "do not look like CT" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(scan(tmp_path / "mixed", cfg), intensity="ct")
    assert "1 volume(s) read as CT (data.intensity: ct) do not look like CT: '" in caplog.text
    assert "mr.nii.gz' reaches only 0" in caplog.text and "read MR with data.intensity: mr" in caplog.text


def test_bands_of_one_value_in_every_file_are_named_by_inspect(tmp_path, make_tif, caplog) -> None:
    """Bad bands written as zeros (an ENVI cube's bbl list, converted) carry nothing: inspect names them; a band
    constant in one file only, or at different values across files, is data."""
    rng = np.random.default_rng(0)
    for i in range(3):
        cube = rng.integers(800, 2200, (5, 32, 32)).astype(np.uint16)
        cube[1], cube[3] = 0, 0
        cube[4] = 100 + i  # one value per file, another in each: a constant scene, not a bad band
        make_tif(tmp_path / f"c{i}.tif", cube)
    catalog = scan(tmp_path, DataConfig(patch_size=32))
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(catalog, flat_bands=True)
    assert "2 band(s) hold one value in every file: band_2 (0), band_4 (0)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_survey(catalog)  # pretraining's statistics say it from their own windows
    assert "hold one value in every file" not in caplog.text
