"""``geomed-ssl compare`` end to end through the CLI (in-process): files, one row per run, resume, volumes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from geomed_ssl.cli import app
from geomed_ssl.compare.results import COLUMNS
from tests.compare.conftest import sets

runner = CliRunner()


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def without_seconds(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def compare_args(encoders: list[str], scene: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    images, labels = scene
    return ["compare", *encoders, "--images", str(images), "--labels", str(labels), "--out", str(out),
            "--labels-per-class", "3", "--seeds", "0,1", "--protocol", "linear,knn", *extra, *sets()]


def test_compare_two_encoders_and_none_writes_every_row_and_resumes_only_missing_ones(
        scene, run_dir: Path, exported: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = compare_args([str(run_dir), str(exported)], scene, out)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("results.csv", "summary.md", "curve.png", "config.yaml", "selections/k3_seed0.npz",
                 "selections/k3_seed1.npz", "encoder_none_seed0/model.safetensors",
                 "encoder_none_seed1/model.safetensors"):
        assert (out / name).is_file(), name
    w0, w1 = (load_file(out / f"encoder_none_seed{s}" / "model.safetensors") for s in (0, 1))
    assert w0.keys() == w1.keys() and any(not torch.equal(w0[k], w1[k]) for k in w0)  # a new init per seed
    rows = read(out / "results.csv")
    assert tuple(rows[0]) == COLUMNS
    keys = {(r["encoder"], r["protocol"], r["seed"]) for r in rows}
    expected = {(e, p, s) for e in (str(run_dir), str(exported), "none") for p in ("linear", "knn") for s in "01"}
    expected |= {("rf", "forest", s) for s in "01"} | {("random_conv", "linear", s) for s in "01"}
    expected |= {("none", "finetune", s) for s in "01"}  # none is always fine-tuned too
    assert keys == expected and len(rows) == len(expected)
    for r in rows:
        assert r["labels_per_class"] == "3" and r["label_fraction"] == ""
        assert all(0 <= float(r[k]) <= 1 for k in ("oa", "aa", "miou", "dice"))
    summary = (out / "summary.md").read_text()
    assert "transductive" not in summary  # said only when propagate ran
    assert "labelled pixels per class" in summary and "pooled over" not in summary  # one scene: nothing to pool
    assert "Pretrained − random initialisation" in summary and str(exported) in summary
    assert "other architecture" not in summary + result.output  # the two encoders are one architecture
    against = summary.split("## Against the strongest baseline")[1]
    rows_against = [line.split("|")[1].strip() for line in against.splitlines() if line.startswith("| ")]
    assert rows_against == ["encoder", str(run_dir), str(exported), "none"]  # pretrained first, none last
    assert "| rf | forest" in result.output  # the table is printed, and the paired differences
    assert "pretrained − none, paired by seed" in result.output and "against the strongest baseline" in result.output

    kept = rows[:3] + rows[9:]  # a compare killed after some rows, or rows deleted by hand
    with (out / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(kept)
    saved = (out / "config.yaml").read_text()  # as a version without train.keep_checkpoints wrote it:
    (out / "config.yaml").write_text("".join(line for line in saved.splitlines(keepends=True)
                                             if "keep_checkpoints" not in line))  # a setting added since
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    rerun = read(out / "results.csv")
    assert rerun[: len(kept)] == kept  # finished rows untouched
    by_key = {tuple(r[k] for k in COLUMNS[:5]): r for r in without_seconds(rerun)}
    assert len(rerun) == len(rows)
    assert [by_key[tuple(r[k] for k in COLUMNS[:5])] for r in without_seconds(rows)] == without_seconds(rows)

    other = runner.invoke(app, [*args, "--split", "blocks", "--set", "labels.block_size=16"])
    assert other.exit_code == 2 and "made with --split 'random', not 'blocks'" in other.output  # never mixed
    assert read(out / "results.csv") == rerun


def labelled_volumes(root: Path, n: int = 2, size: int = 24, first: int = 1) -> tuple[Path, Path]:
    """``n`` smooth single-channel NIfTI volumes and their labels (``first`` below the median intensity, one more
    above)."""
    import nibabel as nib

    rng = np.random.default_rng(1)
    (root / "vols").mkdir()
    (root / "labels").mkdir()
    zz, yy, xx = np.mgrid[0:size, 0:size, 0:size].astype(np.float32)
    for i in range(n):
        c = rng.uniform(6, size - 6, size=3)
        vol = 100 + 500 * np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2) / 50.0)
        lab = (vol > np.median(vol)).astype(np.uint8) + first
        affine = np.diag([1.5, 1.5, 1.5, 1.0])
        nib.save(nib.Nifti1Image(vol.astype(np.float32), affine), str(root / "vols" / f"s{i}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(root / "labels" / f"s{i}.nii.gz"))
    return root / "vols", root / "labels"


def test_device_settings_for_pretraining_are_said_before_the_runs(scene, run_dir: Path, tmp_path: Path) -> None:
    """compare's fine-tunes run in one process: with train.devices=2 that was said when the first fine-tune began,
    after every probe had run."""
    out = tmp_path / "cmp"
    args = compare_args([str(run_dir), "none"], scene, out, "--no-baselines", "--set", "train.devices=2", "--set",
                        "train.strategy=ddp")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    said = [i for i, line in enumerate(lines) if "fine-tuning runs in one process" in line]
    assert len(said) == 1 and "train.devices=2, train.strategy=ddp" in lines[said[0]]
    assert said[0] < min(i for i, line in enumerate(lines) if line.startswith("run 1/"))
    assert len([r for r in read(out / "results.csv") if r["protocol"] == "finetune"]) == 2


def test_an_encoder_of_another_architecture_than_none_is_marked_in_the_paired_differences(
        scene, exported: Path, tmp_path: Path) -> None:
    """`none` is the first encoder's architecture: a second encoder with larger tokens is warned about and its
    difference with `none` marked as mixing architecture and pretraining, in the summary and the printed lines."""
    from tests.embeddings.test_extract import make_encoder

    coarse = make_encoder(scene[0], tmp_path / "coarse" / "encoder", patch=8)
    out = tmp_path / "cmp"
    result = runner.invoke(app, compare_args([str(exported), str(coarse)], scene, out, "--seeds", "0",
                                             "--protocol", "linear", "--no-baselines", "--recipe",
                                             "recipes/mae_sentinel2.yaml"))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert f"'{coarse}' is another architecture than the first encoder" in said
    summary = (out / "summary.md").read_text()
    assert f"| {coarse} (other architecture) | linear |" in summary and f"| {exported} | linear |" in summary
    assert "the difference mixes architecture and pretraining" in " ".join(summary.split())
    assert f"| {coarse} (other architecture) | linear |" in result.output


def test_compare_on_volumes_scores_dice_with_none_and_baselines(tmp_path: Path) -> None:
    from tests.conftest import TINY

    volume_dir, labels = labelled_volumes(tmp_path)
    out = tmp_path / "cmp"
    tiny = [a for item in TINY if not item.startswith("method.") for a in ("--set", item)]
    result = runner.invoke(app, ["compare", "none", "--recipe", "recipes/mae_mri.yaml", "--images", str(volume_dir),
                                 "--labels", str(labels), "--out", str(out), "--labels-per-class", "4",
                                 "--seeds", "0", "--protocol", "linear,propagate", *tiny,
                                 *sets("data.patch_size=16", "finetune.probe_nodes=2000")])
    assert result.exit_code == 0, result.output
    rows = read(out / "results.csv")
    assert {(r["encoder"], r["protocol"]) for r in rows} == {("none", "linear"), ("none", "propagate"),
                                                            ("none", "finetune"), ("rf", "forest"),
                                                            ("random_conv", "linear")}
    assert "dice, one label draw (seed 0)" in result.output  # one seed: no spread to show
    rf_line = next(line for line in result.output.splitlines() if line.startswith("| rf |"))
    assert "±" not in rf_line  # one seed: its value, no spread to show
    assert "`propagate` is transductive" in (out / "summary.md").read_text()
    assert "background" not in (out / "summary.md").read_text()  # labels 1 and 2: every class counts
    rf = next(r for r in rows if r["encoder"] == "rf")
    assert float(rf["dice"]) > 0.7  # classes are intensity thresholds: the spectra alone separate them


def test_compare_with_the_images_split_scores_held_out_subjects_only(tmp_path: Path) -> None:
    from geomed_ssl.labels.sampling import LabelSelection
    from tests.conftest import TINY

    volume_dir, labels = labelled_volumes(tmp_path, n=4)
    out = tmp_path / "cmp"
    tiny = [a for item in TINY if not item.startswith("method.") for a in ("--set", item)]
    result = runner.invoke(app, ["compare", "none", "--recipe", "recipes/mae_mri.yaml", "--images", str(volume_dir),
                                 "--labels", str(labels), "--out", str(out), "--label-fraction", "0.01",
                                 "--seeds", "0,1", "--split", "images", "--protocol", "linear,propagate",
                                 "--baselines", "rf", *tiny, *sets("data.patch_size=16", "finetune.probe_nodes=500")])
    assert result.exit_code == 0, result.output
    rows = read(out / "results.csv")
    assert {(r["encoder"], r["protocol"]) for r in rows} == {("none", "linear"), ("none", "propagate"),
                                                            ("none", "finetune"), ("rf", "forest")}
    assert len(rows) == 8 and all(0 <= float(r["dice"]) <= 1 for r in rows)
    for seed in (0, 1):
        sel = LabelSelection.load_npz(out / "selections" / f"f0.01_seed{seed}.npz")
        trained, tested = set(sel.train_file.tolist()), set(sel.test_file.tolist())
        assert len(tested) == 2 and trained and not trained & tested  # two subjects only ever tested
        assert sel.test_value.size == 2 * 24 ** 3  # every voxel of the held-out subjects
    summary = (out / "summary.md").read_text()
    assert "images split" in summary and "## Held-out images" in summary
    assert "pooled over its test images" in " ".join(summary.split())  # two test subjects a run
    held = [line for line in summary.splitlines() if line.startswith("- seed ")]
    assert len(held) == 2 and all(line.count(".nii.gz") == 2 for line in held)  # per seed, its two test subjects
    refused = runner.invoke(app, ["compare", "none", "--recipe", "recipes/mae_mri.yaml", "--data", str(volume_dir),
                                  "--out", str(tmp_path / "cls"), "--split", "images"])
    assert refused.exit_code == 2 and "class folders (--data) are split by image already" in refused.output


def test_a_volume_dice_leaves_out_the_background_label_0(tmp_path: Path) -> None:
    from tests.conftest import TINY

    volume_dir, labels = labelled_volumes(tmp_path, first=0)  # 0 = background, 1 = the structure
    out = tmp_path / "cmp"
    tiny = [a for item in TINY if not item.startswith("method.") for a in ("--set", item)]
    result = runner.invoke(app, ["compare", "none", "--recipe", "recipes/mae_mri.yaml", "--images", str(volume_dir),
                                 "--labels", str(labels), "--out", str(out), "--labels-per-class", "4",
                                 "--seeds", "0", "--protocol", "linear", "--no-baselines", "--keep-finetuned",
                                 *tiny, *sets("data.patch_size=16", "labels.ignore_value=null")])
    assert result.exit_code == 0, result.output
    tuned = next(r for r in read(out / "results.csv") if r["protocol"] == "finetune")
    metrics = json.loads((out / "finetuned_none_k4_seed0" / "metrics.json").read_text())
    assert [c["value"] for c in metrics["classes"]] == [0, 1]
    assert float(tuned["dice"]) == pytest.approx(metrics["test"]["per_class_dice"][1], abs=2e-6)
    assert json.loads((out / "compare.json").read_text())["probe_rules"] == 3  # class folders: 4
    assert "other than the background, label value 0" in (out / "summary.md").read_text()


def test_compare_on_class_folders_takes_a_pretraining_run_whose_recipe_names_a_segmentation_head(
        run_dir: Path, tmp_path: Path) -> None:
    from tests.conftest import write_class_folders

    classes = write_class_folders(tmp_path / "classes", ["water", "field", "forest"], per_class=4)
    out = tmp_path / "cmp"
    short = ["--set", "finetune.max_steps=10"]  # random init's fine-tune (always run) at the recipe's 500 took 20 s
    result = runner.invoke(app, ["compare", str(run_dir), "--data", str(classes), "--out", str(out),
                                 "--labels-per-class", "2", "--seeds", "0", "--protocol", "linear,propagate",
                                 "--baselines", "band_stats", *short])
    assert result.exit_code == 0, result.output
    rows = read(out / "results.csv")
    assert {(r["encoder"], r["protocol"]) for r in rows} >= {(str(run_dir), "linear"), ("none", "linear"),
                                                               (str(run_dir), "propagate"), ("band_stats", "linear")}
    assert all(0.0 <= float(r["oa"]) <= 1.0 for r in rows)
    assert json.loads((out / "compare.json").read_text())["probe_rules"] == 4  # image features hold the CLS token
    # from Python the recipe may be a Recipe, as for pretrain and finetune: the same rows
    from geomed_ssl.compare.options import Budget, CompareOptions
    from geomed_ssl.compare.run import run_compare
    from geomed_ssl.config import load_recipe

    recipe = load_recipe(run_dir / "config.yaml")
    recipe.finetune.max_steps = 10
    again = run_compare(CompareOptions([str(run_dir)], [Budget(per_class=2)], [0], protocols=["linear"],
                                       baselines=[]), out=tmp_path / "cmp_py", data=classes, recipe=recipe,
                        progress=False)
    assert again is not None
    # the same images and classes as a classes CSV: the same rows
    table = tmp_path / "classes.csv"
    table.write_text("image,class\n" + "".join(f"{p.relative_to(tmp_path)},{p.parent.name}\n"
                                                for p in sorted(classes.glob("*/*.tif"))))
    by_table = runner.invoke(app, ["compare", str(run_dir), "--data", str(table), "--out", str(tmp_path / "cmp_csv"),
                                   "--labels-per-class", "2", "--seeds", "0", "--protocol", "linear",
                                   "--baselines", "band_stats", *short])
    assert by_table.exit_code == 0, by_table.output
    linear = lambda found: {r["encoder"]: r["oa"] for r in found if r["protocol"] == "linear"}  # noqa: E731
    assert linear(read(tmp_path / "cmp_csv" / "results.csv")) == linear(rows)
    first = {(r["encoder"], r["oa"]) for r in rows if r["protocol"] == "linear" and r["encoder"] != "band_stats"}
    assert {(r["encoder"], r["oa"]) for r in read(tmp_path / "cmp_py" / "results.csv")
            if r["protocol"] == "linear"} == first


def test_a_resumed_compare_keeps_the_random_initialisation_its_earlier_rows_used(
        scene, run_dir: Path, exported: Path, tmp_path: Path) -> None:
    """``none`` of seed S is CMP_DIR/encoder_none_seed<S> once it exists (every row of that seed pairs with one
    reference, also after a torch upgrade changed what the same seed builds); another first encoder's architecture
    is refused."""
    import shutil

    out = tmp_path / "cmp"
    first = runner.invoke(app, compare_args([str(run_dir)], scene, out, "--seeds", "0", "--no-baselines",
                                            "--protocol", "linear"))
    assert first.exit_code == 0, first.output
    assert not (out / "encoder_none_seed1").exists()
    # stand-in for seed 1's random initialisation saved by an earlier run: the pretrained weights themselves
    (out / "encoder_none_seed1").mkdir()
    shutil.copy(out / "encoder_none_seed0" / "config.json", out / "encoder_none_seed1" / "config.json")
    shutil.copy(run_dir / "encoder" / "model.safetensors", out / "encoder_none_seed1" / "model.safetensors")
    more = runner.invoke(app, compare_args([str(run_dir)], scene, out, "--seeds", "0,1", "--no-baselines",
                                           "--protocol", "linear"))
    assert more.exit_code == 0, more.output
    rows = {(r["encoder"], r["protocol"], r["seed"]): r for r in read(out / "results.csv")}
    for key in ("oa", "aa", "miou"):  # the frozen none row of seed 1 read the saved weights: the same features
        assert rows[("none", "linear", "1")][key] == rows[(str(run_dir), "linear", "1")][key]
    before = (out / "results.csv").read_bytes()
    other = runner.invoke(app, compare_args([str(exported)], scene, out, "--seeds", "0,1,2", "--no-baselines",
                                            "--protocol", "linear", "--recipe", str(run_dir / "config.yaml")))
    assert other.exit_code == 2, other.output
    assert "encoder_none" in other.output and "list the same first encoder as before" in other.output
    assert (out / "results.csv").read_bytes() == before
    new_seed_only = runner.invoke(app, compare_args([str(exported)], scene, out, "--seeds", "3", "--no-baselines",
                                                    "--protocol", "linear", "--recipe", str(run_dir / "config.yaml")))
    assert new_seed_only.exit_code == 2, new_seed_only.output  # its none would pool with seeds 0 and 1's
    assert "list the same first encoder as before" in new_seed_only.output
    assert (out / "results.csv").read_bytes() == before and not (out / "encoder_none_seed3").exists()


def test_one_encoder_spelt_another_way_is_refused_and_a_folder_named_none_too(scene, run_dir: Path, tmp_path: Path,
                                                                                monkeypatch) -> None:
    """``/abs/run`` then ``run`` from its folder: the same rows twice under two names in the table and curve; a
    pretrained folder given as ``./none`` was scored as random initialisation."""
    import shutil

    out = tmp_path / "cmp"
    first = runner.invoke(app, compare_args([str(run_dir)], scene, out, "--seeds", "0", "--no-baselines",
                                            "--protocol", "linear"))
    assert first.exit_code == 0, first.output
    before = (out / "results.csv").read_bytes()
    monkeypatch.chdir(run_dir.parent)
    again = runner.invoke(app, compare_args([run_dir.name], scene, out, "--seeds", "0", "--no-baselines",
                                            "--protocol", "linear"))
    assert again.exit_code == 2 and f"give it as '{run_dir}', as before" in again.output
    assert (out / "results.csv").read_bytes() == before
    shutil.copytree(run_dir, tmp_path / "none")
    monkeypatch.chdir(tmp_path)
    named = runner.invoke(app, compare_args(["./none"], scene, tmp_path / "cmp_none", "--seeds", "0"))
    assert named.exit_code == 2 and "has the name of the random-initialisation reference" in named.output
    assert not (tmp_path / "cmp_none").exists()


def test_an_encoder_moved_since_its_rows_is_refused_before_any_row_under_its_new_name(
        scene, run_dir: Path, exported: Path, tmp_path: Path) -> None:
    """The RUN_DIR moved or renamed: the same weights under a new name would compute every row again and stand
    beside the old name's in the table; refused, naming both."""
    import shutil

    images, labels = scene
    shutil.copytree(exported, tmp_path / "encoder")
    out = tmp_path / "cmp"

    def args(enc: Path) -> list[str]:
        return ["compare", str(enc), "--images", str(images), "--labels", str(labels), "--out", str(out), "--recipe",
                str(run_dir / "config.yaml"), "--labels-per-class", "3", "--seeds", "0", "--protocol", "linear",
                "--no-baselines", *sets()]

    first = runner.invoke(app, args(tmp_path / "encoder"))
    assert first.exit_code == 0, first.output
    before = (out / "results.csv").read_bytes()
    (tmp_path / "encoder").rename(tmp_path / "moved")
    again = runner.invoke(app, args(tmp_path / "moved"))
    assert again.exit_code == 2 and "is not found from here" in again.output
    assert str(tmp_path / "encoder") in again.output and str(tmp_path / "moved") in again.output
    assert (out / "results.csv").read_bytes() == before


def test_kept_fine_tunes_of_encoders_in_same_named_folders_keep_apart(scene, exported: Path, tmp_path: Path) -> None:
    """``--keep-finetuned`` names each kept FT_DIR after its encoder's folder; two encoders in folders of one name
    (runs/a/encoder, runs/b/encoder) get a hash of their path too, so neither replaces the other's."""
    import shutil

    from geomed_ssl.compare.tuned import kept_labels

    first, second = tmp_path / "a" / "encoder", tmp_path / "b" / "encoder"
    for folder in (first, second):
        shutil.copytree(exported, folder)
    labels = kept_labels([str(first), str(second), "none", str(tmp_path / "mae"), str(tmp_path / "c" / "none")])
    assert labels["none"] == "none" and labels[str(tmp_path / "mae")] == "mae"
    assert len(set(labels.values())) == 5 and labels[str(first)].startswith("encoder-")
    assert labels[str(tmp_path / "c" / "none")].startswith("none-")  # a folder named none is not none
    out = tmp_path / "cmp"
    for encoder in (first, second):  # the second in a later run into the same folder: its name is known there
        result = runner.invoke(app, compare_args([str(encoder)], scene, out, "--seeds", "0", "--protocol",
                                                 "finetune", "--no-baselines", "--keep-finetuned", "--recipe",
                                                 "recipes/mae_sentinel2.yaml", *sets("data.patch_size=16")))
        assert result.exit_code == 0, result.output
    kept = sorted(p.name for p in out.glob("finetuned_*"))
    assert len(kept) == 3 and "finetuned_none_k3_seed0" in kept
    sources = {json.loads((out / k / "model" / "config.json").read_text()).get("encoder_source") for k in kept}
    assert {str(first), str(second)} <= sources  # the second run kept its own, beside the first's
    # random init trains every block at the full rate (layer-wise decay keeps pretrained blocks, it has none)
    from geomed_ssl.config import load_recipe

    decay = {k: load_recipe(out / k / "config.yaml").finetune.layer_decay for k in kept}
    assert decay.pop("finetuned_none_k3_seed0") == 1.0 and set(decay.values()) == {0.75}


def test_a_resumed_compare_refuses_an_encoder_whose_weights_changed(scene, run_dir: Path, exported: Path,
                                                                     tmp_path: Path) -> None:
    import shutil

    import torch

    from geomed_ssl.checkpoint import load_encoder, save_encoder

    enc_dir = tmp_path / "encoder"
    shutil.copytree(exported, enc_dir)
    out = tmp_path / "cmp"
    images, labels = scene
    args = ["compare", str(enc_dir), "--images", str(images), "--labels", str(labels), "--out", str(out),
            "--recipe", str(run_dir / "config.yaml"), "--labels-per-class", "3", "--seeds", "0", "--protocol",
            "linear", "--no-baselines", *sets()]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    rows = read(out / "results.csv")
    assert runner.invoke(app, args).exit_code == 0  # the same weights: resumed, nothing to do
    assert read(out / "results.csv") == rows

    encoder = load_encoder(enc_dir)
    with torch.no_grad():
        encoder.patch_embed.proj.weight.add_(1.0)  # the same name, pretrained again
    config = (enc_dir / "config.json").read_text()
    save_encoder(encoder, enc_dir, {})
    (enc_dir / "config.json").write_text(config)
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "weights changed" in again.output and str(enc_dir) in again.output
    assert read(out / "results.csv") == rows  # nothing touched
    fresh = runner.invoke(app, [*args, "--overwrite"])
    assert fresh.exit_code == 0, fresh.output
    assert runner.invoke(app, args).exit_code == 0  # the new weights' rows resume as usual


def test_the_frozen_protocols_weigh_classes_as_finetune_class_weights_says(scene, run_dir: Path, monkeypatch,
                                                                            tmp_path: Path) -> None:
    import geomed_ssl.compare.run as run_module

    seen = []
    classify = run_module.classify

    def recording(*args, **kwargs):
        seen.append(args[6] if len(args) > 6 else kwargs.get("class_weights"))
        return classify(*args, **kwargs)

    monkeypatch.setattr(run_module, "classify", recording)
    for weights, expected in ((None, None), ("balanced", "balanced")):
        seen.clear()
        extra = ["--no-baselines"] + (["--set", f"finetune.class_weights={weights}"] if weights else [])
        result = runner.invoke(app, compare_args([str(run_dir)], scene, tmp_path / f"cmp_{weights}", *extra))
        assert result.exit_code == 0, result.output
        assert seen and set(seen) == {expected}  # every frozen protocol's fit got the setting (k-NN ignores it)
    # a folder whose rows an older geomed-ssl fitted (balanced, no probe_rules in compare.json) is not continued
    record = tmp_path / "cmp_None" / "compare.json"
    old = json.loads(record.read_text())
    del old["probe_rules"]
    record.write_text(json.dumps(old, indent=1) + "\n")
    result = runner.invoke(app, compare_args([str(run_dir)], scene, tmp_path / "cmp_None", "--no-baselines"))
    assert result.exit_code == 2 and "older" in result.output and "--overwrite" in result.output
    del old["none_finetune"]  # before 2026-12-07 none was fine-tuned with layer decay: its rows are not mixed in
    record.write_text(json.dumps(old, indent=1) + "\n")
    result = runner.invoke(app, compare_args([str(run_dir)], scene, tmp_path / "cmp_None", "--no-baselines"))
    assert result.exit_code == 2 and "fine-tuned with layer-wise lr decay" in " ".join(result.output.split())
    del old["none"]  # before 2026-12-04 one none served every seed: said so
    record.write_text(json.dumps(old, indent=1) + "\n")
    result = runner.invoke(app, compare_args([str(run_dir)], scene, tmp_path / "cmp_None", "--no-baselines"))
    assert result.exit_code == 2 and "one random initialisation for every seed" in " ".join(result.output.split())


def test_a_resumed_compare_refuses_data_changed_in_place_and_another_kind_of_budget(run_dir: Path,
                                                                                     tmp_path: Path) -> None:
    import rasterio

    from tests.compare.conftest import labelled_scene

    images, labels = labelled_scene(tmp_path / "data")
    out = tmp_path / "cmp"
    args = ["compare", f"{run_dir}/", "--images", str(images), "--labels", str(labels), "--out", str(out),
            "--labels-per-class", "3", "--seeds", "0", "--protocol", "linear", "--no-baselines", *sets()]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    rows = read(out / "results.csv")
    assert {r["encoder"] for r in rows} == {str(run_dir), "none"}  # one name for runA/ and runA
    alias = runner.invoke(app, [*args[:1], str(run_dir), *args[2:]])
    assert alias.exit_code == 0 and read(out / "results.csv") == rows  # resumed: nothing new to run

    fraction = runner.invoke(app, [*args[:8], "--label-fraction", "0.05", *args[10:]])
    assert fraction.exit_code == 2 and "one curve has one kind of budget" in fraction.output

    path = labels / "scene_gt.tif"
    with rasterio.open(path) as src:
        lab, profile = src.read(), src.profile
    with rasterio.open(path, "w", **profile) as dst:  # classes 1 and 2 swapped, same file, same grid
        dst.write(np.where(lab == 1, 2, np.where(lab == 2, 1, lab)).astype(lab.dtype))
    changed = runner.invoke(app, [*args, "--seeds", "0,1"])
    assert changed.exit_code == 2 and "label files' contents changed" in changed.output
    assert read(out / "results.csv") == rows  # no row of the new labels beside the old ones


def test_a_budget_that_leaves_nothing_to_test_is_refused_before_anything_is_written(scene, run_dir: Path,
                                                                                      tmp_path: Path) -> None:
    images, labels = scene
    out = tmp_path / "cmp"
    args = ["compare", str(run_dir), "--images", str(images), "--labels", str(labels), "--out", str(out),
            "--label-fraction", "0.1,1", "--seeds", "0", "--protocol", "linear", *sets()]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "leaves none to test" in result.output and not out.exists()
    digits = runner.invoke(app, [*args[:8], "--labels-per-class", "\u00b2", *args[10:]])
    assert digits.exit_code == 2 and "whole number" in digits.output


def test_a_sigterm_during_a_fine_tune_stops_compare_with_143_and_a_line_saying_how_to_go_on(
        scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning ends a SIGTERM with a SystemExit without code: a scheduler would have recorded a success."""
    import os
    import signal

    import lightning as L

    from geomed_ssl.finetune import fit

    class Preempt(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(fit, "progress_callbacks", lambda *a: [Preempt()])
    import shutil

    scene = (shutil.copytree(scene[0], tmp_path / "images"), scene[1])  # the fixture is shared: a copy
    (scene[0] / "broken.tif").write_bytes(b"II*\x00 not a tiff")  # named once, not again by each fine-tune
    out = tmp_path / "cmp"
    args = compare_args(["none"], scene, out, "--baselines", "rf", "--recipe", "recipes/mae_sentinel2.yaml")
    args[args.index("0,1")] = "0"
    result = runner.invoke(app, args)
    assert result.exit_code == 143, result.output
    assert "stopped: compare stopped by SIGTERM in run 4/4 (none finetune" in result.output
    assert "run the same command again" in result.output
    assert len(read(out / "results.csv")) == 3 and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert result.output.count("problem file(s) skipped") == 1 and "broken.tif" in result.output


def test_a_sigterm_outside_a_fine_tune_stops_compare_with_143_and_the_same_line(scene, tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """Frozen probes and baselines run outside Lightning: a SIGTERM there ended compare silently (exit 143, no
    line); it says where it stopped, and the rows before it are kept."""
    import os
    import signal
    import time

    from geomed_ssl.compare import run as compare_run

    scores = compare_run.frozen_scores
    calls = []

    def preempted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises first
        return scores(*args, **kwargs)

    monkeypatch.setattr(compare_run, "frozen_scores", preempted)
    out = tmp_path / "cmp"
    args = compare_args(["none"], scene, out, "--baselines", "rf", "--recipe", "recipes/mae_sentinel2.yaml")
    args[args.index("linear,knn")] = "linear"
    result = runner.invoke(app, args)
    assert result.exit_code == 143, result.output
    assert "stopped: compare stopped by SIGTERM in run 2/" in result.output and "run the same command again" in \
        result.output
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_continued_compare_stopped_midway_leaves_no_summary_of_the_earlier_rows(scene, tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """summary.md and curve.png show the rows of the run that wrote them: a compare adding a seed deletes them as
    its first new row comes, so a stop after it leaves results.csv alone (not a complete-looking summary of fewer
    rows); a stop before any new row keeps them (they still show every row); the compare run again writes them."""
    from geomed_ssl.compare import run as compare_run
    from geomed_ssl.errors import RunStopped

    out = tmp_path / "cmp"
    args = compare_args(["none"], scene, out, "--baselines", "rf", "--recipe", "recipes/mae_sentinel2.yaml")
    args[args.index("linear,knn")] = "linear"
    one_seed = list(args)
    one_seed[one_seed.index("0,1")] = "0"
    assert runner.invoke(app, one_seed).exit_code == 0 and (out / "summary.md").is_file()
    add = compare_run.ResultsFile.add

    def stop_before(*a, **k) -> None:
        raise RunStopped("SIGTERM", "compare stopped by SIGTERM")

    def stop_after(self, row) -> None:
        add(self, row)
        raise RunStopped("SIGTERM", "compare stopped by SIGTERM")

    with monkeypatch.context() as patched:  # stopped while computing the first new row
        patched.setattr(compare_run, "frozen_scores", stop_before)
        patched.setattr(compare_run, "finetune_scores", stop_before)
        assert runner.invoke(app, args).exit_code == 143 and (out / "summary.md").is_file()
    monkeypatch.setattr(compare_run.ResultsFile, "add", stop_after)
    assert runner.invoke(app, args).exit_code == 143
    assert not (out / "summary.md").exists() and not (out / "curve.png").exists()
    monkeypatch.setattr(compare_run.ResultsFile, "add", add)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert (out / "curve.png").is_file() and "| rf (forest) | 3 | " in (out / "summary.md").read_text()
    assert (out / "summary.md").read_text().split("| rf (forest) | 3 | ")[1].split("|")[2].strip() == "2"  # 2 seeds


def test_a_compare_that_took_label_copies_apart_is_not_continued_with_them_as_one_ground(run_dir: Path,
                                                                                        tmp_path: Path) -> None:
    """Two dates, each with its own copy of the label map: one ground since 2026-12-05 (compare.json says how they
    are grouped). A folder an older version made (no grouping recorded, its draws took the copies apart) is
    refused, never continued with draws of the other rule."""
    import json
    import shutil

    from tests.compare.conftest import labelled_scene

    images, labels = labelled_scene(tmp_path / "data")
    dates = tmp_path / "dates"
    for d in ("d1", "d2"):
        (dates / d).mkdir(parents=True)
        shutil.copy(images / "scene.tif", dates / d / "tile.tif")
        shutil.copy(labels / "scene_gt.tif", dates / d / "lulc.tif")
    (tmp_path / "pairs.csv").write_text("image,label\n" + "".join(f"dates/{d}/tile.tif,dates/{d}/lulc.tif\n"
                                                                  for d in ("d1", "d2")))
    out = tmp_path / "cmp"
    args = ["compare", str(run_dir), "--images", str(dates), "--labels", str(tmp_path / "pairs.csv"), "--out",
            str(out), "--labels-per-class", "3", "--seeds", "0", "--protocol", "linear", "--no-baselines",
            *sets("data.exclude=[\"*lulc*\"]")]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    record = json.loads((out / "compare.json").read_text())
    assert record["grounds"] == [0, 0]
    del record["grounds"]  # as an older version wrote it
    (out / "compare.json").write_text(json.dumps(record, indent=1) + "\n")
    again = runner.invoke(app, [*args[:10], "--seeds", "0,1", *args[12:]])
    assert again.exit_code == 2 and "took the copies of one label map beside each date as separate" in again.output


def test_the_linear_probe_compare_scores_is_the_one_finetune_deploys(scene, run_dir: Path, tmp_path: Path) -> None:
    """``compare --protocol linear`` and ``finetune --head probe`` (finetune.probe linear) on the same encoder and
    samples: the same test scores, since whole-scene prediction blends a linear probe's logits over the overlapping
    windows as compare blends the features it fits on (blending probabilities differed on ~2 % of pixels)."""
    out = tmp_path / "cmp"
    args = ["compare", str(run_dir), "--images", str(scene[0]), "--labels", str(scene[1]), "--out", str(out),
            "--labels-per-class", "3", "--seeds", "0", "--protocol", "linear", "--no-baselines", *sets()]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    row = next(r for r in read(out / "results.csv") if r["encoder"] == str(run_dir) and r["protocol"] == "linear")
    ft = tmp_path / "ft"
    result = runner.invoke(app, ["finetune", "segment", str(run_dir / "config.yaml"), "--encoder", str(run_dir),
                                 "--images", str(scene[0]), "--labels", str(scene[1]), "--out", str(ft),
                                 "--labels-per-class", "3", "--head", "probe", *sets("finetune.probe=linear")])
    assert result.exit_code == 0, result.output
    test = json.loads((ft / "metrics.json").read_text())["test"]
    assert test["OA"] == pytest.approx(float(row["oa"]), abs=1e-6)
    assert test["kappa"] == pytest.approx(float(row["kappa"]), abs=1e-6)


def test_a_set_of_what_compares_own_options_decide_is_refused_naming_the_option(scene, tmp_path: Path) -> None:
    """--set labels.split=blocks was recorded in config.yaml and dropped: every run drew the random split."""
    result = runner.invoke(app, ["compare", "none", "--images", str(scene[0]), "--labels", str(scene[1]), "--out",
                                 str(tmp_path / "cmp"), "--recipe", "recipes/mae_sentinel2.yaml",
                                 *sets("labels.split=blocks")])
    assert result.exit_code == 2 and "give --split instead of --set labels.split" in result.output, result.output
    assert not (tmp_path / "cmp").exists()
    blocks = tmp_path / "blocks.yaml"  # the same split in a recipe file: said, not silently dropped
    blocks.write_text(Path("recipes/mae_sentinel2.yaml").read_text() + "\nlabels:\n  split: blocks\n")
    result = runner.invoke(app, ["compare", "none", "--images", str(scene[0]), "--labels", str(scene[1]), "--out",
                                 str(tmp_path / "cmp2"), "--recipe", str(blocks), "--labels-per-class", "3",
                                 "--seeds", "0", "--protocol", "linear", "--no-baselines", *sets()])
    assert result.exit_code == 0, result.output
    assert "labels.split 'blocks' is not used: compare draws with --split (random)" in result.output


def test_a_range_warning_is_said_once_in_a_compare_that_also_fine_tunes(scene, run_dir: Path, tmp_path: Path) -> None:
    """Said for the frozen features while the compare prepares, it was said again by the first fine-tune."""
    import rasterio

    from tests.conftest import write_geotiff

    with rasterio.open(next(scene[0].glob("*.tif"))) as src:
        far = src.read().astype(np.float32) * 50 + 10000  # other units than the encoder's pretraining data
    (tmp_path / "far").mkdir()
    write_geotiff(tmp_path / "far" / "scene.tif", far)
    result = runner.invoke(app, ["compare", str(run_dir), "--images", str(tmp_path / "far"), "--labels",
                                 str(scene[1]), "--out", str(tmp_path / "cmp"), "--labels-per-class", "3", "--seeds",
                                 "0", "--protocol", "linear,finetune", "--no-baselines", *sets()])
    assert result.exit_code == 0, result.output
    assert result.output.count("value range of") == 1, result.output
