"""Rasters as archives hold them: symlinked tile folders, formats the toolkit does not read, a nodata value in some
bands only, GDAL's wavelength-suffixed band names of converted ENVI cubes, per-band files named by their globs."""

from __future__ import annotations

import logging
import re
import os

import numpy as np
import pytest

from geomed_ssl.bands.names import resolve_band_info, split_wavelength_suffix
from geomed_ssl.config import DataConfig
from geomed_ssl.data.catalog import scan
from geomed_ssl.data.stats import compute_stats, normalize
from geomed_ssl.errors import DataError
from geomed_ssl.once import forget_said


def names(cat) -> list[str]:
    return sorted(os.path.relpath(r.path, cat.root) for r in cat.records)


def test_symlinked_tile_folders_are_read_once_and_a_link_loop_ends(tmp_path, make_tif, grad):
    store, archive = tmp_path / "store", tmp_path / "archive"
    make_tif(store / "tile_33TVM" / "a.tif", grad(2, 32, 32))
    make_tif(store / "tile_33TVM" / "b.tif", grad(2, 32, 32))
    make_tif(archive / "local.tif", grad(2, 32, 32))
    (archive / "tile_33TVM").symlink_to(store / "tile_33TVM", target_is_directory=True)
    (archive / "again").symlink_to(store / "tile_33TVM", target_is_directory=True)  # the same folder twice
    (store / "tile_33TVM" / "up").symlink_to(archive, target_is_directory=True)  # a loop back up
    cat = scan(archive, DataConfig(patch_size=32))
    found = names(cat)
    assert "local.tif" in found and len(found) == 3  # each real file once, whichever link reached it first
    assert {os.path.basename(p) for p in found} == {"local.tif", "a.tif", "b.tif"}


def test_formats_not_read_are_named_with_the_conversion(tmp_path, make_tif, grad, caplog):
    make_tif(tmp_path / "mixed" / "a.tif", grad(2, 32, 32))
    for name in ("b.jp2", "scene.img", "mosaic.vrt"):
        (tmp_path / "mixed" / name).write_bytes(b"\0" * 64)
    (tmp_path / "mixed" / "scene.hdr").write_text("ENVI\n")  # a sidecar: not counted
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        cat = scan(tmp_path / "mixed", DataConfig(patch_size=32))
    assert names(cat) == ["a.tif"]
    assert "3 files in formats not read (.img 1, .jp2 1, .vrt 1)" in caplog.text and "gdal_translate" in caplog.text

    only = tmp_path / "only"
    only.mkdir()
    (only / "T33TVM_B02.jp2").write_bytes(b"\0" * 64)
    with pytest.raises(DataError, match=r"1 file in formats not read \(\.jp2 1\).*gdal_translate -of COG"):
        scan(only, DataConfig(patch_size=32))
    with pytest.raises(DataError, match=r"cannot use '.*T33TVM_B02.jp2': 1 file in formats not read"):
        scan(only / "T33TVM_B02.jp2", DataConfig(patch_size=32))

    envi = tmp_path / "envi"  # ENVI cubes whose data file has no telling extension: known by the header's text
    envi.mkdir()
    for data, header in (("cube.dat", "cube.hdr"), ("flight", "flight.hdr"), ("b.dat", "b.dat.hdr"),
                         ("c.bin", "c.hdr")):
        (envi / data).write_bytes(b"\0" * 64)
        (envi / header).write_text("ENVI\nsamples = 4\n")
    (envi / "notes.dat").write_bytes(b"\0" * 64)
    (envi / "notes.hdr").write_text("not a header")
    make_tif(envi / "scene.tif", grad(2, 32, 32))  # ENVI's sidecar of a TIFF it opened, and a metadata file
    (envi / "scene.hdr").write_text("ENVI\nfile type = TIFF\n")
    (envi / "scene.xml").write_text("<x/>")
    (envi / "endmembers.sli").write_bytes(b"\0" * 64)  # a spectral library, not a cube
    (envi / "endmembers.hdr").write_text("ENVI\nfile type = ENVI Spectral Library\n")
    (envi / "readme.docx").write_bytes(b"\0" * 64)  # a document beside a header-like note
    (envi / "readme.hdr").write_text("ENVI notes\n")
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        assert names(scan(envi, DataConfig(patch_size=32))) == ["scene.tif"]
    assert re.search(r"4 files in formats not read \(ENVI \(.hdr and its data\) 4\).*ENVI cube", caplog.text)


def test_a_band_at_nodata_in_a_pixel_other_bands_cover_is_no_value_of_that_band(tmp_path, make_tif):
    rng = np.random.default_rng(0)
    arr = rng.integers(1000, 2000, (3, 40, 40)).astype(np.int16)
    arr[2, 25:, :] = -9999  # one band's gap (a coarser band's edge), the other bands valid there
    arr[:, :, :3] = -9999  # a strip without data in every band
    make_tif(tmp_path / "s.tif", arr, nodata=-9999)
    cfg = DataConfig(patch_size=40, stats_windows=4)
    cat = scan(tmp_path, cfg)
    stats = compute_stats(cat, cfg)
    assert min(stats.p1) >= 1000 and min(stats.mean) > 1000  # -9999 is no band's value
    assert stats.count[2] < stats.count[0]
    x, valid = normalize(arr, stats, -9999)
    assert valid[30, 10] and not valid[10, 1]  # GDAL's rule: missing where every band is
    assert x[2, 30, 10] == 0.0 and x[0, 30, 10] != 0.0  # the gap is fed as the band's mean


def test_statistics_of_version_2_feed_a_band_gap_as_read_as_their_models_were_trained(caplog, monkeypatch):
    """Version 2 counted a band's own nodata in its statistics and fed it as read (clipped to p1): a model trained
    so is fed the same, not the version-3 rule's 0, with one note; a resumed run keeps that rule too."""
    from geomed_ssl.data.stats import BandStats

    forget_said()
    arr = np.full((2, 4, 4), 1500, np.int16)
    arr[1, 0, :] = -9999  # band 2's gap in pixels band 1 covers
    bands = [{"name": n, "mean": 0.0, "std": 1000.0, "p1": -9999.0, "p99": 2000.0, "count": 10} for n in "ab"]
    v2 = BandStats.from_dict({"version": 2, "bands": bands})
    with caplog.at_level("INFO", logger="geomed_ssl"):
        x2, valid = normalize(arr, v2, -9999)
        normalize(arr, v2, -9999)
    assert valid.all() and x2[1, 0, 0] == pytest.approx(-9.999)  # as read: (-9999 - 0) / 1000
    assert len([r for r in caplog.records if "predate version 3" in r.getMessage()]) == 1  # once
    v3 = BandStats.from_dict({"version": 3, "bands": bands})
    assert normalize(arr, v3, -9999)[0][1, 0, 0] == 0.0 and v2.to_dict()["version"] == 2
    # version 2 written under version 3's rule (before the version was raised): its gappy band counts fewer values
    early = BandStats.from_dict({"version": 2, "bands": [bands[0], {**bands[1], "count": 8}]})
    assert early.version == 3 and normalize(arr, early, -9999)[0][1, 0, 0] == 0.0


def test_a_folder_mixing_two_sensors_under_the_same_band_names_keeps_the_majoritys(tmp_path, make_tif, grad):
    """GDAL names every converted ENVI cube's bands "Band 1" ...: an EnMAP-like cube beside two AVIRIS-like ones
    passed the catalog as one sensor. Files whose same-named bands lie elsewhere are problems, naming a band."""
    def cube(name: str, centres: tuple[float, ...]) -> None:
        make_tif(tmp_path / name, grad(3, 32, 32), descriptions=[f"Band {i + 1} ({c} Micrometers)"
                                                                  for i, c in enumerate(centres)])

    cube("a1.tif", (0.40, 0.50, 0.60))
    cube("a2.tif", (0.405, 0.5, 0.6))  # the same sensor, measured centres a few nm off
    cube("enmap.tif", (0.42, 0.9, 1.6))
    catalog = scan(tmp_path, DataConfig(patch_size=16))
    assert sorted(os.path.basename(r.path) for r in catalog.records) == ["a1.tif", "a2.tif"]
    (problem,) = catalog.problems
    assert problem.path.endswith("enmap.tif") and "Band 1 at 0.42 µm, not 0.4 µm (another sensor's" in problem.reason


def test_gdal_wavelength_suffixes_of_converted_envi_names_are_split_off():
    assert split_wavelength_suffix("B01 (0.443 Micrometers)") == ("B01", 0.443)
    assert split_wavelength_suffix("Band 12 (2190.0 Nanometers)") == ("Band 12", 2.19)
    assert split_wavelength_suffix("NIR (broad)") == ("NIR (broad)", None)
    assert split_wavelength_suffix("377.00 Nanometers") == ("377.00 Nanometers", 0.377)  # ENVI: wavelengths only
    bare = resolve_band_info(2, ["377.00 Nanometers", "382.01 Nanometers"], None, DataConfig(), "avng.tif")
    assert bare.names == ["377.00 Nanometers", "382.01 Nanometers"] and bare.wavelengths == [0.377, 0.38201]
    info = resolve_band_info(2, ["Band 1 (0.4430 Micrometers)", "Band 2 (0.4901 Micrometers)"], None, DataConfig(),
                             "cube.tif")
    assert info.names == ["Band 1", "Band 2"] and info.wavelengths == [0.443, 0.4901] and info.source == "file"
    tagged = resolve_band_info(2, ["B01 (0.443 Micrometers)", "B02 (0.49 Micrometers)"],
                               {1: {"CENTRAL_WAVELENGTH_UM": "0.4427"}}, DataConfig(), "cube.tif")
    assert tagged.wavelengths == [0.4427, 0.49]  # the IMAGERY tag, where there is one, is the more exact


def test_per_band_files_take_their_globs_names_before_a_sensor_profile(tmp_path, make_tif, grad):
    for band in ("B02", "B05"):
        make_tif(tmp_path / "scene1" / f"T33TVM_{band}.tif", grad(1, 32, 32))
    cfg = DataConfig(patch_size=32, sensor="sentinel2", channels=["*B02*", "*B05*"])
    cat = scan(tmp_path, cfg)
    assert cat.band_names == ["B02", "B05"] and cat.wavelengths == pytest.approx([0.49, 0.705], abs=0.01)


def test_inspect_guesses_rasters_from_upper_case_extensions(tmp_path, make_tif, make_nii, grad):
    from geomed_ssl.files.kinds import guess_kind

    make_tif(tmp_path / "SCENE1.TIF", grad(2, 32, 32))
    make_nii(tmp_path / "atlas.nii.gz", np.zeros((8, 8, 8), np.float32))
    assert guess_kind(tmp_path) == "raster"


def test_volumes_in_formats_not_read_are_taken_for_volumes_so_inspect_says_to_convert_them(tmp_path, make_tif, grad):
    """FreeSurfer's .mgz, NRRD, MetaImage and Analyze .img/.hdr were taken for rasters and told nothing of use; and
    without a recipe inspect never said which files it does not read."""
    from typer.testing import CliRunner

    from geomed_ssl.cli import app
    from geomed_ssl.files.kinds import guess_kind

    (tmp_path / "fs").mkdir()
    for name in ("brain.mgz", "T1.mgz"):
        (tmp_path / "fs" / name).write_bytes(b"\0" * 64)
    (tmp_path / "an").mkdir()  # Analyze 7.5: a binary header that starts with its size, 348
    (tmp_path / "an" / "scan.img").write_bytes(b"\0" * 64)
    (tmp_path / "an" / "scan.hdr").write_bytes((348).to_bytes(4, "little") + b"\0" * 344)
    assert guess_kind(tmp_path / "fs") == guess_kind(tmp_path / "an") == guess_kind(tmp_path / "an" / "scan.img")
    assert guess_kind(tmp_path / "an") == "volume"
    (tmp_path / "envi").mkdir()  # an ENVI hyperspectral cube is a raster: its header is text
    (tmp_path / "envi" / "cube.img").write_bytes(b"\0" * 64)
    (tmp_path / "envi" / "cube.hdr").write_text("ENVI\nsamples = 4\n")
    assert guess_kind(tmp_path / "envi") == guess_kind(tmp_path / "envi" / "cube.img") == "raster"
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "fs")])
    assert result.exit_code == 2 and ".mgz 2" in result.output and "convert them to NIfTI" in result.output
    (tmp_path / "mixed").mkdir()
    make_tif(tmp_path / "mixed" / "scene.tif", grad(2, 32, 32))
    (tmp_path / "mixed" / "B01.jp2").write_bytes(b"\0" * 64)
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "mixed")])
    assert result.exit_code == 0 and "formats not read (.jp2 1)" in result.output


def test_a_dicom_series_is_taken_for_volumes_so_the_error_says_to_convert_it(tmp_path):
    from typer.testing import CliRunner

    from geomed_ssl.cli import app

    (tmp_path / "series").mkdir()
    for i in range(2):
        (tmp_path / "series" / f"IM{i:04d}.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "no usable volume files" in result.output and "dcm2niix" in result.output


@pytest.mark.parametrize("name", ["IM0001", "1.2.840.113619.2.55.3.320"])
def test_dicom_files_named_without_dcm_are_told_apart_by_content(tmp_path, name):
    """Scanners write DICOM series as IM0001 or by UID: the error names them, not "0 with .nii" alone."""
    from typer.testing import CliRunner

    from geomed_ssl.cli import app

    (tmp_path / "series").mkdir()
    (tmp_path / "series" / name).write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    (tmp_path / "series" / "README").write_bytes(b"not an image at all, and long enough to hold 132 bytes " * 4)
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "no usable volume files" in result.output
    assert "1 file in formats not read (DICOM without .dcm 1)" in result.output and "dcm2niix" in result.output


def test_a_rotated_label_grid_is_called_rotated_not_another_pixel_size(tmp_path, make_tif, grad):
    from affine import Affine

    from geomed_ssl.labels.grids import raster_grid_diffs

    north_up = Affine(10, 0, 500000, 0, -10, 5100000)
    rotated = north_up * Affine.rotation(20)
    make_tif(tmp_path / "lulc.tif", grad(1, 32, 32, dtype="uint8"), transform=north_up)
    from rasterio.crs import CRS

    diffs = raster_grid_diffs((32, 32), CRS.from_epsg(32633).to_wkt(), list(rotated)[:6], str(tmp_path / "lulc.tif"))
    assert diffs == ["grid rotated by 0° vs -20°"]  # both grids have 10 m pixels


def test_envi_style_wavelength_tags_give_the_bands_wavelengths(tmp_path, make_tif, grad):
    tags = [{"wavelength": "443.0", "wavelength_units": "Nanometers"}, {"wavelength": "0.49", "wavelength_units":
                                                                        "Micrometers"}]
    make_tif(tmp_path / "cube.tif", grad(2, 32, 32), band_tags=tags)
    assert scan(tmp_path, DataConfig(patch_size=32)).wavelengths == pytest.approx([0.443, 0.49])


def test_a_band_holding_only_its_nodata_value_trains_as_zero_with_a_warning(tmp_path, make_tif, caplog):
    rng = np.random.default_rng(1)
    arr = rng.integers(1000, 2000, (3, 40, 40)).astype(np.int16)
    arr[1] = 0  # a zero-filled band (B10 of an L2A stack) with nodata 0
    make_tif(tmp_path / "s.tif", arr, nodata=0)
    cfg = DataConfig(patch_size=40, stats_windows=4)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        stats = compute_stats(scan(tmp_path, cfg), cfg)
    assert "hold only their nodata value" in caplog.text and "band_2" in caplog.text
    assert all(np.isfinite(v) for v in [*stats.mean, *stats.std, *stats.p1, *stats.p99])
    x, valid = normalize(arr, stats, 0)
    assert valid.all() and (x[1] == 0).all()


def test_a_band_gap_is_no_part_of_the_files_value_range(tmp_path, make_tif):
    rng = np.random.default_rng(2)
    arr = (rng.random((2, 40, 40)) * 0.4).astype(np.float32)
    arr[1, :10] = -9999  # 25 % of one band
    make_tif(tmp_path / "s.tif", arr, nodata=-9999)
    (record,) = scan(tmp_path, DataConfig(patch_size=40)).records
    assert min(row[0] for row in record.value_range) >= 0  # so no false "far from the statistics" warning


def test_names_that_only_differ_by_a_wavelength_ending_or_zero_padding_still_meet_a_models_bands():
    from geomed_ssl.bands.matching import band_order

    older_model = ["B01 (0.443 Micrometers)", "B02 (0.49 Micrometers)"]  # named before the ending was taken off
    assert band_order(older_model, ["B02", "B01"], "scene.tif") == [1, 0]
    assert band_order(["B01", "B02"], ["B2", "B1"], "scene.tif") == [1, 0]
    with pytest.raises(DataError, match=r"missing.*names bands like the model's \(B2 ~ B02, B3 ~ B03, B4 ~ B04, B8 ~ "
                                         r"B08\) but holds others too"):  # Landsat-8's B8 is not Sentinel-2's B08
        band_order(["B02", "B03", "B04", "B08"], [f"B{i}" for i in range(1, 12)], "landsat8.tif")
    with pytest.raises(DataError, match="missing"):
        band_order(["B01", "B09"], ["B1", "B2"], "scene.tif")
    same = resolve_band_info(2, ["Reflectance (400 nm)", "Reflectance (410 nm)"], None, DataConfig(), "c.tif")
    assert same.names == ["Reflectance (400 nm)", "Reflectance (410 nm)"]  # would collide without the ending
    assert same.wavelengths == pytest.approx([0.4, 0.41])


def test_quicklooks_a_recipe_leaves_out_raise_no_warning(tmp_path, make_tif, grad, caplog):
    make_tif(tmp_path / "a.tif", grad(2, 32, 32))
    (tmp_path / "a_rgb.png").write_bytes(b"\x89PNG" + b"\0" * 60)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        scan(tmp_path, DataConfig(patch_size=32))
        assert 'data.exclude, e.g. "*.png"' in caplog.text
        caplog.clear()
        scan(tmp_path, DataConfig(patch_size=32, exclude=["*.png"]))
    assert "formats not read" not in caplog.text


def test_links_inside_the_data_or_above_it_are_not_followed_and_a_linked_file_is_read_once(tmp_path, make_tif,
                                                                                             grad):
    data = tmp_path / "data"
    make_tif(data / "real" / "a.tif", grad(2, 32, 32))
    make_tif(data / "real" / "b.tif", grad(2, 32, 32))
    (data / "alias").symlink_to(data / "real", target_is_directory=True)  # inside the data: read as real/
    (data / "real" / "up").symlink_to(tmp_path, target_is_directory=True)  # holds the data: outside files, a loop
    (data / "real" / "a_again.tif").symlink_to(data / "real" / "a.tif")  # datalad-style second name of one file
    make_tif(tmp_path / "outside.tif", grad(2, 32, 32))
    assert names(scan(data, DataConfig(patch_size=32))) == ["real/a.tif", "real/b.tif"]
    assert names(scan(data, DataConfig(patch_size=32, include=["real/**"]))) == ["real/a.tif", "real/b.tif"]


def test_a_link_into_an_output_folder_of_ours_is_not_read_as_data(tmp_path, make_tif, grad):
    from geomed_ssl.outdirs import prepare_out_dir

    make_tif(tmp_path / "data" / "a.tif", grad(2, 32, 32))
    clusters = prepare_out_dir(tmp_path / "clu", command="cluster")
    make_tif(clusters / "maps" / "a_clusters.tif", grad(2, 32, 32))
    (tmp_path / "data" / "maps_link").symlink_to(clusters / "maps", target_is_directory=True)
    assert names(scan(tmp_path / "data", DataConfig(patch_size=32))) == ["a.tif"]


def test_a_labels_folder_that_links_to_the_images_gives_no_image_as_its_own_label(tmp_path, make_tif, grad):
    from geomed_ssl.labels import match_labels

    make_tif(tmp_path / "images" / "b7.tif", grad(1, 32, 32))
    (tmp_path / "labels").symlink_to(tmp_path / "images", target_is_directory=True)
    records = scan(tmp_path / "images", DataConfig(patch_size=32)).records
    with pytest.raises(DataError, match="no label file"):
        match_labels(records, tmp_path / "labels", "raster")


def test_split_folders_of_links_keep_the_name_the_selection_asks_for(tmp_path, make_tif, grad):
    data = tmp_path / "d"
    make_tif(data / "all" / "x1.tif", grad(2, 32, 32))
    make_tif(data / "all" / "x2.tif", grad(2, 32, 32))
    (data / "sel").mkdir()
    (data / "sel" / "x1.tif").symlink_to(data / "all" / "x1.tif")
    assert names(scan(data, DataConfig(patch_size=32, include=["sel/**"]))) == ["sel/x1.tif"]
    assert names(scan(data, DataConfig(patch_size=32))) == ["all/x1.tif", "all/x2.tif"]  # one file, one name


def test_a_link_to_a_hidden_store_inside_the_data_is_followed(tmp_path, make_tif, grad):
    data = tmp_path / "d"
    make_tif(data / ".store" / "c.tif", grad(2, 32, 32))
    (data / "hid").symlink_to(data / ".store", target_is_directory=True)
    assert names(scan(data, DataConfig(patch_size=32))) == ["hid/c.tif"]


def test_thick_slices_read_at_their_own_grid_and_rotation_in_an_unequal_plane_are_warned_about(tmp_path, make_nii):
    """0.5 x 0.5 x 5 mm volumes with data.spacing null: windows are 10x longer in mm along one axis (one warning);
    rotation prediction about axis 0 turns in the A-S plane, 0.5 x 5 mm voxels, whose quarter turns show by the voxels'
    shape (one warning naming the axis whose plane is square); at data.spacing [1, 1, 1] neither applies."""
    from geomed_ssl.data.survey import voxel_warnings

    make_nii(tmp_path / "a.nii.gz", np.ones((16, 16, 8), np.float32), np.diag([0.5, 0.5, 5.0, 1.0]))
    records = scan(tmp_path, DataConfig(kind="volume", patch_size=4)).records
    lines = voxel_warnings(records, None, rotation_axis=0)
    assert len(lines) == 2 and "0.5 x 0.5 x 5 mm" in lines[0] and "10x longer" in lines[0]
    assert "plane of voxels of 0.5 x 5 mm" in lines[1] and "method.axis=2" in lines[1]
    assert voxel_warnings(records, [1.0, 1.0, 1.0], rotation_axis=0) == []


def test_thick_volumes_are_warned_about_whatever_the_file_order_and_mixed_voxel_sizes_too(tmp_path, make_nii):
    """One 1 mm volume beside one of 0.5 x 0.5 x 7.5 mm (spinal-cord T2 and T2*): the warning followed whichever
    file sorted first (a tie of the most common size), and volumes of several voxel sizes were never warned about
    (rasters of several pixel sizes were). The window and tokens the recipe gives are measured in mm as chosen."""
    from geomed_ssl.data.survey import voxel_warnings

    for first, second in (("a", "z"), ("z", "a")):
        folder = tmp_path / first
        make_nii(folder / f"{first}_iso.nii.gz", np.ones((32, 32, 32), np.float32), np.eye(4))
        make_nii(folder / f"{second}_thick.nii.gz", np.ones((32, 32, 9), np.float32), np.diag([0.5, 0.5, 7.5, 1.0]))
        records = scan(folder, DataConfig(kind="volume", patch_size=4)).records
        lines = voxel_warnings(records, None, window=16, tokens=4)
        assert len(lines) == 2, lines
        assert "1 of 2 volumes have voxels of 0.5 x 0.5 x 7.5 mm" in lines[0]
        assert "windows are 8 x 8 x 120 mm and tokens 2 x 2 x 30 mm, up to 15x longer" in lines[0]
        assert "several voxel sizes" in lines[1] and "7.5x apart" in lines[1]
        chosen = voxel_warnings(records, None, window=[16, 16, 2], tokens=[8, 8, 1])  # 8 x 8 x 15 mm: 1.9x
        assert len(chosen) == 2 and "several voxel sizes" in chosen[1]  # and on the 1 mm voxels the window is flat:
        assert "give windows of 16 x 16 x 2 mm and tokens of 8 x 8 x 1 mm on voxels of 1 x 1 x 1 mm" in chosen[0]
        assert "data.spacing" not in chosen[0]  # the sizes chosen, not the voxels, make it so
        assert voxel_warnings(records, [1.0, 1.0, 1.0]) == []
        at_one = voxel_warnings(records, [1.0, 1.0, 1.0], window=[16, 16, 2], tokens=[8, 8, 1])
        assert len(at_one) == 1 and "give windows of 16 x 16 x 2 mm" in at_one[0]  # data.spacing does not hide it


def test_a_complex_int16_sar_file_is_refused_like_other_complex_data(tmp_path):
    """GDAL's CInt16 (Sentinel-1 SLC as some tools write it) has no numpy type: a TypeError traceback before."""
    import rasterio
    import rasterio.shutil
    from rasterio.transform import from_origin

    cf32 = tmp_path / "cf32.tif"
    with rasterio.open(cf32, "w", driver="GTiff", height=32, width=32, count=1, dtype="complex64",
                       transform=from_origin(0, 0, 10, 10), crs="EPSG:32633") as ds:
        ds.write((np.ones((1, 32, 32)) * (1 + 2j)).astype(np.complex64))
    vrt = tmp_path / "ci16.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="32" rasterYSize="32"><VRTRasterBand dataType="CInt16" band="1">'
                   f'<SimpleSource><SourceFilename relativeToVRT="0">{cf32}</SourceFilename><SourceBand>1</SourceBand>'
                   '</SimpleSource></VRTRasterBand></VRTDataset>')
    (tmp_path / "slc").mkdir()
    rasterio.shutil.copy(vrt, tmp_path / "slc" / "slc_ci16.tif", driver="GTiff")
    with pytest.raises(DataError, match=r"slc_ci16.tif.*holds complex values \(complex_int16\)"):
        scan(tmp_path / "slc", DataConfig(patch_size=32), strict=True)


def test_a_palette_image_is_refused_as_indices_not_intensities(tmp_path):
    """A colour-mapped GeoTIFF was read as its index numbers, z-scored and trained on, without a word."""
    import rasterio
    from rasterio.transform import from_origin

    (tmp_path / "pal").mkdir()
    with rasterio.open(tmp_path / "pal" / "map.tif", "w", driver="GTiff", height=32, width=32, count=1,
                       dtype="uint8", transform=from_origin(0, 0, 10, 10), crs="EPSG:32633") as ds:
        ds.write(np.random.default_rng(0).integers(0, 6, (1, 32, 32)).astype(np.uint8))
        ds.write_colormap(1, {i: (40 * i, 255 - 40 * i, 0, 255) for i in range(6)})
    with pytest.raises(DataError, match=r"map.tif.*palette indices, not intensities.*gdal_translate -expand rgb"):
        scan(tmp_path / "pal", DataConfig(patch_size=32), strict=True)
    (tmp_path / "bits").mkdir()  # a 1-bit mask: GDAL gives it a palette too, but it is no colour-mapped image
    with rasterio.open(tmp_path / "bits" / "cloud.tif", "w", driver="GTiff", height=32, width=32, count=1,
                       dtype="uint8", nbits=1, transform=from_origin(0, 0, 10, 10), crs="EPSG:32633") as ds:
        ds.write(np.random.default_rng(0).integers(0, 2, (1, 32, 32)).astype(np.uint8))
    with pytest.raises(DataError, match=r"cloud.tif.*holds 1-bit values \(a mask or binary map.*--labels"):
        scan(tmp_path / "bits", DataConfig(patch_size=32), strict=True)


def test_a_big_endian_complex_nifti_is_refused(tmp_path):
    """Its dtype reads '>c8', not 'complex64': the check by name let it through, its imaginary part dropped."""
    import nibabel as nib

    (tmp_path / "vol").mkdir()
    header = nib.Nifti1Header(endianness=">")
    header.set_data_dtype(np.dtype(">c8"))
    data = (np.ones((16, 16, 16)) * (1 + 2j)).astype(np.complex64)
    nib.save(nib.Nifti1Image(data, np.eye(4), header), str(tmp_path / "vol" / "phase.nii.gz"))
    with pytest.raises(DataError, match=r"phase.nii.gz.*holds complex values"):
        scan(tmp_path / "vol", DataConfig(kind="volume", patch_size=16), strict=True)


def test_quicklook_pictures_beside_a_scene_are_not_called_data_to_convert(tmp_path, make_tif, grad, caplog):
    import logging

    make_tif(tmp_path / "LC08_SR_B2.TIF", grad(1, 32, 32))
    for name in ("LC08_thumb_small.jpeg", "LC08_thumb_large.jpeg", "quicklook.png"):
        (tmp_path / name).write_bytes(b"\xff\xd8\xff")
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        scan(tmp_path, DataConfig(patch_size=16))
    assert "formats not read" not in caplog.text


def test_a_totalsegmentator_subject_does_not_warn_that_its_segmentations_folder_may_be_data(tmp_path, caplog):
    import logging

    import nibabel as nib

    vol = np.zeros((8, 8, 8), np.float32)
    (tmp_path / "s0001" / "segmentations").mkdir(parents=True)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "s0001" / "ct.nii.gz"))
    for organ in ("liver", "spleen"):
        nib.save(nib.Nifti1Image(vol.astype(np.uint8), np.eye(4)), str(tmp_path / "s0001" / "segmentations" /
                                                                       f"{organ}.nii.gz"))
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        cat = scan(tmp_path, DataConfig(kind="volume", patch_size=4, intensity="none", exclude=["*seg*"]))
    assert [r.path.rsplit("/", 1)[-1] for r in cat.records] == ["ct.nii.gz"] and "leaves out folder" not in caplog.text
