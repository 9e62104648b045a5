"""Label files matched and grid-checked against their images, read as class maps, and few-label sampling."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from geomed_ssl.config import DataConfig, LabelsConfig
from geomed_ssl.data.catalog import scan
from geomed_ssl.data.labelled import scan_class_folders
from geomed_ssl.labels import (
    ClassMap, LabelSelection, block_split, class_ids, label_grounds, labelled_pixels, match_labels, read_label,
    read_label_pairs, sample_fraction, sample_images_per_class, sample_per_class, select_labels,
)
from geomed_ssl.labels.sampling import split_images, training_area_maps
from geomed_ssl.errors import ConfigError, DataError
from tests.conftest import structured_raster, write_geotiff

GRID = Affine(10, 0, 500000, 0, -10, 5100000)


def _images(tmp_path, n=2, size=32):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        write_geotiff(folder / f"scene_{i}.tif", structured_raster(rng, 3, size))
    return scan(folder, DataConfig(patch_size=8)).records


def _label(path, array, **extra):
    return write_geotiff(path, np.asarray(array)[None], **extra)


def _classes(size=32):
    """Four quadrant classes 1..4 with an unlabelled (0) border."""
    lab = np.zeros((size, size), np.uint8)
    h = size // 2
    lab[1:h, 1:h], lab[1:h, h:-1], lab[h:-1, 1:h], lab[h:-1, h:-1] = 1, 2, 3, 4
    return lab


# -- matching -------------------------------------------------------------------------------------------------
def test_labels_match_images_by_stem_with_a_label_suffix(tmp_path):
    records = _images(tmp_path)
    (tmp_path / "labels").mkdir()
    _label(tmp_path / "labels" / "scene_0_gt.tif", _classes())
    _label(tmp_path / "labels" / "scene_1.tif", _classes())
    pairs = match_labels(records, tmp_path / "labels", "raster")
    assert [(r.path.rsplit("/", 1)[-1], lab.rsplit("/", 1)[-1]) for r, lab in pairs] == [
        ("scene_0.tif", "scene_0_gt.tif"), ("scene_1.tif", "scene_1.tif")]


def test_labels_pair_across_unicode_forms_and_by_exact_case_first(tmp_path):
    """scène_a.tif from a macOS archive (accents decomposed) never met its label scène_a_gt.tif (composed); Tile.tif
    and tile.tif beside Tile_gt.tif and tile_gt.tif were refused as matching two labels each."""
    import unicodedata

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    for name in (unicodedata.normalize("NFD", "scène_a"), "Tile", "tile"):
        write_geotiff(tmp_path / "images" / f"{name}.tif", structured_raster(rng, 3, 32))
    for name in (unicodedata.normalize("NFC", "scène_a"), "Tile", "tile"):
        _label(tmp_path / "labels" / f"{name}_gt.tif", _classes())
    records = scan(tmp_path / "images", DataConfig(patch_size=8)).records
    pairs = {Path(r.path).name: Path(lab).name for r, lab in match_labels(records, tmp_path / "labels", "raster")}
    assert pairs["Tile.tif"] == "Tile_gt.tif" and pairs["tile.tif"] == "tile_gt.tif"
    assert unicodedata.normalize("NFC", pairs[unicodedata.normalize("NFD", "scène_a.tif")]) == "scène_a_gt.tif"


def test_a_label_file_that_labels_no_image_is_said(tmp_path, caplog):
    """scene_9_gt.tif whose image is missing (or named otherwise) was passed over without a word; a link to a paired
    label is no other label."""
    records = _images(tmp_path)
    (tmp_path / "labels").mkdir()
    for name in ("scene_0_gt.tif", "scene_1_gt.tif", "scene_9_gt.tif", "notes.tif"):
        _label(tmp_path / "labels" / name, _classes())
    (tmp_path / "labels" / "again").mkdir()
    (tmp_path / "labels" / "again" / "scene_0_gt.tif").symlink_to(tmp_path / "labels" / "scene_0_gt.tif")
    with caplog.at_level("INFO", logger="geomed_ssl"):
        assert len(match_labels(records, tmp_path / "labels", "raster")) == 2
    assert "note: 1 file(s) under" in caplog.text and "(e.g. 'scene_9_gt.tif')" in caplog.text  # not notes.tif


def test_a_label_file_with_nothing_labelled_among_others_is_warned_about(tmp_path, caplog):
    records = _images(tmp_path)
    (tmp_path / "labels").mkdir()
    _label(tmp_path / "labels" / "scene_0_gt.tif", _classes())
    _label(tmp_path / "labels" / "scene_1_gt.tif", np.zeros((32, 32), np.uint8))  # all unlabelled (0)
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        read_label_pairs(records, tmp_path / "labels", LabelsConfig(), DataConfig(patch_size=8))
    assert "1 of 2 label files hold no labelled pixel or voxel (e.g. '" in caplog.text
    assert "scene_1_gt.tif': all are its nodata or labels.ignore_value 0" in caplog.text


def test_a_truncated_label_raster_is_said_to_be_unreadable_not_off_the_grid(tmp_path):
    """A label cut short in its header read as having no CRS: 'not on the pixel grid ... CRS none vs EPSG:32633'."""
    records = _images(tmp_path, n=1)
    (tmp_path / "labels").mkdir()
    whole = _label(tmp_path / "whole_gt.tif", _classes())
    (tmp_path / "labels" / "scene_0_gt.tif").write_bytes(Path(whole).read_bytes()[:300])
    with pytest.raises(DataError, match=r"cannot read label raster .*scene_0_gt.tif.*truncated or corrupt"):
        match_labels(records, tmp_path / "labels", "raster")


def test_label_beside_its_image_is_found_and_the_image_never_matches_itself(tmp_path):
    records = _images(tmp_path, n=1)
    _label(tmp_path / "images" / "scene_0_mask.tif", _classes())
    [(record, label)] = match_labels(records, tmp_path / "images", "raster")
    assert label.endswith("scene_0_mask.tif")


def test_missing_label_names_the_images_unless_allowed(tmp_path):
    records = _images(tmp_path)
    (tmp_path / "labels").mkdir()
    _label(tmp_path / "labels" / "scene_0_label.tif", _classes())
    with pytest.raises(DataError, match=r"1 of 2 images have no label file \(scene_1.tif\)"):
        match_labels(records, tmp_path / "labels", "raster")
    assert len(match_labels(records, tmp_path / "labels", "raster", allow_unlabelled=True)) == 1


def _subjects(tmp_path, names):
    """images/<name>/scene.tif for each name: one file name in every subject (or date) folder."""
    rng = np.random.default_rng(0)
    for name in names:
        (tmp_path / "images" / name).mkdir(parents=True)
        write_geotiff(tmp_path / "images" / name / "scene.tif", structured_raster(rng, 3, 32))
    return scan(tmp_path / "images", DataConfig(patch_size=8)).records


def test_a_label_in_one_subject_folder_is_not_given_to_another_subject(tmp_path):
    records = _subjects(tmp_path, ["pat1", "pat2"])
    (tmp_path / "labels" / "pat1").mkdir(parents=True)
    _label(tmp_path / "labels" / "pat1" / "scene_seg.tif", _classes())
    with pytest.raises(DataError, match=r"1 of 2 images have no label file \(pat2/scene.tif\)"):
        match_labels(records, tmp_path / "labels", "raster")
    [(record, label)] = match_labels(records, tmp_path / "labels", "raster", allow_unlabelled=True)
    assert "pat1" in record.path and "pat1" in label


def test_one_label_named_like_the_images_of_several_dates_serves_them_all(tmp_path):
    records = _subjects(tmp_path, ["2019", "2020"])
    (tmp_path / "labels").mkdir()
    _label(tmp_path / "labels" / "scene_gt.tif", _classes())
    (tmp_path / "labels" / ".ipynb_checkpoints").mkdir()  # hidden: never a second candidate
    _label(tmp_path / "labels" / ".ipynb_checkpoints" / "scene_gt.tif", _classes())
    pairs = match_labels(records, tmp_path / "labels", "raster")
    assert [Path(label).relative_to(tmp_path).as_posix() for _, label in pairs] == ["labels/scene_gt.tif"] * 2


def test_labels_csv_and_one_label_file_for_every_image(tmp_path):
    records = _images(tmp_path)
    (tmp_path / "labels").mkdir()
    _label(tmp_path / "labels" / "a.tif", _classes())
    (tmp_path / "pairs.csv").write_text("image,label\nimages/scene_0.tif,labels/a.tif\nscene_1.tif,labels/a.tif\n")
    pairs = match_labels(records, None, "raster", csv=tmp_path / "pairs.csv")
    assert [lab.rsplit("/", 1)[-1] for _, lab in pairs] == ["a.tif", "a.tif"]
    assert len(match_labels(records, tmp_path / "labels" / "a.tif", "raster")) == 2


def test_a_labels_csv_says_which_images_are_used(tmp_path):
    records = _images(tmp_path, n=3)
    _label(tmp_path / "a.tif", _classes())
    (tmp_path / "pairs.csv").write_text("image,label\nimages/scene_1.tif,a.tif\n")
    pairs = match_labels(records, None, "raster", csv=tmp_path / "pairs.csv")
    assert [Path(r.path).name for r, _ in pairs] == ["scene_1.tif"]  # the two images it does not list: left out


def test_label_names_of_bids_and_the_spinal_cord_toolbox_find_their_images():
    from geomed_ssl.labels.pairs import _label_keys

    assert _label_keys("t1w_seg-manual")[-1] == "t1w"
    assert _label_keys("mt1_gmseg_goldstandard")[-1] == "mt1"
    assert _label_keys("sub-01_T1w_dseg")[-1] == "sub-01_t1w"
    assert _label_keys("scene_gt") == ["scene_gt", "scene"]
    assert _label_keys("t2_manual") == ["t2_manual"]  # a qualifier alone names no label


def test_bids_derivative_labels_find_their_subjects_images(tmp_path):
    """BIDS drops the image's suffix from a derivative's name (sub-01_T1w -> sub-01_desc-tumor_dseg): it paired with
    nothing though the docs name BIDS' _dseg; the subject / session entities pair them."""
    import nibabel as nib

    vol = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    for sub, ses in (("01", "1"), ("01", "2"), ("02", "1")):
        anat = tmp_path / "bids" / f"sub-{sub}" / f"ses-{ses}" / "anat"
        anat.mkdir(parents=True)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(anat / f"sub-{sub}_ses-{ses}_T1w.nii.gz"))
        seg = tmp_path / "derivatives" / f"sub-{sub}" / f"ses-{ses}" / "anat"
        seg.mkdir(parents=True)
        nib.save(nib.Nifti1Image((vol > 0.5).astype(np.uint8), np.eye(4)),
                 str(seg / f"sub-{sub}_ses-{ses}_space-orig_desc-tumor_dseg.nii.gz"))
    records = scan(tmp_path / "bids", DataConfig(kind="volume", patch_size=4, intensity="none")).records
    pairs = match_labels(records, tmp_path / "derivatives", "volume")
    assert {Path(r.path).name.split("_T1w")[0]: Path(lab).name.split("_space")[0] for r, lab in pairs} == {
        "sub-01_ses-1": "sub-01_ses-1", "sub-01_ses-2": "sub-01_ses-2", "sub-02_ses-1": "sub-02_ses-1"}


def test_a_stack_of_band_files_pairs_with_a_label_named_after_its_folder_and_nnunet_cases_with_theirs(tmp_path):
    """A Landsat scene's per-band files stacked by data.channels were paired by the first band file's name only
    (LC08_..._SR_B2_mask.tif), not by the scene's (LC08_..._mask.tif, the name predict gives the scene's map);
    nnU-Net's imagesTr/case_000_0000.nii.gz never found labelsTr/case_000.nii.gz."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    for scene in ("LC08_L2SP_190027_20230601", "LC08_L2SP_190027_20230617"):
        (tmp_path / "l8" / scene).mkdir(parents=True)
        for band in ("SR_B2", "SR_B3"):
            write_geotiff(tmp_path / "l8" / scene / f"{scene}_{band}.TIF", structured_raster(rng, 1, 32))
        (tmp_path / "l8_labels").mkdir(exist_ok=True)
        _label(tmp_path / "l8_labels" / f"{scene}_mask.tif", _classes())
    cfg = DataConfig(patch_size=8, channels=["*_SR_B2.TIF", "*_SR_B3.TIF"])
    pairs = match_labels(scan(tmp_path / "l8", cfg).records, tmp_path / "l8_labels", "raster")
    assert [(Path(r.path).parent.name, Path(lab).name) for r, lab in pairs] == [
        ("LC08_L2SP_190027_20230601", "LC08_L2SP_190027_20230601_mask.tif"),
        ("LC08_L2SP_190027_20230617", "LC08_L2SP_190027_20230617_mask.tif")]
    vol = rng.random((8, 8, 8)).astype(np.float32)
    for d in ("imagesTr", "labelsTr"):
        (tmp_path / "nnunet" / d).mkdir(parents=True)
    for case in ("case_000", "case_001"):
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "nnunet" / "imagesTr" / f"{case}_0000.nii.gz"))
        nib.save(nib.Nifti1Image((vol > 0.5).astype(np.uint8), np.eye(4)),
                 str(tmp_path / "nnunet" / "labelsTr" / f"{case}.nii.gz"))
    records = scan(tmp_path / "nnunet" / "imagesTr", DataConfig(kind="volume", patch_size=4, intensity="none")).records
    pairs = match_labels(records, tmp_path / "nnunet" / "labelsTr", "volume")
    assert [(Path(r.path).name, Path(lab).name) for r, lab in pairs] == [
        ("case_000_0000.nii.gz", "case_000.nii.gz"), ("case_001_0000.nii.gz", "case_001.nii.gz")]


def test_fixed_label_name_beside_each_image(tmp_path):
    rng = np.random.default_rng(0)
    for case in ("case_1", "case_2"):
        (tmp_path / case).mkdir()
        write_geotiff(tmp_path / case / "image.tif", structured_raster(rng, 3, 32))
        _label(tmp_path / case / "truth.tif", _classes())
    records = scan(tmp_path, DataConfig(patch_size=8, include=["**/image.tif"])).records
    pairs = match_labels(records, None, "raster", label_name="truth.tif")
    assert [lab for _, lab in pairs] == [str(tmp_path / c / "truth.tif") for c in ("case_1", "case_2")]
    with pytest.raises(DataError, match=r"case_1/image.tif, case_2/image.tif\) in 'seg.tif' beside each image"):
        match_labels(records, None, "raster", label_name="seg.tif")


@pytest.mark.parametrize("change, expected", [
    ({"transform": GRID @ Affine.translation(1, 0)}, "origin shifted by +1 columns"),
    ({"crs": "EPSG:4326"}, "CRS EPSG:4326 vs EPSG:32633"),
    ({"size": 30}, "size 30x30 vs 32x32"),
])
def test_grid_mismatch_names_both_files_and_the_difference(tmp_path, change, expected):
    records = _images(tmp_path, n=1)
    (tmp_path / "labels").mkdir()
    size = change.pop("size", 32)
    _label(tmp_path / "labels" / "scene_0_gt.tif", _classes(size), **change)
    with pytest.raises(DataError) as err:
        match_labels(records, tmp_path / "labels", "raster")
    msg = str(err.value)
    assert "scene_0_gt.tif" in msg and "images/scene_0.tif" in msg and expected in msg


@pytest.mark.parametrize("change, lacks", [({"crs": None}, "no CRS:"),
                                           ({"crs": None, "transform": Affine.identity()}, "no CRS and no transform:")])
def test_a_label_of_the_images_size_without_its_georeferencing_is_told_to_copy_it(tmp_path, change, lacks):
    """Resampling is not the fix for a label map saved without the image's CRS (or any georeferencing): copying
    the image's onto it is, and the message gives the gdal_edit.py command with the image's CRS and extent."""
    records = _images(tmp_path, n=1)
    (tmp_path / "labels").mkdir()
    _label(tmp_path / "labels" / "scene_0_gt.tif", _classes(), **change)
    with pytest.raises(DataError) as err:
        match_labels(records, tmp_path / "labels", "raster")
    msg = str(err.value)
    assert f"It has the image's size but {lacks} copy the image's georeferencing onto it" in msg
    assert "gdal_edit.py -a_srs EPSG:32633 -a_ullr 500000 5100000 500320 5099680 '" in msg and "Resample" not in msg


# -- reading --------------------------------------------------------------------------------------------------
def test_float_labels_with_nodata_and_nan_are_rounded_and_unlabelled(tmp_path):
    lab = np.array([[1.0, 2.0000001, np.nan], [-9999.0, 0.0, 3.0]], np.float32)
    path = _label(tmp_path / "f.tif", lab, nodata=-9999.0)
    labels, mask = read_label(path, "raster")
    assert labels.dtype == np.int64 and labels.shape == (2, 3)
    assert mask.tolist() == [[True, True, False], [False, False, True]]
    assert labels[mask].tolist() == [1, 2, 3]
    assert class_ids([labels], 0) == [1, 2, 3]


def test_a_few_fractional_labels_are_rounded_with_a_warning_naming_the_file(tmp_path, caplog):
    lab = np.full((12, 12), 1.0, np.float32)
    lab[0, 0] = 2.5  # under 1 % of the labels: rounded, not refused, but said
    path = _label(tmp_path / "f.tif", lab)
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        labels, _ = read_label(path, "raster")
    assert labels[0, 0] == 2
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "f.tif" in msg and "1 non-integer value(s) (e.g. 2.5)" in msg and "rounded" in msg
    caplog.clear()
    read_label(_label(tmp_path / "noise.tif", np.full((4, 4), 2.0000001, np.float32)), "raster")
    assert not caplog.records  # float rounding noise is no warning


def test_an_integer_image_given_as_labels_is_refused_and_an_atlas_of_many_labels_is_read(tmp_path):
    """An int16 MR slab of 853 grey levels trained an 853-class model; FreeSurfer's aparc+aseg (~110 values up to
    2035) is a label map."""
    image = np.random.default_rng(0).integers(0, 900, (40, 40)).astype(np.int16)
    with pytest.raises(DataError, match=r"'.*t1.tif' holds \d{3} distinct values .* image rather than a label map"):
        read_label(_label(tmp_path / "t1.tif", image), "raster")
    merged, _ = read_label(_label(tmp_path / "codes.tif", image), "raster",
                           remap={int(v): 1 + int(v) % 2 for v in np.unique(image)})  # merged by labels.remap: read
    assert set(np.unique(merged)) <= {1, 2}
    atlas = np.resize(np.r_[np.arange(0, 90), np.arange(1000, 1036), 2035], (40, 40)).astype(np.int16)
    labels, _ = read_label(_label(tmp_path / "aparc_aseg.tif", atlas), "raster")
    assert len(np.unique(labels)) == 127


def test_ignore_value_none_keeps_zero_as_a_class(tmp_path):
    path = _label(tmp_path / "l.tif", _classes())
    _, mask0 = read_label(path, "raster", ignore_value=0)
    labels, mask = read_label(path, "raster", ignore_value=None)
    assert mask.all() and not mask0.all()
    assert class_ids([labels], None) == [0, 1, 2, 3, 4]
    assert class_ids([labels], None, masks=[mask0]) == [1, 2, 3, 4]


def test_a_nodata_tag_on_a_class_value_is_warned_about_and_use_nodata_false_keeps_the_class(tmp_path, caplog):
    """A 0 / 1 mask saved with nodata 0, and classes 1 2 3 tagged nodata 3: the tag took a class without a word,
    and labels.ignore_value=null could not bring it back. Now it is said once per command, naming the file, and
    labels.use_nodata=false reads the tagged value as a class; a tag apart from the classes (255) is not said."""
    records = _images(tmp_path, n=2)
    (tmp_path / "labels").mkdir()
    mask = (_classes() > 2).astype(np.uint8)  # 0 / 1
    _label(tmp_path / "labels" / "scene_0.tif", mask, nodata=0)
    _label(tmp_path / "labels" / "scene_1.tif", np.where(_classes() == 0, 1, _classes()), nodata=3)
    data = DataConfig(patch_size=8)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        _, arrays, masks = read_label_pairs(records, tmp_path / "labels", LabelsConfig(ignore_value=None), data)
    assert class_ids(arrays, None, masks=masks) == [1, 2, 4]  # 0 and 3 lost to the tags
    said = [r.getMessage() for r in caplog.records if "labels.use_nodata=false" in r.getMessage()]
    assert len(said) == 1 and "scene_0.tif' (and 1 more file(s)) has the nodata value 0" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        _, arrays, masks = read_label_pairs(records, tmp_path / "labels",
                                            LabelsConfig(ignore_value=None, use_nodata=False), data)
    assert class_ids(arrays, None, masks=masks) == [0, 1, 2, 3, 4] and all(m.all() for m in masks)
    assert "use_nodata" not in caplog.text
    _label(tmp_path / "labels" / "scene_0.tif", np.where(_classes() == 0, 255, _classes()), nodata=255)
    _label(tmp_path / "labels" / "scene_1.tif", _classes(), nodata=0)  # the tag is the ignore value
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        read_label_pairs(records, tmp_path / "labels", LabelsConfig(), data)
    assert "use_nodata" not in caplog.text
    _label(tmp_path / "labels" / "scene_0.tif", np.where(_classes() == 0, -1, _classes() - 1).astype(np.int16),
           nodata=-1)  # classes 0..3 beside -1: a negative value is never a class
    _label(tmp_path / "labels" / "scene_1.tif", _classes(), nodata=255)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        read_label_pairs(records, tmp_path / "labels", LabelsConfig(ignore_value=None), data)
    assert "use_nodata" not in caplog.text


def test_a_dense_label_volume_whose_background_is_ignored_is_said_once_and_scribbles_are_not(tmp_path, caplog):
    """labels.ignore_value 0 on a dense medical label map (0 = background around solid organs) leaves the
    background out, so the model would label every voxel: one warning naming labels.ignore_value=null, for all the
    files. Scribbles, scattered labelled voxels and fully labelled slices (0 = unlabelled, the setting's purpose)
    say nothing; with null, scribbles and points get the warning the other way."""
    import nibabel as nib

    from geomed_ssl.labels.read import UnlabelledFacts

    dense = np.zeros((24, 24, 24), np.uint8)
    z, y, x = np.mgrid[:24, :24, :24]
    dense[(z - 7) ** 2 + (y - 7) ** 2 + (x - 8) ** 2 <= 25] = 1  # two round organs in air: 10 % labelled
    dense[(z - 16) ** 2 + (y - 15) ** 2 + (x - 13) ** 2 <= 36] = 41
    scribble = np.zeros_like(dense)
    scribble[5, 1:23, 8], scribble[15, 10, 1:23], scribble[19, 1:23, 4] = 1, 41, 41  # lines of one voxel
    points = np.zeros_like(dense)
    points.flat[np.random.default_rng(0).choice(dense.size, 300, replace=False)] = 2
    paths = {}
    for name, vol in (("a", dense), ("b", dense), ("scribble", scribble), ("points", points)):
        paths[name] = tmp_path / f"{name}_seg.nii.gz"
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(paths[name]))

    def said(names, ignore_value):
        facts = UnlabelledFacts()
        for name in names:
            read_label(paths[name], "volume", ignore_value=ignore_value, facts=facts)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
            facts.warn(ignore_value)
        return [r.getMessage() for r in caplog.records]

    warned = said(["a", "b"], 0)
    assert len(warned) == 1 and "fills 90% of label volume" in warned[0] and "(and 1 more file(s))" in warned[0]
    assert "set labels.ignore_value=null" in warned[0] and str(paths["a"]) in warned[0]
    assert said(["scribble", "points"], 0) == []
    assert said(["a", "b"], None) == []
    boxes = np.zeros_like(dense)  # box-shaped structures (masks from bounding boxes): a dense map too
    boxes[4:12, 4:12, 4:12], boxes[14:20, 10:20, 6:18] = 1, 41
    nib.save(nib.Nifti1Image(boxes, np.eye(4)), str(tmp_path / "boxes_seg.nii.gz"))
    paths["boxes"] = tmp_path / "boxes_seg.nii.gz"
    assert len(said(["boxes"], 0)) == 1
    # a few fully labelled slices (background a class of its own, 0 the unlabelled slices): no 0 between them
    slabs = np.zeros_like(dense)
    slabs[10:14], slabs[10:14, 8:16, 8:16] = 1, 2
    nib.save(nib.Nifti1Image(slabs, np.eye(4)), str(tmp_path / "slabs_seg.nii.gz"))
    paths["slabs"] = tmp_path / "slabs_seg.nii.gz"
    assert said(["slabs"], 0) == []
    slabs[20:22], slabs[20:22, 8:16, 8:16] = 1, 2  # a second slab, apart from the first
    nib.save(nib.Nifti1Image(slabs, np.eye(4)), str(paths["slabs"]))
    assert said(["slabs"], 0) == []
    slabs[:] = 0
    slabs[2:6, 0:12], slabs[14:18, 12:24] = 1, 2  # slabs of labelled rows: each full within its own extent
    nib.save(nib.Nifti1Image(slabs, np.eye(4)), str(paths["slabs"]))
    assert said(["slabs"], 0) == []
    # the other way: 0 trained as a class (the volume recipes' null) beside lines of two classes, as scribbles mark
    # labelled voxels: one warning suggesting 0; a dense map, landmark points or one centreline say nothing
    warned = said(["scribble", "points", "a"], None)
    assert len(warned) == 1 and "the value 0 fills" in warned[0] and "set labels.ignore_value=0" in warned[0]
    assert str(paths["scribble"]) in warned[0] and "(and" not in warned[0]
    diagonal = np.zeros((64, 64, 64), np.uint8)  # strokes at 45 degrees touch by their voxels' edges
    for i in range(60):
        diagonal[10, i + 2, i + 2], diagonal[40, i + 2, 61 - i] = 1, 2
    nib.save(nib.Nifti1Image(diagonal, np.eye(4)), str(tmp_path / "diag_seg.nii.gz"))
    paths["diagonal"] = tmp_path / "diag_seg.nii.gz"
    assert len(said(["diagonal"], None)) == 1
    stairs = np.zeros((64, 64, 64), np.uint8)  # strokes drawn 4-connected: a staircase
    for i in range(30):
        stairs[10, 2 + i, 2 + i], stairs[10, 3 + i, 2 + i] = 1, 1
        stairs[40, 2 + i, 60 - i], stairs[40, 3 + i, 60 - i] = 2, 2
    nib.save(nib.Nifti1Image(stairs, np.eye(4)), str(tmp_path / "stairs_seg.nii.gz"))
    paths["stairs"] = tmp_path / "stairs_seg.nii.gz"
    assert len(said(["stairs"], None)) == 1
    centreline = np.zeros((64, 64, 64), np.uint8)  # one class along 64 voxels: a centreline, whose 0 is background
    centreline[12, 12, :] = 1
    nib.save(nib.Nifti1Image(centreline, np.eye(4)), str(tmp_path / "cl_seg.nii.gz"))
    paths["centreline"] = tmp_path / "cl_seg.nii.gz"
    assert said(["centreline"], None) == []


def test_remap_merges_classes_before_ignore_value(tmp_path):
    path = _label(tmp_path / "l.tif", _classes())
    labels, mask = read_label(path, "raster", ignore_value=0, remap={2: 1, 3: 1, 4: 0})
    assert class_ids([labels], 0, masks=[mask]) == [1]  # 4 -> 0 = ignore_value: unlabelled
    assert mask.sum() == 3 * (15 * 15)
    whole, _ = read_label(path, "raster", ignore_value=None, remap={2: 1, 3: 1, 4: 1})
    assert np.unique(whole).tolist() == [0, 1]


def test_label_pairs_from_a_csv_or_a_fixed_name_with_remap(tmp_path):
    records = _images(tmp_path)
    (tmp_path / "labels").mkdir()
    _label(tmp_path / "labels" / "a.tif", _classes())
    (tmp_path / "pairs.csv").write_text("image,label\nscene_0.tif,labels/a.tif\nscene_1.tif,labels/a.tif\n")
    lab = LabelsConfig(remap={3: 2, 4: 2})
    pairs, arrays, masks = read_label_pairs(records, tmp_path / "pairs.csv", lab, DataConfig(patch_size=8))
    assert len(pairs) == 2 and class_ids(arrays, 0, masks=masks) == [1, 2]
    for r in records:  # one label named truth.tif beside each image
        _label(Path(r.path).parent / "truth.tif", _classes())
    pairs, _, _ = read_label_pairs(records, None, LabelsConfig(label_name="truth.tif"), DataConfig(patch_size=8))
    assert {Path(p).name for _, p in pairs} == {"truth.tif"}


@pytest.mark.parametrize("kind", ["nodata", "nan", "gdal_mask"])
def test_labels_where_the_image_has_no_data_neither_train_nor_test(tmp_path, kind, caplog):
    """A labelled pixel on the image's nodata (its tag, NaN, or an integer scene's GDAL mask) is left out of the draw
    and of the test set alike, so k counts pixels that train and every protocol scores the same test pixels."""
    import rasterio

    image = structured_raster(np.random.default_rng(0), 3, 32).astype(np.float32) + 1
    image[:, :, :10] = np.nan if kind == "nan" else 0
    (tmp_path / "images").mkdir()
    path = tmp_path / "images" / "scene.tif"
    if kind == "gdal_mask":  # a clipped uint16 scene: no nodata tag, an internal mask band
        mask = np.full((32, 32), 255, np.uint8)
        mask[:, :10] = 0
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            write_geotiff(path, image.astype(np.uint16))
            with rasterio.open(path, "r+") as ds:
                ds.write_mask(mask)
    else:
        write_geotiff(path, image, nodata=None if kind == "nan" else 0)
    records = scan(tmp_path / "images", DataConfig(patch_size=8)).records
    label = _label(tmp_path / "scene_gt.tif", _classes())
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        _, arrays, masks = read_label_pairs(records, label, LabelsConfig(), DataConfig(patch_size=8))
    off = (_classes()[:, :10] > 0).sum()
    assert f"{off} labelled pixel(s)" in caplog.text and "scene.tif' has no data" in caplog.text
    assert not masks[0][:, :10].any() and masks[0][:, 10:].sum() == (_classes()[:, 10:] > 0).sum()
    sel = select_labels(arrays, masks, LabelsConfig(per_class=5, seed=3))
    assert (sel.train_index % 32 >= 10).all() and (sel.test_index % 32 >= 10).all()
    assert np.bincount(sel.train_value).tolist() == [0, 5, 5, 5, 5]


def test_a_class_value_no_class_map_can_hold_is_refused_before_training(tmp_path):
    records = _images(tmp_path, n=1)
    lab = _classes().astype(np.int16)
    lab[0] = -9999  # an untagged nodata value
    label = _label(tmp_path / "scene_gt.tif", lab)
    with pytest.raises(DataError, match=r"scene_gt.tif' holds the value -9999 as a class.*labels.ignore_value"):
        read_label_pairs(records, label, LabelsConfig(), DataConfig(patch_size=8))
    _, arrays, masks = read_label_pairs(records, label, LabelsConfig(ignore_value=-9999), DataConfig(patch_size=8))
    assert class_ids(arrays, -9999, masks=masks) == [0, 1, 2, 3, 4]
    # evaluate scores a model's known classes only, so it reads such a file and leaves the value out itself
    _, arrays, masks = read_label_pairs(records, label, LabelsConfig(), DataConfig(patch_size=8), class_range=False)
    assert -9999 in arrays[0][masks[0]]


def test_sparse_float_labels_are_judged_on_their_labelled_pixels_not_the_unlabelled_fill(tmp_path, caplog):
    """30 points at 1.5 / 5.5 / 9.5 in a float map of 0 (unlabelled) were under 1 % of all pixels: rounded to classes 2,
    6 and 10 that exist nowhere, where every label is fractional; a 0.5 rounded to the ignore value 0 went unsaid."""
    lab = np.zeros((64, 64), np.float32)
    lab[np.arange(30), np.arange(30)] = np.repeat([1.5, 5.5, 9.5], 10)
    with pytest.raises(DataError, match=r"non-integer values \(100% of its labelled pixels\)"):
        read_label(_label(tmp_path / "points.tif", lab), "raster", ignore_value=0)
    lab = np.zeros((64, 64), np.float32)
    lab[:20, :20] = 3.0
    lab[30, 30] = 0.5  # one point under 1 % of the labelled pixels: rounded to 0, the ignore value
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        labels, labelled = read_label(_label(tmp_path / "half.tif", lab), "raster", ignore_value=0)
    assert not labelled[30, 30] and "(1 to the ignore value 0: unlabelled)" in caplog.text


def test_continuous_values_are_refused_as_labels(tmp_path):
    path = _label(tmp_path / "img.tif", np.random.default_rng(0).random((8, 8)).astype(np.float32))
    with pytest.raises(DataError, match="non-integer"):
        read_label(path, "raster")


def test_class_map_encodes_to_contiguous_indices_and_back():
    cmap = ClassMap.build([3, 7, 12], {7: "water"})
    idx = cmap.encode(np.array([12, 3, 5, 7]))
    assert idx.tolist() == [2, 0, -1, 1]
    assert cmap.decode(np.array([2, 0])).tolist() == [12, 3]
    assert cmap.label(7) == "class 7 (water)" and cmap.label(3) == "class 3"


# -- sampling -------------------------------------------------------------------------------------------------
def _values():
    return np.repeat(np.array([1, 2, 9]), [100, 50, 20])  # class 9 is rare


def test_per_class_takes_exactly_k_and_caps_rare_classes_with_a_note():
    values = _values()
    idx, notes = sample_per_class(values, 15, seed=0, names={9: "Oats"})
    assert np.bincount(values[idx]).tolist()[1:] == [15, 15, 0, 0, 0, 0, 0, 0, 10]
    assert notes == ["class 9 (Oats): 20 labelled pixels, took 10 instead of 15 so half stay for testing"]


def test_sampling_is_reproducible_and_seed_dependent():
    values = _values()
    a, _ = sample_per_class(values, 5, seed=3)
    b, _ = sample_per_class(values, 5, seed=3)
    c, _ = sample_per_class(values, 5, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_fraction_takes_a_share_of_each_class_and_at_least_one():
    values = _values()
    idx, notes = sample_fraction(values, 0.02, seed=0)
    assert np.bincount(values[idx])[[1, 2, 9]].tolist() == [2, 1, 1]
    assert any(n.startswith("class 9: 20 labelled pixels, took 1") for n in notes)


def test_random_split_tests_on_every_other_labelled_pixel():
    lab = _classes()
    sel = select_labels([lab], [lab > 0], LabelsConfig(per_class=5, seed=1))
    assert sel.train_value.size == 20 and sel.classes == [1, 2, 3, 4]
    assert sel.train_value.size + sel.test_value.size == int((lab > 0).sum())
    assert not set(sel.train_index) & set(sel.test_index)
    target = sel.target(0)
    assert target.shape == lab.shape and (target >= 0).sum() == 20
    assert np.array_equal(lab.reshape(-1)[sel.train_index], sel.train_value)


def test_block_split_keeps_training_and_test_pixels_in_different_blocks():
    lab = np.random.default_rng(0).integers(0, 4, (64, 48))  # classes everywhere: leaks would show
    cfg = LabelsConfig(per_class=30, split="blocks", block_size=8, seed=2)
    sel = select_labels([lab], [lab > 0], cfg)
    block = lambda idx: set(zip(*(c // 8 for c in np.unravel_index(idx, lab.shape))))  # noqa: E731
    assert sel.train_value.size == 90 and sel.test_value.size > 0
    assert not block(sel.train_index) & block(sel.test_index)
    train_map = block_split(lab.shape, 8, 2, lab, lab > 0)
    assert train_map.shape == lab.shape and 0.3 < train_map.mean() < 0.7
    assert train_map.reshape(-1)[sel.train_index].all() and not train_map.reshape(-1)[sel.test_index].any()
    again = select_labels([lab], [lab > 0], cfg)
    assert np.array_equal(again.train_index, sel.train_index) and np.array_equal(again.test_index, sel.test_index)


def test_block_split_gives_a_rare_class_training_and_test_blocks():
    lab = np.ones((32, 32), np.int64)
    lab[2, 2], lab[2, 30], lab[30, 2], lab[30, 30] = 5, 5, 5, 5  # class 5 in four corner blocks
    for seed in range(6):
        sel = select_labels([lab], [lab > 0], LabelsConfig(per_class=1, split="blocks", block_size=8, seed=seed))
        assert 5 in sel.train_value.tolist() and 5 in sel.test_value.tolist()


def test_a_class_in_two_blocks_both_drawn_for_training_gives_one_back_for_testing():
    """Half the blocks train: a class in two of them has both training in about a quarter of the seeds, and
    would then drop out of that seed's AA / mIoU unless one of its blocks is given to the test set."""
    lab = np.ones((32, 32), np.int64)
    lab[2, 2], lab[2, 30] = 5, 5
    for seed in range(40):
        sel = select_labels([lab], [lab > 0], LabelsConfig(per_class=1, split="blocks", block_size=8, seed=seed))
        assert 5 in sel.train_value.tolist() and 5 in sel.test_value.tolist(), seed


def test_dates_sharing_one_label_file_never_test_a_trained_position():
    """A budget counts places of the ground: each place drawn trains at every date, and no date tests it."""
    lab = _classes()
    lab[0, :11] = 5  # a rare class: 11 places
    sel = select_labels([lab] * 3, [lab > 0] * 3, LabelsConfig(per_class=8, seed=1), paths=["lulc.tif"] * 3)
    places = np.unique(sel.train_index)
    assert places.size == 4 * 8 + 5  # 8 of each class, the rare class half its 11 places
    assert sorted(np.bincount(sel.train_file).tolist()) == [places.size] * 3  # every place at all three dates
    assert not set(sel.train_index) & set(sel.test_index)  # no date tests a position another date trained on
    assert sel.train_value.size + sel.test_value.size == 3 * int((lab > 0).sum())
    assert any("class 5: 11 labelled places, took 5 instead of 8" in n for n in sel.notes)
    assert "places of the ground per class (each trained at every image of its label file): 1:8" in sel.summary()
    fraction = select_labels([lab] * 3, [lab > 0] * 3, LabelsConfig(fraction=0.1, seed=1), paths=["lulc.tif"] * 3)
    assert np.unique(fraction.train_index).size == sum(max(1, round(0.1 * (lab == c).sum())) for c in range(1, 6))


def test_dates_sharing_one_label_file_share_their_training_blocks():
    lab = np.random.default_rng(0).integers(0, 4, (64, 48))
    cfg = LabelsConfig(per_class=30, split="blocks", block_size=8, seed=2)
    sel = select_labels([lab] * 3, [lab > 0] * 3, cfg, paths=["lulc.tif"] * 3)
    block = lambda idx: set(zip(*(c // 8 for c in np.unravel_index(idx, lab.shape))))  # noqa: E731
    assert not block(sel.train_index) & block(sel.test_index)  # across dates too
    maps = training_area_maps([lab] * 3, [lab > 0] * 3, LabelsConfig(split="blocks", block_size=8, seed=2),
                              paths=["lulc.tif"] * 3)
    assert all(np.array_equal(m, maps[0]) for m in maps[1:]) and 0.3 < maps[0].mean() < 0.7
    assert maps[0].reshape(-1)[sel.train_index].all() and not maps[0].reshape(-1)[sel.test_index].any()


def test_images_split_holds_out_whole_images():
    rng = np.random.default_rng(0)
    labs = [rng.integers(0, 4, (16, 12 + i)) for i in range(6)]  # every class in every image
    paths = [f"s{i}/seg.nii.gz" for i in range(6)]
    cfg = LabelsConfig(per_class=10, split="images", seed=3)
    sel = select_labels(labs, [lab > 0 for lab in labs], cfg, paths=paths)
    trained, tested = set(sel.train_file.tolist()), set(sel.test_file.tolist())
    assert len(trained) <= 3 and len(tested) == 3 and not trained & tested  # half the subjects, never both
    assert sel.test_value.size == sum(int((labs[f] > 0).sum()) for f in tested)  # every label of a test image
    assert sel.train_value.size == 30 and "images split" in sel.summary()
    maps = training_area_maps(labs, [lab > 0 for lab in labs], cfg, paths)
    assert [bool(m.all()) for m in maps] == [f not in tested for f in range(6)]
    assert [bool(m.any()) for m in maps] == [f not in tested for f in range(6)]
    others = {frozenset(select_labels(labs, [lab > 0 for lab in labs], LabelsConfig(per_class=10, split="images",
                                                                                        seed=s), paths=paths)
                        .test_file.tolist()) for s in range(6)}
    assert len(others) > 1  # the seed rotates the held-out images


def test_images_split_keeps_the_dates_of_one_ground_together_and_needs_two_grounds():
    lab = _classes()
    sel = select_labels([lab] * 4, [lab > 0] * 4, LabelsConfig(per_class=5, split="images", seed=0),
                        paths=["a.tif", "a.tif", "b.tif", "b.tif"])
    assert set(sel.train_file.tolist()) <= {0, 1} or set(sel.train_file.tolist()) <= {2, 3}
    assert set(sel.test_file.tolist()) in ({0, 1}, {2, 3}) and not set(sel.train_file) & set(sel.test_file)
    with pytest.raises(ConfigError, match=r"labels.split images \(compare: --split images\) holds out whole images"
                                          r".*one label file"):
        select_labels([lab] * 3, [lab > 0] * 3, LabelsConfig(per_class=5, split="images"), paths=["l.tif"] * 3)


@pytest.mark.parametrize("paths", [
    [f"derivatives/sub-{s}/ses-{k}/anat/sub-{s}_ses-{k}_dseg.nii.gz" for s in "ABC" for k in (1, 2)],
    [f"labels/sub-{s}_ses-{k}_dseg.nii.gz" for s in "ABC" for k in (1, 2)],
    [f"derivatives/sub-{s}/ses-{k}/anat/sub-{s}_ses-{k}_T1w_seg.nii.gz" for s in "ABC" for k in (1, 2)],  # not BIDS
    [f"labels/sub-{s}_ses-{k}_lesion-mask.nii.gz" for s in "ABC" for k in (1, 2)],
])
def test_images_split_holds_out_the_sessions_of_one_bids_subject_together(paths):
    rng = np.random.default_rng(0)
    labs = [rng.integers(0, 4, (16, 12)) for _ in paths]
    for seed in range(5):
        sel = select_labels(labs, [lab > 0 for lab in labs], LabelsConfig(per_class=10, split="images", seed=seed),
                            paths=paths)
        trained = {paths[f].split("sub-")[1][0] for f in sel.train_file.tolist()}
        tested = {paths[f].split("sub-")[1][0] for f in sel.test_file.tolist()}
        assert trained and tested and not trained & tested  # a subject's two sessions on one side
        assert len(set(sel.test_file.tolist())) in (2, 4)


def test_images_split_takes_a_folder_named_sub_dash_for_no_bids_subject():
    from geomed_ssl.windows.splits import bids_subject

    assert bids_subject("/home/u/sub-cohort/labels/p1_seg.nii.gz") is None
    assert bids_subject("/d/sub-01/ses-1/anat/sub-01_ses-1_dseg.nii.gz") == "/d/sub-01"
    assert bids_subject("/d/labels/sub-01_ses-1_dseg.nii.gz") == "/d/labels/sub-01"
    labs = [np.random.default_rng(i).integers(0, 4, (16, 12)) for i in range(6)]
    paths = [f"/home/u/sub-cohort/labels/p{i}_seg.nii.gz" for i in range(6)]
    sel = select_labels(labs, [lab > 0 for lab in labs], LabelsConfig(per_class=10, split="images", seed=0),
                        paths=paths)
    assert len(set(sel.test_file.tolist())) == 3  # half the six images, not one group of all


def test_images_split_trains_a_class_found_in_one_image_and_notes_it_is_untested():
    a, b = _classes(), _classes()
    b[b == 4] = 3  # class 4 only in image 0
    for seed in range(4):
        sel = select_labels([a, b], [a > 0, b > 0], LabelsConfig(per_class=5, split="images", seed=seed),
                            paths=["a.tif", "b.tif"])
        assert set(sel.train_file.tolist()) == {0} and set(sel.test_file.tolist()) == {1}
        assert any("4: no test pixels left" in n for n in sel.notes)


def test_images_split_refuses_to_leave_nothing_to_test_and_skips_unlabelled_images():
    a, b = np.full((8, 8), 1, np.uint8), np.full((8, 8), 2, np.uint8)  # each class in one image only: both train
    with pytest.raises(DataError, match=r"leaves no image to test on.*classes \[1, 2\]"):
        select_labels([a, b], [a > 0, b > 0], LabelsConfig(per_class=3, split="images"), paths=["a.tif", "b.tif"])
    lab, empty = _classes(), np.zeros((32, 32), np.uint8)
    for seed in range(4):  # the unlabelled image is never drawn as the test image
        cfg = LabelsConfig(per_class=3, split="images", seed=seed)
        sel = select_labels([lab, empty, lab], [lab > 0, empty > 0, lab > 0], cfg, paths=["a", "e", "c"])
        assert {sel.train_file.tolist()[0], sel.test_file.tolist()[0]} == {0, 2} and sel.test_value.size
        maps = training_area_maps([lab, empty, lab], [lab > 0, empty > 0, lab > 0], cfg, ["a", "e", "c"])
        assert not maps[1].any()


def test_test_fraction_subsamples_the_test_set_per_class():
    lab = _classes()
    full = select_labels([lab], [lab > 0], LabelsConfig(per_class=5))
    part = select_labels([lab], [lab > 0], LabelsConfig(per_class=5, test_fraction=0.1))
    assert np.array_equal(full.train_index, part.train_index)
    assert abs(part.test_value.size - 0.1 * full.test_value.size) <= 4 and set(part.test_value) == {1, 2, 3, 4}


def test_selection_round_trips_through_npz(tmp_path):
    lab = _classes()
    sel = select_labels([lab, lab[:20]], [lab > 0, lab[:20] > 0], LabelsConfig(per_class=3), names={1: "one"},
                        paths=["a.tif", "b.tif"])
    sel.save_npz(tmp_path / "labels_used.npz")
    back = LabelSelection.load_npz(tmp_path / "labels_used.npz")
    for key in ("train_file", "train_index", "train_value", "test_file", "test_index", "test_value"):
        assert np.array_equal(getattr(back, key), getattr(sel, key))
    assert (back.classes, back.class_names, back.shapes, back.notes, back.paths) == (
        sel.classes, sel.class_names, sel.shapes, sel.notes, sel.paths)
    assert back.class_names[0] == "one" and back.shapes == [(32, 32), (20, 32)]


def test_labelled_pixels_cover_many_files():
    a, b = np.array([[0, 1], [2, 0]]), np.array([[3, 3, 0]])
    files, flat, values = labelled_pixels([a, b], [a > 0, b > 0])
    assert files.tolist() == [0, 0, 1, 1] and flat.tolist() == [1, 2, 0, 1] and values.tolist() == [1, 2, 3, 3]


def test_indian_pines_five_per_class_gives_80_pixels():
    from geomed_ssl.sample import CLASS_NAMES, LABELS

    labels, mask = read_label(LABELS, "raster")
    sel = select_labels([labels], [mask], LabelsConfig(per_class=5), names=dict(enumerate(CLASS_NAMES, 1)))
    assert sel.train_value.size == 80 and len(sel.classes) == 16 and sel.notes == []
    sel = select_labels([labels], [mask], LabelsConfig(per_class=20), names=dict(enumerate(CLASS_NAMES, 1)))
    assert "class 9 (Oats): 20 labelled pixels, took 10 instead of 20 so half stay for testing" in sel.notes


# -- classification folders -----------------------------------------------------------------------------------
def class_tree(root: Path, counts: dict[str, int], seed: int = 0) -> None:
    """``counts[name]`` small 3-band GeoTIFFs in ``root/name`` for each class folder ``name``."""
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            write_geotiff(root / name / f"{name}_{i}.tif", structured_raster(rng, 3, 16))


def test_class_folders_scan_and_image_sampling(tmp_path):
    class_tree(tmp_path, {"Forest": 4, "River": 4, "Oats": 2})
    records, labels, names = scan_class_folders(tmp_path, DataConfig(patch_size=16))
    assert names == ["Forest", "Oats", "River"] and labels.tolist() == [0] * 4 + [1] * 2 + [2] * 4
    assert all(names[c] in r.path for r, c in zip(records, labels))
    train, test, notes = sample_images_per_class(labels, 2, seed=0, names=names)
    assert np.bincount(labels[train]).tolist() == [2, 1, 2] and sorted([*train, *test]) == list(range(10))
    assert notes == ["class 'Oats': 2 labelled images, took 1 instead of 2 so half stay for testing"]


def test_class_folders_of_one_name_in_two_unicode_forms_are_refused(tmp_path) -> None:
    """Forêt (composed) and Forêt (decomposed, from macOS) trained as two classes that print alike; evaluate then
    scored every image of one as the other."""
    import unicodedata

    from tests.conftest import write_class_folders

    names = [unicodedata.normalize("NFC", "Forêt"), unicodedata.normalize("NFD", "Forêt"), "River"]
    write_class_folders(tmp_path, names, per_class=2)
    with pytest.raises(DataError, match="one name in two Unicode forms"):
        scan_class_folders(tmp_path, DataConfig(patch_size=16))


def test_class_folders_named_by_digits_are_named_by_their_folder_in_the_notes(tmp_path) -> None:
    """Folders 1, 10, 2 are classes 0, 1, 2: the notes said "class 1 (10)" and "class 2" (folder 2 unnamed)."""
    class_tree(tmp_path, {"1": 4, "10": 2, "2": 4})
    _, labels, names = scan_class_folders(tmp_path, DataConfig(patch_size=16))
    _, _, notes = sample_images_per_class(labels, 2, seed=0, names=names)
    assert notes == ["class '10': 2 labelled images, took 1 instead of 2 so half stay for testing"]
    _, _, notes = split_images(labels, None, 0.99, 0, names)
    assert notes[0].startswith("class '1': 4 labelled images, took all")


def test_split_folders_of_class_folders_are_refused_and_shared_subfolders_warned(tmp_path, caplog) -> None:
    """`--data S` with S/train/Forest, S/test/River...: images in subfolders count for their top folder, so the
    classes were "test" and "train", without a word."""
    for seed, split in enumerate(("train", "test")):
        class_tree(tmp_path / "S" / split, {"Forest": 2, "River": 2}, seed)
    with pytest.raises(DataError, match=r"holds split folders \(test, train\) of class folders \(Forest, River\)"):
        scan_class_folders(tmp_path / "S", DataConfig(patch_size=16))
    (tmp_path / "S" / "train").rename(tmp_path / "S" / "Lake")  # two classes that share subfolder names
    (tmp_path / "S" / "test").rename(tmp_path / "S" / "Field")
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        _, _, names = scan_class_folders(tmp_path / "S", DataConfig(patch_size=16))
    assert names == ["Field", "Lake"] and "hold subfolders of the same names (Forest, River)" in caplog.text
    with pytest.raises(DataError, match="subfolders of the same names"):
        scan_class_folders(tmp_path / "S", DataConfig(patch_size=16), strict=True)
    caplog.clear()
    for top in ("Lake", "Field"):  # one subfolder name alike (images/): a layout, not classes
        (tmp_path / "S" / top / "River").rename(tmp_path / "S" / top / "images2")
        (tmp_path / "S" / top / "Forest").rename(tmp_path / "S" / top / "images")
        (tmp_path / "S" / top / "images2").rename(tmp_path / "S" / top / "images" / "more")
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        scan_class_folders(tmp_path / "S", DataConfig(patch_size=16), strict=True)
    assert "subfolders" not in caplog.text


def test_copies_of_an_image_are_warned_about_naming_one_in_another_class(tmp_path, caplog) -> None:
    import shutil

    class_tree(tmp_path, {"a": 3, "b": 3})
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        scan_class_folders(tmp_path, DataConfig(patch_size=16))
    assert "copies" not in caplog.text
    shutil.copy(tmp_path / "a" / "a_1.tif", tmp_path / "b" / "dup_of_a_1.tif")
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        scan_class_folders(tmp_path, DataConfig(patch_size=16))
    assert "1 image(s) are copies of another (e.g. '" in caplog.text and "dup_of_a_1.tif' of '" in caplog.text
    assert "1 of them in another class folder" in caplog.text


# -- volumes --------------------------------------------------------------------------------------------------
def _nii(path, array, affine):
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def test_volume_labels_match_in_ras_and_a_shifted_affine_is_an_error(tmp_path):
    folder, labels_dir = tmp_path / "vols", tmp_path / "labs"
    folder.mkdir(), labels_dir.mkdir()
    vol = np.random.default_rng(0).random((12, 10, 8)).astype(np.float32)
    flip = np.diag([-2.0, 2.0, 2.0, 1.0])  # stored L->R: the reader flips axis 0 to reach RAS
    flip[0, 3] = 22.0
    _nii(folder / "a.nii.gz", vol, flip)
    lab = np.zeros((12, 10, 8), np.int16)
    lab[0, 0, 0], lab[3:6, 2:4, 1:3] = 7, 2
    _nii(labels_dir / "a_seg.nii.gz", lab, flip)
    records = scan(folder, DataConfig(kind="volume", patch_size=8)).records
    [(record, path)] = match_labels(records, labels_dir, "volume")
    labels, mask = read_label(path, "volume")
    assert np.array_equal(labels, lab[::-1]) and labels[-1, 0, 0] == 7  # RAS, as the volume reader returns
    assert class_ids([labels], 0) == [2, 7]
    # the same grid stored in another axis order is still the same grid
    _nii(labels_dir / "a_seg.nii.gz", lab[::-1].copy(), np.diag([2.0, 2.0, 2.0, 1.0]) @ np.eye(4))
    assert len(match_labels(records, labels_dir, "volume")) == 1
    shifted = flip.copy()
    shifted[1, 3] += 2.0  # one voxel along y
    _nii(labels_dir / "a_seg.nii.gz", lab, shifted)
    with pytest.raises(DataError, match=r"a_seg.nii.gz.*vols/a.nii.gz.*affine differs"):
        match_labels(records, labels_dir, "volume")
    rounded = flip.copy()  # float32 header rounding (SCT's gold-standard GM mask beside its MT image): one grid
    rounded[0, 0], rounded[1, 3] = -2.0002, 0.0003
    _nii(labels_dir / "a_seg.nii.gz", lab, rounded)
    assert len(match_labels(records, labels_dir, "volume")) == 1
    shifted[1, 3] = 0.1  # a twentieth of a voxel: another grid
    _nii(labels_dir / "a_seg.nii.gz", lab, shifted)
    with pytest.raises(DataError, match="affine differs"):
        match_labels(records, labels_dir, "volume")
    _nii(labels_dir / "a_seg.nii.gz", lab[:6].copy(), flip)  # another shape: its flipped axis starts elsewhere in RAS,
    with pytest.raises(DataError, match=r"shape 6x10x8 vs 12x10x8 \(RAS order\) \(label vs image\)"):
        match_labels(records, labels_dir, "volume")  # which is the shape's doing, not the affine's
    _nii(labels_dir / "a_seg.nii.gz", lab[:6].copy(), flip @ np.diag([1.0, 1.5, 1.0, 1.0]))
    with pytest.raises(DataError, match=r"shape 6x10x8 vs 12x10x8 \(RAS order\); voxel axes differ \(voxel sizes"):
        match_labels(records, labels_dir, "volume")


def test_volume_labels_follow_the_readers_resampled_grid(tmp_path):
    from geomed_ssl.data.readers import VolumeReader

    lab = np.zeros((12, 10, 8), np.uint8)
    lab[4:8] = 3
    path = _nii(tmp_path / "a.nii.gz", lab, np.diag([2.0, 2.0, 3.0, 1.0]))
    cfg = DataConfig(kind="volume", patch_size=8, spacing=[1.0, 1.0, 1.0])
    record = scan(path, cfg).records[0]
    labels, mask = read_label(path, "volume", spacing=cfg.spacing)
    assert labels.shape == VolumeReader(cfg).volume_shape(record) == (23, 19, 22)
    assert set(np.unique(labels)) == {0, 3} and mask.sum() == (labels == 3).sum()


def test_raster_label_window_reads_part_of_the_file(tmp_path):
    path = _label(tmp_path / "l.tif", _classes())
    full, _ = read_label(path, "raster")
    part, mask = read_label(path, "raster", window=(10, 12, 4, 6))
    assert part.shape == (4, 6) and np.array_equal(part, full[10:14, 12:18])


def test_a_label_volume_of_several_frames_is_refused_as_not_3d_not_as_another_grid(tmp_path) -> None:
    import nibabel as nib
    import pytest

    from geomed_ssl.config import DataConfig
    from geomed_ssl.data.catalog import scan
    from geomed_ssl.errors import DataError
    from geomed_ssl.labels.grids import check_grid

    (tmp_path / "img").mkdir()
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.float32), np.eye(4)), str(tmp_path / "img" / "a.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16, 2), np.uint8), np.eye(4)), str(tmp_path / "lab.nii.gz"))
    record = scan(tmp_path / "img", DataConfig(kind="volume", patch_size=8)).records[0]
    with pytest.raises(DataError, match=r"has shape \[16, 16, 16, 2\]: a label volume is 3D") as err:
        check_grid(record, tmp_path / "lab.nii.gz", "volume")
    assert "Resample" not in str(err.value)


def test_class_folder_splits_take_k_per_class_or_a_fraction_and_subsample_the_test_images() -> None:
    from geomed_ssl.labels.sampling import split_images

    labels = np.repeat(np.arange(3), 20)
    train, test, _ = split_images(labels, 2, None, 0, ["a", "b", "c"])
    assert np.bincount(labels[train]).tolist() == [2, 2, 2] and test.size == 54
    assert not set(train) & set(test)
    train_f, test_f, _ = split_images(labels, None, 0.25, 0, ["a", "b", "c"], test_fraction=0.5)
    assert np.bincount(labels[train_f]).tolist() == [5, 5, 5]
    assert np.bincount(labels[test_f]).tolist() == [8, 8, 8] and not set(train_f) & set(test_f)


def test_copies_of_one_label_voxel_on_a_finer_grid_train_or_test_together(tmp_path):
    import nibabel as nib

    from geomed_ssl.labels import label_sources, read_label

    labels = np.zeros((5, 5, 5), np.uint8)
    labels[:, :, 3:] = 1
    path = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([3.0, 3.0, 3.0, 1.0])), str(path))  # 3 mm labels
    data = DataConfig(kind="volume", spacing=[1.5, 1.5, 1.5], patch_size=8)
    values, labelled = read_label(str(path), "volume", None, spacing=data.spacing)
    assert values.shape == (9, 9, 9)  # the training grid holds each 3 mm voxel about eight times
    sources = label_sources([str(path)], data)
    cfg = LabelsConfig(per_class=5, seed=0, ignore_value=None)
    sel = select_labels([values], [labelled], cfg, paths=[str(path)], sources=sources)
    (axes, shape), = sources

    def places(index):
        coords = np.unravel_index(index, values.shape)
        return set(np.ravel_multi_index(tuple(a[c] for a, c in zip(axes, coords)), shape).tolist())

    trained, tested = places(sel.train_index), places(sel.test_index)
    assert len(trained) == 10 and not trained & tested  # five voxels of the file per class, never also tested
    assert sel.train_index.size > 10  # every copy of a drawn voxel trains
    assert any("729 labelled voxels are copies of 125 voxels of the label files" in n
               and "label-file voxels training per class: class 0:5, class 1:5" in n for n in sel.notes)
    naive = select_labels([values], [labelled], cfg, paths=[str(path)])
    assert places(naive.train_index) & places(naive.test_index)  # what counting copies apart did


def test_a_segmentation_fine_tune_checks_image_sizes_against_the_window_it_trains_on(tmp_path):
    from geomed_ssl.config import load_recipe
    from geomed_ssl.finetune.segment import training_window
    from tests.inference.test_finetuned import make_ft_dir

    encoder = make_ft_dir(tmp_path)  # a 16-px encoder; the recipe's data.patch_size is 96
    recipe = load_recipe("recipes/mae_sentinel2.yaml", ["data.patch_size=96"])
    assert training_window(recipe, encoder) == [16, 16]
    assert training_window(recipe, "none") == [96, 96]
    assert training_window(load_recipe("recipes/mae_sentinel2.yaml", ["finetune.window=32"]), encoder) == [32, 32]


@pytest.mark.parametrize("per_class", [5, None])
def test_copies_of_one_label_voxel_straddling_a_block_edge_never_train_and_test(tmp_path, per_class):
    import nibabel as nib

    from geomed_ssl.labels import label_sources, read_label

    rng = np.random.default_rng(0)
    path = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(rng.integers(1, 3, (10, 10, 10)).astype(np.uint8), np.eye(4)), str(path))
    data = DataConfig(kind="volume", spacing=[0.5, 0.5, 0.5], patch_size=8)
    values, labelled = read_label(str(path), "volume", None, spacing=data.spacing)  # 19^3: copies at block edges
    sources = label_sources([str(path)], data)
    (axes, shape), = sources
    cfg = LabelsConfig(per_class=per_class, seed=0, ignore_value=None, split="blocks", block_size=4)
    sel = select_labels([values], [labelled], cfg, paths=[str(path)], sources=sources)

    def places(index):
        coords = np.unravel_index(index, values.shape)
        return set(np.ravel_multi_index(tuple(a[c] for a, c in zip(axes, coords)), shape).tolist())

    assert sel.train_index.size and sel.test_index.size
    assert not places(sel.train_index) & places(sel.test_index)
    assert not set(sel.train_index.tolist()) & set(sel.test_index.tolist())


def test_evaluate_tells_apart_the_label_voxels_a_model_trained_on_at_another_spacing(tmp_path):
    import nibabel as nib

    from geomed_ssl.finetune.trained import trained_positions
    from geomed_ssl.labels import label_sources, read_label

    labels = np.zeros((5, 5, 5), np.uint8)
    labels[:, :, 3:] = 1
    path = str(tmp_path / "seg.nii.gz")
    nib.save(nib.Nifti1Image(labels, np.diag([3.0, 3.0, 3.0, 1.0])), path)
    data = DataConfig(kind="volume", spacing=[1.5, 1.5, 1.5], patch_size=8)
    values, labelled = read_label(path, "volume", None, spacing=data.spacing)
    sel = select_labels([values], [labelled], LabelsConfig(per_class=3, seed=0, ignore_value=None), paths=[path],
                        sources=label_sources([path], data))
    (tmp_path / "ft").mkdir()
    sel.save_npz(tmp_path / "ft" / "labels_used.npz")
    native, mask = read_label(path, "volume", None)  # evaluate reads every labelled voxel of the file, once
    files, flats, _ = labelled_pixels([native], [mask])
    seen, note = trained_positions(tmp_path / "ft", [path], [native.shape], files, flats, data)
    assert seen.sum() == 6 and "cannot be told apart" not in (note or "")  # three voxels of each class


def test_a_grid_coarser_than_the_labels_says_how_many_labelled_voxels_it_reads(tmp_path, caplog):
    import logging

    import nibabel as nib

    from geomed_ssl.labels import read_label

    path = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((9, 9, 9), np.uint8), np.diag([0.5, 0.5, 0.5, 1.0])), str(path))
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        values, _ = read_label(str(path), "volume", None, spacing=[1.0, 1.0, 1.0], warn_coverage=True)
    assert values.shape == (5, 5, 5)
    assert "125 of the 729 labelled voxels" in caplog.text and "0.5 x 0.5 x 0.5 mm" in caplog.text


def test_labels_georeferenced_by_ground_control_points_are_checked_against_the_images(tmp_path: Path) -> None:
    """Sentinel-1 GRD-like files carry GCPs, not a transform: a label whose GCPs put it 1° away is refused, one
    with the image's GCPs is taken."""
    import rasterio
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    from geomed_ssl.labels.grids import check_grid

    def write(path: Path, east: float, bands: int) -> None:
        corners = [(0, 0, 14.0, 46.01), (0, 48, 14.01, 46.01), (48, 0, 14.0, 46.0), (48, 48, 14.01, 46.0)]
        gcps = [GroundControlPoint(row=r, col=c, x=x + east, y=y) for r, c, x, y in corners]
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", height=48, width=48, count=bands, dtype="uint8") as dst:
            dst.write(np.ones((bands, 48, 48), np.uint8))
            dst.gcps = (gcps, CRS.from_epsg(4326))

    write(tmp_path / "img" / "s1.tif", 0.0, 2)
    (record,) = scan(tmp_path / "img", DataConfig(patch_size=16)).records
    write(tmp_path / "same.tif", 0.0, 1)
    check_grid(record, tmp_path / "same.tif", "raster")
    write(tmp_path / "east.tif", 1.0, 1)
    with pytest.raises(DataError, match=r"origin shifted by \+4\.8e\+03 columns"):
        check_grid(record, tmp_path / "east.tif", "raster")


def test_counting_and_radix_shortcuts_give_what_unique_and_a_stable_argsort_give() -> None:
    """unique_ints and _groups take shortcuts for dense label maps of few classes (counting, narrow dtypes); the
    draws depend on their exact output, so it must be numpy's."""
    from geomed_ssl.labels.draws import _groups, unique_ints

    rng = np.random.default_rng(0)
    long = np.zeros((1 << 24) + 3, np.uint8)  # counted 16 M values at a time (bincount's int64 copy of them)
    long[[5, -1]] = 9, 200
    cases = [long, rng.integers(0, 5, 1000), rng.integers(-3, 4, (20, 30)), rng.integers(0, 40000, 500),
             rng.integers(-2**40, 2**40, 300), np.zeros(0, np.int64), rng.integers(0, 7, 100).astype(np.uint8),
             np.array([2**63 + 5, 3], np.uint64), np.array([[-100, 50]], np.int8),
             np.array([-30000, 30000, 7], np.int16)]
    for values in cases:
        got = unique_ints(values)
        assert got.dtype == np.unique(values).dtype and np.array_equal(got, np.unique(values))
        flat = values.reshape(-1)
        if flat.size > 2000:
            continue  # the long map checks the chunked counting only
        groups = _groups(flat, None)
        assert list(groups) == [int(c) for c in np.unique(flat)]
        for c, idx in groups.items():
            assert np.array_equal(idx, np.flatnonzero(flat == c))
        pool = rng.random(flat.size) < 0.5
        for c, idx in _groups(flat, pool).items():
            assert np.array_equal(idx, np.flatnonzero((flat == c) & pool))


def test_copies_of_one_label_map_beside_each_date_make_one_ground(tmp_path, caplog):
    """Dates in folders of their own, each with a copy of the scene's label map (labels.label_name): the copies
    stand for one label file, so no place trains at one date and tests at another. A map that differs, or images
    without a CRS (nothing places them on one ground), keep their own."""
    import logging

    from affine import Affine

    rng = np.random.default_rng(0)
    lab = _classes()
    for d in ("d1", "d2", "d3", "d4"):
        (tmp_path / d).mkdir()
        write_geotiff(tmp_path / d / "tile.tif", structured_raster(rng, 3, 32))
        _label(tmp_path / d / "lulc.tif", lab)
    changed = lab.copy()
    changed[5, 5] = 2  # land cover changed at one place: another map
    _label(tmp_path / "d4" / "lulc.tif", changed)
    records = scan(tmp_path, DataConfig(patch_size=8, exclude=["*lulc*"])).records
    pairs, arrays, masks = read_label_pairs(records, None, LabelsConfig(label_name="lulc.tif"),
                                            DataConfig(patch_size=8))
    paths = [p for _, p in pairs]
    assert [Path(p).parent.name for p in paths] == ["d1", "d2", "d3", "d4"]  # each image keeps its own label file
    with caplog.at_level(logging.INFO, logger="geomed_ssl"):
        grounds = label_grounds(pairs, arrays)
    assert grounds[0] == grounds[1] == grounds[2] != grounds[3] and grounds[3].startswith("ground:")
    assert "2 label file(s) hold the same labels as another on the same grid" in caplog.text
    sel = select_labels(arrays, masks, LabelsConfig(per_class=5, seed=0), paths=paths, grounds=grounds)
    assert sel.paths == paths and sel.grounds == grounds
    trained = set(zip(sel.train_file.tolist(), sel.train_index.tolist()))
    same_ground = {(f, i) for f in (0, 1, 2) for i in sel.train_index[sel.train_file < 3].tolist()}
    assert trained >= same_ground  # each place drawn trains at the three dates of the copies
    tested = set(zip(sel.test_file.tolist(), sel.test_index.tolist()))
    assert not {(f, i) for f, i in tested if f < 3} & same_ground
    plain = tmp_path / "plain"
    for d in ("p1", "p2"):
        (plain / d).mkdir(parents=True)
        write_geotiff(plain / d / "tile.tif", structured_raster(rng, 3, 32), crs=None, transform=Affine.identity())
        _label(plain / d / "lulc.tif", lab, crs=None, transform=Affine.identity())
    records = scan(plain, DataConfig(patch_size=8, exclude=["*lulc*"])).records
    pairs, arrays, _ = read_label_pairs(records, None, LabelsConfig(label_name="lulc.tif"), DataConfig(patch_size=8))
    assert [Path(p).parent.name for p in label_grounds(pairs, arrays)] == ["p1", "p2"]  # their own label paths


def test_subjects_on_one_template_grid_with_the_same_labels_stay_apart(tmp_path):
    """Healthy controls' empty lesion masks on the MNI grid hold the same labels on one grid, yet are two subjects:
    volumes are never grouped as one ground (rasters' copies of one land-cover map beside each date are)."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    lab = np.zeros((16, 16, 16), np.uint8)
    for name in ("control1", "control2"):
        (tmp_path / name).mkdir()
        nib.save(nib.Nifti1Image(rng.normal(100, 10, (16, 16, 16)).astype(np.float32), np.eye(4)),
                 str(tmp_path / name / "t1.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / name / "seg.nii.gz"))
    cfg = DataConfig(kind="volume", patch_size=8, exclude=["*seg*"])
    pairs, arrays, _ = read_label_pairs(scan(tmp_path, cfg).records, None,
                                        LabelsConfig(label_name="seg.nii.gz", ignore_value=None), cfg)
    assert [Path(g).parent.name for g in label_grounds(pairs, arrays)] == ["control1", "control2"]


def test_a_date_off_the_grid_of_its_shared_label_is_told_to_be_resampled_not_the_label(tmp_path):
    from affine import Affine

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    write_geotiff(tmp_path / "images" / "t1.tif", structured_raster(rng, 3, 32))
    write_geotiff(tmp_path / "images" / "t2.tif", structured_raster(rng, 3, 32),
                  transform=Affine(10, 0, 500010, 0, -10, 5100000))  # shifted by one column
    _label(tmp_path / "lulc.tif", _classes())
    records = scan(tmp_path / "images", DataConfig(patch_size=8)).records
    with pytest.raises(DataError, match=r"t2.tif.*origin shifted.*serves 2 images .*t1.tif' is on its grid: "
                                         "resample this image"):
        match_labels(records, tmp_path / "lulc.tif", "raster")
    _label(tmp_path / "lulc.tif", _classes(), transform=Affine(10, 0, 500030, 0, -10, 5100000))  # the label is off
    write_geotiff(tmp_path / "images" / "t2.tif", structured_raster(rng, 3, 32))
    records = scan(tmp_path / "images", DataConfig(patch_size=8)).records
    with pytest.raises(DataError, match=r"origin shifted.*Resample the label onto the image grid"):
        match_labels(records, tmp_path / "lulc.tif", "raster")


def test_float_labels_with_a_fractional_nodata_value_are_read_as_labels(tmp_path: Path) -> None:
    """The nodata value of a float label raster (-9999.9) is no class id: it is left out before the whole-number
    check, which took it for 'non-integer values' and refused the file (or 'rounded' it)."""
    lab = np.full((16, 16), -9999.9, np.float32)
    lab[:4, :4], lab[10:, 10:] = 1.0, 2.0
    path = _label(tmp_path / "f.tif", lab, nodata=-9999.9)
    values, labelled = read_label(path, "raster", ignore_value=None)
    assert labelled.sum() == 16 + 36 and sorted(np.unique(values[labelled])) == [1, 2]


def test_a_label_rasters_gdal_mask_hides_its_pixels(tmp_path: Path) -> None:
    """An internal mask (as GDAL writes for clipped or JPEG-compressed files) marks missing pixels of a label
    raster too: they are unlabelled, not class 0."""
    import rasterio

    lab = np.zeros((16, 16), np.uint8)
    lab[:8] = 1
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(tmp_path / "m.tif", "w", driver="GTiff", height=16, width=16, count=1, dtype="uint8",
                           crs="EPSG:32633", transform=GRID) as dst:
            dst.write(lab[None])
            mask = np.full((16, 16), 255, np.uint8)
            mask[:, :4] = 0
            dst.write_mask(mask)
    values, labelled = read_label(tmp_path / "m.tif", "raster", ignore_value=None)
    assert labelled.sum() == 16 * 12 and not labelled[:, :4].any()
    assert sorted(np.unique(values[labelled])) == [0, 1]


def test_a_class_0_beside_a_nodata_tag_and_a_255_background_are_each_said_once(tmp_path: Path, caplog) -> None:
    """labels.ignore_value 0 (the default) on files whose nodata tag (255) marks the unlabelled pixels leaves out a
    class 0 (water in many land-cover maps): one warning naming the fix, for all the files; 255 filling most of an
    untagged file is trained as a class: one warning too. Nothing is said when the conventions agree."""
    import logging

    records = _images(tmp_path, n=2)
    water = np.full((32, 32), 255, np.uint8)
    water[:16], water[16:, :16] = 0, 1  # classes 0 and 1, nodata 255 elsewhere
    (tmp_path / "a").mkdir()
    for r in records:
        _label(tmp_path / "a" / Path(r.path).name, water, nodata=255)
    lab, data = LabelsConfig(), DataConfig(patch_size=8)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        read_label_pairs(records, tmp_path / "a", lab, data)
    said = [r.getMessage() for r in caplog.records if "ignore_value" in r.getMessage()]
    assert len(said) == 1 and "(and 1 more file(s))" in said[0] and "512 pixel(s) of value 0" in said[0]
    assert "set labels.ignore_value=null" in said[0]
    caplog.clear()
    sparse = np.full((32, 32), 255, np.uint8)
    sparse[:4, :4], sparse[-4:, -4:] = 1, 2
    (tmp_path / "b").mkdir()
    for r in records:
        _label(tmp_path / "b" / Path(r.path).name, sparse)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        read_label_pairs(records, tmp_path / "b", lab, data)
    said = [r.getMessage() for r in caplog.records if "255" in r.getMessage()]
    assert len(said) == 1 and "fills 97% of the labelled pixels" in said[0] and "labels.ignore_value=255" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        read_label_pairs(records, tmp_path / "b", LabelsConfig(ignore_value=255), data)
        quadrants = _classes()
        (tmp_path / "c").mkdir()
        for r in records:
            _label(tmp_path / "c" / Path(r.path).name, quadrants)  # 0 = unlabelled, no tag: nothing to say
        read_label_pairs(records, tmp_path / "c", lab, data)
    assert not [r for r in caplog.records if "ignore_value" in r.getMessage()]
    cloud = np.zeros((32, 32), np.uint8)  # a 38-Cloud mask: 255 is the cloud class, 0 clear sky (trained with
    cloud[:, 2:] = 255  # labels.ignore_value null), not 255 unlabelled
    (tmp_path / "d").mkdir()
    for r in records:
        _label(tmp_path / "d" / Path(r.path).name, cloud)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        read_label_pairs(records, tmp_path / "d", LabelsConfig(ignore_value=None), data)
    assert not [r for r in caplog.records if "255" in r.getMessage()]
    _, arrays, masks = read_label_pairs(records, tmp_path / "d", lab, data)
    with pytest.raises(DataError, match="as in a binary mask .* set labels.ignore_value=null"):
        select_labels(arrays, masks, LabelsConfig(per_class=5))


def test_a_class_0_beside_nan_or_a_mask_marking_the_unlabelled_pixels_is_said_too(tmp_path: Path, caplog) -> None:
    """Points rasterised the Python way (a float grid of NaN, classes 0..k-1 from a label encoder) or a uint8 map
    whose GDAL mask hides its unlabelled pixels mark them already, as a nodata tag does: labels.ignore_value 0 (the
    default) leaving out their class 0 gets the same warning, not silence."""
    import logging

    import rasterio

    records = _images(tmp_path, n=1)
    name = Path(records[0].path).name
    points = np.full((32, 32), np.nan, np.float32)
    points[2:6, 2:6], points[20:24, 20:24] = 0, 1
    (tmp_path / "nan").mkdir()
    _label(tmp_path / "nan" / name, points)
    (tmp_path / "mask").mkdir()
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(tmp_path / "mask" / name, "w", driver="GTiff", height=32, width=32, count=1,
                           dtype="uint8", crs="EPSG:32633", transform=GRID) as dst:
            dst.write(np.nan_to_num(points, nan=0).astype(np.uint8)[None])
            dst.write_mask(np.where(np.isfinite(points), 255, 0).astype(np.uint8))
    for folder, mark in (("nan", "with NaN"), ("mask", "with its GDAL mask")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
            read_label_pairs(records, tmp_path / folder, LabelsConfig(), DataConfig(patch_size=8))
        said = [r.getMessage() for r in caplog.records if "ignore_value" in r.getMessage()]
        assert len(said) == 1 and mark in said[0] and "16 pixel(s) of value 0" in said[0], (folder, said)


def test_a_labels_csv_row_is_matched_by_any_path_a_user_writes_or_said_when_it_names_nothing(tmp_path, caplog,
                                                                                             monkeypatch):
    """Image paths relative to the working folder, Windows separators and the end of a path under the images folder
    find their image; a row whose image exists nowhere is warned about by line (not taken for an image outside the
    catalog); a bare name two images share and one image listed with two labels are errors naming the lines."""
    import logging

    records = _images(tmp_path, n=3)
    _label(tmp_path / "a.tif", _classes())
    _label(tmp_path / "b.tif", _classes())
    (tmp_path / "meta").mkdir()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "meta" / "pairs.csv").write_text(
        f"image,label\nimages/scene_0.tif,{tmp_path}/a.tif\nimages\\scene_1.tif,{tmp_path}/a.tif\n"
        f"IMAGES/Scene_2.tif,{tmp_path}/b.tif\nimages/scene_3.tiff,{tmp_path}/b.tif\n")
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        pairs = match_labels(records, None, "raster", csv=tmp_path / "meta" / "pairs.csv")
    assert [(Path(r.path).name, Path(lab).name) for r, lab in pairs] == [
        ("scene_0.tif", "a.tif"), ("scene_1.tif", "a.tif"), ("scene_2.tif", "b.tif")]
    said = [r.getMessage() for r in caplog.records if "neither among the images nor a file on disk" in r.getMessage()]
    assert len(said) == 1 and "line 5 ('images/scene_3.tiff')" in said[0]
    (tmp_path / "twice.csv").write_text("image,label\nscene_0.tif,a.tif\nimages/scene_0.tif,b.tif\n")
    with pytest.raises(DataError, match=r"twice with different labels \(line 2: .*a.tif', line 3: .*b.tif'\)"):
        match_labels(records, None, "raster", csv=tmp_path / "twice.csv")
    (tmp_path / "same.csv").write_text("image,label\nscene_0.tif,a.tif\nimages/scene_0.tif,a.tif\n")
    assert len(match_labels(records, None, "raster", csv=tmp_path / "same.csv")) == 1
    (tmp_path / "meta" / "cwd.csv").write_text("image,label\nimages/scene_0.tif,b.tif\n")  # both from the cwd
    assert [Path(lab).name for _, lab in match_labels(records, None, "raster", csv=tmp_path / "meta" / "cwd.csv")] \
        == ["b.tif"]
    (tmp_path / "more").mkdir()
    write_geotiff(tmp_path / "more" / "scene_0.tif", structured_raster(np.random.default_rng(1), 3, 32))
    both = scan(tmp_path, DataConfig(patch_size=8, exclude=["*.csv", "a.tif", "b.tif"])).records
    (tmp_path / "bare.csv").write_text("image,label\nscene_0.tif,a.tif\n")
    with pytest.raises(DataError, match="line 2: 'scene_0.tif' matches 2 images"):
        match_labels(both, None, "raster", csv=tmp_path / "bare.csv")


def test_point_labels_and_tab_separated_pairs_are_told_apart_from_label_rasters(tmp_path):
    """Survey points as a CSV (x, y, class) are refused saying they look like points and how to rasterise them; a
    .tsv / .txt of image,label pairs is read as a table, not opened as a raster (GDAL's XYZ driver)."""
    records = _images(tmp_path)
    lab = LabelsConfig()
    (tmp_path / "points.csv").write_text("x,y,class\n500015,4999985,1\n")
    with pytest.raises(DataError, match=r"look like points .* rasterise the points onto it first"):
        read_label_pairs(records, tmp_path / "points.csv", lab, DataConfig(patch_size=8))
    _label(tmp_path / "a.tif", _classes())
    (tmp_path / "pairs.txt").write_text("image\tlabel\nimages/scene_0.tif\ta.tif\n")
    pairs, _, _ = read_label_pairs(records, tmp_path / "pairs.txt", lab, DataConfig(patch_size=8))
    assert [Path(r.path).name for r, _ in pairs] == ["scene_0.tif"]


def test_a_labels_csv_names_a_stack_of_band_files_by_its_folder(tmp_path):
    """A data.channels stack is one image, named by its folder (``stack/s1``, absolute, with a trailing slash, or
    ``s1``), as the name matching pairs it."""
    rng = np.random.default_rng(2)
    for case in ("s1", "s2"):
        (tmp_path / "stack" / case).mkdir(parents=True)
        for band in ("B02", "B03"):
            write_geotiff(tmp_path / "stack" / case / f"{band}.tif", structured_raster(rng, 1, 32))
    records = scan(tmp_path / "stack", DataConfig(patch_size=8, channels=["B02.tif", "B03.tif"])).records
    _label(tmp_path / "a.tif", _classes())
    for name in ("stack/s1", f"{tmp_path}/stack/s1/", "s1"):
        (tmp_path / "pairs.csv").write_text(f"image,label\n{name},a.tif\n")
        pairs = match_labels(records, None, "raster", csv=tmp_path / "pairs.csv")
        assert [Path(r.paths[0]).parent.name for r, _ in pairs] == ["s1"], name


def test_a_labels_csv_row_naming_a_file_beside_the_images_that_was_left_out_is_said(tmp_path, caplog):
    """data.exclude (e.g. the recipe's *mask* for S2_cloudmasked.tif) left the file out of the images: its row was
    skipped in silence as one for another folder, and the run trained on fewer images than the CSV lists."""
    import logging

    records = _images(tmp_path, n=2)
    write_geotiff(tmp_path / "images" / "S2_cloudmasked.tif", structured_raster(np.random.default_rng(3), 3, 32))
    _label(tmp_path / "a.tif", _classes())
    (tmp_path / "pairs.csv").write_text("image,label\nimages/scene_0.tif,a.tif\nimages/S2_cloudmasked.tif,a.tif\n")
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        pairs = match_labels(records, None, "raster", csv=tmp_path / "pairs.csv")
    assert len(pairs) == 1
    said = [r.getMessage() for r in caplog.records if "not read as one" in r.getMessage()]
    assert len(said) == 1 and "line 3 ('images/S2_cloudmasked.tif')" in said[0] and "data.exclude" in said[0]


def test_a_budget_that_draws_nothing_to_train_on_is_one_clear_error() -> None:
    """Landmark points (one voxel per class) as a label map: every class keeps its one voxel for testing, and
    fitting on nothing was a traceback (finetune) or a constant map scored as a model (compare)."""
    from geomed_ssl.labels.sampling import split_images

    lab = np.zeros((6, 6, 6), np.int64)
    lab[1, 1, 1], lab[4, 4, 4] = 3, 5
    with pytest.raises(DataError, match="no labelled voxel is left to train on with 1 per class: class 3: 1 labelled"):
        select_labels([lab], [lab > 0], LabelsConfig(per_class=1))
    with pytest.raises(DataError, match="no labelled image is left to train on with 2 per class"):
        split_images(np.array([0, 1]), 2, None, 0, ["a", "b"])
    lab[2, 2, 2], lab[3, 3, 3] = 3, 5  # two per class: one trains, one tests
    assert select_labels([lab], [lab > 0], LabelsConfig(per_class=1)).train_value.size == 2


def test_class_folders_of_channel_stacks_are_not_nested_and_a_shared_channel_is_no_copy(tmp_path, caplog) -> None:
    """Forest/t01/{DEM,B04}.tif, River/t01/...: each sample folder is a data.channels stack, not a subfolder of the
    class; the warning named t01, t02 as shared subfolders (an error with --strict), and a DEM shared by every
    sample read as copies across classes."""
    rng = np.random.default_rng(0)
    dem = structured_raster(rng, 1, 16)
    for cls in ("Forest", "River"):
        for t in ("t01", "t02"):
            (tmp_path / cls / t).mkdir(parents=True)
            write_geotiff(tmp_path / cls / t / "DEM.tif", dem)
            write_geotiff(tmp_path / cls / t / "B04.tif", structured_raster(rng, 1, 16))
    cfg = DataConfig(patch_size=16, channels=["B04.tif", "DEM.tif"])
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        records, labels, names = scan_class_folders(tmp_path, cfg, strict=True)
    assert names == ["Forest", "River"] and labels.tolist() == [0, 0, 1, 1]
    assert "subfolders" not in caplog.text and "copies" not in caplog.text
    one = DataConfig(patch_size=16, channels=["B04.tif"])  # a stack of one channel file: its folder is the sample
    assert scan_class_folders(tmp_path, one, strict=True)[2] == ["Forest", "River"]


def test_without_a_budget_every_label_trains_and_one_note_says_how_to_keep_some_for_testing() -> None:
    lab = np.zeros((16, 16), np.int64)
    lab[:8], lab[8:] = 1, 2
    sel = select_labels([lab], [lab > 0], LabelsConfig(seed=0))
    assert sel.train_value.size == 256 and sel.test_value.size == 0
    assert len(sel.notes) == 1 and "every labelled pixel trains (no budget given)" in sel.notes[0]
    assert "--labels-per-class or --label-fraction" in sel.notes[0]
    kept = select_labels([lab], [lab > 0], LabelsConfig(per_class=5, seed=0))
    assert kept.test_value.size and not any("no budget" in n for n in kept.notes)


def test_labels_skipped_by_a_coarser_spacing_are_warned_about_once_per_voxel_size(tmp_path, caplog):
    """Six BraTS label files at 1 mm read on a 3 mm grid said the same warning six times."""
    import logging

    import nibabel as nib

    from geomed_ssl.labels import read_label
    from geomed_ssl.once import forget_said

    forget_said()
    for i in range(3):
        nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.uint8), np.eye(4)), str(tmp_path / f"s{i}.nii.gz"))
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        for i in range(3):
            read_label(str(tmp_path / f"s{i}.nii.gz"), "volume", None, spacing=[3.0, 3.0, 3.0], warn_coverage=True)
    said = [r.getMessage() for r in caplog.records if "neither train nor test" in r.getMessage()]
    assert len(said) == 1 and "27 of the 216 labelled voxels of" in said[0] and "1 x 1 x 1 mm voxels" in said[0]
