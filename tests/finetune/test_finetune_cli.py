"""Few-label fine-tuning end to end through the CLI (in-process): segment, classify, evaluate, predict."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import shutil

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from geomed_ssl.cli import app
from tests.conftest import TINY, structured_raster, write_class_folders, write_geotiff

runner = CliRunner()
FT = ["finetune.max_steps=25", "finetune.batch_size=4", "finetune.warmup_steps=2", "finetune.feature_size=8",
      "finetune.base_lr=0.005", "data.patch_size=16"]


def sets(*items: str) -> list[str]:
    return [arg for item in [*TINY, *FT, *items] for arg in ("--set", item)]


@pytest.fixture
def seg_scene(tmp_path: Path) -> tuple[Path, Path]:
    """One 4-band 64x64 scene whose three classes are bands thresholds, and its label raster (0 = unlabelled)."""
    rng = np.random.default_rng(3)
    img = structured_raster(rng, 4, 64)
    level = img[0].astype(float)
    cls = np.digitize(level, np.quantile(level, [1 / 3, 2 / 3])) + 1  # classes 1..3
    cls[::7, ::5] = 0  # some unlabelled pixels
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    write_geotiff(tmp_path / "images" / "scene.tif", img)
    write_geotiff(tmp_path / "labels" / "scene_gt.tif", cls[None].astype(np.uint8))
    return tmp_path / "images", tmp_path / "labels"


@pytest.fixture
def pretrained(raster_dir: Path, tmp_path: Path) -> Path:
    from geomed_ssl.train.pretrain import pretrain

    out = tmp_path / "pre"
    pretrain("recipes/mae_sentinel2.yaml", raster_dir, out, progress=False,
             overrides=[*TINY, "data.sensor=null", "data.patch_size=16", "train.max_steps=3"])
    return out


def test_segment_from_pretrained_encoder_then_evaluate_and_predict(seg_scene, pretrained: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from geomed_ssl.inference import predict as predict_module

    images, labels = seg_scene
    ft = tmp_path / "ft"
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", str(pretrained),
                                 "--images", str(images), "--labels", str(labels), "--out", str(ft),
                                 "--labels-per-class", "5", *sets("data.sensor=null")])
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "labels_used.npz", "model/model.safetensors", "model/config.json", "metrics.json",
                 "confusion.png"):
        assert (ft / name).is_file(), name
    metrics = json.loads((ft / "metrics.json").read_text())
    assert metrics["train"]["n"] == 15 and metrics["test"]["n"] > 3000
    assert 0 <= metrics["test"]["OA"] <= 1 and "kappa" in metrics["test"] and "mIoU" in metrics["test"]
    used = np.load(ft / "labels_used.npz", allow_pickle=False)
    assert np.bincount(used["train_value"]).tolist() == [0, 5, 5, 5]

    written, real = [], predict_module.predict_raster
    monkeypatch.setattr(predict_module, "predict_raster", lambda *a, **k: written.append(Path(a[2])) or real(*a, **k))
    ev = runner.invoke(app, ["evaluate", str(ft), "--images", str(images), "--labels", str(labels)])
    assert ev.exit_code == 0, ev.output
    assert "OA" in ev.output
    # the whole-image class maps go to a scratch folder a killed run's successor deletes, not a bare mkdtemp
    assert written and all(p.parent.name.startswith(f"geomed-evaluate-{os.getpid()}.") for p in written)
    assert f"metrics: {ft / 'eval' / 'metrics.json'}" in ev.output and (ft / "eval" / "metrics.json").is_file()
    scored = json.loads((ft / "eval" / "metrics.json").read_text())  # the 15 trained pixels are scored apart
    assert scored["train"]["n"] == 15 and scored["test"]["n"] == metrics["test"]["n"]
    assert "15 of the" in ev.output and "trained this model" in ev.output
    copy = tmp_path / "copy"  # a copy elsewhere: the same labels on the same grid are the same ground, found again
    shutil.copytree(images, copy / "images")
    shutil.copytree(labels, copy / "labels")
    ev = runner.invoke(app, ["evaluate", str(ft), "--images", str(copy / "images"), "--labels", str(copy / "labels"),
                             "--out", str(tmp_path / "ev_copy")])
    assert ev.exit_code == 0 and "15 of the" in ev.output
    with rasterio.open(copy / "labels" / "scene_gt.tif", "r+") as dst:  # edited labels: no longer one ground, nor a
        edited = dst.read()  # copy, but the same places of the same grid (CRS and transform): found so
        edited[0, 1, 1] = 1 + edited[0, 1, 1] % 3
        dst.write(edited)
    ev = runner.invoke(app, ["evaluate", str(ft), "--images", str(copy / "images"), "--labels", str(copy / "labels"),
                             "--out", str(tmp_path / "ev_edited")])
    assert ev.exit_code == 0 and "15 of the" in ev.output and "share a folder and file name" not in ev.output
    # the training image itself with the edited labels: its trained pixels are found by the image
    ev = runner.invoke(app, ["evaluate", str(ft), "--images", str(images), "--labels", str(copy / "labels"),
                             "--out", str(tmp_path / "ev_same_image")])
    assert ev.exit_code == 0 and "15 of the" in ev.output and "trained this model" in ev.output
    # a test set coded otherwise (classes 11-13, unlabelled 255) is read as the training's with --set
    recoded = tmp_path / "recoded"
    recoded.mkdir()
    with rasterio.open(labels / "scene_gt.tif") as src:
        values, profile = src.read(), src.profile
    with rasterio.open(recoded / "scene_gt.tif", "w", **profile) as dst:
        dst.write(np.where(values == 0, 255, values + 10).astype(values.dtype))
    coded = ["--set", "labels.remap={11: 1, 12: 2, 13: 3}", "--set", "labels.ignore_value=255"]
    ev = runner.invoke(app, ["evaluate", str(ft), "--images", str(images), "--labels", str(recoded), "--out",
                             str(tmp_path / "ev_recoded"), *coded])
    assert ev.exit_code == 0, ev.output
    assert json.loads((tmp_path / "ev_recoded" / "metrics.json").read_text())["test"] == scored["test"]
    bare = runner.invoke(app, ["evaluate", str(ft), "--images", str(images), "--labels", str(recoded), "--out",
                               str(tmp_path / "ev_bare")])
    assert bare.exit_code == 2 and "--set \"labels.remap={...}\"" in bare.output
    other = runner.invoke(app, ["evaluate", str(ft), "--images", str(images), "--labels", str(recoded), "--out",
                                str(tmp_path / "ev_other"), "--set", "finetune.max_steps=5"])
    assert other.exit_code == 2 and "got 'finetune.max_steps=5'" in other.output
    assert not (tmp_path / "ev_bare").exists() and not (tmp_path / "ev_other").exists()
    # a crop of the training scene (its grid shifted by whole pixels): the places it trained on are found there
    from rasterio.windows import Window

    window = Window(col_off=10, row_off=20, width=40, height=30)
    for src_path, dst_path in ((images / "scene.tif", tmp_path / "crop" / "img" / "part.tif"),
                               (labels / "scene_gt.tif", tmp_path / "crop" / "lab" / "part_gt.tif")):
        dst_path.parent.mkdir(parents=True)
        with rasterio.open(src_path) as src:
            part, profile = src.read(window=window), {**src.profile, "width": 40, "height": 30,
                                                      "transform": src.window_transform(window)}
        for key in ("tiled", "blockxsize", "blockysize"):
            profile.pop(key, None)
        with rasterio.open(dst_path, "w", **profile) as dst:
            dst.write(part)
    rows, cols = np.divmod(used["train_index"], 64)
    inside = int(((rows >= 20) & (rows < 50) & (cols >= 10) & (cols < 50)).sum())
    ev = runner.invoke(app, ["evaluate", str(ft), "--images", str(tmp_path / "crop" / "img"), "--labels",
                             str(tmp_path / "crop" / "lab"), "--out", str(tmp_path / "ev_crop")])
    assert ev.exit_code == 0, ev.output
    assert json.loads((tmp_path / "ev_crop" / "metrics.json").read_text())["train"]["n"] == inside > 0
    from rasterio.transform import Affine  # the crop resampled to half its pixel size: not one grid, said

    for name in ("img/part.tif", "lab/part_gt.tif"):
        with rasterio.open(tmp_path / "crop" / name) as src:
            fine, profile = src.read().repeat(2, axis=1).repeat(2, axis=2), src.profile
            t = src.transform
        (tmp_path / "fine" / name).parent.mkdir(parents=True, exist_ok=True)
        half = Affine(t.a / 2, 0, t.c, 0, t.e / 2, t.f)
        with rasterio.open(tmp_path / "fine" / name, "w", **{**profile, "width": 80, "height": 60,
                                                             "transform": half}) as dst:
            dst.write(fine)
    ev = runner.invoke(app, ["evaluate", str(ft), "--images", str(tmp_path / "fine" / "img"), "--labels",
                             str(tmp_path / "fine" / "lab"), "--out", str(tmp_path / "ev_fine")])
    assert ev.exit_code == 0 and f"{inside} places this model trained on lie inside these rasters on another grid" \
        in ev.output, ev.output
    finer = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", str(ft), "--images",
                                str(tmp_path / "fine" / "img"), "--labels", str(tmp_path / "fine" / "lab"), "--out",
                                str(tmp_path / "ft_fine"), "--labels-per-class", "2", "--head", "probe",
                                *sets("data.sensor=null")])  # fine-tuned again there: said as evaluate says it
    assert finer.exit_code == 0 and f"{inside} places the encoder's own fine-tune" in finer.output, finer.output
    cmp = runner.invoke(app, ["compare", str(ft), "--images", str(tmp_path / "crop" / "img"), "--labels",
                              str(tmp_path / "crop" / "lab"), "--out", str(tmp_path / "cmp_crop"), "--labels-per-class",
                              "2", "--seeds", "0", "--protocol", "linear", "--no-baselines", *sets("data.sensor=null")])
    assert cmp.exit_code == 2 and "is a fine-tune trained on labels of this task" in cmp.output, cmp.output
    again = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", str(ft), "--images",
                                str(tmp_path / "crop" / "img"), "--labels", str(tmp_path / "crop" / "lab"), "--out",
                                str(tmp_path / "ft_crop"), "--labels-per-class", "2", "--head", "probe",
                                *sets("data.sensor=null")])  # fine-tuned again on the crop: its places stay untested
    assert again.exit_code == 0 and "test positions trained the encoder's own fine-tune" in again.output, again.output
    from types import SimpleNamespace

    from geomed_ssl.finetune.trained import geo_grid

    chip = SimpleNamespace(kind="raster", crs="EPSG:32633", transform=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    assert geo_grid(chip) is None  # a chip saved with a CRS and no transform is placed nowhere
    from geomed_ssl.outdirs import foreign_inside

    assert foreign_inside(ft) == []  # --overwrite may replace all of it, the evaluation inside included

    pred_dir = tmp_path / "pred"
    pr = runner.invoke(app, ["predict", str(ft), str(images / "scene.tif"), "--out", str(pred_dir), "--probabilities"])
    assert pr.exit_code == 0, pr.output
    with rasterio.open(pred_dir / "scene_pred.tif") as dst, rasterio.open(images / "scene.tif") as src:
        assert dst.crs == src.crs and dst.transform == src.transform and dst.shape == src.shape
        assert set(np.unique(dst.read(1))) <= {1, 2, 3}  # label values, not indices
    from geomed_ssl import load_encoder

    assert load_encoder(ft).config.in_chans == 4  # a fine-tune dir holds its encoder too


def test_a_fine_tune_warns_once_of_images_far_from_its_encoders_statistics(seg_scene, pretrained: Path,
                                                                            tmp_path: Path) -> None:
    """Said when training began and again by the fine-tune's own evaluation of the same images."""
    import rasterio

    images, labels = seg_scene
    with rasterio.open(images / "scene.tif") as src:
        far = src.read().astype(np.float32) * 50 + 10000  # in other units than the pretraining data
    (tmp_path / "far").mkdir()
    write_geotiff(tmp_path / "far" / "scene.tif", far)
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", str(pretrained),
                                 "--images", str(tmp_path / "far"), "--labels", str(labels), "--out",
                                 str(tmp_path / "ft"), "--labels-per-class", "5", "--head", "linear",
                                 *sets("data.sensor=null", "finetune.max_steps=3")])
    assert result.exit_code == 0, result.output
    assert result.output.count("value range of") == 1, result.output
    import shutil  # evaluate on two such images: one warning for both, not one per file

    shutil.copy(tmp_path / "far" / "scene.tif", tmp_path / "far" / "scene2.tif")
    (tmp_path / "lab").mkdir()
    for name in ("scene_gt.tif", "scene2_gt.tif"):
        shutil.copy(next(labels.glob("*.tif")), tmp_path / "lab" / name)
    ev = runner.invoke(app, ["evaluate", str(tmp_path / "ft"), "--images", str(tmp_path / "far"), "--labels",
                             str(tmp_path / "lab")])
    assert ev.exit_code == 0, ev.output
    assert ev.output.count("value range of") == 1 and "and 1 more file(s)" in ev.output, ev.output
    with rasterio.open(tmp_path / "lab" / "scene2_gt.tif", "r+") as dst:  # scene2 scored nowhere: skipped
        dst.write(np.zeros((1, dst.height, dst.width), dst.dtypes[0]))
    ev = runner.invoke(app, ["evaluate", str(tmp_path / "ft"), "--images", str(tmp_path / "far"), "--labels",
                             str(tmp_path / "lab")])
    assert ev.exit_code == 0, ev.output
    assert ev.output.count("value range of") == 1, ev.output  # the one image predicted is still checked


def test_a_class_map_is_drawn_in_the_colours_of_its_labels_palette_else_a_palette_of_ours(seg_scene,
                                                                                           tmp_path: Path) -> None:
    """Class maps had no colour table: a land-cover map's palette was lost, and GIS showed the classes in grey."""
    from geomed_ssl.inference.legend import PALETTE

    images, labels = seg_scene
    with rasterio.open(labels / "scene_gt.tif") as src:
        profile, values = src.profile, src.read()
    (tmp_path / "painted").mkdir()
    with rasterio.open(tmp_path / "painted" / "scene_gt.tif", "w", **profile) as dst:
        dst.write(values)
        dst.write_colormap(1, {1: (0, 100, 0, 255), 2: (255, 255, 0, 255), 3: (200, 0, 0, 255)})
    for name, label_dir in (("painted", tmp_path / "painted"), ("plain", labels)):
        ft = tmp_path / f"ft_{name}"
        result = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                     "--images", str(images), "--labels", str(label_dir), "--out", str(ft),
                                     "--labels-per-class", "5", "--head", "linear",
                                     *sets("data.sensor=null", "finetune.max_steps=2")])
        assert result.exit_code == 0, result.output
        pr = runner.invoke(app, ["predict", str(ft), str(images / "scene.tif"), "--out", str(tmp_path / f"p_{name}")])
        assert pr.exit_code == 0, pr.output
        with rasterio.open(tmp_path / f"p_{name}" / "scene_pred.tif") as dst:
            table = dst.colormap(1)
        if name == "painted":
            assert [table[v][:3] for v in (1, 2, 3)] == [(0, 100, 0), (255, 255, 0), (200, 0, 0)]
        else:
            assert [table[v][:3] for v in (1, 2, 3)] == PALETTE[:3]
        assert table[255][3] == 0  # nodata: transparent


def test_segment_from_random_init_with_block_split(seg_scene, tmp_path: Path, monkeypatch) -> None:
    """Also: no checkpoint is written, in FT_DIR or the working folder (nothing resumes a fine-tune; a ViT-B's
    would be 1 GB per fine-tune of a compare); labels.class_names names the classes in the metrics and the model."""
    images, labels = seg_scene
    ft = tmp_path / "ft_none"
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--images", str(images), "--labels", str(labels), "--out", str(ft),
                                 "--labels-per-class", "5", "--freeze-encoder",
                                 *sets("data.sensor=null", "labels.split=blocks", "labels.block_size=16",
                                       "labels.class_names={1: water, 3: forest}")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((ft / "metrics.json").read_text())
    assert metrics["split"] == "blocks" and metrics["test"]["n"] > 0
    assert [c["name"] for c in metrics["classes"]] == ["water", "2", "forest"]  # a value without a name: itself
    cfg = json.loads((ft / "model" / "config.json").read_text())
    assert cfg["encoder_source"].startswith("none")
    assert [c["name"] for c in cfg["classes"]] == ["water", "2", "forest"]
    assert not list(tmp_path.rglob("*.ckpt"))
    from geomed_ssl.config import load_recipe  # random init: no layer-wise decay (it has no pretrained blocks)

    assert load_recipe(ft / "config.yaml").finetune.layer_decay == 1.0


def test_segment_with_the_images_split_tests_only_on_held_out_scenes(seg_scene, tmp_path: Path) -> None:
    from geomed_ssl.labels.sampling import LabelSelection

    images, labels = seg_scene
    for i in (1, 2):  # three scenes, each with its own label file
        with rasterio.open(images / "scene.tif") as src, rasterio.open(labels / "scene_gt.tif") as lab:
            write_geotiff(images / f"scene{i}.tif", np.roll(src.read(), 9 * i, axis=2))
            write_geotiff(labels / f"scene{i}_gt.tif", np.roll(lab.read(), 9 * i, axis=2))
    ft = tmp_path / "ft_images"
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--images", str(images), "--labels", str(labels), "--out", str(ft),
                                 "--labels-per-class", "5", "--head", "probe",
                                 *sets("data.sensor=null", "labels.split=images", "finetune.probe=linear")])
    assert result.exit_code == 0, result.output
    sel = LabelSelection.load_npz(ft / "labels_used.npz")
    trained, tested = set(sel.train_file.tolist()), set(sel.test_file.tolist())
    assert len(tested) == 1 and not trained & tested
    metrics = json.loads((ft / "metrics.json").read_text())
    with rasterio.open(labels / "scene_gt.tif") as lab:
        assert metrics["split"] == "images" and metrics["test"]["n"] == int((lab.read(1) > 0).sum())


def test_segment_with_linear_head_saves_reloads_and_predicts(seg_scene, pretrained: Path, tmp_path: Path) -> None:
    images, labels = seg_scene
    ft = tmp_path / "ft_linear"
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", str(pretrained),
                                 "--images", str(images), "--labels", str(labels), "--out", str(ft),
                                 "--labels-per-class", "5", "--head", "linear", "--freeze-encoder",
                                 *sets("data.sensor=null")])
    assert result.exit_code == 0, result.output
    cfg = json.loads((ft / "model" / "config.json").read_text())
    assert cfg["head"]["kind"] == "linear"
    from geomed_ssl.checkpoint import load_model

    model, _ = load_model(ft / "model")
    assert type(model.decoder).__name__ == "LinearDecoder"
    pr = runner.invoke(app, ["predict", str(ft), str(images / "scene.tif"), "--out", str(tmp_path / "pred"),
                             "--device", "cpu"])
    assert pr.exit_code == 0, pr.output
    with rasterio.open(tmp_path / "pred" / "scene_pred.tif") as dst:
        assert set(np.unique(dst.read(1))) <= {1, 2, 3}


def test_segment_warns_of_a_budget_it_cannot_meet_and_of_a_class_it_cannot_train(seg_scene, tmp_path: Path) -> None:
    """A class of one labelled pixel (half stays for testing: none trains) stayed in the model and was painted on
    every scene, said only in a note, which --quiet drops like every budget shortfall."""
    images, labels = seg_scene
    with rasterio.open(labels / "scene_gt.tif") as src:
        cls, profile = src.read(), src.profile
    cls[0, 10, 10] = 4
    with rasterio.open(labels / "scene_gt.tif", "w", **profile) as dst:
        dst.write(cls)
    result = runner.invoke(app, ["--quiet", "finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "ft"),
                                 "--labels-per-class", "5", "--head", "probe", *sets("data.sensor=null")])
    assert result.exit_code == 0, result.output
    assert "warning: class 4: 1 labelled pixel, took 0 instead of 5 so half stay for testing" in result.output
    assert "warning: no training label for class 4: the model scores them but its output for them is untrained" \
        in result.output


def test_a_fine_tune_of_a_fine_tuned_model_never_tests_on_what_trained_it(seg_scene, class_folders: Path,
                                                                           tmp_path: Path) -> None:
    """Fine-tuning ft1 again on its own labels with another seed scored 23 of its 25 training pixels as test; compare
    would have too."""
    images, labels = seg_scene
    args = ["--images", str(images), "--labels", str(labels), "--labels-per-class", "5", "--head", "probe"]
    first = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", "none", *args,
                                "--out", str(tmp_path / "ft1"), *sets("data.sensor=null")])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", str(tmp_path / "ft1"),
                                *args, "--out", str(tmp_path / "ft2"), *sets("data.sensor=null", "labels.seed=1")])
    assert again.exit_code == 0, again.output
    assert "test positions trained the encoder's own fine-tune" in again.output
    with np.load(tmp_path / "ft1" / "labels_used.npz") as a, np.load(tmp_path / "ft2" / "labels_used.npz") as b:
        assert not np.isin(a["train_index"], b["test_index"]).any() and b["test_index"].size > 0
        tested = b["test_index"].size
    same = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", str(tmp_path / "ft1"),
                               *args, "--out", str(tmp_path / "ft_same"), *sets("data.sensor=null")])
    assert same.exit_code == 0, same.output  # the same seed: ft1's pixels all train again, none is tested, and the
    assert "own fine-tune" not in same.output and "optimistic" not in same.output  # grid is the same: nothing to say
    ev = runner.invoke(app, ["evaluate", str(tmp_path / "ft2"), "--images", str(images), "--labels", str(labels)])
    assert ev.exit_code == 0, ev.output  # ft1's training pixels trained ft2's encoder: scored apart, not as test
    assert json.loads((tmp_path / "ft2" / "eval" / "metrics.json").read_text())["test"]["n"] == tested
    cmp = runner.invoke(app, ["compare", str(tmp_path / "ft1"), "--images", str(images), "--labels", str(labels),
                              "--out", str(tmp_path / "cmp"), "--labels-per-class", "5", "--seeds", "0",
                              "--protocol", "linear", "--no-baselines", *sets("data.sensor=null")])
    assert cmp.exit_code == 2 and "is a fine-tune trained on labels of this task" in cmp.output, cmp.output
    renamed = tmp_path / "renamed"  # the same files copied under other names: still what trained it
    for src, dst in ((images / "scene.tif", renamed / "img" / "site.tif"), (labels / "scene_gt.tif",
                                                                            renamed / "lab" / "site_gt.tif")):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    cmp = runner.invoke(app, ["compare", str(tmp_path / "ft1"), "--images", str(renamed / "img"), "--labels",
                              str(renamed / "lab"), "--out", str(tmp_path / "cmp2"), "--labels-per-class", "5",
                              "--seeds", "0", "--protocol", "linear", "--no-baselines", *sets("data.sensor=null")])
    assert cmp.exit_code == 2 and f"(e.g. '{renamed / 'lab' / 'site_gt.tif'}'" in cmp.output, cmp.output
    cls_args = ["--data", str(class_folders), "--labels-per-class", "2", "--linear-probe"]
    first = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", "none", *cls_args,
                                "--out", str(tmp_path / "c1"), *sets("data.sensor=null")])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", str(tmp_path / "c1"),
                                *cls_args, "--out", str(tmp_path / "c2"), *sets("data.sensor=null", "labels.seed=1")])
    assert again.exit_code == 0 and "test images trained the encoder's own fine-tune" in again.output, again.output
    with np.load(tmp_path / "c1" / "labels_used.npz") as a, np.load(tmp_path / "c2" / "labels_used.npz") as b:
        assert not np.isin(a["train_index"], b["test_index"]).any()
        tested = b["test_index"].size
    ev = runner.invoke(app, ["evaluate", str(tmp_path / "c2"), "--data", str(class_folders)])
    assert ev.exit_code == 0, ev.output
    assert json.loads((tmp_path / "c2" / "eval" / "metrics.json").read_text())["test"]["n"] == tested


@pytest.mark.parametrize("probe", ["linear", "knn", "propagate"])
def test_segment_with_probe_head_fits_frozen_features_without_training_and_predicts(seg_scene, pretrained: Path,
                                                                                   tmp_path: Path, probe: str) -> None:
    images, labels = seg_scene
    ft = tmp_path / f"ft_{probe}"
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", str(pretrained),
                                 "--images", str(images), "--labels", str(labels), "--out", str(ft),
                                 "--labels-per-class", "5", "--head", "probe",
                                 *sets("data.sensor=null", f"finetune.probe={probe}")])
    assert result.exit_code == 0, result.output
    assert not (ft / "checkpoints").exists()  # nothing trained by gradient
    cfg = json.loads((ft / "model" / "config.json").read_text())
    assert cfg["head"]["kind"] == "probe" and cfg["head"]["probe"] == probe
    assert cfg["head"]["memory"] == (15 if probe == "knn" else 0)  # knn keeps its training pixels
    assert json.loads((ft / "metrics.json").read_text())["test"]["OA"] > 0.45  # 3 classes: chance 0.33
    from geomed_ssl import load_encoder
    from geomed_ssl.checkpoint import load_model

    model, _ = load_model(ft / "model")
    before = load_encoder(pretrained).state_dict()
    assert all(torch.equal(v, before[k]) for k, v in model.encoder.state_dict().items())  # the encoder is frozen
    pr = runner.invoke(app, ["predict", str(ft), str(images / "scene.tif"), "--out", str(tmp_path / "pred"),
                             "--device", "cpu"])
    assert pr.exit_code == 0, pr.output
    with rasterio.open(tmp_path / "pred" / "scene_pred.tif") as dst:
        assert dst.shape == (64, 64) and set(np.unique(dst.read(1))) <= {1, 2, 3}


def band_file_scenes(root: Path, bands: tuple[str, ...]) -> None:
    """``root/scenes/scene_{0,1}/<band>.tif`` (one file per band, 48 px), ``root/gt_{i}.tif`` (classes 1, 2 by the
    first band's median) and ``root/pairs.csv`` pairing each scene's first band file with its labels."""
    rng = np.random.default_rng(5)
    rows = ["image,label"]
    for i in range(2):
        scene = root / "scenes" / f"scene_{i}"
        scene.mkdir(parents=True)
        img = structured_raster(rng, len(bands), 48)
        for b, name in enumerate(bands):
            write_geotiff(scene / f"{name}.tif", img[b:b + 1])
        write_geotiff(root / f"gt_{i}.tif", ((img[0] > np.median(img[0])).astype(np.uint8) + 1)[None])
        rows.append(f"scenes/scene_{i}/{bands[0]}.tif,gt_{i}.tif")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")


def test_segment_on_stacked_single_band_files_evaluates_and_predicts_each_folder(tmp_path: Path) -> None:
    """One folder per scene with a file per band (Landsat / 38-Cloud style) stacked by data.channels; labels from
    a CSV; prediction of the parent folder writes one map per scene folder."""
    band_file_scenes(tmp_path, ("red", "green", "nir"))
    ft = tmp_path / "ft"
    common = ["data.sensor=null", "data.channels=[*red*,*green*,*nir*]"]
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--images", str(tmp_path / "scenes"), "--labels", str(tmp_path / "pairs.csv"),
                                 "--out", str(ft), "--labels-per-class", "5", "--head", "linear", *sets(*common)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((ft / "metrics.json").read_text())
    assert metrics["test"]["n"] == 2 * 48 * 48 - 10
    pr = runner.invoke(app, ["predict", str(ft), str(tmp_path / "scenes"), "--out", str(tmp_path / "pred")])
    assert pr.exit_code == 0, pr.output
    for i in range(2):
        with rasterio.open(tmp_path / "pred" / f"scene_{i}_pred.tif") as dst, \
                rasterio.open(tmp_path / "scenes" / f"scene_{i}" / "red.tif") as src:
            assert dst.transform == src.transform and dst.shape == src.shape
            assert set(np.unique(dst.read(1))) <= {1, 2}


def brats_like_cases(root: Path) -> np.ndarray:
    """Two cases in the BraTS layout (a folder per case, one NIfTI per sequence, the label beside them, classes 1,
    2, 4 nested spheres); returns the affine (2 mm)."""
    import nibabel as nib

    rng = np.random.default_rng(2)
    zz, yy, xx = np.mgrid[0:24, 0:24, 0:24].astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for i in range(2):
        case = root / f"case_{i}"
        case.mkdir(parents=True)
        c = rng.uniform(8, 16, size=3)
        d2 = (xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2
        seg = np.select([d2 < 9, d2 < 25, d2 < 36], [4, 2, 1], 0).astype(np.float32)
        for name, gain in (("Flair", 3.0), ("T1c", 1.5)):
            vol = 100 + gain * 100 * (seg > 0) + rng.normal(0, 10, seg.shape)
            nib.save(nib.Nifti1Image(vol.astype(np.float32), affine), str(case / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(seg, affine), str(case / "OTMultiClass.nii.gz"))
    return affine


VOLUME_SETS = ["data.kind=volume", "data.intensity=mr", "data.patch_size=16", "model.patch_size=8",
               "data.channels=[*Flair*,*T1c*]", "labels.label_name=OTMultiClass.nii.gz",
               "labels.remap={2: 1, 3: 1, 4: 1}", "labels.ignore_value=null", "finetune.max_steps=6",
               "finetune.batch_size=2"]


def test_segment_volumes_per_case_folder_with_label_name_and_remap(tmp_path: Path) -> None:
    """BraTS layout; classes 1-4 merged into one (whole tumour) with labels.remap, background a class
    (ignore_value null)."""
    import nibabel as nib

    affine = brats_like_cases(tmp_path / "cases")
    ft = tmp_path / "ft3d"
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_mri.yaml", "--encoder", "none",
                                 "--images", str(tmp_path / "cases"), "--out", str(ft), "--label-fraction", "0.05",
                                 *[a for item in [*TINY, *VOLUME_SETS] for a in ("--set", item)]])
    assert result.exit_code == 0, result.output
    metrics = json.loads((ft / "metrics.json").read_text())
    assert [c["value"] for c in metrics["classes"]] == [0, 1] and len(metrics["test"]["per_class_dice"]) == 2
    assert metrics["test"]["mean_dice_foreground"] == metrics["test"]["per_class_dice"][1]  # compare's `dice`
    assert "(without the background " in result.output
    pr = runner.invoke(app, ["predict", str(ft), str(tmp_path / "cases"), "--out", str(tmp_path / "pred3d")])
    assert pr.exit_code == 0, pr.output
    for i in range(2):
        out = nib.load(str(tmp_path / "pred3d" / f"case_{i}_pred.nii.gz"))
        assert out.shape == (24, 24, 24) and np.allclose(out.affine, affine)
        assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1}
    for i in range(2):  # BIDS: every subject's stack is a folder named anat/; named by its subject and session
        anat = tmp_path / "bids" / f"sub-0{i}" / "ses-1" / "anat"
        visit = tmp_path / "visits" / ("baseline", "followup")[i]  # other folders keep their names
        for folder in (anat, visit):
            folder.mkdir(parents=True)
            for seq in ("Flair", "T1c"):
                shutil.copy(tmp_path / "cases" / f"case_{i}" / f"{seq}.nii.gz", folder / f"sub-0{i}_ses-1_{seq}.nii.gz")
        (anat / f"._sub-0{i}_ses-1_Flair.nii.gz").write_bytes(b"\0" * 4096)  # a macOS drive's AppleDouble file
        shutil.copy(anat / f"sub-0{i}_ses-1_Flair.nii.gz", anat / f"sub-0{i}_ses-1_Flair_mask.nii.gz")  # excluded
    for data, names in (("bids", ["sub-00_ses-1_pred.nii.gz", "sub-01_ses-1_pred.nii.gz"]),
                        ("visits", ["baseline_pred.nii.gz", "followup_pred.nii.gz"])):
        pr = runner.invoke(app, ["predict", str(ft), str(tmp_path / data), "--out", str(tmp_path / f"pred_{data}")])
        assert pr.exit_code == 0, pr.output
        assert sorted(p.name for p in (tmp_path / f"pred_{data}").glob("*_pred.nii.gz")) == names
    ev = runner.invoke(app, ["evaluate", str(ft), "--images", str(tmp_path / "cases")])
    assert ev.exit_code == 0, ev.output
    assert "1383 of the 27648 labelled positions trained this model" in ev.output  # the training grid is native
    assert "the other positions of their 2 label files (case_0/OTMultiClass.nii.gz, case_1/OTMultiClass.nii.gz) " \
        "are scored as test: they measure the images this model was trained on" in " ".join(ev.output.split())
    scored = json.loads((ft / "eval" / "metrics.json").read_text())
    with (ft / "eval" / "images.csv").open(newline="") as fh:  # per subject, as medical papers report Dice
        rows = list(csv.DictReader(fh))
    test = [r for r in rows if r["split"] == "test"]
    assert sorted(Path(r["file"]).name for r in test) == ["case_0", "case_1"]  # the stacks, named by folder
    assert sum(int(r["labelled"]) for r in test) == scored["test"]["n"]
    assert [r["dice"] for r in test] == [r["dice_1"] for r in test]  # one foreground class (1): its Dice
    each = scored["test"]["per_image"]
    assert each["images"] == 2 and each["dice_mean"] == pytest.approx(np.mean([float(r["dice"]) for r in test]))
    assert "per image (2 images, images.csv): Dice" in ev.output and f"per image: {ft / 'eval' / 'images.csv'}" \
        in ev.output
    for i, name in enumerate(("subject_a", "subject_b")):  # the cohort copied under other names before testing:
        shutil.copytree(tmp_path / "cases" / f"case_{i}", tmp_path / "renamed" / name)  # found by the files' bytes
    ev = runner.invoke(app, ["evaluate", str(ft), "--images", str(tmp_path / "renamed"), "--out", str(tmp_path / "ev")])
    assert ev.exit_code == 0 and "1383 of the 27648 labelled positions trained this model" in ev.output
    used = np.load(ft / "labels_used.npz", allow_pickle=False)
    meta = json.loads(str(used["meta"]))
    assert "reoriented to RAS" in meta["grid"]  # what the indices count, for a user reading them
    remap = {0: 0, 1: 1, 2: 1, 3: 1, 4: 1}
    for f, path in enumerate(meta["paths"]):  # each test index holds its value in the label as read (RAS)
        ras = np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj).ravel()
        keep = used["test_file"] == f
        assert all(remap[int(v)] == t for v, t in zip(ras[used["test_index"][keep]], used["test_value"][keep]))


def test_segment_predict_and_evaluate_volumes_in_the_nnunet_layout(tmp_path: Path) -> None:
    """nnU-Net's raw folders: imagesTr/case_0_0000.nii.gz (FLAIR), case_0_0001.nii.gz (T1c), ... and
    labelsTr/case_0.nii.gz; data.channels stacks each case of the one folder, the labels match by case."""
    import nibabel as nib

    affine = brats_like_cases(tmp_path / "cases")
    for i in range(2):
        for c, seq in enumerate(("Flair", "T1c")):
            (tmp_path / "nn" / "imagesTr").mkdir(parents=True, exist_ok=True)
            shutil.move(tmp_path / "cases" / f"case_{i}" / f"{seq}.nii.gz",
                        tmp_path / "nn" / "imagesTr" / f"case_{i}_{c:04d}.nii.gz")
        (tmp_path / "nn" / "labelsTr").mkdir(exist_ok=True)
        shutil.move(tmp_path / "cases" / f"case_{i}" / "OTMultiClass.nii.gz",
                    tmp_path / "nn" / "labelsTr" / f"case_{i}.nii.gz")
    sets = [*TINY, *[s for s in VOLUME_SETS if not s.startswith(("data.channels", "labels.label_name"))],
            "data.channels=[*_0000.nii.gz,*_0001.nii.gz]", "data.band_names=[FLAIR,T1c]"]
    ft = tmp_path / "ft_nn"
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_mri.yaml", "--encoder", "none",
                                 "--images", str(tmp_path / "nn" / "imagesTr"), "--labels",
                                 str(tmp_path / "nn" / "labelsTr"), "--out", str(ft), "--label-fraction", "0.05",
                                 *[a for item in sets for a in ("--set", item)]])
    assert result.exit_code == 0, result.output
    used = json.loads(str(np.load(ft / "labels_used.npz", allow_pickle=False)["meta"]))
    assert [Path(p).name for p in used["paths"]] == ["case_0.nii.gz", "case_1.nii.gz"]
    pr = runner.invoke(app, ["predict", str(ft), str(tmp_path / "nn" / "imagesTr"), "--out", str(tmp_path / "pred")])
    assert pr.exit_code == 0, pr.output
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.nii.gz")) == ["case_0_pred.nii.gz", "case_1_pred.nii.gz"]
    out = nib.load(str(tmp_path / "pred" / "case_1_pred.nii.gz"))
    assert out.shape == (24, 24, 24) and np.allclose(out.affine, affine)
    ev = runner.invoke(app, ["evaluate", str(ft), "--images", str(tmp_path / "nn" / "imagesTr"), "--labels",
                             str(tmp_path / "nn" / "labelsTr")])
    assert ev.exit_code == 0, ev.output
    assert "of the 27648 labelled positions trained this model" in ev.output


def test_segment_volumes_with_a_propagate_probe_head_predicts_on_the_input_grid(tmp_path: Path) -> None:
    import nibabel as nib

    affine = brats_like_cases(tmp_path / "cases")
    ft = tmp_path / "ft3d"
    sets = [*TINY, *VOLUME_SETS, "finetune.probe=propagate", "finetune.probe_nodes=3000"]
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_mri.yaml", "--encoder", "none",
                                 "--images", str(tmp_path / "cases"), "--out", str(ft), "--labels-per-class", "20",
                                 "--head", "probe", *[a for item in sets for a in ("--set", item)]])
    assert result.exit_code == 0, result.output
    head = json.loads((ft / "model" / "config.json").read_text())["head"]
    assert head["probe"] == "propagate" and head["memory"] == 0
    assert "3000 unlabelled voxels in the graph" in result.output
    assert json.loads((ft / "metrics.json").read_text())["test"]["OA"] > 0.6
    pr = runner.invoke(app, ["predict", str(ft), str(tmp_path / "cases" / "case_0"), "--out", str(tmp_path / "p")])
    assert pr.exit_code == 0, pr.output
    out = nib.load(str(tmp_path / "p" / "case_0_pred.nii.gz"))
    assert out.shape == (24, 24, 24) and np.allclose(out.affine, affine)


def test_segment_refuses_labels_on_another_grid(seg_scene, pretrained: Path, tmp_path: Path) -> None:
    images, labels = seg_scene
    from affine import Affine

    with rasterio.open(labels / "scene_gt.tif") as src:
        arr = src.read()
    write_geotiff(labels / "scene_gt.tif", arr, transform=Affine(10, 0, 500010, 0, -10, 5100000))
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", str(pretrained),
                                 "--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "x"),
                                 "--labels-per-class", "5", *sets("data.sensor=null")])
    assert result.exit_code == 2
    assert "scene_gt.tif" in result.output and "scene.tif" in result.output


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    """Three classes of 4-band 16x16 patches whose brightness differs by class."""
    return write_class_folders(tmp_path / "classes", ["Forest", "River", "Urban"], per_class=6)


@pytest.mark.parametrize("mode", ["--linear-probe", "--mlp", "--full"])
def test_classify_modes_from_cli(class_folders: Path, pretrained: Path, tmp_path: Path, mode: str) -> None:
    ft = tmp_path / f"cls{mode}"
    result = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", str(pretrained),
                                 "--data", str(class_folders), "--out", str(ft), "--labels-per-class", "2", mode,
                                 *sets("data.sensor=null", "finetune.max_steps=40")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((ft / "metrics.json").read_text())
    assert metrics["train"]["n"] == 6 and metrics["test"]["n"] == 12
    assert metrics["train"]["OA"] >= 0.5  # the training images are separable by brightness alone
    pr = runner.invoke(app, ["predict", str(ft), str(class_folders), "--out", str(tmp_path / "p")])
    assert pr.exit_code == 0, pr.output
    assert len((tmp_path / "p" / "predictions.csv").read_text().splitlines()) == 1 + 18


def test_classify_warns_of_classes_it_cannot_learn_and_evaluate_scores_its_training_images_apart(
        class_folders: Path, tmp_path: Path) -> None:
    (class_folders / "Highway").mkdir()  # empty: no class of the model
    (class_folders / "Solo").mkdir()
    (class_folders / "Forest" / "Forest_0.tif").rename(class_folders / "Solo" / "Solo_0.tif")  # one image: none trains
    (class_folders / "Unlabelled").mkdir()  # its name matches the recipe's '*label*' exclude pattern
    (class_folders / "River" / "River_1.tif").rename(class_folders / "Unlabelled" / "u.tif")
    ft = tmp_path / "cls_warn"
    result = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--data", str(class_folders), "--out", str(ft), "--labels-per-class", "2",
                                 "--linear-probe", *sets("data.sensor=null")])
    assert result.exit_code == 0, result.output
    assert "hold no usable image, so they are no class: Highway" in result.output
    assert "no training image for class(es) Solo" in result.output
    assert "warning: class 'Solo': 1 labelled image, took 0 instead of 2" in result.output  # not a note
    assert "leaves out folder(s) under" in result.output and "'Unlabelled' (1 file)" in result.output
    assert json.loads((ft / "metrics.json").read_text())["train"]["n"] == 6

    ev = runner.invoke(app, ["evaluate", str(ft), "--data", str(class_folders)])
    assert ev.exit_code == 0, ev.output
    assert "6 of the 17 labelled images trained this model" in ev.output
    metrics = json.loads((ft / "eval" / "metrics.json").read_text())
    assert metrics["train"]["n"] == 6 and metrics["test"]["n"] == 11
    # a copy of the images under other names: found by their bytes
    renamed = tmp_path / "renamed_classes"
    for f in class_folders.glob("*/*.tif"):
        (renamed / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, renamed / f.parent.name / f"copy_of_{f.name}")
    ev = runner.invoke(app, ["evaluate", str(ft), "--data", str(renamed), "--out", str(tmp_path / "ev_renamed")])
    assert ev.exit_code == 0 and "6 of the 17 labelled images trained this model" in ev.output
    # another folder whose images are named like the training ones (a test set numbered alike, or an edited copy):
    # names cannot tell which, so nothing is scored apart and a warning says what to do
    copy = tmp_path / "copied_classes"
    shutil.copytree(class_folders, copy)
    for f in copy.glob("*/*.tif"):
        with rasterio.open(f, "r+") as dst:
            dst.write(dst.read() + 1)
    ev = runner.invoke(app, ["evaluate", str(ft), "--data", str(copy), "--out", str(tmp_path / "ev_copy")])
    assert ev.exit_code == 0 and "6 share a folder and file name with its training images" in ev.output
    copied = json.loads((tmp_path / "ev_copy" / "metrics.json").read_text())
    assert copied["test"]["n"] == 17 and any("6 share a folder and file name" in n for n in copied["notes"])
    # a test set with a class the model never saw is scored on the classes it knows, the others left out with a
    # note (as unknown label values of segmentation are); none known: refused, nothing written
    mixed = tmp_path / "mixed_classes"
    shutil.copytree(class_folders / "River", mixed / "River")
    shutil.copytree(class_folders / "Urban", mixed / "Wetland")
    n_river, n_new = len(list((mixed / "River").iterdir())), len(list((mixed / "Wetland").iterdir()))
    ev = runner.invoke(app, ["evaluate", str(ft), "--data", str(mixed), "--out", str(tmp_path / "ev_mixed")])
    assert ev.exit_code == 0, ev.output
    assert f"class folders ['Wetland'] ({n_new} images)" in ev.output and "left out of the metrics" in ev.output
    mixed_metrics = json.loads((tmp_path / "ev_mixed" / "metrics.json").read_text())
    assert mixed_metrics["test"]["n"] + mixed_metrics["train"]["n"] == n_river
    assert any("'Wetland'" in n for n in mixed_metrics["notes"])
    only_new = tmp_path / "only_new"
    shutil.copytree(class_folders / "Urban", only_new / "Wetland")
    ev = runner.invoke(app, ["evaluate", str(ft), "--data", str(only_new), "--out", str(tmp_path / "ev_new")])
    assert ev.exit_code == 2 and "none of the class folders" in ev.output and not (tmp_path / "ev_new").exists()

    pr = runner.invoke(app, ["predict", str(ft), str(class_folders), "--out", str(tmp_path / "p"), "--probabilities"])
    assert pr.exit_code == 0, pr.output
    lines = (tmp_path / "p" / "predictions.csv").read_text().splitlines()
    assert lines[0] == "file,class,probability,model,p_Forest,p_River,p_Solo,p_Urban" and len(lines) == 1 + 17
    probs = [float(v) for v in lines[1].split(",")[4:]]
    assert abs(sum(probs) - 1) < 1e-3 and max(probs) == float(lines[1].split(",")[2])


def test_classify_fine_tunes_images_of_several_sizes_on_crops_of_the_smallest(class_folders: Path,
                                                                              tmp_path: Path) -> None:
    """Torch's batches need one size: whole images of several sizes crashed --full and every compare --data (which
    always fine-tunes random init)."""
    from tests.conftest import structured_raster, write_geotiff

    rng = np.random.default_rng(1)
    for name, size in (("Forest", 24), ("River", 32), ("Urban", 40)):
        for i in range(2):
            write_geotiff(class_folders / name / f"big_{i}.tif", structured_raster(rng, 4, size).astype(np.uint16))
    ft = tmp_path / "sizes"
    result = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--data", str(class_folders), "--out", str(ft), "--labels-per-class", "4", "--full",
                                 *sets("data.sensor=null", "finetune.max_steps=4", "finetune.batch_size=4",
                                       "data.num_workers=0")])
    assert result.exit_code == 0, result.output
    assert "training images come in 3 sizes; each training step sees a 16x16 crop of them" in result.output
    assert json.loads((ft / "metrics.json").read_text())["test"]["n"] == 12


def test_classify_refuses_one_training_image_and_a_batch_of_one_for_the_linear_head(class_folders: Path,
                                                                                   tmp_path: Path) -> None:
    """A BatchNorm head cannot train on one sample: a traceback before."""
    batch = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", "none", "--data",
                                str(class_folders), "--out", str(tmp_path / "b"), "--labels-per-class", "1",
                                "--full", *sets("data.sensor=null", "finetune.batch_size=1")])
    assert batch.exit_code == 2 and "finetune.batch_size must be at least 2" in batch.output
    shutil.rmtree(class_folders / "Urban")
    for i in range(1, 6):
        (class_folders / "River" / f"River_{i}.tif").unlink()  # River: one image, which stays for testing
    for i in range(2, 6):
        (class_folders / "Forest" / f"Forest_{i}.tif").unlink()  # Forest: two, one trains
    one = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", "none", "--data",
                              str(class_folders), "--out", str(tmp_path / "a"), "--labels-per-class", "1",
                              "--linear-probe", *sets("data.sensor=null")])
    assert one.exit_code == 2 and "1 training image(s)" in one.output and "needs at least two" in one.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_classify_given_a_table_without_image_and_class_columns_says_what_it_needs(tmp_path: Path) -> None:
    table = tmp_path / "labels.csv"
    table.write_text("file,label\na.tif,Forest\n")
    result = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--data", str(table), "--out", str(tmp_path / "ft"), "--labels-per-class", "2"])
    assert result.exit_code == 2
    assert f"classes CSV '{table}' needs a header row with columns image, class; found file, label" in result.output
    (tmp_path / "notes.txt").write_text("x")
    result = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--data", str(tmp_path / "notes"), "--out", str(tmp_path / "ft")])
    assert result.exit_code == 2 and "does not exist" in result.output and not (tmp_path / "ft").exists()


def test_classes_from_a_csv_train_and_evaluate_as_class_folders_do(class_folders: Path, tmp_path: Path) -> None:
    """A classes CSV (image,class) stands for class folders: the same images and classes give the same selection
    and metrics; rows naming no image are warned about, unlisted images left out, contradictions refused."""
    import csv

    images = sorted(class_folders.glob("*/*.tif"))
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in images:
        (flat / f.name).write_bytes(f.read_bytes())
    table = tmp_path / "classes.csv"
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Image", "Class"])
        w.writerows([(f"flat/{f.name}", f.parent.name) for f in images[:-1]] + [("missing.tif", "River")])
    common = ["--encoder", "none", "--labels-per-class", "2", "--linear-probe", *sets("data.sensor=null",
                                                                                     "finetune.max_steps=5")]
    by_table = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--data", str(table),
                                   "--out", str(tmp_path / "ft_csv"), *common])
    assert by_table.exit_code == 0, by_table.output
    assert "1 row(s) name no image read under" in by_table.output and "line 19 ('missing.tif')" in by_table.output
    (class_folders / images[-1].parent.name / images[-1].name).unlink()  # the one image the table leaves out
    by_folder = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--data",
                                    str(class_folders), "--out", str(tmp_path / "ft_dir"), *common])
    assert by_folder.exit_code == 0, by_folder.output
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("ft_csv", "ft_dir"))
    assert a["test"]["n"] == b["test"]["n"] == 11 and a["test"]["OA"] == pytest.approx(b["test"]["OA"])
    sel = [np.load(tmp_path / d / "labels_used.npz") for d in ("ft_csv", "ft_dir")]
    assert (sel[0]["train_index"] == sel[1]["train_index"]).all() and (sel[0]["labels"] == sel[1]["labels"]).all()
    ev = runner.invoke(app, ["evaluate", str(tmp_path / "ft_csv"), "--data", str(table)])
    assert ev.exit_code == 0, ev.output
    assert json.loads((tmp_path / "ft_csv" / "eval" / "metrics.json").read_text())["test"]["n"] == 11
    inside = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--data", str(table),
                                 "--out", str(flat / "ft"), *common])
    assert inside.exit_code == 2 and "lies inside the folder of the classes CSV's images" in inside.output
    table.write_text(f"image,class\nflat/{images[0].name},Forest\n./flat/{images[0].name},River\n")
    twice = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--data", str(table),
                                "--out", str(tmp_path / "ft_twice"), *common])
    assert twice.exit_code == 2 and "twice with different classes (line 2: 'Forest', line 3: 'River')" in twice.output
    assert not (tmp_path / "ft_twice").exists() and not (flat / "ft").exists()
    spelt = {"River_5.tif": "river"}  # one row typed otherwise
    table.write_text("image,class\n" + "".join(f"flat/{f.name},{spelt.get(f.name, f.parent.name)}\n" for f in images))
    case = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--data", str(table),
                               "--out", str(tmp_path / "ft_case"), *common])
    assert case.exit_code == 2 and "differ only in case ('River' (line 8), 'river' (line 13))" in case.output
    # images of another band count beside the listed ones, not listed: they do not decide the band set
    write_class_folders(flat / "other", ["A", "B"], per_class=8, bands=3)
    table.write_text("image,class\n" + "".join(f"flat/{f.name},{f.parent.name}\n" for f in images))
    mixed = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--data", str(table),
                                "--out", str(tmp_path / "ft_mixed"), *common])
    assert mixed.exit_code == 0 and "problem file" not in mixed.output, mixed.output
    assert "16 image(s) under" in mixed.output and "are not listed" in mixed.output
    (flat / "broken.tif").write_bytes(b"II*\x00 not a tiff")  # a listed problem file, named by its name alone
    table.write_text(table.read_text() + "broken.tif,Forest\n")
    strict = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--data", str(table),
                                 "--out", str(tmp_path / "ft_strict"), *common, "--strict"])
    assert strict.exit_code == 2 and "1 problem file(s) among the images of classes CSV" in strict.output
    assert "broken.tif" in strict.output and not (tmp_path / "ft_strict").exists()


def test_classify_refuses_a_split_meant_for_label_maps(class_folders: Path, tmp_path: Path) -> None:
    ft = tmp_path / "cls_split"
    result = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--data", str(class_folders), "--out", str(ft), "--labels-per-class", "2",
                                 *sets("data.sensor=null", "labels.split=images")])
    assert result.exit_code == 2 and "classification data is split by image already" in result.output
    assert not ft.exists()


@pytest.mark.parametrize("head", ["unetr", "probe"])
def test_finetune_runs_in_one_process_whatever_the_recipe_asks_for_pretraining(seg_scene, tmp_path: Path,
                                                                               head: str) -> None:
    images, labels = seg_scene
    ft = tmp_path / "ft_one"
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--images", str(images), "--labels", str(labels), "--out", str(ft),
                                 "--labels-per-class", "5",
                                 *sets("data.sensor=null", "finetune.max_steps=2", "train.devices=2",
                                       "train.strategy=ddp", "train.accelerator=cpu", f"finetune.head={head}")])
    assert result.exit_code == 0, result.output
    assert "fine-tuning runs in one process on one device" in result.output and "train.devices=2" in result.output
    assert (ft / "metrics.json").is_file()


def test_a_fine_tune_does_not_depend_on_what_ran_before_it_in_the_process(seg_scene, class_folders: Path,
                                                                          pretrained: Path, tmp_path: Path) -> None:
    """``compare`` runs many fine-tunes in one process (a resumed one fewer): the same seed gives the same model
    whatever torch's generator held before (the new head is seeded too, not only the training)."""
    from safetensors.torch import load_file

    images, labels = seg_scene
    commands = {
        "classify": ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", str(pretrained),
                     "--data", str(class_folders), "--labels-per-class", "2", "--mlp",
                     *sets("data.sensor=null", "finetune.max_steps=5")],
        "segment": ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", str(pretrained),
                    "--images", str(images), "--labels", str(labels), "--labels-per-class", "5",
                    *sets("data.sensor=null", "finetune.max_steps=3")],
    }
    differ = []
    for task, command in commands.items():
        weights = []
        for before in (1, 2):
            torch.manual_seed(before)
            out = tmp_path / f"{task}{before}"
            result = runner.invoke(app, [*command, "--out", str(out)])
            assert result.exit_code == 0, result.output
            weights.append(load_file(str(out / "model" / "model.safetensors")))
        assert weights[0].keys() == weights[1].keys()
        differ += [task] if not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]) else []
    assert differ == []


def test_an_evaluate_that_fails_midway_leaves_the_earlier_metrics_and_figure_as_they_were(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from geomed_ssl.finetune import evaluate as ev
    from geomed_ssl.finetune import metrics
    from tests.test_bad_input import labelled, predicting_model

    ft, (images, labels) = predicting_model(tmp_path), labelled(tmp_path)
    ev.evaluate_dir(ft, images, labels, out=tmp_path / "ev")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ev").iterdir()}
    assert {"metrics.json", "confusion.png"} <= set(before)

    def disk_full(*args, **kwargs) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics, "save_confusion_png", disk_full)
    with pytest.raises(OSError):
        ev.evaluate_dir(ft, images, labels, out=tmp_path / "ev")
    assert {p.name: p.read_bytes() for p in (tmp_path / "ev").iterdir()} == before  # no new figure, no partial


def test_dates_with_copies_of_one_label_map_train_as_one_ground_and_evaluate_finds_every_trained_place(
        tmp_path: Path) -> None:
    """Three dates in folders of their own, each with a copy of the label map: a place drawn trains at all three
    and is tested at none; evaluate on two of the dates (a CSV) finds the trained places there and scores them
    apart, as each image keeps its own label path in labels_used.npz."""
    rng = np.random.default_rng(3)
    img = structured_raster(rng, 4, 48)
    level = img[0].astype(float)
    cls = (np.digitize(level, np.quantile(level, [1 / 3, 2 / 3])) + 1).astype(np.uint8)
    rows = ["image,label"]
    for d in ("d1", "d2", "d3"):
        (tmp_path / "dates" / d).mkdir(parents=True)
        write_geotiff(tmp_path / "dates" / d / "tile.tif", img + rng.integers(0, 20, img.shape).astype(img.dtype))
        write_geotiff(tmp_path / "dates" / d / "lulc.tif", cls[None])
        rows.append(f"dates/{d}/tile.tif,dates/{d}/lulc.tif")
    (tmp_path / "all.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "later.csv").write_text("\n".join([rows[0], *rows[2:]]) + "\n")
    ft = tmp_path / "ft"
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--images", str(tmp_path / "dates"), "--labels", str(tmp_path / "all.csv"),
                                 "--out", str(ft), "--labels-per-class", "4",
                                 *sets("data.sensor=null", "data.exclude=[\"*lulc*\"]", "finetune.head=probe")])
    assert result.exit_code == 0, result.output
    from geomed_ssl.labels.sampling import LabelSelection

    used = LabelSelection.load_npz(ft / "labels_used.npz")
    assert [Path(p).parent.name for p in used.paths] == ["d1", "d2", "d3"]
    places = {int(i) for i in used.train_index}
    assert len(places) == 12 and all(set(used.train_index[used.train_file == f].tolist()) == places for f in range(3))
    assert not places & set(used.test_index.tolist())  # no date tests a place another date trains
    ev = runner.invoke(app, ["evaluate", str(ft), "--images", str(tmp_path / "dates"), "--labels",
                             str(tmp_path / "later.csv"), "--out", str(tmp_path / "ev")])
    assert ev.exit_code == 0, ev.output
    assert "24 of the" in ev.output and "trained this model" in ev.output  # 12 places at the two later dates
    (tmp_path / "new" / "d4").mkdir(parents=True)  # a date the fine-tune never saw, with its own copy of the map
    write_geotiff(tmp_path / "new" / "d4" / "tile.tif", img)
    write_geotiff(tmp_path / "new" / "d4" / "lulc.tif", cls[None])
    ev = runner.invoke(app, ["evaluate", str(ft), "--images", str(tmp_path / "new"), "--out", str(tmp_path / "ev4"),
                             "--labels", str(tmp_path / "new" / "d4" / "lulc.tif")])
    assert ev.exit_code == 0, ev.output
    assert "12 of the" in ev.output and "trained this model" in ev.output  # its trained places, at the new date


@pytest.mark.parametrize("where", ["probe", "evaluation"])
def test_a_fine_tune_stopped_outside_its_training_loop_says_what_it_left(seg_scene, tmp_path, monkeypatch,
                                                                         where: str) -> None:
    """Ctrl-C while fitting a probe head: no model, a line saying so, exit 130; during the final evaluation: the
    saved model is complete, the line says metrics.json is missing and which evaluate command scores it."""
    from geomed_ssl.finetune import evaluate, segment

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(segment if where == "probe" else evaluate,
                        "fit_probe_model" if where == "probe" else "evaluate_segmentation", interrupt)
    images, labels = seg_scene
    ft = tmp_path / "ft"
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--images", str(images), "--labels", str(labels), "--out", str(ft),
                                 "--labels-per-class", "5", *sets("data.sensor=null", "finetune.head=probe")])
    assert result.exit_code == 130, result.output
    if where == "probe":
        assert f"stopped by SIGINT before its model was saved; '{ft}' holds no model" in result.output
        assert not (ft / "model").exists()
        pr = runner.invoke(app, ["predict", str(ft), str(images), "--out", str(tmp_path / "p")])
        assert pr.exit_code == 2 and "a fine-tune folder without a model" in pr.output, pr.output
    else:
        assert "during its final evaluation" in result.output and f"geomed-ssl evaluate {ft} --images" in result.output
        assert (ft / "model" / "model.safetensors").is_file() and not (ft / "metrics.json").exists()


def test_sigterm_outside_a_training_loop_stops_with_the_line_and_the_previous_handler_comes_back() -> None:
    import os
    import signal

    from geomed_ssl.errors import RunStopped
    from geomed_ssl.process import stops_as

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunStopped, match="stopped by SIGTERM here") as stop:
        with stops_as(lambda name: f"stopped by {name} here"):
            os.kill(os.getpid(), signal.SIGTERM)
            import time

            time.sleep(5)  # the handler raises first
    assert stop.value.signal == "SIGTERM" and signal.getsignal(signal.SIGTERM) is before
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a parent that ignores SIGTERM: it stays ignored
    try:
        with stops_as(lambda name: "never"):
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_fine_tune_names_undescribed_bands_as_the_encoders_pretraining_did(raster_dir: Path, class_folders: Path,
                                                                              tmp_path: Path) -> None:
    """An encoder pretrained with data.band_names on files without band descriptions, fine-tuned with another recipe
    (a shipped one, naming none): the files' bands are named as in pretraining, not by the recipe's sensor order,
    and the fine-tuned model records those names for predict; an explicit --set data.band_names still wins."""
    from geomed_ssl.train.pretrain import pretrain

    order = "data.band_names=[B08,B04,B03,B02]"
    pre = tmp_path / "pre"
    pretrain("recipes/mae_sentinel2.yaml", raster_dir, pre, progress=False,
             overrides=[*TINY, "data.sensor=null", order, "data.patch_size=16", "train.max_steps=2"])
    ft = tmp_path / "ft"
    result = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", str(pre),
                                 "--data", str(class_folders), "--out", str(ft), "--labels-per-class", "2",
                                 "--linear-probe", *sets("data.sensor=null", "finetune.max_steps=5")])
    assert result.exit_code == 0, result.output
    assert "named by the encoder's recipe (data.band_names: B08 B04 B03 B02)" in result.output
    saved = json.loads((ft / "model" / "config.json").read_text())
    assert saved["data"]["band_names"] == ["B08", "B04", "B03", "B02"]
    own = tmp_path / "own"
    result = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", str(pre),
                                 "--data", str(class_folders), "--out", str(own), "--labels-per-class", "2",
                                 "--linear-probe", *sets("data.sensor=null", "finetune.max_steps=5",
                                                         "data.band_names=[B02,B03,B04,B08]")])
    assert result.exit_code == 0, result.output
    assert "named by the encoder's recipe" not in result.output
    assert json.loads((own / "model" / "config.json").read_text())["data"]["band_names"] == ["B02", "B03", "B04", "B08"]


def test_an_encoder_pretrained_on_stacked_channel_files_is_fine_tuned_evaluated_and_drawn_per_folder(
        tmp_path: Path) -> None:
    """data.channels (one file per band or sequence, a folder per sample): the fine-tune takes the encoder's
    channels when its recipe sets none (it read each file alone and refused them with advice about band names),
    a single glob evaluates from each folder (a bare file lost the channel's name), and `attention` takes a sample's
    folder."""
    from geomed_ssl.train.pretrain import pretrain

    band_file_scenes(tmp_path, ("red", "nir"))
    pre = tmp_path / "pre"
    pretrain("recipes/mae_sentinel2.yaml", tmp_path / "scenes", pre, progress=False,
             overrides=[*TINY, "data.sensor=null", "data.channels=[*red*,*nir*]", "data.patch_size=16",
                        "train.max_steps=2"])
    ft = tmp_path / "ft"
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", str(pre),
                                 "--images", str(tmp_path / "scenes"), "--labels", str(tmp_path / "pairs.csv"),
                                 "--out", str(ft), "--labels-per-class", "5", "--head", "linear",
                                 *sets("data.sensor=null")])
    assert result.exit_code == 0, result.output
    assert "data.channels is the encoder's recipe's" in result.output and (ft / "metrics.json").is_file()
    attention = runner.invoke(app, ["attention", str(pre), str(tmp_path / "scenes" / "scene_0"), "--out",
                                    str(tmp_path / "att.png")])
    assert attention.exit_code == 0 and (tmp_path / "att.png").is_file(), attention.output
    one = tmp_path / "one"  # a single glob: one channel of each folder
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--images", str(tmp_path / "scenes"), "--labels", str(tmp_path / "pairs.csv"),
                                 "--out", str(one), "--labels-per-class", "5", "--head", "linear",
                                 *sets("data.sensor=null", "data.channels=[*red*]")])
    assert result.exit_code == 0 and (one / "metrics.json").is_file(), result.output
    again = runner.invoke(app, ["evaluate", str(one), "--images", str(tmp_path / "scenes"), "--labels",
                                str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "ev")])
    assert again.exit_code == 0, again.output


def test_files_that_hold_their_bands_already_are_told_how_to_leave_the_encoders_channels(tmp_path: Path) -> None:
    """An encoder pretrained on a file per band, fine-tuned on files holding both bands: the channels taken from
    the encoder match no folder, and the error says where they came from and that data.channels=null reads each
    file alone (which then trains)."""
    from geomed_ssl.train.pretrain import pretrain

    band_file_scenes(tmp_path, ("red", "nir"))
    pre = tmp_path / "pre"
    pretrain("recipes/mae_sentinel2.yaml", tmp_path / "scenes", pre, progress=False,
             overrides=[*TINY, "data.sensor=null", "data.channels=[*red*,*nir*]", "data.patch_size=16",
                        "train.max_steps=2"])
    (tmp_path / "stacked").mkdir()
    img = structured_raster(np.random.default_rng(2), 2, 48)
    with rasterio.open(write_geotiff(tmp_path / "stacked" / "s.tif", img), "r+") as dst:
        dst.descriptions = ("red", "nir")
    write_geotiff(tmp_path / "stacked_gt.tif", ((img[0] > np.median(img[0])).astype(np.uint8) + 1)[None])
    args = ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", str(pre), "--images",
            str(tmp_path / "stacked"), "--labels", str(tmp_path / "stacked_gt.tif"), "--labels-per-class", "5",
            "--head", "linear"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "ft"), *sets("data.sensor=null")])
    assert result.exit_code == 2 and "is the encoder's recipe's" in result.output, result.output
    assert "--set data.channels=null reads each file alone" in result.output
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "ft2"), *sets("data.sensor=null",
                                                                               "data.channels=null")])
    assert result.exit_code == 0, result.output


def test_files_whose_pretraining_recipe_set_their_wavelengths_are_told_to_give_them_again(tmp_path: Path) -> None:
    """data.wavelengths corrects a file's own tags at pretraining; finetune does not take it over (another sensor's
    cube must keep its own), so the same files are refused as another sensor's, with the --set that reads them."""
    import rasterio

    from geomed_ssl.train.pretrain import pretrain

    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        img = structured_raster(np.random.default_rng(i), 3, 48)
        with rasterio.open(write_geotiff(data / f"s{i}.tif", img), "r+") as dst:
            for b, (name, wl) in enumerate(zip("ABC", (0.5, 0.6, 0.7)), start=1):
                dst.set_band_description(b, f"{name} ({wl} Micrometers)")
        write_geotiff(tmp_path / f"s{i}_gt.tif", ((img[0] > np.median(img[0])).astype(np.uint8) + 1)[None])
    (tmp_path / "labels").mkdir()
    for i in range(2):
        (tmp_path / f"s{i}_gt.tif").rename(tmp_path / "labels" / f"s{i}_gt.tif")
    pre = tmp_path / "pre"
    pretrain("recipes/mae_sentinel2.yaml", data, pre, progress=False,
             overrides=[*TINY, "data.sensor=null", "data.wavelengths=[0.45,0.55,0.85]", "data.patch_size=16",
                        "train.max_steps=2"])
    args = ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", str(pre), "--images", str(data),
            "--labels", str(tmp_path / "labels"), "--labels-per-class", "5", "--head", "linear"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "ft"), *sets("data.sensor=null")])
    assert result.exit_code == 2 and "another sensor's bands" in result.output, result.output
    assert '--set "data.wavelengths=[0.45, 0.55, 0.85]"' in result.output
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "ft2"),
                                 *sets("data.sensor=null", "data.wavelengths=[0.45,0.55,0.85]")])
    assert result.exit_code == 0, result.output
    attention = runner.invoke(app, ["attention", str(tmp_path / "ft2"), str(data / "s0.tif"), "--out",
                                    str(tmp_path / "a.png")])
    assert attention.exit_code == 0, attention.output


def volume_classes(root: Path, lesion_shape: tuple[int, int, int]) -> tuple[Path, Path]:
    """Two class folders of three small NIfTI volumes (healthy 16^3, lesion ``lesion_shape``) and a random-init
    encoder export with a 16-voxel window."""
    from tests.embeddings.test_extract import make_encoder, volumes

    data = root / "cls"
    volumes(data / "healthy", 3, (16, 16, 16))
    volumes(data / "lesion", 3, lesion_shape)
    return data, make_encoder(data, root / "enc", kind="volume", window=16, patch=8)


def test_classify_fine_tunes_volumes_of_several_sizes(tmp_path: Path) -> None:
    """Volumes of several sizes (as almost every 3D dataset has) share the fine-tune's batches: a traceback before."""
    data, enc = volume_classes(tmp_path, (24, 16, 16))
    result = runner.invoke(app, ["finetune", "classify", "recipes/mae_ct.yaml", "--encoder", str(enc), "--data",
                                 str(data), "--out", str(tmp_path / "ft"), "--labels-per-class", "1", "--full",
                                 *sets("finetune.max_steps=2", "finetune.batch_size=2", "data.num_workers=0")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["test"]["n"] == 4


def test_classify_sizes_volumes_against_the_encoders_window_not_the_recipes(tmp_path: Path) -> None:
    """A classifier reads whole volumes; the recipe's 64-voxel data.patch_size (not overridden here, unlike
    ``sets``) refused every 16-voxel volume of an encoder whose window is 16."""
    data, enc = volume_classes(tmp_path, (16, 16, 16))
    result = runner.invoke(app, ["finetune", "classify", "recipes/mae_ct.yaml", "--encoder", str(enc), "--data",
                                 str(data), "--out", str(tmp_path / "ft"), "--labels-per-class", "1", "--linear-probe",
                                 "--set", "data.num_workers=0", "--set", "finetune.max_steps=2"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["test"]["n"] == 4
    ev = runner.invoke(app, ["evaluate", str(tmp_path / "ft"), "--data", str(data)])  # the model's window too
    assert ev.exit_code == 0, ev.output
    pr = runner.invoke(app, ["predict", str(tmp_path / "ft"), str(data), "--out", str(tmp_path / "pred")])
    assert pr.exit_code == 0 and len((tmp_path / "pred" / "predictions.csv").read_text().splitlines()) == 1 + 6
    cmp = runner.invoke(app, ["compare", str(enc), "--data", str(data), "--out", str(tmp_path / "cmp"), "--recipe",
                              "recipes/mae_ct.yaml", "--labels-per-class", "1", "--seeds", "0", "--protocol",
                              "linear", "--no-baselines", "--set", "data.num_workers=0", "--set",
                              "finetune.max_steps=2"])
    assert cmp.exit_code == 0, cmp.output


def test_evaluate_reads_volumes_at_the_models_window_not_the_recipes(tmp_path: Path) -> None:
    """The fine-tune took the encoder's 16-voxel window while its recipe kept mae_mri's 64: evaluate left out (or
    refused) every volume under half of 64 voxels along an axis, volumes the model trained and was scored on."""
    import nibabel as nib

    from tests.embeddings.test_extract import make_encoder, volumes

    images = volumes(tmp_path / "images", 2, (24, 24, 20))
    (tmp_path / "labels").mkdir()
    for path in sorted(images.iterdir()):
        img = nib.load(str(path))
        seg = (np.asarray(img.dataobj) > np.median(np.asarray(img.dataobj))).astype(np.uint8)
        nib.save(nib.Nifti1Image(seg, img.affine), str(tmp_path / "labels" / path.name))
    enc = make_encoder(images, tmp_path / "enc", kind="volume", window=16, patch=8)
    ft = tmp_path / "ft"
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_mri.yaml", "--encoder", str(enc), "--images",
                                 str(images), "--labels", str(tmp_path / "labels"), "--out", str(ft),
                                 "--labels-per-class", "5", "--head", "probe", "--set", "labels.ignore_value=null",
                                 "--set", "data.num_workers=0"])
    assert result.exit_code == 0, result.output
    tested = json.loads((ft / "metrics.json").read_text())["test"]
    ev = runner.invoke(app, ["evaluate", str(ft), "--images", str(images), "--labels", str(tmp_path / "labels")])
    assert ev.exit_code == 0, ev.output
    assert "smaller than half" not in ev.output
    scored = json.loads((ft / "eval" / "metrics.json").read_text())["test"]
    assert scored["OA"] == pytest.approx(tested["OA"]) and scored["n"] == tested["n"]


@pytest.mark.parametrize("flag, setting", [("--full", "finetune.freeze_encoder=true"),
                                           ("--mlp", "finetune.freeze_encoder=false"),
                                           ("--linear-probe", "finetune.head=mlp"),
                                           ("--full", "finetune.task=segment")])
def test_a_set_that_contradicts_a_mode_flag_is_refused(tmp_path: Path, flag: str, setting: str) -> None:
    """--set values come after the flags' own and used to win silently: --full with freeze_encoder=true trained a
    probe on a frozen encoder while the user asked for a full fine-tune."""
    result = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--data", str(tmp_path), "--out", str(tmp_path / "ft"), flag, "--set", setting])
    assert result.exit_code == 2 and f"--set '{setting}' contradicts the option that sets" in result.output
    assert not (tmp_path / "ft").exists()


def test_a_set_that_agrees_with_a_mode_flag_passes() -> None:
    from geomed_ssl.cli_finetune import finetune_sets

    sets = finetune_sets(["finetune.freeze_encoder=yes"], None, None, **{"finetune.freeze_encoder": "true"})
    assert sets == ["finetune.freeze_encoder=true", "finetune.freeze_encoder=yes"]


def test_a_classes_csv_of_file_names_away_from_its_images_says_where_it_looked(class_folders: Path,
                                                                               tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    table = tmp_path / "tables" / "classes.csv"
    table.write_text("image,class\n" + "".join(f"{f.name},{f.parent.name}\n" for f in class_folders.glob("*/*.tif")))
    result = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--data", str(table), "--out", str(tmp_path / "ft"), *sets("data.sensor=null")])
    assert result.exit_code == 2 and not (tmp_path / "ft").exists()
    assert "names its images by file name alone, so they are looked for under its own folder: give their paths" \
        in result.output
