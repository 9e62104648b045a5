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
from geomed_ssl.labels.sampling import split_images
from geomed_ssl.labels.subjects import subject_units
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
    assert '"data.channels=[Flair_subtrMeanDivStd.nii.gz,T1c_subtrMeanDivStd.nii.gz]"' in caplog.text
    assert "6 folders hold one subject's images" in caplog.text


@pytest.mark.parametrize("paths, units, globs", [
    ([f"h/sub-{s:02d}/anat/sub-{s:02d}_{q}.nii.gz" for s in (1, 2, 3) for q in ("T1w", "T2w")],
     [0, 0, 2, 2, 4, 4], "*_T1w.nii.gz,*_T2w.nii.gz"),  # BIDS: the subject in the names, T1 / T2 apart
    ([f"h/BraTS20_{s:03d}/BraTS20_{s:03d}_{q}.nii.gz" for s in (1, 2) for q in ("flair", "t1", "t1ce", "t2")],
     [0, 0, 0, 0, 4, 4, 4, 4], "*_flair.nii.gz,*_t1.nii.gz,*_t1ce.nii.gz,*_t2.nii.gz"),  # globs that match once
    ([f"h/p{s}/p{s}_{q}.nii.gz" for s in (1, 2) for q in ("flair", "t1", "t2")],
     [0, 0, 0, 3, 3, 3], "*_flair.nii.gz,*_t1.nii.gz,*_t2.nii.gz"),  # the subject's number is a sequence's digit
    ([f"h/s{s}/s{s}_{q}.nii.gz" for s in (1, 2, 3) for q in ("flair", "t1", "t1ce", "t2") if (s, q) != (3, "t2")],
     [0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8], "*_flair.nii.gz,*_t1.nii.gz,*_t1ce.nii.gz,*_t2.nii.gz"),  # one missing
    (["h/p1/Flair.nii.gz", "h/p1/T1c.nii.gz", "h/p2/flair.nii.gz", "h/p2/t1c.nii.gz"], [0, 0, 2, 2],
     "Flair.nii.gz,T1c.nii.gz"),  # names spelled in other cases
    ([f"h/case{s}_{q}.nii.gz" for s in (1, 2, 3) for q in ("t1", "t2")], [0, 0, 2, 2, 4, 4],
     "*_t1.nii.gz,*_t2.nii.gz"),  # side by side in the class folder, named by case
    ([f"h/sub-{s:02d}_{q}.nii" for s in (1, 2) for q in ("FLAIR", "T1w", "T2w")] + ["h/sub-03_T1w.nii"],
     [0, 0, 0, 3, 3, 3, 6], "*_FLAIR.nii,*_T1w.nii,*_T2w.nii"),  # BIDS names; a case missing sequences
    ([f"h/case_{s:03d}_{c:04d}.nii.gz" for s in range(3) for c in range(2)], [0, 0, 2, 2, 4, 4],
     "*_0000.nii.gz,*_0001.nii.gz"),  # nnU-Net's channels
    (["h/case1_t1.nii.gz", "h/case1_t2.nii.gz", "l/case2_T1.nii.gz", "l/case2_T2.nii.gz"], [0, 0, 2, 2],
     "*_t1.nii.gz,*_t2.nii.gz"),  # one case in each class folder
    ([f"h/OAS1_{s:04d}_MR{k}.nii" for s in (1, 2) for k in (1, 2)] + ["h/OAS1_0006_MR1.nii", "h/OAS1_0006_MR2.nii",
                                                                       "h/OAS1_0006_MR3.nii"],
     [0, 0, 2, 2, 4, 4, 4], "*_MR1.nii,*_MR2.nii"),  # numbered sessions; one subject with a further one
    ([f"h/p{s}/case_{s:03d}_{c:04d}.nii.gz" for s in (1, 2) for c in range(2)], [0, 0, 2, 2],
     "case_*_0000.nii.gz,case_*_0001.nii.gz"),  # nnU-Net's channels, a folder per case
])
def test_subject_names_and_numbers_in_the_file_names_still_group(paths, units, globs, caplog) -> None:
    forget_said()
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        assert subject_units(paths, np.zeros(len(paths), int), ["h"]).tolist() == units
    assert f'"data.channels=[{globs}]"' in caplog.text


@pytest.mark.parametrize("paths, labels, names", [
    (["Forest/1.nii.gz", "Forest/2.nii.gz", "River/1.nii.gz", "River/2.nii.gz"], [0, 0, 1, 1], None),  # classes
    (["Fore\u0302t/1.nii", "Fore\u0302t/2.nii", "R/1.nii", "R/2.nii"], [0, 0, 1, 1], ["For\u00eat", "R"]),  # NFD
    ([f"{c}/scans/{i:03d}.nii.gz" for c in ("h", "l") for i in range(6)], [0] * 6 + [1] * 6, None),  # numbered
    ([f"h/site{s}/case{i}.nii.gz" for s in "AB" for i in range(4)], [0] * 8, None),  # sites of numbered cases
    ([f"h/site{s}/patient{i}.nii.gz" for s in "AB" for i in range(4)], [0] * 8, None),  # a t before the number
    ([f"h/site{s}/pt{i}.nii.gz" for s in "AB" for i in range(4)], [0] * 8, None),
    ([f"{c}/imagesTr/case_{i}_0000.nii.gz" for c in ("h", "l") for i in range(3)], [0] * 3 + [1] * 3, None),
    (["h/p1/a.nii.gz", "h/p1/b.nii.gz", "h/p2/c.nii.gz", "h/p2/d.nii.gz"], [0, 0, 0, 0], None),  # no kind repeats
    (["h/p1/scan1.nii.gz", "h/p1/scan2.nii.gz", "h/p2/scan1.nii.gz"], [0, 0, 0], None),  # another set of kinds
    ([f"h/site{s}_{i:03d}.nii.gz" for s in "AB" for i in range(3)], [0] * 6, None),  # cases numbered by site
    ([f"h/site{s}_case{i}.nii.gz" for s in "AB" for i in range(3)], [0] * 6, None),
    (["h/brain_t1.nii.gz", "h/brain_t2.nii.gz", "h/knee_pd.nii.gz"], [0] * 3, None),  # no case's kinds recur
    (["h/case1_t1.nii.gz", "l/case1_t2.nii.gz", "h/case2_t1.nii.gz", "l/case2_t2.nii.gz"], [0, 1, 0, 1], None),
    ([f"{c}/img_{i:04d}.nii.gz" for c in ("h", "l") for i in range(6)], [0] * 6 + [1] * 6, None),  # numbered scans
    ([f"{c}/b{b}/img_{i:04d}.nii.gz" for c in ("h", "l") for b in (1, 2) for i in range(3)], [0] * 6 + [1] * 6,
     None),  # numbered scans in batch folders
    ([f"{c}/scan_tp{i}.nii.gz" for c in ("h", "l") for i in range(1, 6)], [0] * 5 + [1] * 5, ["h", "l"]),  # per class
    ([f"h/site{s}/MR{i}.nii" for s in "AB" for i in range(1, 5)], [0] * 8, None),  # per site, no subject named
    ([f"{c}/{q}_{i:04d}.nii.gz" for c in ("h", "l") for q in ("flair", "t1") for i in range(4)], [0] * 8 + [1] * 8,
     ["h", "l"]),  # a sequence's scans numbered, not nnU-Net's cases
])
def test_folders_that_are_not_one_subjects_sequences_are_not_grouped(paths, labels, names) -> None:
    assert subject_units(paths, np.array(labels), names or ["Forest", "River"]).tolist() == list(range(len(paths)))


@pytest.mark.parametrize("paths, labels, units", [
    ([f"h/sub-{s:02d}/ses-{k}/anat/sub-{s:02d}_ses-{k}_T1w.nii.gz" for s in (1, 2, 3) for k in (1, 2)], [0] * 6,
     [0, 0, 2, 2, 4, 4]),  # one scan per session
    ([f"h/sub-{s}/ses-{k}/anat/sub-{s}_ses-{k}_{q}.nii.gz" for s in "AB" for k in (1, 2) for q in ("T1w", "T2w")],
     [0] * 8, [0] * 4 + [4] * 4),  # sequences and sessions
    ([f"h/sub-{s:02d}_ses-{k}_{q}.nii" for s in (1, 2) for k in (1, 2) for q in ("T1w", "FLAIR")], [0] * 8,
     [0] * 4 + [4] * 4),  # side by side
    (["h/sub-01/ses-1/sub-01_T1w.nii", "l/sub-01/ses-2/sub-01_T1w.nii"], [0, 1], [0, 1]),  # in two classes: apart
    (["h/siteA/sub-01/sub-01_T1w.nii", "h/siteB/sub-01/sub-01_T1w.nii", "h/sub-01x.nii", "h/sub-01x2_T1w.nii"],
     [0] * 4, [0, 1, 2, 3]),  # two sites' sub-01; names that are no BIDS subject's
    ([f"{c}/p{i}.nii.gz" for c in ("acute", "sub-acute") for i in range(4)], [0] * 4 + [1] * 4,
     list(range(8))),  # a class folder named sub-...: its files are no subject's
    ([f"/data/sub-study2/{c}/p{i}.nii.gz" for c in ("AD", "CN") for i in range(3)], [0] * 3 + [1] * 3,
     list(range(6))),
    ([f"{c}/{c}_{i:03d}.nii.gz" for c in ("acute", "sub-acute") for i in range(3)], [0] * 3 + [1] * 3,
     list(range(6))),  # files numbered in a class named sub-...: no BIDS names
    ([f"{c}/{c}_{n}.nii.gz" for c in ("acute", "sub-acute") for n in ("p001", "case12", "anna")], [0] * 3 + [1] * 3,
     list(range(6))),  # files named after their class: the class's, not a subject's
    ([f"{c}/{c}_{n}.nii.gz" for c in ("acute", "chronic") for n in "ABC"], [0] * 3 + [1] * 3, list(range(6))),
])
def test_the_sessions_of_one_bids_subject_train_or_test_together(paths, labels, units, caplog) -> None:
    forget_said()
    names = ["h", "l", "acute", "sub-acute", "chronic"]  # the class folders
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        assert subject_units(paths, np.array(labels), names).tolist() == units
    assert ("BIDS subjects have images in several" in caplog.text) == (units != list(range(len(paths))))


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
    assert "data.channels=[Flair_subtrMeanDivStd.nii.gz,T1c_subtrMeanDivStd.nii.gz]" in result.output
    with np.load(tmp_path / "ft" / "labels_used.npz") as z:
        paths = json.loads(str(z["meta"]))["paths"]
        trained = {Path(paths[i]).parent.name for i in z["train_index"]}
        tested = {Path(paths[i]).parent.name for i in z["test_index"]}
    assert len(trained) == 2 and len(tested) == 4 and not trained & tested
    suggested = "data.channels=[Flair_subtrMeanDivStd.nii.gz,T1c_subtrMeanDivStd.nii.gz]"  # the warning's
    stacked = runner.invoke(app, ["finetune", "classify", "recipes/mae_mri.yaml", "--encoder", "none", "--data",
                                  str(data), "--out", str(tmp_path / "ft2"), "--labels-per-class", "1",
                                  "--linear-probe", *[a for s in [*sets, suggested] for a in ("--set", s)]])
    assert stacked.exit_code == 0, stacked.output
    assert "subject's images" not in stacked.output  # one image per subject: nothing to group
    pr = runner.invoke(app, ["predict", str(tmp_path / "ft2"), str(data), "--out", str(tmp_path / "pred")])
    assert pr.exit_code == 0, pr.output
    with open(tmp_path / "pred" / "predictions.csv", newline="") as fh:  # named as the classes CSV names them
        assert sorted(Path(r["file"]).name for r in csv.DictReader(fh)) == [f"p{i}" for i in range(1, 7)]
    with open(tmp_path / "pred" / "predictions.csv", newline="") as fh:  # as an earlier version named the stacks:
        rows = list(csv.DictReader(fh))  # by their first channel file
    with open(tmp_path / "pred" / "predictions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "file": str(Path(r["file"]) / "Flair_subtrMeanDivStd.nii.gz")} for r in rows)
        writer.writerow({**rows[0], "file": str(Path(rows[0]["file"]) / "Flair_subtrMeanDivStd.nii.gz"),
                         "model": "another model, of single files"})
    again = runner.invoke(app, ["predict", str(tmp_path / "ft2"), str(data), "--out", str(tmp_path / "pred")])
    assert again.exit_code == 0, again.output
    with open(tmp_path / "pred" / "predictions.csv", newline="") as fh:  # replaced, not kept beside the new rows
        names = sorted(Path(r["file"]).name for r in csv.DictReader(fh))  # (another model's row stays)
    assert names == ["Flair_subtrMeanDivStd.nii.gz", *[f"p{i}" for i in range(1, 7)]]
    cmp = runner.invoke(app, ["compare", "none", "--recipe", "recipes/mae_mri.yaml", "--data", str(data), "--out",
                              str(tmp_path / "cmp"), "--labels-per-class", "1", "--seeds", "0,1", "--protocol",
                              "linear", "--no-baselines", *[a for s in sets for a in ("--set", s)]])
    assert cmp.exit_code == 0, cmp.output
    for seed in (0, 1):  # compare's draws hold whole subjects too
        with np.load(tmp_path / "cmp" / "selections" / f"k1_seed{seed}.npz") as z:
            paths = json.loads(str(z["meta"]))["paths"]
            trained = {Path(paths[i]).parent.name for i in z["train_index"]}
            tested = {Path(paths[i]).parent.name for i in z["test_index"]}
        assert len(trained) == 2 and len(tested) == 4 and not trained & tested
    assert "subjects per class across" in (tmp_path / "cmp" / "summary.md").read_text()  # what the budget counts
    with np.load(tmp_path / "cmp" / "selections" / "k1_seed0.npz") as z:  # as a draw made before subjects grouped:
        saved = dict(z)
    moved = int(saved["train_index"][0])  # one subject's volume moved to the test side, its other volume trained
    saved["train_index"], saved["test_index"] = saved["train_index"][1:], np.sort([*saved["test_index"], moved])
    np.savez(tmp_path / "cmp" / "selections" / "k1_seed0.npz", **saved)
    again = runner.invoke(app, ["compare", "none", "--recipe", "recipes/mae_mri.yaml", "--data", str(data), "--out",
                                str(tmp_path / "cmp"), "--labels-per-class", "1", "--seeds", "0,1", "--protocol",
                                "linear", "--no-baselines", *[a for s in sets for a in ("--set", s)]])
    assert again.exit_code == 2 and "split a subject's volumes" in again.output, again.output


def test_finetune_classify_on_cases_side_by_side_trains_whole_cases_and_the_suggested_stack_reads(tmp_path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "flat"
    for c, cases in (("healthy", (1, 2, 3)), ("lesion", (4, 5, 6))):
        (data / c).mkdir(parents=True)
        for i in cases:
            for seq in ("flair", "t1"):
                vol = rng.normal(float(c == "lesion"), 1.0, (16, 16, 16)).astype(np.float32)
                nib.save(nib.Nifti1Image(vol, np.eye(4)), str(data / c / f"case{i}_{seq}.nii.gz"))
    sets = [*TINY, "data.patch_size=16", "finetune.max_steps=2", "finetune.warmup_steps=1", "finetune.batch_size=2",
            "labels.seed=3"]
    args = ["finetune", "classify", "recipes/mae_mri.yaml", "--encoder", "none", "--data", str(data),
            "--labels-per-class", "1", "--linear-probe", *[a for s in sets for a in ("--set", s)]]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "ft")])
    assert result.exit_code == 0, result.output
    assert "6 subjects' images lie side by side" in result.output
    assert '"data.channels=[*_flair.nii.gz,*_t1.nii.gz]"' in result.output
    with np.load(tmp_path / "ft" / "labels_used.npz") as z:
        paths = json.loads(str(z["meta"]))["paths"]
        trained = {Path(paths[i]).name.split("_")[0] for i in z["train_index"]}
        tested = {Path(paths[i]).name.split("_")[0] for i in z["test_index"]}
    assert len(trained) == 2 and len(tested) == 4 and not trained & tested
    stacked = runner.invoke(app, [*args, "--out", str(tmp_path / "ft2"), "--set",
                                  "data.channels=[*_flair.nii.gz,*_t1.nii.gz]"])  # as the warning suggests
    assert stacked.exit_code == 0, stacked.output
    assert "side by side" not in stacked.output
    with np.load(tmp_path / "ft2" / "labels_used.npz") as z:
        assert len(json.loads(str(z["meta"]))["paths"]) == 6  # one 2-channel image per case
