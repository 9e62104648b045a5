"""Confusion matrices and the accuracy figures of remote-sensing and medical papers (OA, AA, kappa, IoU, Dice),
JSON-safe: a class absent from the test set and never predicted gets null, and is left out of the means."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from geomed_ssl.outfiles import atomic_write_text, commit_partial, partial_path, save_figure


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts, rows = true class, columns = predicted. Entries whose true class is outside 0..K-1
    (e.g. -1 = unlabelled) are skipped; a prediction outside 0..K-1 is a ValueError."""
    t = np.asarray(y_true).reshape(-1).astype(np.int64, copy=False)
    p = np.asarray(y_pred).reshape(-1).astype(np.int64, copy=False)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} entries but y_pred has {p.size}.")
    keep = (t >= 0) & (t < num_classes)
    t, p = t[keep], p[keep]
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"predictions must lie in 0..{num_classes - 1}; got {p.min()}..{p.max()}.")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _mean(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def classification_metrics(cm: np.ndarray) -> dict[str, Any]:
    """OA, AA (mean per-class recall), Cohen's kappa, per-class accuracy / IoU / Dice with their means, support.

    A class with no test samples has no accuracy (None, left out of AA); its IoU and Dice are 0 when it was
    predicted (false positives only, as scikit-learn's and mmseg's macro IoU count it) and None, left out of mIoU
    and mean Dice, when it was not.
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    present, seen = support > 0, support + predicted > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(present, tp / support, np.nan)
        iou = np.where(seen, tp / (support + predicted - tp), np.nan)
        dice = np.where(seen, 2 * tp / (support + predicted), np.nan)
    oa = tp.sum() / total if total else math.nan
    pe = (support * predicted).sum() / total**2 if total else math.nan
    kappa = (oa - pe) / (1 - pe) if total and pe < 1 else math.nan  # undefined when one class is all there is
    return {
        "OA": _num(oa), "AA": _mean(acc), "kappa": _num(kappa),
        "per_class_accuracy": [_num(v) for v in acc], "per_class_iou": [_num(v) for v in iou], "mIoU": _mean(iou),
        "per_class_dice": [_num(v) for v in dice], "mean_dice": _mean(dice),
        "support": [int(v) for v in support], "num_samples": int(total),
    }


def fraction_cell(value: float | None) -> str:
    """A figure in a CSV table (``images.csv``, compare's ``results.csv``): 6 decimals, blank where undefined."""
    return "" if value is None else f"{float(value):.6f}"


def background_index(values: Sequence[int], spatial_dims: int) -> int | None:
    """The class left out of a volume's foreground Dice: the one of label value 0 (the background, by the convention
    of medical label volumes), when a volume task has it and another class; None otherwise (every class counts)."""
    values = [int(v) for v in values]
    return values.index(0) if spatial_dims == 3 and 0 in values and len(values) > 1 else None


def foreground_dice(metrics: dict[str, Any], background: int) -> float | None:
    """Mean Dice over the classes other than ``background`` (those with test samples or predicted)."""
    fore = [d for i, d in enumerate(metrics["per_class_dice"]) if i != background and d is not None]
    return float(np.mean(fore)) if fore else None


segmentation_metrics = classification_metrics  # the same figures; the name the segmentation code reads best with


def format_metrics(metrics: dict[str, Any], class_names: Sequence[str]) -> str:
    """A short text table: the headline figures, then accuracy / IoU / Dice / support per class."""
    f = lambda v: "  -  " if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"OA {f(metrics['OA'])}  AA {f(metrics['AA'])}  kappa {f(metrics['kappa'])}  mIoU {f(metrics['mIoU'])}"
             f"  mean Dice {f(metrics['mean_dice'])}"
             + (f" (without the background {f(metrics['mean_dice_foreground'])})" if "mean_dice_foreground" in metrics
                else "") + f"  ({metrics['num_samples']} samples)"]
    each = metrics.get("per_image") or {}
    if each.get("images", 0) > 1 and each["dice_mean"] is not None:  # a segmenter's, over several images
        std = f" ± {each['dice_std']:.3f}" if each["dice_std"] is not None else ""
        scored = "" if each["scored"] == each["images"] else f"{each['scored']} of "
        lines.append(f"per image ({scored}{each['images']} images, images.csv): Dice {each['dice_mean']:.3f}{std}"
                     + (" (without the background)" if "mean_dice_foreground" in metrics else ""))
    width = max([len(n) for n in class_names] + [5])
    lines.append(f"  {'class':<{width}}  acc    IoU    Dice   support")
    for i, name in enumerate(class_names):
        lines.append(f"  {name:<{width}}  {f(metrics['per_class_accuracy'][i])}  {f(metrics['per_class_iou'][i])}  "
                     f"{f(metrics['per_class_dice'][i])}  {metrics['support'][i]}")
    return "\n".join(lines)


def written_line(folder: Path, model: bool = False) -> str:
    """The console line naming what a fine-tune (``model``) or an evaluation wrote in ``folder``."""
    return ((f"model: {folder / 'model'}  " if model else "") + f"metrics: {folder / 'metrics.json'}  confusion: "
            f"{folder / 'confusion.png'}  per image: {folder / 'images.csv'}")


def save_confusion_png(cm: np.ndarray, class_names: Sequence[str], path: str | Path, normalize: bool = True,
                       title: str | None = None) -> Path:
    """Write the confusion matrix as a PNG heat map (rows normalised to recall if ``normalize``), values in the
    cells up to 20 classes; sized so 16 class names stay readable."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for a {k}x{k} confusion matrix.")
    with np.errstate(divide="ignore", invalid="ignore"):
        shown = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True)) if normalize else cm
    side = min(max(4.0, 0.45 * k + 2.5), 24.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(shown.max(), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class" if normalize else "count")
    ax.set_xticks(range(k), labels=list(class_names), rotation=60, ha="right", fontsize=8 if k > 10 else 10)
    ax.set_yticks(range(k), labels=list(class_names), fontsize=8 if k > 10 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        vmax = 1.0 if normalize else max(shown.max(), 1)
        for i in range(k):
            for j in range(k):
                if cm[i, j] > 0:
                    text = f"{shown[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=6 if k > 10 else 8,
                            color="white" if shown[i, j] > 0.6 * vmax else "black")
    ax.set_title(title or f"confusion matrix ({int(cm.sum())} samples" + (", rows normalised)" if normalize else ")"))
    return save_figure(fig, path)


def write_metrics(out: Path, results: dict[str, Any], class_names: Sequence[str],
                  images: Sequence[Sequence[Any]] | None = None) -> None:
    """``out/metrics.json``, with a test split its ``out/confusion.png``, and with ``images`` (a table of one row per
    image, its header first) ``out/images.csv``. All are complete under temporary names before the earlier
    ones go, so a kill during the evaluation leaves the earlier ones as they were; a kill in the instant between the
    final renames leaves the new figure or table without its metrics, never beside old metrics."""
    figure = table = None
    if "test" in results:
        figure = save_confusion_png(np.asarray(results["test"]["confusion"]), class_names,
                                    partial_path(out / "confusion.png"))
    if images is not None:
        import csv

        table = partial_path(out / "images.csv")
        with table.open("w", newline="") as fh:
            csv.writer(fh).writerows(images)
    metrics = atomic_write_text(partial_path(out / "metrics.json"), json.dumps(results, indent=2))
    (out / "metrics.json").unlink(missing_ok=True)  # from here no stale pair: a figure without its table at worst
    for name, made in (("confusion.png", figure), ("images.csv", table)):
        if made is None:
            (out / name).unlink(missing_ok=True)
        else:
            commit_partial(made, out / name)
    commit_partial(metrics, out / "metrics.json")
