"""Predicting with a fine-tuned model's folder: what is skipped is said, the model's data settings (band naming,
include / exclude) are the ones used, a file of the other kind is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from geomed_ssl.cli import app
from geomed_ssl.config import Recipe
from geomed_ssl.inference.finetuned import data_config
from tests.conftest import structured_raster, write_geotiff

runner = CliRunner()


def make_ft_dir(root: Path, task: str = "segment", kind: str = "raster", bands: int = 4, data: dict | None = None,
                ) -> Path:
    """A fine-tune folder holding an untrained tiny model (no training: seconds) with statistics of DN-like data."""
    import torch

    from geomed_ssl.checkpoint import save_model
    from geomed_ssl.data.stats import BandStats
    from geomed_ssl.models.cls_heads import ClassificationModel
    from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
    from geomed_ssl.models.seg_decoder import SegmentationModel

    nd = 2 if kind == "raster" else 3
    names = [f"band_{i}" for i in range(1, bands + 1)]
    stats = BandStats(names, [2000.0] * bands, [500.0] * bands, [1000.0] * bands, [3000.0] * bands, [1] * bands)
    cfg = EncoderConfig(in_chans=bands, spatial_dims=nd, img_size=(16,) * nd, patch_size=(4,) * nd, embed_dim=32,
                        depth=2, num_heads=2, band_names=names, stats=stats.to_dict())
    torch.manual_seed(0)
    enc = ViTEncoder(cfg)
    if task == "segment":
        model, head = SegmentationModel(enc, 2, [0, 1], feature_size=8), {"kind": "unetr", "layers": [0, 1],
                                                                          "feature_size": 8}
    else:
        model, head = ClassificationModel(enc, 2), {"kind": "linear", "pool": "cls"}
    recipe = Recipe()
    recipe.data.kind, recipe.data.patch_size = kind, 16
    for key, value in (data or {}).items():
        setattr(recipe.data, key, value)
    ft = root / "ft"
    ft.mkdir(parents=True)
    recipe.save(ft / "config.yaml")
    meta = {"task": task, "head": head, "window": [16] * nd, "encoder_source": "none",
            "classes": [{"index": i, "value": i + 1, "name": f"c{i + 1}"} for i in range(2)],
            "data": {"kind": kind, "spacing": None, "intensity": "auto", "ct_window": [-1000.0, 1000.0],
                     "nodata": None, "channels": None}}  # as an older version wrote it: no band naming, no globs
    save_model(model, ft / "model", meta)
    return ft


def ft_and_scene(root: Path) -> Path:
    """A segmentation FT_DIR (:func:`make_ft_dir`) and a 4-band 40 px scene for it at ``root/in/scene.tif``."""
    ft = make_ft_dir(root)
    (root / "in").mkdir()
    write_geotiff(root / "in" / "scene.tif", 1000 + structured_raster(np.random.default_rng(0), 4, 40) * 2000)
    return ft


def test_older_models_take_band_naming_and_file_globs_from_their_recipe(tmp_path: Path) -> None:
    ft = make_ft_dir(tmp_path, data={"sensor": "sentinel2", "exclude": ["*lulc*"]})
    from geomed_ssl.checkpoint import read_meta
    from geomed_ssl.config import load_recipe

    meta = read_meta(ft / "model")
    cfg = data_config(meta, load_recipe(ft / "config.yaml").data)
    assert cfg.sensor == "sentinel2" and cfg.exclude == ["*lulc*"] and cfg.patch_size == [16, 16]
    newer = {**meta, "data": {**meta["data"], "sensor": None, "exclude": ["*mask*"]}}
    assert data_config(newer, load_recipe(ft / "config.yaml").data).exclude == ["*mask*"]
    assert data_config(meta).include == ["**/*"] and data_config(meta).exclude == []


def test_classifying_a_folder_with_a_corrupt_file_warns_and_strict_refuses(tmp_path: Path) -> None:
    ft = make_ft_dir(tmp_path, task="classify")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        write_geotiff(folder / f"img_{i}.tif", structured_raster(rng, 4, 16))
    (folder / "broken.tif").write_bytes(b"not a tiff")
    result = runner.invoke(app, ["predict", str(ft), str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "2 images" in result.output and "broken.tif" in result.output and "problem file" in result.output
    strict = runner.invoke(app, ["predict", str(ft), str(folder), "--out", str(tmp_path / "out2"), "--strict"])
    assert strict.exit_code == 2 and "broken.tif" in strict.output


def test_classifying_images_that_meet_the_model_by_band_name_each_on_its_own(tmp_path: Path) -> None:
    """Every chip is read as the model's bands: a chip with an extra band is classified, not dropped for differing
    from the folder's most common band count; an all-nodata chip named beside others is skipped with a warning;
    evaluate scores a test set of one class folder."""
    ft = make_ft_dir(tmp_path, task="classify")
    folder = tmp_path / "images"
    (folder / "c1").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        write_geotiff(folder / "c1" / f"img_{i}.tif", structured_raster(rng, 4, 16))
    write_geotiff(folder / "c1" / "wide.tif", structured_raster(rng, 5, 16))  # band_1..band_5: one extra
    result = runner.invoke(app, ["predict", str(ft), str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "out" / "predictions.csv").read_text().splitlines()) == 1 + 3
    blank = write_geotiff(tmp_path / "blank.tif", np.zeros((4, 16, 16), np.uint16), nodata=0)
    named = runner.invoke(app, ["predict", str(ft), str(folder / "c1" / "img_0.tif"), str(blank), "--out",
                                str(tmp_path / "out2")])
    assert named.exit_code == 0 and "skipped" in named.output and "blank.tif" in named.output
    assert len((tmp_path / "out2" / "predictions.csv").read_text().splitlines()) == 1 + 1
    # a later run into the same folder replaces the rows of the images it classifies and keeps the others
    again = runner.invoke(app, ["predict", str(ft), str(folder / "c1" / "img_1.tif"), str(folder / "c1" / "img_0.tif"),
                                "--out", str(tmp_path / "out2")])
    assert again.exit_code == 0, again.output
    import csv

    rows = list(csv.DictReader((tmp_path / "out2" / "predictions.csv").open()))
    assert sorted(Path(r["file"]).name for r in rows) == ["img_0.tif", "img_1.tif"] and {r["model"] for r in rows} == {
        str(ft)}
    scored = runner.invoke(app, ["evaluate", str(ft), "--data", str(folder), "--out", str(tmp_path / "ev")])
    assert scored.exit_code == 0, scored.output
    import json

    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["test"]["num_samples"] == 3 and metrics["test"]["confusion"][1] == [0, 0]  # all three are c1


def test_a_users_own_predictions_csv_is_refused_and_their_columns_are_kept(tmp_path: Path) -> None:
    """predict adds its rows to an earlier predictions.csv of its own; a user's file of that name (written into a
    folder predict made, so its manifest lists the name) is refused before any work, byte for byte unchanged, and a
    column the user added to predict's own rows survives the next run."""
    import csv

    ft = make_ft_dir(tmp_path, task="classify")
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    img = write_geotiff(tmp_path / "images" / "a.tif", structured_raster(rng, 4, 16))
    other = write_geotiff(tmp_path / "images" / "b.tif", structured_raster(rng, 4, 16))
    out = tmp_path / "out"
    assert runner.invoke(app, ["predict", str(ft), str(img), "--out", str(out)]).exit_code == 0
    table = out / "predictions.csv"
    rows = list(csv.DictReader(table.open()))
    with table.open("w", newline="") as f:  # the user reviews the row
        writer = csv.DictWriter(f, fieldnames=[*rows[0], "checked_by"])
        writer.writeheader()
        writer.writerows([{**r, "checked_by": "expert"} for r in rows])
    assert runner.invoke(app, ["predict", str(ft), str(other), "--out", str(out)]).exit_code == 0
    merged = {Path(r["file"]).name: r for r in csv.DictReader(table.open())}
    assert merged["a.tif"]["checked_by"] == "expert" and merged["b.tif"]["checked_by"] == ""
    edited = table.read_text().replace("expert\n", "expert,a note past the header\n", 1)
    table.write_text("\ufeff" + edited, encoding="utf-8")  # saved as "CSV UTF-8" by a spreadsheet: a BOM first
    assert runner.invoke(app, ["predict", str(ft), str(other), "--out", str(out)]).exit_code == 0
    merged = {Path(r["file"]).name: r for r in csv.DictReader(table.open())}
    assert merged["a.tif"]["checked_by"] == "expert" and set(merged["a.tif"]) == {*merged["b.tif"]}
    table.write_text("id,label\nmy,precious\n")  # the user's own table under our name
    refused = runner.invoke(app, ["predict", str(ft), str(img), "--out", str(out)])
    assert refused.exit_code == 2 and "not a predictions.csv that geomed-ssl wrote" in refused.output
    assert "id, label" in refused.output and table.read_text() == "id,label\nmy,precious\n"


def test_segmentation_predict_on_a_folder_skips_what_the_recipe_excludes(tmp_path: Path) -> None:
    ft = make_ft_dir(tmp_path, data={"exclude": ["*lulc*"]})
    folder = tmp_path / "scenes"
    folder.mkdir()
    write_geotiff(folder / "scene.tif", structured_raster(np.random.default_rng(1), 4, 32))
    write_geotiff(folder / "lulc_mask.tif", np.ones((1, 32, 32), np.uint8))
    result = runner.invoke(app, ["predict", str(ft), str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".geomed-ssl.json", "scene_pred.tif",
                                                                   "scene_pred.tif.aux.xml"]


@pytest.mark.parametrize("pace", [{"overlap": 1.5}, {"overlap": -0.1}, {"batch_size": 0}])
def test_predict_dir_refuses_an_overlap_or_batch_it_cannot_use_before_making_its_folder(tmp_path: Path,
                                                                                       pace: dict) -> None:
    """The CLI's options check their range; from Python the folder was made first."""
    from geomed_ssl.errors import ConfigError
    from geomed_ssl.inference.finetuned import predict_dir

    ft = make_ft_dir(tmp_path)
    write_geotiff(tmp_path / "scene.tif", structured_raster(np.random.default_rng(1), 4, 32))
    with pytest.raises(ConfigError, match=r"\(--(overlap|batch-size)\) must be"):
        predict_dir(ft, tmp_path / "scene.tif", tmp_path / "out", **pace)
    assert not (tmp_path / "out").exists()


def test_predict_refuses_a_folder_of_another_tools_maps_and_leaves_them(tmp_path: Path) -> None:
    ft = make_ft_dir(tmp_path)
    folder = tmp_path / "scenes"
    folder.mkdir()
    write_geotiff(folder / "scene.tif", structured_raster(np.random.default_rng(1), 4, 32))
    theirs = tmp_path / "their_maps"
    theirs.mkdir()
    write_geotiff(theirs / "scene_pred.tif", np.full((1, 32, 32), 7, np.uint8))  # same name as ours would be
    before = (theirs / "scene_pred.tif").read_bytes()
    result = runner.invoke(app, ["predict", str(ft), str(folder), "--out", str(theirs)])
    assert result.exit_code == 2 and "scene_pred.tif" in result.output and "not made by geomed-ssl" in result.output
    assert (theirs / "scene_pred.tif").read_bytes() == before and sorted(p.name for p in theirs.iterdir()) == [
        "scene_pred.tif"]
    again = runner.invoke(app, ["predict", str(ft), str(folder), "--out", str(tmp_path / "ours")])
    assert again.exit_code == 0, again.output  # our own folder, then continued: its manifest says it is ours
    assert runner.invoke(app, ["predict", str(ft), str(folder), "--out", str(tmp_path / "ours")]).exit_code == 0


@pytest.mark.parametrize("kind, other", [("raster", "volume"), ("volume", "raster")])
def test_a_file_of_the_other_kind_is_refused_in_one_line(tmp_path: Path, kind: str, other: str) -> None:
    import nibabel as nib

    ft = make_ft_dir(tmp_path, kind=kind, bands=1)
    path = tmp_path / ("x.nii.gz" if other == "volume" else "x.tif")
    if other == "volume":
        nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.float32), np.eye(4)), str(path))
    else:
        write_geotiff(path, np.ones((1, 16, 16), np.uint16))
    result = runner.invoke(app, ["predict", str(ft), str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert "roi_size" not in line and "window" not in line
    assert f"trained on {'2D' if kind == 'raster' else '3D'}" in line


def test_band_names_stated_for_undescribed_files_read_them_in_the_models_order(tmp_path: Path) -> None:
    """Files without band descriptions are named by position; predict / evaluate --band-names states their order,
    so a scene storing the model's bands reversed is predicted as the same scene stored in the model's order."""
    ft = make_ft_dir(tmp_path)
    scene = 1000 + structured_raster(np.random.default_rng(1), 4, 40).astype(np.float32) * 2000
    for folder in ("in", "rev"):
        (tmp_path / folder).mkdir()
    write_geotiff(tmp_path / "in" / "ordered.tif", scene)
    write_geotiff(tmp_path / "rev" / "reversed.tif", scene[::-1].copy())
    res = runner.invoke(app, ["predict", str(ft), str(tmp_path / "in"), "--out", str(tmp_path / "p1")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["predict", str(ft), str(tmp_path / "rev"), "--out", str(tmp_path / "p2"),
                              "--band-names", "band_4,band_3,band_2,band_1"])
    assert res.exit_code == 0, res.output
    import rasterio

    with rasterio.open(tmp_path / "p1" / "ordered_pred.tif") as a:
        with rasterio.open(tmp_path / "p2" / "reversed_pred.tif") as b:
            assert np.array_equal(a.read(), b.read())
    res = runner.invoke(app, ["predict", str(ft), str(tmp_path / "rev"), "--out", str(tmp_path / "p3"),
                              "--band-names", "band_1,band_2,band_5,band_4"])
    assert res.exit_code != 0 and "missing ['band_3']" in res.output


def test_nodata_stated_at_predict_marks_an_untagged_collar_as_nodata(tmp_path: Path) -> None:
    """A scene whose fill collar carries no nodata tag: predict --nodata 0 reads the collar as no data (nodata in the
    map), where without it the collar is predicted as classes; the rest of the map is the same."""
    import rasterio

    ft = make_ft_dir(tmp_path)
    scene = 1000 + structured_raster(np.random.default_rng(2), 4, 40).astype(np.float32) * 2000
    scene[:, :, :8] = 0  # an untagged collar
    (tmp_path / "in").mkdir()
    write_geotiff(tmp_path / "in" / "scene.tif", scene)
    maps = {}
    for name, extra in (("plain", []), ("stated", ["--nodata", "0"])):
        res = runner.invoke(app, ["predict", str(ft), str(tmp_path / "in"), "--out", str(tmp_path / name), *extra])
        assert res.exit_code == 0, res.output
        with rasterio.open(tmp_path / name / "scene_pred.tif") as ds:
            maps[name], tag = ds.read(1), ds.nodata
    assert set(np.unique(maps["plain"][:, :8])) <= {1, 2}
    assert (maps["stated"][:, :8] == tag).all() and tag not in (1, 2)
    assert set(np.unique(maps["stated"][:, 8:])) <= {1, 2}


def test_evaluate_scores_a_named_file_the_training_include_left_out_and_says_so_for_a_folder(tmp_path: Path) -> None:
    """A model trained with data.include=[train_*] could not be evaluated on test.tif, and the error pointed at a
    setting evaluate does not take."""
    ft = make_ft_dir(tmp_path, data={"include": ["train_*"]})
    scene = 1000 + structured_raster(np.random.default_rng(2), 4, 40).astype(np.float32) * 2000
    labels = np.ones((1, 40, 40), np.uint8)
    labels[:, 20:] = 2
    for folder, arr in (("img", scene), ("lab", labels)):
        (tmp_path / folder).mkdir()
        write_geotiff(tmp_path / folder / "test.tif", arr)
    res = runner.invoke(app, ["evaluate", str(ft), "--images", str(tmp_path / "img" / "test.tif"), "--labels",
                              str(tmp_path / "lab" / "test.tif"), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ev" / "metrics.json").is_file()
    res = runner.invoke(app, ["evaluate", str(ft), "--images", str(tmp_path / "img"), "--labels",
                              str(tmp_path / "lab"), "--out", str(tmp_path / "ev2")])
    assert res.exit_code == 2 and "give --images one file to score it" in " ".join(res.output.split())


def test_nodata_stated_at_evaluate_leaves_an_untagged_collar_unscored(tmp_path: Path) -> None:
    """evaluate --nodata 0: the labelled pixels under an untagged 0 collar are no data, so they are not scored."""
    import json

    ft = make_ft_dir(tmp_path)
    scene = 1000 + structured_raster(np.random.default_rng(2), 4, 40).astype(np.float32) * 2000
    scene[:, :, :8] = 0
    labels = np.ones((1, 40, 40), np.uint8)
    labels[:, 20:] = 2
    for folder, arr in (("img", scene), ("lab", labels)):
        (tmp_path / folder).mkdir()
        write_geotiff(tmp_path / folder / "scene.tif", arr)
    scored = {}
    for name, extra in (("plain", []), ("stated", ["--nodata", "0"])):
        res = runner.invoke(app, ["evaluate", str(ft), "--images", str(tmp_path / "img"), "--labels",
                                  str(tmp_path / "lab"), "--out", str(tmp_path / name), *extra])
        assert res.exit_code == 0, res.output
        scored[name] = json.loads((tmp_path / name / "metrics.json").read_text())["test"]["num_samples"]
    assert scored == {"plain": 40 * 40, "stated": 40 * 32}


def test_a_prediction_names_the_model_that_made_it(tmp_path: Path) -> None:
    """A class map (and its probabilities) carry the model's folder and the toolkit's version, so maps of two models
    in one folder, or of a re-prediction a kill cut short, can be told apart; a volume's header says it too. Both
    also say what their values mean: each class's label value and name (``GEOMED_SSL_CLASSES``)."""
    import rasterio

    from geomed_ssl._version import __version__
    from geomed_ssl.inference.volume import made

    ft = ft_and_scene(tmp_path)
    res = runner.invoke(app, ["predict", str(ft), str(tmp_path / "in"), "--out", str(tmp_path / "p"),
                              "--probabilities"])
    assert res.exit_code == 0, res.output
    for name in ("scene_pred.tif", "scene_pred_proba.tif"):
        with rasterio.open(tmp_path / "p" / name) as ds:
            tags = ds.tags()
        assert tags["GEOMED_SSL_MODEL"] == str(ft.resolve()) and tags["GEOMED_SSL_VERSION"] == __version__
        assert json.loads(tags["GEOMED_SSL_CLASSES"]) == {"1": "c1", "2": "c2"}
    assert made("geomed-ssl prediction", "/runs/ft") == "geomed-ssl prediction by /runs/ft"
    # a second model predicting into the same folder replaced the first one's maps without a word
    import shutil

    shutil.copytree(ft, tmp_path / "other" / "ft")
    again = runner.invoke(app, ["predict", str(ft), str(tmp_path / "in"), "--out", str(tmp_path / "p")])
    assert again.exit_code == 0 and "made by another model" not in again.output  # the same model: no word
    other = runner.invoke(app, ["predict", str(tmp_path / "other" / "ft"), str(tmp_path / "in"), "--out",
                                str(tmp_path / "p")])
    assert other.exit_code == 0, other.output
    assert (f"1 class map(s) in '{tmp_path / 'p'}' were made by another model (e.g. 'scene_pred.tif' by "
            f"'{ft.resolve()}') and are replaced by this one's" in other.output)
    long = made("geomed-ssl prediction", "/" + "a" * 100 + "/ft_brats")
    assert len(long) == 79 and long.endswith("/ft_brats") and "by ..." in long
    import nibabel as nib

    from geomed_ssl.inference.predict import recorded_model

    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    img.header["descrip"] = long.encode()
    nib.save(img, str(tmp_path / "v_pred.nii.gz"))
    assert recorded_model(tmp_path / "v_pred.nii.gz") == "..." + long.split("by ...", 1)[1]
    from geomed_ssl.inference.predict import warn_other_models

    img.header["descrip"] = made("geomed-ssl prediction", "/home/josé/ft").encode("ascii", "replace")
    nib.save(img, str(tmp_path / "v_pred.nii.gz"))
    said = []
    with pytest.MonkeyPatch.context() as mp:  # (the CLI runs above leave the package logger to its own handlers)
        mp.setattr("geomed_ssl.inference.predict.log.warning", lambda msg, *a: said.append(msg % a if a else msg))
        warn_other_models({tmp_path / "v.nii.gz": tmp_path / "v_pred.nii.gz"}, "/home/josé/ft")  # the same model
        assert not said
        warn_other_models({tmp_path / "v.nii.gz": tmp_path / "v_pred.nii.gz"}, "/home/ana/ft")
    assert len(said) == 1 and "made by another model" in said[0]
    # a volume's map keeps the whole folder in its comment extension, however long its path
    from geomed_ssl.outcommands import recorded_input

    vft = make_ft_dir(tmp_path / ("a" * 90), kind="volume", bands=1)
    (tmp_path / "vin").mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(2000, 500, (12, 12, 12)).astype(np.float32),
                             np.eye(4)), str(tmp_path / "vin" / "v.nii.gz"))
    res = runner.invoke(app, ["predict", str(vft), str(tmp_path / "vin"), "--out", str(tmp_path / "vp"),
                              "--probabilities-dtype", "uint8"])  # a quarter of float32's size; implies the file
    assert res.exit_code == 0, res.output
    assert nib.load(str(tmp_path / "vp" / "v_pred_proba.nii.gz")).get_data_dtype() == np.uint8
    assert recorded_model(tmp_path / "vp" / "v_pred.nii.gz") == str(vft.resolve())
    bad = runner.invoke(app, ["predict", str(vft), str(tmp_path / "vin"), "--out", str(tmp_path / "vq"),
                              "--probabilities-dtype", "float16"])
    assert bad.exit_code == 2 and "'uint8', got 'float16'" in bad.output and not (tmp_path / "vq").exists()
    assert recorded_input(tmp_path / "vp" / "v_pred.nii.gz", "GEOMED_SSL_VERSION") == __version__
    for name in ("v_pred.nii.gz", "v_pred_proba.nii.gz"):
        assert json.loads(recorded_input(tmp_path / "vp" / name, "GEOMED_SSL_CLASSES")) == {"1": "c1", "2": "c2"}


def test_predict_warns_before_starting_when_the_outputs_may_not_fit_on_the_disk(tmp_path: Path, monkeypatch) -> None:
    """The uncompressed class maps and probabilities are set against the output disk's free space before the first
    window is computed: a full disk would otherwise stop a long run at the file that does not fit."""
    import shutil
    from types import SimpleNamespace

    from geomed_ssl.inference.predict import output_bytes

    scenes = [SimpleNamespace(shape=(99, 50)), SimpleNamespace(shape=(3, 3, 3))]  # a raster (overviews: 4/3), a volume
    assert output_bytes(scenes, [1, 2], False) == 6600 + 27  # one byte a pixel
    assert output_bytes(scenes, [1, 2], True) == (6600 + 27) * 9  # + two float32 bands
    assert output_bytes(scenes, [1, 2], "uint8") == (6600 + 27) * 3
    assert output_bytes(scenes, [0, 1000], False) == (6600 + 27) * 2  # uint16 class values
    ft = ft_and_scene(tmp_path)
    real = shutil.disk_usage
    need = 40 * 40 * 4 // 3 * 9  # with overviews
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=need - 1))
    res = runner.invoke(app, ["predict", str(ft), str(tmp_path / "in"), "--out", str(tmp_path / "p" / "q"),
                              "--probabilities"])
    assert res.exit_code == 0, res.output  # a warning: compression may make them fit
    said = " ".join(res.output.split())
    assert "take up to 19 kB uncompressed" in said and "has 19 kB free" in said and f"'{tmp_path / 'p' / 'q'}'" in said
    assert (tmp_path / "p" / "q" / "scene_pred.tif").is_file()
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=need))
    res = runner.invoke(app, ["predict", str(ft), str(tmp_path / "in"), "--out", str(tmp_path / "p2"),
                              "--probabilities"])
    assert res.exit_code == 0 and "uncompressed" not in res.output


def test_a_class_map_names_its_classes_for_gis_viewers_in_gdals_sidecar(tmp_path: Path) -> None:
    """QGIS labels a class map's legend with GDAL's category names, which a GeoTIFF keeps only in its PAM sidecar
    (``X_pred.tif.aux.xml``): predict writes one naming each class's value; a map replaced later drops the
    sidecar a viewer left (statistics of the old map); the sidecar goes with its map in the folder's ownership."""
    import xml.etree.ElementTree as ET

    from geomed_ssl.inference.legend import category_names
    from geomed_ssl.outowners import foreign_inside

    ft = ft_and_scene(tmp_path)
    res = runner.invoke(app, ["predict", str(ft), str(tmp_path / "in"), "--out", str(tmp_path / "p"),
                              "--probabilities"])
    assert res.exit_code == 0, res.output
    side = tmp_path / "p" / "scene_pred.tif.aux.xml"
    band = ET.parse(side).getroot().find("PAMRasterBand")
    assert band.get("band") == "1"
    assert [c.text or "" for c in band.find("CategoryNames")] == ["", "c1", "c2"]  # value 0 is no class's
    assert not (tmp_path / "p" / "scene_pred_proba.tif.aux.xml").exists()
    assert sorted(p.name for p in (tmp_path / "p").iterdir() if p.name.startswith(".partial")) == []
    # a viewer's cached statistics of the probability map go when the map is replaced; the class map's are ours
    stale = tmp_path / "p" / "scene_pred_proba.tif.aux.xml"
    stale.write_text("<PAMDataset><Metadata><MDI key='STATISTICS_MAXIMUM'>9</MDI></Metadata></PAMDataset>")
    assert foreign_inside(tmp_path / "p") == []  # both sidecars go with their maps
    again = runner.invoke(app, ["predict", str(ft), str(tmp_path / "in"), "--out", str(tmp_path / "p"),
                                "--probabilities"])
    assert again.exit_code == 0, again.output
    assert not stale.exists() and side.is_file()
    lone = tmp_path / "p" / "gone_pred.tif.aux.xml"  # the sidecar of no map of ours: the user's
    lone.write_text("<PAMDataset/>")
    assert foreign_inside(tmp_path / "p") == ["gone_pred.tif.aux.xml"]
    # names with XML's own characters, and any script, read back as written; a value no class takes is blank
    text = category_names([3, 1], ["a < b & \"c\"", "forêt 森林"])
    assert [c.text or "" for c in ET.fromstring(text).iter("Category")] == ["", "forêt 森林", "", "a < b & \"c\""]
    assert category_names([1, 2], None) is None


def test_a_sidecar_never_outlives_its_map_nor_names_another_one(tmp_path: Path, monkeypatch) -> None:
    """GDAL reads ``X_pred.tif.aux.xml`` with whatever map bears the name: one with no map there is the user's
    (refused, kept), the probabilities' goes with them, and a stop between the map's rename and its sidecar's
    leaves no old names on the new map and a map that ``--resume`` predicts again."""
    import geomed_ssl.inference.writers as writers
    from geomed_ssl.inference.legend import CATEGORY_VALUES, category_names, sidecar_categories

    ft = ft_and_scene(tmp_path)
    out = tmp_path / "p"
    assert runner.invoke(app, ["predict", str(ft), str(tmp_path / "in"), "--out", str(out)]).exit_code == 0
    (out / "scene_pred.tif").unlink()  # the map deleted by hand, its sidecar (now the user's) left
    theirs = out / "scene_pred.tif.aux.xml"
    theirs.write_text("<PAMDataset/>")
    res = runner.invoke(app, ["predict", str(ft), str(tmp_path / "in"), "--out", str(out)])
    assert res.exit_code == 2 and "GDAL's sidecar of no map there" in " ".join(res.output.split())
    assert theirs.read_text() == "<PAMDataset/>" and not (out / "scene_pred.tif").exists()
    theirs.unlink()
    assert runner.invoke(app, ["predict", str(ft), str(tmp_path / "in"), "--out", str(out),
                               "--probabilities"]).exit_code == 0
    (out / "scene_pred_proba.tif.aux.xml").write_text("<PAMDataset/>")  # a viewer's statistics
    assert runner.invoke(app, ["predict", str(ft), str(tmp_path / "in"), "--out", str(out)]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == [".geomed-ssl.json", "scene_pred.tif", "scene_pred.tif.aux.xml"]
    # stopped between the map's rename and its sidecar's: the old names are gone, --resume predicts it again
    real = writers.commit_partial

    def stopped(tmp, path):
        if str(path).endswith(".aux.xml"):
            raise KeyboardInterrupt
        return real(tmp, path)

    monkeypatch.setattr(writers, "commit_partial", stopped)
    runner.invoke(app, ["predict", str(ft), str(tmp_path / "in"), "--out", str(out)])
    monkeypatch.setattr(writers, "commit_partial", real)
    assert sorted(p.name for p in out.iterdir()) == [".geomed-ssl.json", "scene_pred.tif"]  # no partial file
    res = runner.invoke(app, ["predict", str(ft), str(tmp_path / "in"), "--out", str(out), "--resume"])
    assert res.exit_code == 0 and "kept: --resume" not in res.output
    assert sidecar_categories(out / "scene_pred.tif") == ["", "c1", "c2"]
    res = runner.invoke(app, ["predict", str(ft), str(tmp_path / "in"), "--out", str(out), "--resume"])
    assert "kept: --resume" in res.output
    # one entry per value from 0: class values from CATEGORY_VALUES on get no sidecar (the tag names them)
    assert category_names([1, CATEGORY_VALUES - 1], ["a", "b"]).count("<Category>") == CATEGORY_VALUES
    assert category_names([1, CATEGORY_VALUES], ["a", "b"]) is None
