"""The start-of-run schedule warnings: warmup as long as the run, a peak rate too small for AdamW, gradient
accumulation that cannot enlarge the batch a method compares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from geomed_ssl.cli import app
from geomed_ssl.config.lr_check import MIN_PEAK_LR, reached_lr, schedule_problem, warn_accumulation
from tests.conftest import TINY, TINY_BASE, structured_raster, write_geotiff

runner = CliRunner()


def test_a_schedule_that_can_learn_gives_no_warning() -> None:
    assert schedule_problem(1e-3, 10, 100, "finetune") is None


def test_warmup_not_shorter_than_the_run_is_named_with_the_rate_it_tops_out_at() -> None:
    line = schedule_problem(1e-3, 100, 50, "finetune")
    assert line is not None and line.startswith("warning: ")
    assert "finetune.warmup_steps 100 >= finetune.max_steps 50" in line and "0.0005" in line
    assert "\n" not in line and "finetune.warmup_steps to about 10 % of max_steps (e.g. 5)" in line


def test_a_warmup_over_half_the_run_is_named_and_learns() -> None:
    line = schedule_problem(1e-3, 100, 150, "train")  # a recipe's warmup kept as --set train.max_steps=150 shortened
    assert line and "train.warmup_steps 100 is over half of train.max_steps 150" in line
    assert "e.g. 15" in line and "barely learn" not in line
    assert schedule_problem(1e-3, 100, 200, "train") is None and schedule_problem(1e-3, 1, 2, "train") is None


def test_peak_rate_below_the_threshold_names_how_it_was_made() -> None:
    line = schedule_problem(1.5e-4 * 2 / 256, 5, 50, "train", "train.base_lr 0.00015 x effective batch 2 / 256")
    assert line is not None and "1.2e-06" in line and "effective batch 2" in line and "raise train.base_lr" in line
    assert "warmup" not in line


def test_a_floor_above_the_peak_rate_is_named_with_a_floor_that_fits() -> None:
    line = schedule_problem(4.7e-5, 1, 10, "train", min_lr=0.01)
    assert line is not None and "train.min_lr 0.01 is above the peak rate 4.7e-05" in line
    assert "e.g. a tenth of it (4.7e-06)" in line and "barely learn" not in line
    assert schedule_problem(1e-3, 10, 100, "train", min_lr=1e-6) is None


def test_both_problems_make_one_line() -> None:
    line = schedule_problem(1e-6, 100, 50, "train")
    assert line is not None and line.count("warning:") == 1 and "\n" not in line
    assert "warmup_steps" in line and f"{MIN_PEAK_LR:g}" in line


def test_reached_rate_is_the_peak_once_warmup_ends_inside_the_run() -> None:
    assert reached_lr(1e-3, 10, 100) == 1e-3
    assert reached_lr(1e-3, 100, 50) == pytest.approx(5e-4)


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def schedule_warnings(output: str) -> list[str]:
    """The schedule warnings among a CLI run's printed lines (the CLI logs to stderr, which the runner captures)."""
    return [line for line in output.splitlines() if "will barely learn" in line]


def test_pretrain_warns_once_at_start_when_warmup_exceeds_max_steps(raster_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(raster_dir), "--out",
                                 str(tmp_path / "run"), *sets(*TINY, "data.sensor=null", "data.patch_size=16",
                                                              "train.max_steps=2", "train.warmup_steps=4")])
    assert result.exit_code == 0, result.output
    lines = schedule_warnings(result.output)
    assert len(lines) == 1 and "train.warmup_steps 4 >= train.max_steps 2" in lines[0]


def test_pretrain_with_the_tiny_test_schedule_does_not_warn(raster_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(raster_dir), "--out",
                                 str(tmp_path / "run"), *sets(*TINY, "data.sensor=null", "data.patch_size=16",
                                                              "train.max_steps=6")])
    assert result.exit_code == 0, result.output
    assert schedule_warnings(result.output) == []


def test_finetune_warns_when_its_peak_rate_is_implausibly_small(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    img = structured_raster(rng, 4, 32)
    cls = (img[0] > np.median(img[0])).astype(np.uint8) + 1  # classes 1, 2
    write_geotiff(tmp_path / "scene.tif", img)
    write_geotiff(tmp_path / "scene_gt.tif", cls[None])
    result = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                 "--images", str(tmp_path / "scene.tif"), "--labels", str(tmp_path / "scene_gt.tif"),
                                 "--out", str(tmp_path / "ft"), "--labels-per-class", "3",
                                 *sets(*TINY, "data.sensor=null", "data.patch_size=16", "finetune.max_steps=2",
                                       "finetune.warmup_steps=0", "finetune.batch_size=2", "finetune.feature_size=8",
                                       "finetune.base_lr=1e-7")])
    assert result.exit_code == 0, result.output
    lines = schedule_warnings(result.output)
    assert len(lines) == 1 and "1e-07" in lines[0] and "raise finetune.base_lr" in lines[0]


def test_accumulation_with_a_batch_comparing_method_says_the_loss_sees_only_micro_batches(raster_dir: Path,
                                                                                         tmp_path: Path) -> None:
    result = runner.invoke(app, ["pretrain", "recipes/simclr_sentinel2.yaml", "--data", str(raster_dir), "--out",
                                 str(tmp_path / "run"), *sets(*TINY_BASE, "data.sensor=null", "data.patch_size=16",
                                                              "data.global_crop_size=16", "train.batch_size=4",
                                                              "train.accumulate_grad_batches=2",
                                                              "train.max_steps=2", "train.warmup_steps=1")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "accumulate_grad_batches" in line]
    assert len(lines) == 1 and "method 'simclr'" in lines[0] and "micro-batch of 4" in lines[0]
    assert "a batch of 8" in lines[0] and "raise train.batch_size or add devices" in lines[0]


def test_accumulation_of_a_per_sample_loss_or_no_accumulation_says_nothing() -> None:
    assert warn_accumulation("mae", False, 4, 2) is None
    assert warn_accumulation("simclr", True, 4, 1) is None
