"""A classifier reads whole images of any size: thick-slice scans with fewer slices than half the encoder's
pretraining window (or than one token) are classified, evaluated and predicted, not skipped."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from geomed_ssl.cli import app
from tests.conftest import TINY

runner = CliRunner()


def test_thick_slice_volumes_are_classified_evaluated_and_predicted(tmp_path: Path) -> None:
    from geomed_ssl.train.pretrain import pretrain

    rng = np.random.default_rng(0)
    unlabelled, data = tmp_path / "archive", tmp_path / "classes"
    unlabelled.mkdir()
    for i in range(2):
        nib.save(nib.Nifti1Image(rng.normal(0, 1, (40, 40, 40)).astype(np.float32), np.eye(4)),
                 str(unlabelled / f"s{i}.nii.gz"))
    for label, name in enumerate(("healthy", "lesion")):
        (data / name).mkdir(parents=True)
        for i in range(4):  # 3 slices: under one 4-voxel token, and under half the 32-voxel window
            vol = rng.normal(2.0 * label, 1.0, (40, 40, 3)).astype(np.float32)
            nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 5.0, 1.0])), str(data / name / f"{name}{i}.nii.gz"))
    pretrain("recipes/mae_mri.yaml", unlabelled, tmp_path / "run", progress=False,
             overrides=[*TINY, "data.patch_size=32", "data.spacing=null", "train.max_steps=2"])
    sets = [*TINY, "data.spacing=null", "finetune.max_steps=2", "finetune.warmup_steps=1", "finetune.batch_size=2"]
    ft = tmp_path / "ft"
    result = runner.invoke(app, ["finetune", "classify", "recipes/mae_mri.yaml", "--encoder", str(tmp_path / "run"),
                                 "--data", str(data), "--out", str(ft), "--labels-per-class", "2", "--linear-probe",
                                 *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    assert "smaller than half" not in result.output
    assert json.loads((ft / "metrics.json").read_text())["test"]["n"] == 4
    ev = runner.invoke(app, ["evaluate", str(ft), "--data", str(data), "--out", str(tmp_path / "ev")])
    assert ev.exit_code == 0, ev.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["test"]["n"] == 4
    for folder in (ft, tmp_path / "ev"):  # each image's class and prediction, agreeing with the metrics
        with open(folder / "images.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        test = [r for r in rows if r["split"] == "test"]
        assert len(rows) == 8 and len(test) == 4 and {r["predicted"] for r in rows} <= {"healthy", "lesion"}
        assert all(Path(r["file"]).parent.name == r["class"] for r in rows)
        oa = json.loads((folder / "metrics.json").read_text())["test"]["OA"]
        assert oa == sum(r["class"] == r["predicted"] for r in test) / 4
    pr = runner.invoke(app, ["predict", str(ft), str(data), "--out", str(tmp_path / "pred")])
    assert pr.exit_code == 0, pr.output
    with open(tmp_path / "pred" / "predictions.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 8


def test_one_image_far_smaller_than_the_others_is_padded_to_the_training_crop_not_shrinking_it(caplog) -> None:
    from types import SimpleNamespace

    from geomed_ssl.finetune.classify import common_size

    shapes = [(16, 16, 16), (16, 16, 20), (18, 16, 16), (16, 16, 1)]  # the last: one thick slice
    dataset = SimpleNamespace(image=lambda i: (np.zeros((1, *shapes[i])), None),
                              records=[SimpleNamespace(path=f"s{i}.nii.gz") for i in range(4)])
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        assert common_size(dataset, np.arange(4)) == (16, 16, 16)
    assert "1 training image(s) are under half the others' size along a side (e.g. 's3.nii.gz': 16x16x1 as" \
        in caplog.text
    assert common_size(dataset, np.arange(3)) == (16, 16, 16)  # sizes alike: the smallest, as before
    shapes[:2] = [(96, 96, 96), (96, 96, 40)]  # two images: each against the other
    assert common_size(dataset, np.arange(2)) == (96, 96, 96)


def test_images_csv_goes_when_the_metrics_next_come_without_one(tmp_path: Path) -> None:
    from geomed_ssl.finetune.metrics import write_metrics

    results = {"test": {"confusion": [[1, 0], [0, 1]]}}
    write_metrics(tmp_path, results, ["a", "b"], [("file", "split", "class", "predicted"),
                                                  ("x.nii.gz", "test", "a", "a"), ("y.nii.gz", "test", "b", "b")])
    assert (tmp_path / "images.csv").read_text().splitlines()[0] == "file,split,class,predicted"
    write_metrics(tmp_path, results, ["a", "b"])  # metrics without a table: no stale table beside them
    assert not (tmp_path / "images.csv").exists() and (tmp_path / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "metrics.json"]  # no temporary left


def test_a_full_fine_tune_pads_a_thin_training_image_to_the_others_crop(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for label, name in enumerate(("a", "b")):
        (tmp_path / "classes" / name).mkdir(parents=True)
        for i, depth in enumerate((16, 16, 16, 1 if label else 16)):
            vol = rng.normal(2.0 * label, 1.0, (16, 16, depth)).astype(np.float32)
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "classes" / name / f"{name}{i}.nii.gz"))
    sets = [*TINY, "data.patch_size=16", "finetune.max_steps=2", "finetune.warmup_steps=1", "finetune.batch_size=4"]
    result = runner.invoke(app, ["finetune", "classify", "recipes/mae_mri.yaml", "--encoder", "none", "--data",
                                 str(tmp_path / "classes"), "--out", str(tmp_path / "ft"), "--label-fraction", "0.99",
                                 "--full", *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    assert "are padded to the 16x16x16 crop" in result.output
