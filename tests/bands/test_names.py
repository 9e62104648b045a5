from __future__ import annotations

import pytest

from geomed_ssl.config import DataConfig
from geomed_ssl.bands import names as bands
from geomed_ssl.bands.names import false_colour_bands, indian_pines_bands, resolve_band_info, sensor_profile
from geomed_ssl.bands.matching import band_order, describe_order
from geomed_ssl.errors import ConfigError, DataError

EUROSAT_ORDER = "B01 B02 B03 B04 B05 B06 B07 B08 B09 B10 B11 B12 B8A".split()


def test_sentinel2_profile_lists_13_msi_bands_in_micrometres():
    s2 = sensor_profile("sentinel2")
    assert list(s2) == "B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12".split()
    assert s2["B04"] == pytest.approx(0.665) and s2["B8A"] == pytest.approx(0.865) and s2["B12"] == pytest.approx(2.19)


def test_landsat_profiles_use_usgs_band_names():
    l8, l7 = sensor_profile("landsat8"), sensor_profile("landsat7")
    assert list(l8) == [f"B{i}" for i in range(1, 12)] and l8["B1"] == pytest.approx(0.443)
    assert l8["B10"] > 10 and l8["B11"] > 11  # thermal
    assert list(l7) == [f"B{i}" for i in range(1, 9)] and l7["B6"] > 10


def test_aviris_profile_has_224_increasing_channels_per_spectrometer():
    names, wl = bands.aviris_224_bands()
    assert len(names) == 224 and names[0] == "CH001" and names[-1] == "CH224"
    assert 0.38 < wl[0] < 0.40 and 2.49 < wl[-1] < 2.51
    for lo, hi in ((0, 32), (32, 96), (96, 160), (160, 224)):  # each spectrometer increases monotonically
        assert all(a < b for a, b in zip(wl[lo:hi], wl[lo + 1:hi]))


def test_indian_pines_bands_keep_200_named_by_original_index():
    names, wl = indian_pines_bands()
    assert len(names) == len(wl) == 200
    assert names[:2] == ["B001", "B002"] and names[-1] == "B219"
    dropped = {f"B{i:03d}" for i in [*range(104, 109), *range(150, 164), 220]}
    assert not dropped & set(names) and "B103" in names and "B109" in names
    assert wl[0] == pytest.approx(0.40002) and all(0.39 < w < 2.51 for w in wl)


def test_unknown_sensor_is_a_config_error_listing_known_ones():
    with pytest.raises(ConfigError, match="sentinel2"):
        sensor_profile("modis")


def test_descriptions_win_over_config_band_names_and_a_warning_says_so(caplog):
    cfg = DataConfig(band_names=["x", "y"])
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        names = resolve_band_info(2, ["B04", "B08"], {}, cfg, "f.tif").names
        resolve_band_info(2, ["B04", "B08"], {}, cfg, "g.tif")
    assert names == ["B04", "B08"]
    assert caplog.text.count("data.band_names (x, y) is not used for them") == 1  # once, not per file


def test_partial_descriptions_fall_back_to_config_names():
    info = resolve_band_info(2, ["B04", None], {}, DataConfig(band_names=["red", "nir"]), "f.tif")
    names, wl = info.names, info.wavelengths
    assert names == ["red", "nir"] and wl is None


def test_partly_described_file_keeps_its_names_and_calls_the_others_by_position(caplog):
    """An appended QA band without a description no longer costs the named bands their names (nor asks for a
    sensor's count): the named ones keep them, the others get band_<position>; said once per name list."""
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        info = resolve_band_info(5, ["B02", "B03", "B04", "B08", None], {}, DataConfig(sensor="sentinel2"), "f.tif")
        resolve_band_info(5, ["B02", "B03", "B04", "B08", ""], {}, DataConfig(sensor="sentinel2"), "g.tif")
    assert info.names == ["B02", "B03", "B04", "B08", "band_5"] and info.source == "partial"
    assert info.wavelengths[:4] == pytest.approx([0.49, 0.56, 0.665, 0.842]) and info.wavelengths[4] is None
    assert caplog.text.count("name 4 of their 5 bands (B02, B03, B04, B08); the others are called band_5") == 1
    assert resolve_band_info(3, ["red"], {}, DataConfig(), "h.tif").names == ["red", "band_2", "band_3"]
    # descriptions that agree with the sensor profile by position: the profile names the rest, as before (a model
    # trained on such files still meets them), with its positional warning; B8A stored last contradicts it
    s2 = list(sensor_profile("sentinel2"))
    agree = resolve_band_info(13, [*s2[:12], None], {}, DataConfig(sensor="sentinel2"), "i.tif")
    assert agree.names == s2 and agree.source == "sensor"
    eurosat = [*s2[:8], *s2[9:], None]  # B8A last, undescribed
    last = resolve_band_info(13, eurosat, {}, DataConfig(sensor="sentinel2"), "j.tif")
    assert last.names == [*eurosat[:12], "band_13"] and last.source == "partial"


def test_sensor_profile_names_bands_when_count_matches():
    info = resolve_band_info(13, [None] * 13, {}, DataConfig(sensor="sentinel2"), "f.tif")
    names, wl = info.names, info.wavelengths
    assert names == list(sensor_profile("sentinel2")) and wl[8] == pytest.approx(0.865)


def test_sensor_profile_with_other_band_count_is_data_error_naming_file_count_and_fix():
    with pytest.raises(DataError, match=r"f\.tif.*4 bands.*sentinel2.*13.*data\.band_names"):
        resolve_band_info(4, [None] * 4, {}, DataConfig(sensor="sentinel2"), "f.tif")


def test_generic_names_without_any_hint():
    info = resolve_band_info(3, [None] * 3, {}, DataConfig(), "f.tif")
    names, wl = info.names, info.wavelengths
    assert names == ["band_1", "band_2", "band_3"] and wl is None


def test_wavelengths_follow_band_names_not_positions_for_eurosat_order():
    cfg = DataConfig(sensor="sentinel2", band_names=EUROSAT_ORDER)
    info = resolve_band_info(13, [None] * 13, {}, cfg, "e.tif")
    names, wl = info.names, info.wavelengths
    assert names[-1] == "B8A" and wl[-1] == pytest.approx(0.865) and wl[8] == pytest.approx(0.945)


def test_loose_name_matching_b1_equals_b01():
    assert bands.lookup_wavelengths(["b1", "B8a"], "sentinel2") == [pytest.approx(0.443), pytest.approx(0.865)]


def test_config_wavelengths_win_and_must_match_band_count():
    cfg = DataConfig(sensor="sentinel2", band_names=["B02", "B03"], wavelengths=[0.5, 0.6])
    assert resolve_band_info(2, [None, None], {}, cfg, "f.tif").wavelengths == [0.5, 0.6]
    with pytest.raises(DataError, match="data.wavelengths lists 2"):
        resolve_band_info(3, [None] * 3, {}, DataConfig(wavelengths=[0.5, 0.6]), "f.tif")


def test_data_wavelengths_correct_a_files_tags_and_tags_in_no_length_unit_give_none():
    """data.wavelengths wins over a file's own (it corrects wrong ones); ENVI's "Index" / "Unknown" / "Wavenumber"
    units are no lengths: such tags give no wavelength (band numbers 1..4 were read as 1-4 µm)."""
    tags = {i + 1: {"wavelength": str(i + 1), "wavelength_units": "Index"} for i in range(3)}
    assert resolve_band_info(3, [None] * 3, tags, DataConfig(), "index.tif").wavelengths is None
    given = DataConfig(wavelengths=[0.4, 0.41, 0.42])
    assert resolve_band_info(3, [None] * 3, tags, given, "index.tif").wavelengths == [0.4, 0.41, 0.42]
    nm = {i + 1: {"wavelength": str(400 + 10 * i), "wavelength_units": "Nanometers"} for i in range(3)}
    assert resolve_band_info(3, [None] * 3, nm, DataConfig(), "nm.tif").wavelengths == \
        [pytest.approx(0.4), pytest.approx(0.41), pytest.approx(0.42)]


def test_band_widths_come_from_fwhm_um_or_a_fwhm_tag_in_the_wavelengths_units():
    """GDAL writes FWHM_UM; tools writing ENVI cubes a plain ``fwhm`` in the wavelengths' units (nanometres here)."""
    tags = {1: {"FWHM_UM": "0.01"}, 2: {"fwhm": "12", "wavelength": "500", "wavelength_units": "Nanometers"},
            3: {"fwhm": "9.5"}}
    info = resolve_band_info(3, [None] * 3, tags, DataConfig(), "cube.tif")
    assert info.bandwidths == [pytest.approx(0.01), pytest.approx(0.012), pytest.approx(0.0095)]
    index = {1: {"fwhm": "1", "wavelength_units": "Index"}}
    assert resolve_band_info(1, [None], index, DataConfig(), "cube.tif").bandwidths is None


def test_central_wavelength_tag_used_when_no_profile():
    tags = {1: {"CENTRAL_WAVELENGTH_UM": "0.49"}, 2: {"CENTRAL_WAVELENGTH_UM": "0.56"}}
    assert resolve_band_info(2, ["blue", "green"], tags, DataConfig(), "f.tif").wavelengths == [0.49, 0.56]


def test_config_band_names_of_wrong_length_is_data_error():
    with pytest.raises(DataError, match="data.band_names lists 2"):
        resolve_band_info(3, [None] * 3, {}, DataConfig(band_names=["a", "b"]), "f.tif")


def test_false_colour_uses_sentinel2_names_in_any_order():
    assert false_colour_bands(EUROSAT_ORDER, None) == (3, 2, 1)


def test_false_colour_uses_wavelengths_when_names_unknown():
    names, wl = indian_pines_bands()
    r, g, b = false_colour_bands(names, wl)
    assert abs(wl[r] - 0.65) < 0.01 and abs(wl[g] - 0.56) < 0.01 and abs(wl[b] - 0.48) < 0.01
    l7 = sensor_profile("landsat7")
    assert false_colour_bands(list(l7), list(l7.values())) == (2, 1, 0)  # B3 red, B2 green, B1 blue


def test_false_colour_spreads_or_repeats_without_hints():
    assert false_colour_bands(["a"], None) == (0, 0, 0)
    assert false_colour_bands(["a", "b"], None) == (0, 1, 1)
    assert len(set(false_colour_bands([f"b{i}" for i in range(10)], None))) == 3


def test_band_info_says_where_the_names_came_from():
    s2 = DataConfig(sensor="sentinel2")
    assert bands.resolve_band_info(2, ["B04", "B08"], {}, s2, "f.tif").source == "file"
    assert bands.resolve_band_info(2, [None] * 2, {}, DataConfig(band_names=["a", "b"]), "f.tif").source == "recipe"
    assert bands.resolve_band_info(13, [None] * 13, {}, s2, "f.tif").source == "sensor"
    assert bands.resolve_band_info(2, [None] * 2, {}, DataConfig(), "f.tif", ["t1", "t2"]).source == "channels"
    assert bands.resolve_band_info(2, [None] * 2, {}, DataConfig(), "f.tif").source == "index"


def test_fwhm_tags_give_band_widths_in_micrometres():
    tags = {1: {"FWHM_UM": "0.0101"}, 2: {"IMAGERY:FWHM_UM": "0.0095"}, 3: {"FWHM_UM": "bad"}}
    info = bands.resolve_band_info(3, ["a", "b", "c"], tags, DataConfig(), "f.tif")
    assert info.bandwidths == [pytest.approx(0.0101), pytest.approx(0.0095), None]
    assert bands.resolve_band_info(3, ["a", "b", "c"], {}, DataConfig(), "f.tif").bandwidths is None


def test_band_order_reorders_by_name_and_drops_extra_bands():
    assert band_order(["B02", "B03"], ["B02", "B03"], "f.tif") is None
    assert band_order(["B02", "B03", "B04"], ["B04", "B02", "B03"], "f.tif") == [1, 2, 0]
    assert band_order(["B02", "B04"], ["B01", "B04", "B02", "B09"], "f.tif") == [2, 1]
    note = describe_order(["B02", "B04"], ["B01", "B04", "B02", "B09"])
    assert "reordered by name" in note and "['B01', 'B09'] dropped" in note
    assert describe_order(["B01", "B02"], ["B1", "B2"]) == "matched B1 as B01, B2 as B02"  # nothing dropped


def test_band_order_refuses_missing_bands_and_advises_band_names_only_when_files_do_not_name_them():
    with pytest.raises(DataError, match=r"f\.tif.*missing \['B04'\], extra \['B08'\].*data\.band_names"):
        band_order(["B02", "B03", "B04"], ["B02", "B03", "B08"], "f.tif", source="sensor")
    with pytest.raises(DataError, match="missing") as err:
        band_order(["B02", "B03", "B04"], ["B02", "B03", "B08"], "f.tif", source="file")
    assert "data.band_names" not in str(err.value) and "band descriptions" in str(err.value)


def test_band_mismatch_message_on_a_200_band_cube_stays_short_and_names_the_counts():
    with pytest.raises(DataError) as err:
        band_order([f"band_{i}" for i in range(1, 201)], [f"B{i:03d}" for i in range(1, 201)], "cube.tif")
    message = str(err.value)
    assert len(message) < 600 and message.count("\n") == 0
    assert "'cube.tif'" in message and "(200 bands)" in message and "band_200" in message and "B001" in message


def test_band_mismatch_message_lists_every_band_when_few():
    with pytest.raises(DataError, match=r"missing \['B04'\], extra \[\] \(data: B02 B03; model: B02 B03 B04\)"):
        band_order(["B02", "B03", "B04"], ["B02", "B03"], "x.tif")


def test_data_with_fewer_bands_than_the_model_is_told_so_not_to_rename_them():
    """A 13-band chip given to a 200-band model was advised to set data.band_names, which cannot cover 200 bands."""
    with pytest.raises(DataError) as err:
        band_order([f"B{i:03d}" for i in range(1, 201)], [f"band_{i}" for i in range(1, 14)], "chip.tif",
                   source="sensor")
    assert "the model reads 200 bands and the data holds 13: give data with the model's bands" in str(err.value)
    assert "data.band_names" not in str(err.value)


def test_repeated_band_names_get_the_fix_that_works_for_where_they_come_from():
    with pytest.raises(DataError, match=r"\['B04'\] repeat; the file's own band descriptions .*set_band_description"):
        bands.resolve_band_info(3, ["B04", "B04", "B08"], {}, DataConfig(band_names=["a", "b", "c"]), "f.tif")
    with pytest.raises(DataError, match=r"\['x'\] repeat; set data.band_names to distinct names"):
        bands.resolve_band_info(2, [None, None], {}, DataConfig(band_names=["x", "x"]), "f.tif")


def test_same_named_bands_of_another_sensor_are_refused_by_a_model_that_reads_by_name(tmp_path):
    """GDAL names every converted ENVI cube's bands "Band 1" ...: two sensors' cubes share the names, not the
    bands. A band matched by name that lies more than 15 nm from the model's band of that name is refused, naming
    both wavelengths; a few nm (one sensor's nominal and measured centres) are the same band."""
    import numpy as np

    import rasterio

    from geomed_ssl.bands.matching import check_band_wavelengths
    from geomed_ssl.data.catalog import scan
    from geomed_ssl.models.encoder import EncoderConfig
    from geomed_ssl.models.model_data import catalog_for_encoder
    from tests.conftest import write_geotiff

    names = ["Band 1", "Band 2", "Band 3"]
    check_band_wavelengths(names, [0.45, 0.55, 0.65], [0.455, 0.549, 0.66], None, "near.tif")  # within 15 nm
    check_band_wavelengths(["B12"], [2.2024], [2.1857], None, "s2b.tif")  # S2A / S2B: 16.7 nm, 0.8 % apart
    with pytest.raises(DataError, match=r"'far.tif' band 'Band 1' lies at 0.4 µm, the model's band 'Band 1' at "
                                        r"0.45 µm \(and 1 more band\(s\) as far apart\).*embedding=wavelength"):
        check_band_wavelengths(names, [0.45, 0.55, 0.65], [0.65, 0.9, 0.40], [2, 1, 0], "far.tif")
    (tmp_path / "cube").mkdir()
    path = write_geotiff(tmp_path / "cube" / "other.tif", np.ones((3, 16, 16), np.uint16))

    with rasterio.open(path, "r+") as dst:
        for i, wl in enumerate((0.9, 1.6, 2.2), start=1):
            dst.set_band_description(i, f"Band {i} ({wl} Micrometers)")
    catalog = scan(tmp_path / "cube", DataConfig(patch_size=8))
    cfg = EncoderConfig(in_chans=3, img_size=(8, 8), patch_size=(4, 4), embed_dim=16, depth=1, num_heads=2,
                        band_names=names, wavelengths=[0.45, 0.55, 0.65])
    with pytest.raises(DataError, match="the same names for another sensor's bands"):
        catalog_for_encoder(cfg, catalog)


def test_channel_globs_that_are_not_the_sensors_band_names_are_warned_about(caplog):
    """Landsat per-band files stacked by "*_SR_B2.TIF" ... got no wavelengths from data.sensor, and nothing said so."""
    import logging

    cfg = DataConfig(sensor="landsat8")
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        info = resolve_band_info(2, None, {}, cfg, "x.tif", fallback_names=["SR_B2.TIF", "SR_B3.TIF"])
        named = resolve_band_info(2, None, {}, cfg, "x.tif", fallback_names=["B2", "B3"])
    assert info.wavelengths is None and named.wavelengths == [0.482, 0.561]
    assert caplog.text.count("not band names of data.sensor 'landsat8'") == 1 and "data.band_names" in caplog.text
    with pytest.raises(DataError, match="stack a scene's files with data.channels"):
        resolve_band_info(1, None, {}, cfg, "LC08_SR_B2.TIF")


def test_channel_globs_named_by_colour_are_told_the_sensors_names_for_them(caplog):
    """38-Cloud's red / green / blue / nir folders: the hint's fixed example [B2, B3, B4, B5] named red after the
    blue band and NIR after a red-edge one, and inspect then showed centres 0.49-0.705 without a word."""
    import logging

    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        resolve_band_info(4, None, {}, DataConfig(sensor="sentinel2"), "p.tif", fallback_names=["red", "green", "blue",
                                                                                                 "nir"])
        resolve_band_info(4, None, {}, DataConfig(sensor="landsat8"), "p.tif", fallback_names=["red", "green", "blue",
                                                                                                "nir"])
    assert "in the globs' order (here [B04, B03, B02, B08])" in caplog.text
    assert "(here [B4, B3, B2, B5])" in caplog.text


def test_a_files_own_band_centres_win_over_another_sensors_profile_of_the_same_names(caplog) -> None:
    """A Landsat-8 file (B1..B11 with their own centres) read under data.sensor sentinel2 (inherited from a model's
    recipe): B5 was given Sentinel-2's red-edge centre and B10 (thermal) the cirrus one, so they met those bands."""
    landsat = {"B1": 0.443, "B2": 0.482, "B3": 0.561, "B4": 0.655, "B5": 0.865, "B6": 1.609, "B7": 2.201, "B8": 0.590,
               "B9": 1.373, "B10": 10.895, "B11": 12.005}
    tags = {i + 1: {"CENTRAL_WAVELENGTH_UM": str(w)} for i, w in enumerate(landsat.values())}
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        info = bands.resolve_band_info(11, list(landsat), tags, DataConfig(sensor="sentinel2"), "l8.tif")
    got = dict(zip(landsat, info.wavelengths))
    assert [got[b] for b in ("B5", "B8", "B10", "B11")] == [0.865, 0.590, 10.895, 12.005]  # their own: other bands
    assert got["B2"] == sensor_profile("sentinel2")["B02"]  # the same band (8 nm apart): the profile's centre
    said = " ".join(caplog.text.split())
    assert "'l8.tif' (and files like it) give their bands centre wavelengths other than data.sensor 'sentinel2'" in said
    assert "B5 0.865 µm (profile 0.705)" in said and "set data.sensor to it (or null)" in said
    s2 = {1: {"CENTRAL_WAVELENGTH_UM": "0.4927"}}  # Sentinel-2B's B02: the same band, the profile's centre kept
    assert bands.resolve_band_info(1, ["B02"], s2, DataConfig(sensor="sentinel2"), "s2.tif").wavelengths == \
        pytest.approx([sensor_profile("sentinel2")["B02"]])


def test_a_central_wavelength_written_in_nanometres_under_the_micrometre_key_is_read_as_nanometres() -> None:
    tags = {1: {"CENTRAL_WAVELENGTH_UM": "490", "FWHM_UM": "65"},  # nanometres under both µm keys
            2: {"CENTRAL_WAVELENGTH_UM": "10.9", "FWHM_UM": "0.6"}}  # thermal, in µm
    info = bands.resolve_band_info(2, ["a", "b"], tags, DataConfig(), "f.tif")
    assert info.wavelengths == pytest.approx([0.49, 10.9]) and info.bandwidths == pytest.approx([0.065, 0.6])


def test_a_converted_envi_cubes_rounded_central_wavelength_gives_way_to_the_headers_finer_value() -> None:
    """GDAL 3.10 writes CENTRAL_WAVELENGTH_UM to 3 decimals beside the ENVI header's own ``wavelength`` and the
    description's: AVIRIS' overlapping spectrometers (686.53 / 686.91 nm) must stay two bands."""
    descriptions = ["686.53 Nanometers", "686.91 Nanometers", "557.3 Nanometers"]
    tags = {1: {"IMAGERY:CENTRAL_WAVELENGTH_UM": "0.687", "wavelength": "686.53", "wavelength_units": "Nanometers"},
            2: {"IMAGERY:CENTRAL_WAVELENGTH_UM": "0.687"},  # the description's value is finer
            3: {"CENTRAL_WAVELENGTH_UM": "0.600", "wavelength": "557.3"}}  # far apart: the µm key wins
    info = resolve_band_info(3, descriptions, tags, DataConfig(), "cube.tif")
    assert info.wavelengths == pytest.approx([0.68653, 0.68691, 0.6], abs=1e-9)


def test_bands_named_by_wavelength_alone_meet_the_models_bands_by_wavelength_within_a_nanometre() -> None:
    model, model_wl = ["B001", "B002", "B003"], [0.40002, 0.40981, 0.41961]
    data = ["419.61 Nanometers", "400.02 Nanometers", "409.81 Nanometers", "2500.00 Nanometers"]  # reordered, extra
    data_wl = [0.41961, 0.40002, 0.40981, 2.5]
    assert band_order(model, data, "cube.tif", "file", (model_wl, data_wl)) == [1, 2, 0]
    far = [0.41961, 0.40202, 0.40981, 2.5]  # one band 2 nm off: not taken for the model's
    with pytest.raises(DataError, match="names its bands by wavelength alone, and they do not meet the model's"):
        band_order(model, data, "cube.tif", "file", (model_wl, far))
    with pytest.raises(DataError, match="names its bands by wavelength alone"):
        band_order(model, data, "cube.tif", "file", (None, data_wl))  # the model's bands carry no wavelengths
    named = ["red", "green", "blue", "nir"]  # real names: the names decide, wavelengths or not
    with pytest.raises(DataError, match="the file's band descriptions name its bands"):
        band_order(model, named, "cube.tif", "file", (model_wl, data_wl))
