"""Confusion matrix and accuracy figures against hand-computed values and scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geomed_ssl.finetune.metrics import classification_metrics, confusion_matrix, format_metrics, save_confusion_png


def test_confusion_matrix_counts_rows_true_columns_predicted_and_skips_unlabelled():
    y_true = np.array([0, 0, 1, 1, 1, 2, -1, -1])
    y_pred = np.array([0, 1, 1, 1, 0, 2, 2, 0])
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert cm.dtype == np.int64


def test_confusion_matrix_matches_sklearn_on_a_large_2d_array():
    from sklearn.metrics import confusion_matrix as sk_cm

    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 5, (300, 400)), rng.integers(0, 5, (300, 400))
    assert np.array_equal(confusion_matrix(t, p, 5), sk_cm(t.ravel(), p.ravel(), labels=range(5)))


def test_prediction_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix([0, 1], [0, 3], 3)


def test_metrics_of_a_known_matrix_by_hand():
    cm = np.array([[8, 2], [1, 9]])
    m = classification_metrics(cm)
    assert m["OA"] == pytest.approx(17 / 20)
    assert m["per_class_accuracy"] == pytest.approx([0.8, 0.9])
    assert m["AA"] == pytest.approx(0.85)
    pe = (10 * 9 + 10 * 11) / 400
    assert m["kappa"] == pytest.approx((0.85 - pe) / (1 - pe))
    assert m["per_class_iou"] == pytest.approx([8 / 11, 9 / 12])
    assert m["mIoU"] == pytest.approx((8 / 11 + 9 / 12) / 2)
    assert m["per_class_dice"] == pytest.approx([16 / 19, 18 / 21])
    assert m["support"] == [10, 10]


def test_kappa_agrees_with_sklearn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(3)
    t = rng.integers(0, 4, 500)
    p = np.where(rng.random(500) < 0.7, t, rng.integers(0, 4, 500))
    m = classification_metrics(confusion_matrix(t, p, 4))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(t, p))
    assert m["OA"] == pytest.approx((t == p).mean())


def test_a_class_absent_from_the_test_set_has_no_accuracy_and_counts_in_miou_only_when_predicted():
    """As scikit-learn's macro IoU / F1 over the classes of the truth or the predictions: a class predicted where
    it does not occur has IoU and Dice 0 (its false positives), not null; one neither present nor predicted is null
    and left out of every mean."""
    from sklearn.metrics import f1_score, jaccard_score

    cm = np.array([[3, 1, 0, 0], [0, 0, 0, 0], [0, 1, 5, 0], [0, 0, 0, 0]])  # class 1 only predicted; 3 nowhere
    m = classification_metrics(cm)
    assert m["per_class_accuracy"][1] is None and m["per_class_iou"][1] == 0.0 and m["per_class_dice"][1] == 0.0
    assert m["per_class_accuracy"][3] is None and m["per_class_iou"][3] is None and m["per_class_dice"][3] is None
    t = np.repeat(np.arange(4), cm.sum(axis=1))
    p = np.concatenate([np.repeat(np.arange(4), row) for row in cm])
    assert m["AA"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert m["mIoU"] == pytest.approx(jaccard_score(t, p, average="macro")) == pytest.approx((3 / 4 + 0 + 5 / 6) / 3)
    assert m["mean_dice"] == pytest.approx(f1_score(t, p, average="macro"))
    assert m["support"] == [4, 0, 6, 0]
    json.dumps(m, allow_nan=False)  # JSON-safe: no NaN anywhere
    assert format_metrics(m, ["a", "b", "c", "d"]).splitlines()[5].count("  -  ") == 3  # class d shows no value


def test_empty_matrix_gives_nulls_not_nan():
    m = classification_metrics(np.zeros((3, 3), np.int64))
    assert m["OA"] is None and m["kappa"] is None and m["mIoU"] is None
    json.dumps(m, allow_nan=False)


def test_confusion_png_is_written_for_16_classes(tmp_path):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 50, (16, 16)) + np.diag(rng.integers(50, 200, 16))
    cm[3] = 0  # an absent class must not break row normalisation
    path = save_confusion_png(cm, [f"class name {i}" for i in range(16)], tmp_path / "cm.png")
    from PIL import Image

    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) >= 600


def test_per_image_dice_leaves_out_an_image_with_nothing_to_score_and_says_how_many_counted() -> None:
    from geomed_ssl.finetune.evaluate import per_image

    tumour = np.array([[90, 10], [5, 15]])  # background, tumour: Dice 2*15 / (20 + 25) = 0.667
    empty = np.array([[100, 0], [0, 0]])  # no tumour labelled or predicted: no Dice
    false_alarm = np.array([[90, 10], [0, 0]])  # a tumour predicted where none is: 0
    rows, summary = per_image({0: tumour, 1: empty, 2: false_alarm}, ["a", "b", "c"], "test", background=0)
    assert [r[5] for r in rows] == ["0.666667", "", "0.000000"] and [r[2] for r in rows] == [120, 100, 100]
    assert summary["images"] == 3 and summary["scored"] == 2
    assert summary["dice_mean"] == pytest.approx(1 / 3) and summary["dice_std"] == pytest.approx(0.4714, abs=1e-4)
    line = format_metrics({**classification_metrics(tumour + empty + false_alarm), "per_image": summary}, ["bg", "t"])
    assert "per image (2 of 3 images, images.csv): Dice 0.333 ± 0.471" in line
