"""A fine-tuned model's folder (FT_DIR) put to work: the model with its data settings and recipe, and ``predict``:
class maps on each input's own grid (segmentation) or ``predictions.csv`` (classification)."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from geomed_ssl.config import DataConfig, build_checked
from geomed_ssl.data.stats import BandStats
from geomed_ssl.windows.tiling import DEFAULT_OVERLAP
from geomed_ssl.errors import DataError, OutputError
from geomed_ssl.outdirs import check_out_dir, prepare_out_dir
from geomed_ssl.outfiles import atomic_path
from geomed_ssl.outlocks import locked_briefly
from geomed_ssl.process import keeps_process_state

log = logging.getLogger("geomed_ssl")

NAMING_KEYS = ("sensor", "band_names", "wavelengths", "include", "exclude")  # older config.json: from the recipe


def data_config(meta: dict[str, Any], recipe_data: Any = None) -> DataConfig:
    """The data settings a model was trained with, from its config.json: volume orientation, spacing, intensity,
    and how band names are resolved and which files a folder holds (sensor, band_names, wavelengths, include,
    exclude; taken from ``recipe_data``, the FT_DIR's recipe, when an older config.json lacks them)."""
    d = meta.get("data", {})
    naming = {k: d[k] if k in d else getattr(recipe_data, k, None) for k in NAMING_KEYS}
    naming["include"] = naming["include"] or ["**/*"]
    naming["exclude"] = naming["exclude"] or []
    values = {"kind": d.get("kind", "raster"), "spacing": d.get("spacing"), "intensity": d.get("intensity", "auto"),
              "ct_window": d.get("ct_window", [-1000.0, 1000.0]), "nodata": d.get("nodata"),
              "channels": d.get("channels"), "patch_size": list(meta["window"]), **naming}
    return build_checked(DataConfig, values, "data", "the model's config.json")  # a damaged one: one line


def model_stats(meta: dict[str, Any], source: str = "stats") -> BandStats:
    """A fine-tuned model's band statistics, with its encoder's band wavelengths (the band rule refuses data whose
    same-named bands lie elsewhere)."""
    stats = BandStats.from_dict(meta["encoder"]["stats"], source=source)
    stats.wavelengths = meta["encoder"].get("wavelengths")
    return stats


def model_fn(model: torch.nn.Module) -> Any:
    """``model`` as the sliding-window predictors call it: without gradients, telling them what it blends."""
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    run.blend_logits = bool(getattr(model, "blend_logits", False))  # type: ignore[attr-defined]
    return run



def load_run(ft_dir: str | Path, device: str | torch.device | None = "auto",
             ) -> tuple[torch.nn.Module, dict[str, Any], Any]:
    """The fine-tuned model (on ``device``; auto: CUDA when available), its config.json and its recipe."""
    from geomed_ssl.checkpoint import load_model
    from geomed_ssl.config import load_recipe
    from geomed_ssl.models.device import resolve_device

    model, meta = load_model(ft_dir)
    model.to(resolve_device(device))
    recipe_path = Path(ft_dir) / "config.yaml"
    recipe = load_recipe(recipe_path if recipe_path.is_file() else None)
    return model, meta, recipe


def with_data(meta: dict[str, Any], recipe: Any, band_names: Sequence[str] | None = None,
              nodata: float | None = None) -> tuple[dict[str, Any], Any]:
    """The model's config and recipe with ``data.band_names`` set to ``band_names`` (the order of the bands of files
    without band descriptions) and ``data.nodata`` to ``nodata`` (it replaces the files' own tags), as ``predict`` /
    ``evaluate --band-names / --nodata`` state them; what is None stays as the model has it."""
    changes: dict[str, Any] = {}
    if band_names:
        from geomed_ssl.config.loading import string_list

        changes["band_names"] = [str(n).strip() for n in string_list(band_names, "band_names", "band names")]
    if nodata is not None:
        changes["nodata"] = float(nodata)
    if not changes:
        return meta, recipe
    meta = {**meta, "data": {**meta.get("data", {}), **changes}}
    return meta, dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, **changes))


@keeps_process_state
def predict_dir(ft_dir: str | Path, inputs: str | Path | Sequence[str | Path], out: str | Path,
                overlap: float = DEFAULT_OVERLAP, blend: str = "gaussian", probabilities: bool | str = False,
                batch_size: int = 8, device: str | None = "auto", strict: bool = False,
                band_names: Sequence[str] | None = None, nodata: float | None = None,
                resume: bool = False) -> list[str]:
    """Segmentation: class-map GeoTIFF/NIfTI per input on its own grid (values = the label values trained on).
    Classification: ``predictions.csv`` with one row per image. Runs on ``device`` (auto: CUDA when available). Folders
    are read with the model's data settings (band naming, data.include / data.exclude). ``strict``: problem files and
    band names assigned by position are errors. ``inputs``: one file or folder, or a list of them. ``probabilities``:
    True or "float32", or "uint8" (round(p * 254)), adds per-class probabilities. ``band_names``: the bands of files
    without band descriptions, in order (default: the model's ``data.band_names``, else its sensor profile's).
    ``nodata``: the inputs' nodata value, replacing their own tags (default: the model's ``data.nodata``, else each
    file's tag). ``resume`` (segmentation): the class maps an earlier prediction of the same model, settings and inputs
    finished in ``out`` stay, the rest is predicted (:mod:`geomed_ssl.inference.resume`). Returns printable lines."""
    from geomed_ssl.checkpoint import export_fingerprint
    from geomed_ssl.inference.predict import plan_outputs, predict_files, usable_inputs, warn_other_models
    from geomed_ssl.inference.resume import finished, run_keys
    from geomed_ssl.inference.legend import category_list
    from geomed_ssl.inference.sliding import check_pace, proba_kind
    from geomed_ssl.models.device import model_device
    from geomed_ssl.models.model_data import records_for_stats, warn_other_scale

    out = Path(out)
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not inputs:
        raise DataError("no input to predict: give one or more files or folders.")
    check_pace(overlap, batch_size)  # before OUT_DIR is made
    proba_kind(probabilities)
    rule = {"command": "predict", "resume": True, "inputs": {"fine-tune folder": ft_dir, "input": inputs}}
    check_out_dir(out, **rule)  # the folder is made once the inputs are listed
    model, meta, recipe = load_run(ft_dir, device)
    meta, recipe = with_data(meta, recipe, band_names, nodata)
    stats = model_stats(meta, f"model {ft_dir}")
    scale, name = (meta.get("encoder") or {}).get("scale"), f"model '{ft_dir}'"
    if meta["task"] != "segment":
        earlier_predictions(out / "predictions.csv")  # a user's own file of that name: refused before the work
        records = records_for_stats(image_records(meta, recipe, inputs, strict), stats)
        warn_other_scale(records, scale, recipe.data.spacing, name)
        prepare_out_dir(out, **rule)
        if resume:
            log.info("--resume keeps class maps; a classifier's predictions.csv is written at the end, whole, so "
                     "every image is classified.")
        return predict_classes(model, meta, recipe, records, out, str(Path(ft_dir).resolve()),
                               probabilities=probabilities)
    cfg = data_config(meta, recipe.data)
    planned = usable_inputs(plan_outputs([str(p) for p in inputs], out, cfg, meta["window"]), cfg, blend, stats,
                            strict, scale=scale, model=name, window=meta["window"],
                            room=(out, [c["value"] for c in meta["classes"]], probabilities))
    runs = run_keys(planned, export_fingerprint(ft_dir), {"overlap": float(overlap), "blend": blend,
                                                     "probabilities": proba_kind(probabilities),
                                                     "data": dataclasses.asdict(cfg)})
    values, names = [c["value"] for c in meta["classes"]], [str(c.get("name", c["value"])) for c in meta["classes"]]
    kept = finished(planned, runs, bool(probabilities), category_list(values, names)) if resume else []
    if kept:
        log.info("--resume: %d of %d input(s) already have their class map from this model with these settings "
                 "(e.g. '%s'); predicting the other %d.", len(kept), len(planned), planned[kept[0]],
                 len(planned) - len(kept))
    warn_other_models({p: o for p, o in planned.items() if p not in kept}, str(Path(ft_dir).resolve()))
    prepare_out_dir(out, **rule)
    todo = [str(p) for p in planned if p not in kept]
    summaries = [] if not todo else predict_files(
                              model_fn(model), todo, out, stats, num_classes=len(meta["classes"]),
                              window=meta["window"], data_cfg=cfg, overlap=overlap, blend=blend,
                              batch_size=batch_size, probabilities=probabilities,
                              class_values=values, device=model_device(model),
                              class_colors=[c.get("color") for c in meta["classes"]], class_names=names,
                              names_by_position="error" if strict else "warn", made_by=str(Path(ft_dir).resolve()),
                              runs={Path(p): runs[p] for p in planned})
    return ([f"{p} -> {planned[p]} (kept: --resume)" for p in kept]
            + [f"{s['input']} -> {s['output']}" for s in summaries])


def as_named(data_cfg: DataConfig, path: str | Path) -> DataConfig:
    """``data_cfg`` for reading ``path``: a folder as its ``data.include`` / ``data.exclude`` say, a file the user
    named whatever they say."""
    return data_cfg if Path(path).is_dir() else dataclasses.replace(data_cfg, include=["**/*"], exclude=[])


def image_records(meta: dict[str, Any], recipe: Any, inputs: Sequence[str | Path], strict: bool = False) -> list[Any]:
    """Catalog records of the images to classify: the given files, or the images under the given folders that the
    model's data settings select. Problem files are skipped with a warning (an error with ``strict``)."""
    from geomed_ssl.data.catalog import scan
    from geomed_ssl.files.kinds import check_input_kind
    from geomed_ssl.labels.classes import whole_images

    cfg = data_config(meta, recipe.data)
    records = []
    for item in inputs:
        item = Path(item)
        check_input_kind(item, cfg.kind, "this model")
        data_cfg = whole_images(as_named(recipe.data, item))  # a classifier reads whole images, of any size
        try:  # each image meets the model by band name: no majority of band counts among the inputs
            catalog = scan(item, data_cfg, strict=strict, names_by_position="error" if strict else "warn",
                           majority=False, reader="this model")
        except DataError as err:
            if strict or not item.is_file():
                raise
            log.warning("warning: skipped '%s': %s", item, err)  # a named file alone, as a folder's files are
            continue
        catalog.warn_problems()
        records += catalog.records
    if not records:
        raise DataError(f"no image to classify in {', '.join(map(str, inputs))}; see the warnings above.")
    return records


PREDICTION_COLUMNS = ["file", "class", "probability", "model"]


def predict_classes(model: torch.nn.Module, meta: dict[str, Any], recipe: Any, records: Sequence[Any],
                    out: Path, model_name: str = "", probabilities: bool = False) -> list[str]:
    """One predicted class (and its probability) per image (catalog ``records``, read as the model's bands:
    ``records_for_stats``; a ``data.channels`` stack named as commands take it, by its folder), in
    ``out/predictions.csv`` with the model (``model_name``, the FT_DIR) that made it,
    and with ``probabilities`` one ``p_<class>`` column per class; the rows an earlier run wrote there for other
    images stay (predict adds to its folder)."""
    import csv

    from geomed_ssl.data.labelled import ImageDataset
    from geomed_ssl.labels.classes import image_name
    from geomed_ssl.models.device import model_device

    stats = model_stats(meta)
    dataset = ImageDataset(records, np.zeros(len(records), np.int64), stats, recipe.data, meta["encoder"]["patch_size"])
    names = [c["name"] for c in meta["classes"]]
    device = model_device(model)
    rows = []
    with torch.no_grad():
        for i in range(len(records)):
            probs = model(torch.from_numpy(dataset.image(i)[0])[None].to(device)).softmax(1)[0].cpu()
            k = int(probs.argmax())
            rows.append({"file": image_name(records[i]), "class": names[k], "probability": round(float(probs[k]), 6),
                         "model": model_name,
                         **({f"p_{n}": round(float(p), 6) for n, p in zip(names, probs)} if probabilities else {})})
    new = {r["file"] for r in rows}
    renamed = {r.path for r in records if len(r.paths) > 1}  # a stack as an earlier version named it (its first
    with locked_briefly(out):  # file), replaced when the same model wrote it; several predict jobs may share OUT_DIR
        kept = [r for r in earlier_predictions(out / "predictions.csv") if r.get("file") not in new
                and not (r.get("file") in renamed and r.get("model") == model_name)]
        with atomic_path(out / "predictions.csv") as tmp, tmp.open("w", newline="") as f:
            # p_<class> columns and any the user added to the earlier rows (a reviewer's notes) are kept
            extra = [c for c in dict.fromkeys(c for r in kept + rows for c in r) if c not in PREDICTION_COLUMNS]
            writer = csv.DictWriter(f, fieldnames=PREDICTION_COLUMNS + extra, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept + rows)
    more = f" (and {len(kept)} earlier rows)" if kept else ""
    return [f"{len(rows)} image{'s' if len(rows) != 1 else ''} -> {out / 'predictions.csv'}{more}"]


def earlier_predictions(path: Path) -> list[dict[str, str]]:
    """The rows of an earlier run's ``predictions.csv`` (none when there is none). A file there that is not one of
    ours (no ``file``, ``class`` and ``probability`` columns, or unreadable as CSV) is an error: a user's own file
    of that name is never replaced."""
    import csv

    if not path.exists() and not path.is_symlink():
        return []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # a spreadsheet's UTF-8 save starts with a BOM
            reader = csv.DictReader(f)
            if reader.fieldnames and {"file", "class", "probability"} <= set(reader.fieldnames):
                return [{k: v for k, v in row.items() if k is not None} for row in reader]  # cells past the header
            found = f"its columns are {', '.join(reader.fieldnames)}" if reader.fieldnames else "it is empty"
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        found = f"it cannot be read as CSV ({err})"
    raise OutputError(f"'{path}' is not a predictions.csv that geomed-ssl wrote ({found}), and predict would "
                      "replace it: move it away or predict into another folder.")
