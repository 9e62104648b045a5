"""Evaluate a fine-tuned model: predict whole images as ``predict`` does, compare at labelled positions, write
``metrics.json`` and ``confusion.png``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from geomed_ssl.config import DataConfig
from geomed_ssl.data.stats import BandStats
from geomed_ssl.downstream.labels import LabelSelection, read_label
from geomed_ssl.downstream.metrics import classification_metrics, confusion_matrix, save_confusion_png
from geomed_ssl.outdirs import check_out_dir, prepare_out_dir
from geomed_ssl.outfiles import atomic_path, atomic_write_text


def data_config(meta: dict[str, Any]) -> DataConfig:
    """The data settings a model was trained with (volume orientation, spacing, intensity), from its config.json."""
    d = meta.get("data", {})
    return DataConfig(kind=d.get("kind", "raster"), spacing=d.get("spacing"), intensity=d.get("intensity", "auto"),
                      ct_window=d.get("ct_window", [-1000.0, 1000.0]), nodata=d.get("nodata"),
                      channels=d.get("channels"), patch_size=list(meta["window"]))


def model_fn(model: torch.nn.Module) -> Any:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    return run


def predict_to_arrays(model: torch.nn.Module, meta: dict[str, Any], paths: Sequence[str], overlap: float = 0.25,
                      blend: str = "gaussian") -> list[np.ndarray]:
    """Class-index maps of whole images in the orientation ``read_label`` uses (rasters as stored, volumes RAS),
    computed on the device the model is on."""
    from geomed_ssl.downstream.predict import predict_raster, predict_volume
    from geomed_ssl.downstream.sliding import model_device

    device = model_device(model)
    cfg = data_config(meta)
    stats = BandStats.from_dict(meta["encoder"]["stats"])
    k = len(meta["classes"])
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(paths):
            if cfg.kind == "raster":
                target = Path(tmp) / f"pred_{i}.tif"
                predict_raster(model_fn(model), path, target, stats, window=meta["window"], overlap=overlap,
                               blend=blend, num_classes=k, data_cfg=cfg, device=device)
            else:
                target = Path(tmp) / f"pred_{i}.nii.gz"
                predict_volume(model_fn(model), path, target, stats, roi_size=meta["window"], data_cfg=cfg,
                               overlap=overlap, blend="gaussian" if blend != "constant" else blend, num_classes=k,
                               device=device)
            labels, _ = read_label(target, cfg.kind, ignore_value=None, spacing=cfg.spacing)
            out.append(labels)
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


def evaluate_segmentation(model: torch.nn.Module, meta: dict[str, Any], records: Sequence[Any],
                          label_arrays: Sequence[np.ndarray], selection: LabelSelection, out: Path) -> dict[str, Any]:
    """Metrics on the training and test positions; writes ``metrics.json`` and ``confusion.png`` (test split)."""
    # a stacked-channel record (data.channels) is predicted from its folder, as `geomed-ssl predict` takes it
    paths = [str(Path(r.path).parent) if len(r.paths) > 1 else r.path for r in records]
    predictions = predict_to_arrays(model, meta, paths)
    names = selection.class_names
    results: dict[str, Any] = {"classes": [{"value": v, "name": n} for v, n in zip(selection.classes, names)],
                               "notes": selection.notes, "split": selection.split}
    for which in ("train", "test"):
        cm = metrics_at(predictions, selection, which)
        results[which] = {**classification_metrics(cm), "n": int(cm.sum())}
        if which == "test":
            save_confusion_png(cm, names, out / "confusion.png")
            results[which]["confusion"] = cm.tolist()
    atomic_write_text(out / "metrics.json", json.dumps(results, indent=2))
    return results


def load_run(ft_dir: str | Path, device: str | torch.device | None = "auto",
             ) -> tuple[torch.nn.Module, dict[str, Any], Any]:
    """The fine-tuned model (on ``device``; auto: CUDA when available), its config.json and its recipe."""
    from geomed_ssl.checkpoint import load_model
    from geomed_ssl.config import load_recipe
    from geomed_ssl.downstream.sliding import resolve_device

    model, meta = load_model(ft_dir)
    model.to(resolve_device(device))
    recipe_path = Path(ft_dir) / "config.yaml"
    recipe = load_recipe(recipe_path if recipe_path.is_file() else None)
    return model, meta, recipe


def eval_out_dir(ft_dir: str | Path, out: str | Path | None) -> Path:
    """Where ``evaluate`` writes ``metrics.json`` and ``confusion.png``: ``out``, by default ``FT_DIR/eval``."""
    return Path(out) if out is not None else Path(ft_dir) / "eval"


def evaluate_dir(ft_dir: str | Path, images: str | Path | None = None, labels: str | Path | None = None,
                 data: str | Path | None = None, out: str | Path | None = None,
                 device: str | None = "auto") -> dict[str, Any]:
    """Metrics of a fine-tuned model on every labelled pixel/voxel (segmentation) or image (classification), run
    on ``device`` (auto: CUDA when available)."""
    from geomed_ssl.data.catalog import scan
    from geomed_ssl.downstream.labels import labelled_pixels, read_label_pairs, scan_class_folders
    from geomed_ssl.errors import DataError, GeomedError

    default = eval_out_dir(ft_dir, None)
    out = eval_out_dir(ft_dir, out)
    rule = {"command": "evaluate", "resume": True, "allow_inside": [default],
            "inputs": {"fine-tune folder": ft_dir, "images folder": images, "labels": labels, "data folder": data}}
    check_out_dir(out, **rule)  # the folder is made once the inputs are read
    model, meta, recipe = load_run(ft_dir, device)
    values = [c["value"] for c in meta["classes"]]
    names = [c["name"] for c in meta["classes"]]
    if meta["task"] == "segment":
        if images is None or (labels is None and recipe.labels.label_name is None):
            raise GeomedError("a segmentation model is evaluated with --images IMG_DIR --labels LABELS (a folder, "
                              "a label file or a CSV), or with labels.label_name set in its recipe.")
        catalog = scan(images, recipe.data)
        pairs, arrays, masks = read_label_pairs(catalog.records, labels, recipe.labels, recipe.data)
        files, flats, vals = labelled_pixels(arrays, masks)
        unknown = sorted(set(np.unique(vals).tolist()) - set(values))
        empty = np.zeros(0, np.int64)
        selection = LabelSelection(empty.astype(np.int32), empty, empty, files, flats, vals, values, names,
                                   [a.shape for a in arrays],
                                   notes=[f"label values {unknown} are not classes of this model; not evaluated"]
                                   if unknown else [], split="all labelled", paths=[p for _, p in pairs])
        prepare_out_dir(out, **rule)
        return evaluate_segmentation(model, meta, [r for r, _ in pairs], arrays, selection, out)
    if data is None:
        raise GeomedError("a classification model is evaluated with --data CLASS_FOLDERS_DIR.")
    from geomed_ssl.data.stats import BandStats
    from geomed_ssl.downstream.classify import ImageDataset, evaluate_images

    records, labels_idx, folder_names = scan_class_folders(data, recipe.data)
    missing = [n for n in folder_names if n not in names]
    if missing:
        raise DataError(f"class folders {missing} in '{data}' are not classes of this model ({', '.join(names)}).")
    mapped = np.array([names.index(folder_names[i]) for i in labels_idx], np.int64)
    dataset = ImageDataset(records, mapped, BandStats.from_dict(meta["encoder"]["stats"]), recipe.data,
                           meta["encoder"]["patch_size"])
    prepare_out_dir(out, **rule)
    return evaluate_images(model, dataset, mapped, {"test": np.arange(len(records))}, names, out)


def predict_dir(ft_dir: str | Path, inputs: Sequence[str | Path], out: str | Path, overlap: float = 0.25,
                blend: str = "gaussian", probabilities: bool = False, batch_size: int = 8,
                device: str | None = "auto") -> list[str]:
    """Segmentation: class-map GeoTIFF/NIfTI per input on its own grid (values = the label values trained on).
    Classification: ``predictions.csv`` with one row per image. Runs on ``device`` (auto: CUDA when available).
    Returns printable lines."""
    from geomed_ssl.downstream.predict import plan_outputs, predict_files
    from geomed_ssl.downstream.sliding import model_device

    out = Path(out)
    rule = {"command": "predict", "resume": True, "inputs": {"fine-tune folder": ft_dir, "input": list(inputs)}}
    check_out_dir(out, **rule)  # the folder is made once the inputs are listed
    model, meta, recipe = load_run(ft_dir, device)
    stats = BandStats.from_dict(meta["encoder"]["stats"])
    if meta["task"] != "segment":
        records = image_records(recipe, inputs)
        prepare_out_dir(out, **rule)
        return predict_classes(model, meta, recipe, records, out)
    cfg = data_config(meta)
    plan_outputs([str(p) for p in inputs], out, cfg)
    prepare_out_dir(out, **rule)
    summaries = predict_files(model_fn(model), [str(p) for p in inputs], out, stats, num_classes=len(meta["classes"]),
                              window=meta["window"], data_cfg=cfg, band_names=meta["encoder"]["band_names"],
                              overlap=overlap, blend=blend, batch_size=batch_size, probabilities=probabilities,
                              class_values=[c["value"] for c in meta["classes"]], device=model_device(model))
    return [f"{s['input']} -> {s['output']}" for s in summaries]


def image_records(recipe: Any, inputs: Sequence[str | Path]) -> list[Any]:
    """Catalog records of the images to classify: the given files, or every image under the given folders."""
    from geomed_ssl.data.catalog import scan

    records = []
    for item in inputs:
        item = Path(item)
        catalog = scan(item if item.is_dir() else item.parent, recipe.data)
        records += [r for r in catalog.records if item.is_dir() or Path(r.path).resolve() == item.resolve()]
    return records


def predict_classes(model: torch.nn.Module, meta: dict[str, Any], recipe: Any, records: Sequence[Any],
                    out: Path) -> list[str]:
    """One predicted class (and its probability) per image (catalog ``records``), in ``out/predictions.csv``."""
    import csv

    from geomed_ssl.downstream.classify import ImageDataset
    from geomed_ssl.downstream.sliding import model_device

    stats = BandStats.from_dict(meta["encoder"]["stats"])
    dataset = ImageDataset(records, np.zeros(len(records), np.int64), stats, recipe.data, meta["encoder"]["patch_size"])
    names = [c["name"] for c in meta["classes"]]
    device = model_device(model)
    rows = []
    with torch.no_grad():
        for i in range(len(records)):
            probs = model(torch.from_numpy(dataset.image(i)[0])[None].to(device)).softmax(1)[0].cpu()
            k = int(probs.argmax())
            rows.append({"file": records[i].path, "class": names[k], "probability": round(float(probs[k]), 4)})
    with atomic_path(out / "predictions.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "class", "probability"])
        writer.writeheader()
        writer.writerows(rows)
    return [f"{len(rows)} images -> {out / 'predictions.csv'}"]
