"""Evaluate a fine-tuned model: predict whole images as ``predict`` does, compare at labelled positions, write
``metrics.json`` and ``confusion.png``."""

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
from geomed_ssl.files.listing import content_key, content_sizes
from geomed_ssl.labels.classes import class_inputs, is_class_table
from geomed_ssl.labels.read import read_label
from geomed_ssl.labels.sampling import LabelSelection
from geomed_ssl.windows.splits import GROUND_PREFIX
from geomed_ssl.finetune.metrics import (background_index, classification_metrics, confusion_matrix,
                                        foreground_dice, write_metrics)
from geomed_ssl.inference.finetuned import as_named, data_config, load_run, model_fn, model_stats, with_data
from geomed_ssl.inference.writers import class_lookup
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
                    only=None if only is None else only[i], check_ranges=check_ranges and len(paths) == 1))
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


def metrics_at(predictions: Sequence[np.ndarray], selection: LabelSelection, which: str) -> np.ndarray:
    """Confusion matrix at the ``which`` ("train" | "test") positions of ``selection``."""
    files, index, values = (getattr(selection, f"{which}_{k}") for k in ("file", "index", "value"))
    k = len(selection.classes)
    if index.size == 0:
        return np.zeros((k, k), np.int64)
    pred = np.concatenate([predictions[f].reshape(-1)[index[files == f]] for f in range(len(predictions))])
    true = np.concatenate([selection.class_map.encode(values[files == f]) for f in range(len(predictions))])
    predicted = pred >= 0  # -1: the input was nodata there, so the model made no prediction
    return confusion_matrix(true[predicted], pred[predicted], k)


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
    training grid, or the volumes' own voxels with ``native``); writes ``metrics.json`` and ``confusion.png``.
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
    for which in ("train", "test"):
        cm = metrics_at(predictions, selection, which)
        results[which] = {**classification_metrics(cm), "n": int(cm.sum())}
        if background is not None:  # volumes: what compare's `dice` and the medical literature report
            results[which]["mean_dice_foreground"] = foreground_dice(results[which], background)
        if which == "test":
            results[which]["confusion"] = cm.tolist()
    write_metrics(out, results, names)
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
    from geomed_ssl.labels.sampling import labelled_pixels

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
                            f"(ignore value {recipe.labels.ignore_value}): nothing to score; check the labels and "
                            "labels.ignore_value.")
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

    sized = dataclasses.replace(recipe.data, patch_size=list(meta["window"]))  # whole images, read by the model
    records, labels_idx, folder_names = scan_classes(data, sized, strict=strict, for_model=True)
    records, mapped, notes = model_classes(records, labels_idx, folder_names, names, data)
    records = records_for_stats(records, stats)
    warn_other_scale(records, scale, recipe.data.spacing, f"model '{ft_dir}'")
    dataset = ImageDataset(records, mapped, stats, recipe.data, meta["encoder"]["patch_size"])
    seen, note = trained_images(ft_dir, [r.path for r in records], files=[r.paths or [r.path] for r in records])
    prepare_out_dir(out, **rule)
    return evaluate_images(model, dataset, mapped, {"test": np.flatnonzero(~seen), "train": np.flatnonzero(seen)},
                           names, out, notes=notes + ([note] if note else []))


CODING = ("labels.remap", "labels.ignore_value", "labels.label_name")  # what evaluate --set may change


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


MAX_CHAIN = 8  # fine-tunes of fine-tunes followed back (a chain that loops, copied folders, stops there)


def _used(ft_dir: str | Path) -> dict[str, Any] | None:
    """The fine-tune's ``labels_used.npz`` (meta and arrays), or None when it has none."""
    import json

    path = Path(ft_dir) / "labels_used.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"meta": json.loads(str(z["meta"])), **{k: z[k] for k in z.files if k != "meta"}}
    except (OSError, KeyError, ValueError) as err:
        log.warning(f"warning: cannot read '{path}' ({err}); positions the model trained on are not told apart.")
        return None


def _key(path: str) -> Path:
    return Path(path).expanduser().resolve()


def _scored_apart(n: int, total: int, unit: str) -> str:
    note = (f"{n} of the {total} labelled {unit} trained this model; they are scored apart ('train' in "
            "metrics.json) and left out of the test metrics")
    log.warning("warning: %s.", note)
    return note


def _copied(stored: Sequence[str] | None, files: Sequence[Sequence[str]] | None) -> list[list[int]]:
    """Per entry of ``files`` (the files of one sample, in order), the indices of the ``stored`` content keys
    (``labels_used.npz``'s ``copies``) it is a byte copy of; a file is hashed only when its size matches one."""
    keys: dict[str, list[int]] = {}
    for j, key in enumerate(stored or []):
        if key:
            keys.setdefault(key, []).append(j)
    sizes = {k.rsplit(":", 1)[0] for k in keys}
    return [keys.get(content_key(p), []) if keys and content_sizes(p) in sizes else [] for p in files or []]


def trained_images(ft_dir: str | Path, paths: Sequence[str], say: bool = True, depth: int = 0,
                   files: Sequence[Sequence[str]] | None = None) -> tuple[np.ndarray, str | None]:
    """Which of ``paths`` a classification fine-tune trained on (its ``labels_used.npz``: the same path, or with
    ``files``, each image's files, a byte copy of a training image under another name; and those of the fine-tune
    whose encoder it fine-tuned, if any), and a note saying so (``say``: else no note, nor warning)."""
    used = _used(ft_dir)
    seen = np.zeros(len(paths), bool)
    if used is None or "train_index" not in used:
        return seen, None
    trained = {_key(used["meta"]["paths"][i]) for i in used["train_index"]}
    seen[:] = [_key(p) in trained for p in paths]
    if files is not None:
        seen |= np.array([bool(c) for c in _copied(used["meta"].get("copies"), files)], bool)
    if (earlier := used["meta"].get("encoder_fine_tune")) and depth < MAX_CHAIN:
        seen |= trained_images(earlier, paths, say=False, depth=depth + 1, files=files)[0]
    if not say:
        return seen, None
    if not seen.any():
        return seen, _warn_alike([used["meta"]["paths"][i] for i in used["train_index"]], paths, "images")
    return seen, _scored_apart(int(seen.sum()), len(paths), "images")


def trained_among(ft_dir: str | Path, paths: Sequence[str | Path], copies: Sequence[Sequence[str]] | None = None,
                  places: tuple[Sequence[list | None], Sequence[tuple[int, ...]]] | None = None) -> list[Path]:
    """Those of ``paths`` (resolved, sorted) that trained a fine-tune (its ``labels_used.npz``: the label files
    holding training positions and their images, or the trained images); test-only files are not among them.
    ``copies``: per sample, its files as :func:`trained_positions` / :func:`trained_images` take them, whose first
    file counts too when they are a byte copy of a training sample's; ``places`` (per sample, :func:`geo_grid` and
    its label shape): whose first file counts too when a training place lies in it."""
    used = _used(ft_dir)
    if used is None:
        return []
    meta = used["meta"]
    if "train_file" in used:
        named = [meta.get("paths") or [], meta.get("images") or []]
        trained = {_key(names[i]) for names in named for i in np.unique(used["train_file"]) if i < len(names)}
    else:
        trained = {_key(meta["paths"][i]) for i in used.get("train_index", [])}
    copied = [_key(f[0]) for f, hit in zip(copies or [], _copied(meta.get("copies"), copies)) if hit]
    if places is not None and copies is not None and "train_file" in used:
        copied += [_key(f[0]) for f, hit in zip(copies, _same_places(used, *places)) if hit]
    return sorted((trained & {_key(str(p)) for p in paths}) | set(copied))


def untested_by_earlier_fine_tune(encoder: Any, selection: LabelSelection, data: Any = None,
                                  copies: Sequence[Sequence[str]] | None = None,
                                  geo: Sequence[list | None] | None = None) -> None:
    """Leave out of ``selection``'s test set the positions the encoder's own fine-tune trained on, when the encoder
    is a fine-tune folder (fine-tuning a fine-tuned model on the same labels: they would be scored as test), and
    record that folder in the selection, so ``evaluate`` scores them apart too."""
    from geomed_ssl.checkpoint import fine_tune_of

    earlier = fine_tune_of(encoder)
    if earlier is None:
        return
    selection.encoder_fine_tune = str(earlier.resolve())
    seen, _ = trained_positions(earlier, selection.paths, selection.shapes, selection.test_file, selection.test_index,
                                data, selection.grounds, selection.images, say=False, copies=copies, geo=geo)
    if seen.any():
        log.warning(f"warning: {int(seen.sum())} of the {seen.size} test positions trained the encoder's own "
                    f"fine-tune '{earlier}' (its labels_used.npz); they are left out of this fine-tune's test set.")
        for part in ("file", "index", "value"):
            setattr(selection, f"test_{part}", getattr(selection, f"test_{part}")[~seen])
    elif shared := trained_among(earlier, selection.paths):  # read on another grid then
        log.warning(f"warning: the encoder's own fine-tune '{earlier}' trained on {len(shared)} of these label files "
                    "on another grid (data.spacing): its training positions cannot be told apart here and may be "
                    "among the test positions, so the test metrics may be optimistic.")


def untested_images(earlier: Path | None, paths: Sequence[str], test: np.ndarray,
                    files: Sequence[Sequence[str]] | None = None) -> np.ndarray:
    """``test`` (indices into ``paths``; ``files``: each image's files, for byte copies) without the images that
    ``earlier``, the fine-tune folder the encoder came from (``checkpoint.fine_tune_of``; None: none), trained on
    (:func:`untested_by_earlier_fine_tune` for classifiers)."""
    if earlier is None:
        return test
    seen = trained_images(earlier, paths, say=False, files=files)[0][test]
    if seen.any():
        log.warning(f"warning: {int(seen.sum())} of the {seen.size} test images trained the encoder's own fine-tune "
                    f"'{earlier}' (its labels_used.npz); they are left out of this fine-tune's test set.")
    return test[~seen]


def _warn_alike(trained: Sequence[str], paths: Sequence[str], what: str) -> str | None:
    """None of ``paths`` is where the fine-tune's training ``what`` were: a warning when some share a folder and
    file name with them (a copy of the training folder, or a test folder named alike: names cannot tell which),
    returned as a note for metrics.json."""
    tails = {Path(p).parts[-2:] for p in trained}
    alike = sum(Path(p).parts[-2:] in tails for p in paths)
    if not alike:
        return None
    note = (f"none of these {what} is at a path the fine-tune trained on, but {alike} share a folder and file name "
            f"with its training {what}: if this folder is a copy of the training data, what trained the model is "
            "scored here as test; evaluate the folder the model was fine-tuned on to score it apart")
    log.warning("warning: %s.", note)
    return note


def geo_grid(record: Any) -> list | None:
    """A georeferenced raster's place on the ground as ``labels_used.npz`` keeps it: [crs, a, b, c, d, e, f] of
    its transform; None for a volume (subjects of one atlas space share voxel grids without being one body), a
    raster without a CRS, or one whose transform is GDAL's identity (a chip saved with a CRS and no transform)."""
    if record.kind != "raster" or not record.crs or not record.transform:
        return None
    transform = [float(v) for v in record.transform[:6]]
    return None if transform == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0] else [str(record.crs), *transform]


def _shifted(used: dict[str, Any], j: int, trained: list, here: list, shape: Sequence[int]) -> np.ndarray | None:
    """The flat positions, on the grid ``here`` (:func:`geo_grid`) of ``shape``, of training file ``j``'s training
    positions (its grid ``trained``) that fall inside it; None when the grids are not one grid shifted by whole
    pixels (another CRS or pixel size, a rotation, a fractional shift)."""
    from geomed_ssl.geo.grids import same_crs

    if here[2] or here[4] or trained[2] or trained[4] or here[1] != trained[1] or here[5] != trained[5] \
            or not same_crs(here[0], trained[0]):
        return None
    shift = np.array([(trained[6] - here[6]) / here[5], (trained[3] - here[3]) / here[1]])
    if np.abs(shift - np.round(shift)).max() > 1e-3:
        return None
    rows, cols = np.divmod(used["train_index"][used["train_file"] == j], int(used["meta"]["shapes"][j][1]))
    r, c = rows + int(round(shift[0])), cols + int(round(shift[1]))
    inside = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
    return r[inside] * int(shape[1]) + c[inside]


def _same_places(used: dict[str, Any], geo: Sequence[list | None], shapes: Sequence[tuple[int, ...]],
                 files: np.ndarray | None = None, flats: np.ndarray | None = None) -> np.ndarray:
    """Positions (``files``, ``flats``) at a place a fine-tune trained on, in rasters whose grid is a training
    raster's shifted by whole pixels (a crop of a training scene, or its dates cut alike): same CRS and pixel size,
    no rotation. Without positions: per raster of ``geo``, whether any training place lies in it."""
    seen = np.zeros(len(geo) if files is None else files.size, bool)
    for j, trained in enumerate(used["meta"].get("geo") or []):
        for i, here in enumerate(geo if trained else []):
            at = _shifted(used, j, trained, here, shapes[i]) if here else None
            if at is not None and files is None:
                seen[i] |= at.size > 0
            elif at is not None:
                mine = files == i
                seen[mine] |= np.isin(flats[mine], at)
    return seen


def _elsewhere(used: dict[str, Any], geo: Sequence[list | None], shapes: Sequence[tuple[int, ...]]) -> int:
    """How many of a fine-tune's training places lie inside rasters of ``geo`` that are not on their grid shifted by
    whole pixels (reprojected, resampled, or cut at a fraction of a pixel): those cannot be told apart."""
    from rasterio.transform import Affine
    from rasterio.warp import transform as reproject_points

    from geomed_ssl.geo.grids import same_crs

    count = 0
    for j, trained in enumerate(used["meta"].get("geo") or []):
        rows, cols = np.divmod(used["train_index"][used["train_file"] == j], int(used["meta"]["shapes"][j][1]))
        xs, ys = Affine(*trained[1:7]) @ (cols + 0.5, rows + 0.5) if trained and rows.size else ([], [])
        inside = np.zeros(len(xs), bool)
        for i, here in enumerate(geo if len(xs) else []):
            if not here or _shifted(used, j, trained, here, shapes[i]) is not None:
                continue
            x, y = (xs, ys) if same_crs(here[0], trained[0]) else reproject_points(trained[0], here[0], xs, ys)
            c, r = ~Affine(*here[1:7]) @ (np.asarray(x), np.asarray(y))
            inside |= (r >= 0) & (r < shapes[i][0]) & (c >= 0) & (c < shapes[i][1])
        count += int(inside.sum())
    return count


def trained_positions(ft_dir: str | Path, label_paths: Sequence[str], shapes: Sequence[tuple[int, ...]],
                      files: np.ndarray, flats: np.ndarray, data: Any = None,
                      grounds: Sequence[str] | None = None,
                      images: Sequence[str] | None = None, say: bool = True,
                      depth: int = 0, copies: Sequence[Sequence[str]] | None = None,
                      geo: Sequence[list | None] | None = None) -> tuple[np.ndarray, str | None]:
    """Which labelled positions (``files``, ``flats``) a segmentation fine-tune trained on: those of its
    ``labels_used.npz`` in the same label file on the same grid (a label file shared by several images trains a
    place at each of them), in a copy of it on that grid (``grounds``, :func:`label_grounds`: another date of the
    ground), on the same image (``images``: its label file edited or copied since) or in a byte copy of a training
    pair (``copies``: per file, its label file and image files, in order, renamed or moved since), at a place it
    trained on in a georeferenced raster shifted by whole pixels (``geo``: per file, :func:`geo_grid`), or, for a
    volume trained on
    its ``data.spacing`` grid (the fine-tune's ``data``), the label-file voxels its training positions were read
    from; and those the fine-tune whose encoder it fine-tuned trained on, if any. A label file whose grid no longer
    matches what was stored cannot be told apart: a note says so (``say``: else no note, nor warning)."""
    from geomed_ssl.labels.pairs import label_sources

    used = _used(ft_dir)
    seen = np.zeros(files.size, bool)
    if used is None or "train_file" not in used:
        return seen, None
    meta, regridded = used["meta"], 0
    stored: dict[Any, list[int]] = {}
    for j, p in enumerate(meta.get("paths", [])):
        stored.setdefault(_key(p), []).append(j)
    for j, g in enumerate(meta.get("grounds") or []):
        if str(g).startswith(GROUND_PREFIX):
            stored.setdefault(g, []).append(j)
    for j, p in enumerate(meta.get("images") or []):
        stored.setdefault(("image", _key(p)), []).append(j)
    copied = _copied(meta.get("copies"), copies) if copies is not None else [[] for _ in label_paths]
    for i, (path, shape) in enumerate(zip(label_paths, shapes)):
        same = stored.get(_key(path), [])
        same = same + [j for j in copied[i] if j not in same]
        ground = grounds[i] if grounds is not None else ""
        if ground.startswith(GROUND_PREFIX):
            same = same + [j for j in stored.get(ground, []) if j not in same]
        if images is not None:
            same = same + [j for j in stored.get(("image", _key(images[i])), []) if j not in same]
        on_grid = [j for j in same if tuple(meta["shapes"][j]) == tuple(shape)]
        if not on_grid and same and data is not None and data.kind == "volume" and data.spacing is not None:
            (axes, file_shape), = label_sources([path], data)
            resampled = [j for j in same if tuple(meta["shapes"][j]) == tuple(len(a) for a in axes)]
            if resampled and tuple(file_shape) == tuple(shape):  # read at data.spacing then, at the file's grid now
                coords = np.unravel_index(used["train_index"][np.isin(used["train_file"], resampled)],
                                          tuple(meta["shapes"][resampled[0]]))
                voxels = np.ravel_multi_index(tuple(a[c] for a, c in zip(axes, coords)), tuple(file_shape))
                here = files == i
                seen[here] = np.isin(flats[here], voxels)
                continue
        regridded += bool(same) and not on_grid
        if on_grid:
            here = files == i
            seen[here] = np.isin(flats[here], used["train_index"][np.isin(used["train_file"], on_grid)])
    if geo is not None:
        seen |= _same_places(used, geo, shapes, files, flats)
    if (earlier := meta.get("encoder_fine_tune")) and depth < MAX_CHAIN:
        seen |= trained_positions(earlier, label_paths, shapes, files, flats, data, grounds, images, say=False,
                                  depth=depth + 1, copies=copies, geo=geo)[0]
    if not say:
        return seen, None
    notes = [_scored_apart(int(seen.sum()), files.size, "positions")] if seen.any() else []
    if not seen.any() and not regridded:
        stored_paths = meta.get("paths") or []
        alike = _warn_alike([stored_paths[j] for j in np.unique(used["train_file"]) if j < len(stored_paths)],
                            label_paths, "label files")
        notes += [alike] if alike else []
    if regridded:
        notes.append(f"{regridded} of these label files trained this model on another grid than theirs now; their "
                     "voxels that trained it cannot be told apart and are in the test metrics")
        log.warning("warning: %s.", notes[-1])
    if geo is not None and (near := _elsewhere(used, geo, shapes)):
        notes.append(f"{near} places this model trained on lie inside these rasters on another grid (reprojected, "
                     "resampled or cut at a fraction of a pixel): they cannot be told apart and may be among the "
                     "test positions, so the test metrics may be optimistic")
        log.warning("warning: %s.", notes[-1])
    return seen, "; ".join(notes) or None


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
                        "value): nothing to score. Give the labels of its task, with its class values, or say how these are coded: "
                        "--set \"labels.remap={...}\" / labels.ignore_value=V.")
    note = (f"label values {[v for v, _ in unknown]} ({sum(c for _, c in unknown)} labelled positions) are not "
            f"classes this model was trained on (its classes: {classes}); they are left out of the metrics")
    log.warning("warning: %s.", note)
    return [note]
