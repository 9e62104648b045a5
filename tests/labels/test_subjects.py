"""A subject's images in a class-folder dataset (one folder per subject, a volume per sequence) train or test
together: split apart, the model would be scored on subjects it trained on."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from geomed_ssl.cli import app
from geomed_ssl.labels.sampling import split_images, subject_units
from geomed_ssl.once import forget_said
from tests.conftest import TINY

runner = CliRunner()
BRATS = [f"{c}/p{i}/{seq}.nii.gz" for c, subjects in (("healthy", (1, 2, 3)), ("lesion", (4, 5, 6)))
         for i in subjects for seq in ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd")]
BRATS_LABELS = np.repeat([0, 1], 6)


def test_the_sequences_of_one_subject_folder_share_a_unit_and_the_warning_says_how_to_stack_them(caplog) -> None:
    forget_said()
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        units = subject_units(BRATS, BRATS_LABELS, ["healthy", "lesion"])
    assert units.tolist() == [0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10]
    assert '"data.channels=[*Flair_subtrMeanDivStd*,*T1c_subtrMeanDivStd*]"' in caplog.text
    assert "6 folders hold one subject's images" in caplog.text


def test_bids_names_carry_the_subject_number_and_still_group() -> None:
    paths = [f"h/sub-{s:02d}/anat/sub-{s:02d}_{seq}.nii.gz" for s in (1, 2, 3) for seq in ("T1w", "T2w")]
    assert subject_units(paths, np.zeros(6, int), ["h"]).tolist() == [0, 0, 2, 2, 4, 4]


@pytest.mark.parametrize("paths, labels", [
    (["Forest/1.nii.gz", "Forest/2.nii.gz", "River/1.nii.gz", "River/2.nii.gz"], [0, 0, 1, 1]),  # class folders
    (["h/p1/a.nii.gz", "h/p1/b.nii.gz", "h/p2/c.nii.gz", "h/p2/d.nii.gz"], [0, 0, 0, 0]),  # no kind repeats
    (["h/p1/scan1.nii.gz", "h/p1/scan2.nii.gz", "h/p2/scan1.nii.gz"], [0, 0, 0]),  # p2 has another set of kinds
    (["h/p1/a.nii.gz", "h/p1/b.nii.gz", "l/p2/a.nii.gz", "l/p2/b.nii.gz", "l/p2/c.nii.gz"], [0, 0, 1, 1, 1]),
])
def test_folders_that_are_not_one_subjects_sequences_are_not_grouped(paths, labels) -> None:
    assert subject_units(paths, np.array(labels), ["Forest", "River"]).tolist() == list(range(len(paths)))


@pytest.mark.parametrize("per_class, fraction", [(1, None), (2, None), (None, 0.5)])
def test_a_split_by_subject_never_puts_one_subjects_images_on_both_sides(per_class, fraction) -> None:
    units = subject_units(BRATS, BRATS_LABELS, ["healthy", "lesion"])
    for seed in range(6):
        train, test, notes = split_images(BRATS_LABELS, per_class, fraction, seed, ["healthy", "lesion"], units=units)
        assert not set(units[train]) & set(units[test])
        assert len(train) + len(test) == 12
        if per_class:  # the budget counts subjects: k subjects of each class, 2 images each (at most half of 3)
            assert len(train) == 2 * 2 * min(per_class, 1)
    _, _, notes = split_images(BRATS_LABELS, 2, None, 0, ["healthy", "lesion"], units=units)
    assert notes == [f"class '{c}': 3 labelled subjects, took 1 instead of 2 so half stay for testing"
                     for c in ("healthy", "lesion")]


def test_finetune_classify_on_subject_folders_trains_and_tests_whole_subjects(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "subjects"
    for path, label in zip(BRATS, BRATS_LABELS):
        (data / path).parent.mkdir(parents=True, exist_ok=True)
        vol = rng.normal(float(label), 1.0, (16, 16, 16)).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(data / path))
    sets = [*TINY, "data.patch_size=16", "finetune.max_steps=2", "finetune.warmup_steps=1", "finetune.batch_size=2",
            "labels.seed=3"]
    result = runner.invoke(app, ["finetune", "classify", "recipes/mae_mri.yaml", "--encoder", "none", "--data",
                                 str(data), "--out", str(tmp_path / "ft"), "--labels-per-class", "1", "--linear-probe",
                                 *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    assert "data.channels=[*Flair_subtrMeanDivStd*,*T1c_subtrMeanDivStd*]" in result.output
    with np.load(tmp_path / "ft" / "labels_used.npz") as z:
        paths = json.loads(str(z["meta"]))["paths"]
        trained = {Path(paths[i]).parent.name for i in z["train_index"]}
        tested = {Path(paths[i]).parent.name for i in z["test_index"]}
    assert len(trained) == 2 and len(tested) == 4 and not trained & tested
    stacked = runner.invoke(app, ["finetune", "classify", "recipes/mae_mri.yaml", "--encoder", "none", "--data",
                                  str(data), "--out", str(tmp_path / "ft2"), "--labels-per-class", "1", "--linear-probe",
                                  *[a for s in [*sets, "data.channels=[*Flair*,*T1c*]"] for a in ("--set", s)]])
    assert stacked.exit_code == 0, stacked.output
    assert "subject's images" not in stacked.output  # one image per subject: nothing to group
    pr = runner.invoke(app, ["predict", str(tmp_path / "ft2"), str(data), "--out", str(tmp_path / "pred")])
    assert pr.exit_code == 0, pr.output
    with open(tmp_path / "pred" / "predictions.csv", newline="") as fh:  # named as the classes CSV names them
        assert sorted(Path(r["file"]).name for r in csv.DictReader(fh)) == [f"p{i}" for i in range(1, 7)]
