"""The figures of a compare row: a volume's dice leaves out the background (label value 0), as medical
segmentation reports it; every other task's dice is the mean over all classes."""

from __future__ import annotations

import numpy as np
import pytest

from geomed_ssl.compare.probes import scores, scores_from_metrics
from geomed_ssl.finetune.metrics import background_index


@pytest.mark.parametrize(("values", "dims", "expected"), [
    ([0, 1], 3, 0), ([0, 2, 4], 3, 0), ([1, 2], 3, None), ([0], 3, None), ([0, 1], 2, None)])
def test_the_background_is_label_value_0_of_a_volume_with_another_class(values, dims, expected) -> None:
    assert background_index(values, dims) == expected


def test_a_volume_dice_is_the_mean_over_the_classes_other_than_the_background() -> None:
    y_true = np.array([0] * 90 + [1] * 10)
    y_pred = np.array([0] * 85 + [1] * 5 + [1] * 5 + [0] * 5)  # the structure: 5 of 10 found, 5 false alarms
    every = scores(y_true, y_pred, 2, dense=True)
    fore = scores(y_true, y_pred, 2, dense=True, background=0)
    assert fore["dice"] == pytest.approx(0.5)  # 2 * 5 / (10 + 10)
    assert every["dice"] == pytest.approx((0.5 + 2 * 85 / 180) / 2)
    assert {k: v for k, v in fore.items() if k != "dice"} == {k: v for k, v in every.items() if k != "dice"}
    assert scores(y_true, y_pred, 2, dense=False, background=0)["dice"] is None


def test_a_fine_tune_metrics_dice_leaves_out_its_background_and_classes_without_test_samples() -> None:
    metrics = {"OA": 0.9, "AA": 0.8, "kappa": 0.7, "mIoU": 0.6, "mean_dice": 0.75,
               "per_class_dice": [0.99, 0.4, None, 0.6]}
    assert scores_from_metrics(metrics, dense=True)["dice"] == 0.75
    assert scores_from_metrics(metrics, dense=True, background=0)["dice"] == pytest.approx(0.5)
    assert scores_from_metrics({**metrics, "per_class_dice": [0.99, None]}, True, background=0)["dice"] is None


@pytest.mark.parametrize(("first", "expected"), [(0, 0), (1, None)])
def test_a_volume_task_knows_its_background(tmp_path, first: int, expected) -> None:
    from geomed_ssl.compare.task import load_segment_task
    from geomed_ssl.config import load_recipe
    from tests.compare.test_compare_cli import labelled_volumes

    images, labels = labelled_volumes(tmp_path, n=1, size=12, first=first)
    recipe = load_recipe("recipes/mae_mri.yaml", ["labels.ignore_value=null", "data.patch_size=16"])
    assert load_segment_task(recipe, images, labels, strict=False).background == expected
