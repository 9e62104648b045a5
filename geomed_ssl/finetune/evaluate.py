"""Evaluate a fine-tuned model: predict whole images as ``predict`` does, compare at labelled positions, write
``metrics.json``, ``confusion.png`` and ``images.csv`` (each image's figures)."""

from __future__ import annotations

import dataclasses
import logging
import unicodedata
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from geomed_ssl.windows.tiling import DEFAULT_OVERLAP
from geomed_ssl.data.records import stack_input
from geomed_ssl.errors import ConfigError, DataError, GeomedError
from geomed_ssl.finetune.trained import geo_grid, trained_images, trained_positions
from geomed_ssl.labels.classes import class_inputs, is_class_table
from geomed_ssl.labels.read import read_label
from geomed_ssl.labels.sampling import LabelSelection
from geomed_ssl.finetune.metrics import (background_index, classification_metrics, confusion_matrix, fraction_cell,
                                        foreground_dice, write_metrics)
from geomed_ssl.inference.finetuned import as_named, data_config, load_run, model_fn, model_stats, with_data
from geomed_ssl.inference.legend import class_lookup
from geomed_ssl.models.model_data import warn_other_scale
from geomed_ssl.outdirs import check_out_dir, prepare_out_dir
from geomed_ssl.outfiles import scratch_dir
from geomed_ssl.process import keeps_process_state

log = logging.getLogger("geomed_ssl")


def predict_to_arrays(model: torch.nn.Module, meta: dict[str, Any], paths: Sequence[str],
                      overlap: float = DEFAULT_OVERLAP, blend: str = "gaussian",
                      recipe_data: Any = None, native: bool = False,
                      only: Sequence[np.ndarray | None] | None = None, check_ranges: bool = True) -> list[np.ndarray]:
    """Class-index maps of whole images in the orientation ``read_label`` uses (rasters as stored, volumes RAS),
    computed on the device the model is on; volumes on the model's ``data.spacing`` grid, or with ``native`` on
    their own voxels (the map ``predict`` writes). Band names assigned by position were reported when the images
    were scanned, so they are not reported again here. ``only`` (rasters): per image, a bool map of the pixels
    wanted; the windows holding none are skipped and the pixels they alone cover are -1."""
    from geomed_ssl.bands.ranges import warn_summaries
    from geomed_ssl.inference.predict import predict_raster, predict_volume
    from geomed_ssl.models.device import model_device

    device = model_device(model)
    cfg = data_config(meta, recipe_data)
    stats = model_stats(meta)
    k = len(meta["classes"])
    _, nodata_label = class_lookup(k)  # what predict writes where the input is nodata
    out, read = [], []
    with scratch_dir("evaluate") as tmp:  # a killed run's class maps go with the next run
        for i, path in enumerate(paths):
            if only is not None and only[i] is not None and not only[i].any():  # nothing of it is scored
                out.append(np.full(only[i].shape, -1, np.int64))
                continue
            if cfg.kind == "raster":
                target = Path(tmp) / f"pred_{i}.tif"
                read.append(predict_raster(
                    model_fn(model), path, target, stats, window=meta["window"], overlap=overlap, blend=blend,
                    num_classes=k, data_cfg=cfg, device=device, names_by_position="ignore",
                    only=None if only is None else only[i], check_ranges=check_ranges and len(paths) == 1,
                    overviews=False))
            else:
                target = Path(tmp) / f"pred_{i}.nii.gz"
                predict_volume(model_fn(model), path, target, stats, roi_size=meta["window"], data_cfg=cfg,
                               overlap=overlap, blend="gaussian" if blend != "constant" else blend, num_classes=k,
                               device=device, names_by_position="ignore")
            # a NIfTI class map has no nodata field: its nodata label is said here (-1: no prediction there)
            labels, _ = read_label(target, cfg.kind, ignore_value=None, nodata=nodata_label,
                                   spacing=None if native else cfg.spacing)
            out.append(labels)
    if check_ranges and len(paths) > 1 and read:  # one warning each for all the files, as predict says it for a folder
        warn_summaries(read, stats)
    return out


def confusions_at(predictions: Sequence[np.ndarray], selection: LabelSelection, which: str) -> dict[int, np.ndarray]:
    """Per image with ``which`` ("train" | "test") positions in ``selection``, the confusion matrix there."""
    files, index, values = (getattr(selection, f"{which}_{k}") for k in ("file", "index", "value"))
    out = {}
    for f in np.unique(files).tolist():
        pred = predictions[f].reshape(-1)[index[files == f]]
        true = selection.class_map.encode(values[files == f])
        predicted = pred >= 0  # -1: the input was nodata there, so the model made no prediction
        out[f] = confusion_matrix(true[predicted], pred[predicted], len(selection.classes))
    return out


def per_image(confusions: dict[int, np.ndarray], names: Sequence[str], which: str,
              background: int | None) -> tuple[list[list[Any]], dict[str, Any]]:
    """``images.csv`` rows of a segmenter's images (file, split, labelled, OA, mIoU, Dice (volumes: without the
    background, as :func:`foreground_dice`), Dice per class) and their summary: the mean and sample std of the
    images' Dice, as medical papers report it per subject (pooled voxels weigh the largest structure most). An image
    where neither the labels nor the prediction hold a class has no Dice for it; one without any (no foreground
    labelled or predicted) is left out of the mean (``scored`` counts the others), and one predicting a class its
    labels lack scores 0 for it."""
    rows, dice = [], []
    for f, cm in confusions.items():
        m = classification_metrics(cm)
        d = foreground_dice(m, background) if background is not None else m["mean_dice"]
        dice += [d] if d is not None else []
        rows.append([names[f], which, m["num_samples"], *(fraction_cell(v) for v in (m["OA"], m["mIoU"], d)),
                     *(fraction_cell(v) for v in m["per_class_dice"])])
    summary = {"images": len(rows), "scored": len(dice), "dice_mean": float(np.mean(dice)) if dice else None,
               "dice_std": float(np.std(dice, ddof=1)) if len(dice) > 1 else None}
    return rows, summary


def scored_pixels(selection: LabelSelection) -> list[np.ndarray]:
    """Per image, a bool map (on the grid its labels were read on) of the training and test positions: the pixels
    an evaluation scores, so only the windows holding them need predicting."""
    maps = [np.zeros(int(np.prod(shape)), bool) for shape in selection.shapes]
    for files, index in ((selection.train_file, selection.train_index), (selection.test_file, selection.test_index)):
        for f in np.unique(files):
            maps[f][index[files == f]] = True
    return [m.reshape(shape) for m, shape in zip(maps, selection.shapes)]


def evaluate_segmentation(model: torch.nn.Module, meta: dict[str, Any], records: Sequence[Any],
                          label_arrays: Sequence[np.ndarray], selection: LabelSelection, out: Path,
                          recipe_data: Any = None, native: bool = False, check_ranges: bool = True) -> dict[str, Any]:
    """Metrics on the training and test positions (``selection``'s, on the grid its labels were read on: the
    training grid, or the volumes' own voxels with ``native``), pooled and per image; writes ``metrics.json``,
    ``confusion.png`` and ``images.csv`` (:func:`per_image`).
    ``check_ranges``: warn about images whose values are far from the model's statistics (a fine-tune did)."""
    # a stacked-channel record (data.channels, one glob or several) is predicted as `geomed-ssl predict` takes it
    # (its folder, or one of several cases in a folder by its first file): a file alone would be read without the
    # channel names
    stacked = bool(data_config(meta, recipe_data).channels)
    paths = [stack_input(r) if stacked or len(r.paths) > 1 else r.path for r in records]
    raster = data_config(meta, recipe_data).kind == "raster"
    predictions = predict_to_arrays(model, meta, paths, recipe_data=recipe_data, native=native,
                                    only=scored_pixels(selection) if raster else None, check_ranges=check_ranges)
    names = selection.class_names
    results: dict[str, Any] = {"classes": [{"value": v, "name": n} for v, n in zip(selection.classes, names)],
                               "notes": selection.notes, "split": selection.split}
    background = background_index(selection.classes, len(selection.shapes[0]) if selection.shapes else 2)
    rows = [["file", "split", "labelled", "oa", "miou", "dice", *(f"dice_{n}" for n in names)]]
    for which in ("train", "test"):
        confusions = confusions_at(predictions, selection, which)
        cm = sum(confusions.values(), np.zeros((len(names), len(names)), np.int64))
        results[which] = {**classification_metrics(cm), "n": int(cm.sum())}
        if background is not None:  # volumes: what compare's `dice` and the medical literature report
            results[which]["mean_dice_foreground"] = foreground_dice(results[which], background)
        if which == "test":
            results[which]["confusion"] = cm.tolist()
        image_rows, results[which]["per_image"] = per_image(confusions, paths, which, background)
        rows += image_rows
    write_metrics(out, results, names, rows)
    return results


def eval_out_dir(ft_dir: str | Path, out: str | Path | None) -> Path:
    """Where ``evaluate`` writes ``metrics.json`` and ``confusion.png``: ``out``, by default ``FT_DIR/eval``."""
    return Path(out) if out is not None else Path(ft_dir) / "eval"


@keeps_process_state
def evaluate_dir(ft_dir: str | Path, images: str | Path | None = None, labels: str | Path | None = None,
                 data: str | Path | None = None, out: str | Path | None = None,
                 device: str | None = "auto", strict: bool = False,
                 band_names: Sequence[str] | None = None, nodata: float | None = None,
                 overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Metrics of a fine-tuned model on every labelled pixel/voxel (segmentation) or image (classification), run
    on ``device`` (auto: CUDA when available). ``strict``: problem files and band names assigned by position are
    errors (else skipped / warned about). ``band_names``: the bands of files without band descriptions, in order
    (default: the model's ``data.band_names``, else its sensor profile's). ``nodata``: the files' nodata value,
    replacing their own tags (default: the model's ``data.nodata``, else each file's tag). ``overrides``
    (segmentation): how these labels are coded when not as the training's (:func:`labels_coded`)."""
    from geomed_ssl.data.catalog import scan
    from geomed_ssl.bands.conform import conform_record
    from geomed_ssl.labels.classes import scan_classes
    from geomed_ssl.labels.pairs import label_grounds, read_label_pairs
    from geomed_ssl.labels.draws import labelled_pixels

    if data is not None and (images is not None or labels is not None):
        raise GeomedError("give the labelled data as --images IMG_DIR --labels LABELS (segmentation) or as --data "
                          "CLASSES (class folders or a classes CSV: classification), not both: the model uses one "
                          "and would ignore the other.")
    default = eval_out_dir(ft_dir, None)
    out = eval_out_dir(ft_dir, out)
    rule = {"command": "evaluate", "resume": True, "allow_inside": [default],
            "inputs": {"fine-tune folder": ft_dir, "images folder": images, "labels": labels, **class_inputs(data)}}
    check_out_dir(out, **rule)  # the folder is made once the inputs are read
    model, meta, recipe = load_run(ft_dir, device)
    meta, recipe = with_data(meta, recipe, band_names, nodata)
    recipe = labels_coded(recipe, overrides, ft_dir, meta["task"])
    stats = model_stats(meta, f"model {ft_dir}")
    scale = (meta.get("encoder") or {}).get("scale")
    values = [c["value"] for c in meta["classes"]]
    names = [c["name"] for c in meta["classes"]]
    position = "error" if strict else "warn"
    if meta["task"] == "segment":
        if images is None or (labels is None and recipe.labels.label_name is None):
            raise GeomedError("a segmentation model is evaluated with --images IMG_DIR --labels LABELS (a folder, "
                              "a label file or a CSV), or with labels.label_name set in its recipe.")
        sized = dataclasses.replace(as_named(recipe.data, images), patch_size=list(meta["window"]))  # as predict
        try:  # reads it: a named file is scored whatever the training's data.include picked
            catalog = scan(images, sized, strict=strict, names_by_position=position, majority=False,
                           reader=f"the model '{ft_dir}'")
        except DataError as err:  # a folder the model's data.include leaves empty: say whose setting it is
            raise (DataError(f"{err} (The data.include / data.exclude are the model's, from its training: give "
                             "--images one file to score it whatever they say.)") if "data.include" in str(err)
                   else err) from None
        catalog.warn_problems()
        native = dataclasses.replace(recipe.data, spacing=None)  # every labelled voxel of the files, once
        pairs, arrays, masks = read_label_pairs(catalog.records, labels, recipe.labels, native,
                                                class_range=False)  # unknown values are left out below
        files, flats, vals = labelled_pixels(arrays, masks)
        if vals.size == 0:
            raise DataError(f"no labelled pixels or voxels in the {len(arrays)} label file(s) of '{labels}' "
                            f"(ignore value {recipe.labels.ignore_value}): nothing to score; check the labels, "
                            "labels.ignore_value and their nodata tags (--set labels.use_nodata=false: a tag marks "
                            "nothing).")
        notes = unknown_classes(vals, values, names) + ([f"labels read with --set {' '.join(overrides)}"]
                                                         if overrides else [])
        label_paths = [str(p) for _, p in pairs]
        seen, note = trained_positions(ft_dir, label_paths, [a.shape for a in arrays], files, flats, recipe.data,
                                       label_grounds(pairs, arrays), [r.path for r, _ in pairs],
                                       copies=[[p, *(r.paths or [r.path])] for r, p in pairs],
                                       geo=[geo_grid(r) for r, _ in pairs])
        notes += [note] if note else []
        selection = LabelSelection(files[seen], flats[seen], vals[seen], files[~seen], flats[~seen], vals[~seen],
                                   values, names, [a.shape for a in arrays], notes=notes, split="all labelled",
                                   paths=label_paths)
        for record, _ in pairs:  # a scene without one of the model's bands: refused before OUT_DIR exists
            conform_record(record, list(stats.band_names), stats.wavelengths)
        warn_other_scale([r for r, _ in pairs], scale, recipe.data.spacing, f"model '{ft_dir}'")
        prepare_out_dir(out, **rule)
        return evaluate_segmentation(model, meta, [r for r, _ in pairs], arrays, selection, out, recipe.data,
                                     native=True)
    if data is None:
        raise GeomedError("a classification model is evaluated with --data CLASSES (class folders or a classes CSV).")
    from geomed_ssl.data.labelled import ImageDataset
    from geomed_ssl.finetune.classify import evaluate_images
    from geomed_ssl.models.model_data import records_for_stats

    records, labels_idx, folder_names = scan_classes(data, recipe.data, strict=strict, for_model=True)
    records, mapped, notes = model_classes(records, labels_idx, folder_names, names, data)
    records = records_for_stats(records, stats)
    warn_other_scale(records, scale, recipe.data.spacing, f"model '{ft_dir}'")
    dataset = ImageDataset(records, mapped, stats, recipe.data, meta["encoder"]["patch_size"])
    seen, note = trained_images(ft_dir, [r.path for r in records], files=[r.paths or [r.path] for r in records])
    prepare_out_dir(out, **rule)
    return evaluate_images(model, dataset, mapped, {"test": np.flatnonzero(~seen), "train": np.flatnonzero(seen)},
                           names, out, notes=notes + ([note] if note else []))


CODING = ("labels.remap", "labels.ignore_value", "labels.use_nodata", "labels.label_name")  # what --set may change


def labels_coded(recipe: Any, overrides: Sequence[str] | None, ft_dir: str | Path, task: str) -> Any:
    """The model's recipe with ``overrides`` (``section.key=value``) of how a test set's label maps are coded, when
    not as the training's (:data:`CODING`: another value for unlabelled, values to merge into the model's, the label
    file beside each case); the model's other settings are its training's, so any other key is refused."""
    if not overrides:
        return recipe
    from geomed_ssl.config.loading import recipe_with_overrides

    other = [o for o in overrides if o.split("=", 1)[0].strip() not in CODING]
    if other or task != "segment":
        raise ConfigError(f"evaluate --set takes {', '.join(CODING)} for a segmentation model's label maps (how "
                          f"they are coded); got '{(other or list(overrides))[0]}': the model's other settings are "
                          "its training's, and class folders or a classes CSV name their classes themselves.")
    return recipe_with_overrides(recipe.to_dict(), list(overrides), f"the recipe of '{ft_dir}'")


def model_classes(records: list, labels_idx: np.ndarray, folder_names: Sequence[str], names: Sequence[str],
                  data: str | Path) -> tuple[list, np.ndarray, list[str]]:
    """The images of classes (folders, or a classes CSV's) the model knows, each with its class index in the model,
    and a note (also a warning) on classes that are no class of it: left out of the metrics, as unknown label values
    of segmentation are. Names match in Unicode NFC (a folder copied from macOS spells 'Forêt' decomposed), else
    ignoring case where that names one class (a note says so). None known: refused."""
    index = {unicodedata.normalize("NFC", n): k for k, n in enumerate(names)}
    folded: dict[str, list[int]] = {}
    for k, n in enumerate(names):
        folded.setdefault(unicodedata.normalize("NFC", n).casefold(), []).append(k)
    model_of, notes = [], []
    what = "classes" if is_class_table(data) else "class folders"
    for name in folder_names:
        key = unicodedata.normalize("NFC", name)
        same_letters = folded.get(key.casefold(), [])
        model_of.append(index.get(key, same_letters[0] if len(same_letters) == 1 else None))
        if key not in index and len(same_letters) == 1:
            notes.append(f"{what[:-1]} '{name}' is scored as the model's class '{names[same_letters[0]]}' (the "
                         "names differ only in case)")
            log.warning("warning: %s.", notes[-1])
    missing = [n for n, k in zip(folder_names, model_of) if k is None]
    if len(missing) == len(folder_names):
        raise DataError(f"none of the {what} in '{data}' ({', '.join(folder_names)}) is a class of this "
                        f"model ({', '.join(names)}); name them after the model's classes.")
    keep = np.array([model_of[i] is not None for i in labels_idx], bool)
    if missing:
        notes.append(f"{what} {missing} ({int((~keep).sum())} images) in '{data}' are not classes this model "
                     f"was trained on (its classes: {', '.join(names)}); they are left out of the metrics")
        log.warning("warning: %s.", notes[-1])
    mapped = np.array([model_of[i] for i in labels_idx[keep]], np.int64)
    return [r for r, k in zip(records, keep) if k], mapped, notes


def unknown_classes(vals: np.ndarray, values: Sequence[int], names: Sequence[str]) -> list[str]:
    """Notes (also printed as a warning) on labelled values that are no class of the model: left out of the
    metrics, since a model cannot predict a class it never saw in training."""
    found, counts = np.unique(vals, return_counts=True)
    unknown = [(int(v), int(c)) for v, c in zip(found, counts) if int(v) not in set(values)]
    if not unknown:
        return []
    classes = ', '.join(f'{v}={n}' for v, n in zip(values, names))
    if len(unknown) == len(found):  # metrics of nothing, written as if scored
        raise DataError(f"none of the label values {[v for v, _ in unknown][:10]} is a class this model was trained "
                        f"on (its classes: {classes}; labels are read with its fine-tune's labels.remap and ignore "
                        "value): nothing to score. Give the labels of its task, with its class values, or say how "
                        "these are coded: --set \"labels.remap={...}\" / labels.ignore_value=V.")
    note = (f"label values {[v for v, _ in unknown]} ({sum(c for _, c in unknown)} labelled positions) are not "
            f"classes this model was trained on (its classes: {classes}); they are left out of the metrics")
    log.warning("warning: %s.", note)
    return [note]
