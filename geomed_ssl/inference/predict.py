"""Prediction entry point: list the input files, name their outputs, send each to the raster or volume predictor.

``predict_raster`` (strips streamed to a GeoTIFF, ``raster.py``), ``predict_volume`` (MONAI sliding window
to NIfTI, ``volume.py``) and the blending weights (``sliding.py``) are re-exported, so one import serves;
the windows come from :mod:`geomed_ssl.windows.tiling`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from geomed_ssl.data.catalog import glob_match, select
from geomed_ssl.files.kinds import check_input_kind, input_kind
from geomed_ssl.data.records import stack_input
from geomed_ssl.files.cases import case_name, is_case_file
from geomed_ssl.files.listing import list_files, once
from geomed_ssl.data.stats import BandStats
from geomed_ssl.windows.tiling import DEFAULT_OVERLAP, blend_weights
from geomed_ssl.errors import DataError
from geomed_ssl.inference.raster import RASTER_BLENDS, predict_raster, warn_inputs
from geomed_ssl.inference.sliding import ModelFn, proba_kind, as_model, channel_records
from geomed_ssl.inference.volume import VOLUME_BLENDS, predict_volume
from geomed_ssl.inference.writers import proba_path
from geomed_ssl.outcommands import fitted_stem, recorded_input, sidecar_path
from geomed_ssl.outlocks import locked_briefly
from geomed_ssl.outfiles import remove_stale_partials

__all__ = ["ModelFn", "RASTER_BLENDS", "VOLUME_BLENDS", "blend_weights", "list_inputs", "plan_outputs", "predict_files",
           "predict_raster", "predict_volume"]

RASTER_EXT, VOLUME_EXT = (".tif", ".tiff"), (".nii.gz", ".nii")
BIDS_DATATYPES = ("anat", "func", "dwi", "fmap", "perf", "pet")  # BIDS folders of one subject's session's images
log = logging.getLogger("geomed_ssl")


def _kind_and_stem(path: Path, data_cfg: Any) -> tuple[str, str]:
    """raster or volume, and the name its outputs take: the file's without extension, a stack's folder's (or BIDS
    subject's: :func:`_stack_name`), or, for the first channel file of one case of a folder of several, the case's."""
    name = path.name
    low = name.lower()
    channels = list(getattr(data_cfg, "channels", None) or [])
    for kind, exts in (("volume", VOLUME_EXT), ("raster", RASTER_EXT)):
        for ext in exts:
            if low.endswith(ext):
                case = next((case_name(name, g) for g in channels if glob_match(name, g)), None)
                return kind, (case if case and is_case_file(path, channels) else name[: -len(ext)])
    if path.is_dir() and channels:  # one folder of stacked channel files
        return getattr(data_cfg, "kind", "volume"), _stack_name(path, channels, getattr(data_cfg, "exclude", None))
    raise DataError(f"'{path}' is neither a GeoTIFF (.tif/.tiff) nor a NIfTI (.nii/.nii.gz); nothing to predict.")


def _stack_name(folder: Path, channels: list[str], exclude: list[str] | None = None) -> str:
    """A stacked folder's outputs' name: the folder's, except for a BIDS data-type folder (``anat/``: every subject
    has one, so it names no subject), named by the case its channel files share (``sub-01_ses-1`` of
    ``sub-01_ses-1_FLAIR.nii.gz`` under ``*FLAIR*``; of the image files ``data.exclude`` keeps, as the stack is read:
    a ``_FLAIR_mask`` beside them names no case)."""
    if folder.name.lower() not in BIDS_DATATYPES:
        return folder.name
    images = [f.name for f in folder.iterdir() if not f.name.startswith(".") and f.is_file()
              and f.name.lower().endswith(VOLUME_EXT + RASTER_EXT)
              and not any(glob_match(f.name, x) for x in exclude or ())]
    cases = {case_name(name, g) for name in images for g in channels if glob_match(name, g)}
    return cases.pop() if len(cases) == 1 and "" not in cases else folder.name


def _stacked_inputs(folder: Path, data_cfg: Any) -> list[Path]:
    """The stacked ``data.channels`` samples under ``folder``, as predict takes them: each folder that holds one
    (``folder`` itself when it is one), and for a folder of several cases each case's first channel file."""
    records = channel_records(folder, data_cfg, getattr(data_cfg, "kind", "volume"))
    if not records:
        raise DataError(f"no folder under '{folder}' holds the channel files {data_cfg.channels}.")
    return sorted({Path(stack_input(r)) for r in records})


OUTPUT_NAME = re.compile(r"_pred(_proba)?\.(tif|tiff|nii|nii\.gz)$", re.IGNORECASE)  # what predict names its outputs


def _folder_files(folder: Path, data_cfg: Any, kind: str | None) -> list[Path]:
    """The GeoTIFF / NIfTI files under ``folder`` that ``data.include`` / ``data.exclude`` keep (the globs the
    model was trained with, relative to ``folder``), of ``kind`` when known; hidden files skipped, and files named
    as predict's outputs (``X_pred.tif``, ``X_pred_proba.nii.gz``) skipped with a warning naming them."""
    include = list(getattr(data_cfg, "include", None) or ["**/*"])
    exclude = list(getattr(data_cfg, "exclude", None) or [])
    typed, skipped = [], []
    for p in sorted(list_files(folder)):
        if p.name.lower().endswith((*RASTER_EXT, *VOLUME_EXT)):
            (skipped if OUTPUT_NAME.search(p.name) else typed).append(p)
    if skipped:
        names = ", ".join(str(p.relative_to(folder)) for p in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        log.warning(f"warning: skipped {len(skipped)} file(s) under '{folder}' named as predict's outputs ({names}); "
                    "name a file explicitly to predict it.")
    of_kind = [p for p in typed if kind is None or input_kind(p) == kind]
    selected = select([str(p.relative_to(folder)) for p in of_kind], include, exclude, folder)
    kept = [Path(p) for p in once([str(p) for p, k in zip(of_kind, selected) if k], folder)]  # links: once
    left = [p for p, k in zip(of_kind, selected) if not k]
    if left and kept:  # a scene named like a mask (cloudmasked_T33.tif) must not go unpredicted without a word
        log.info("%d file(s) under '%s' are left out by the model's data.include %s / data.exclude %s, e.g. '%s'; "
                 "name a file on the command line to predict it.", len(left), folder, include, exclude,
                 left[0].relative_to(folder))
    if not kept:
        what = {"raster": "GeoTIFF", "volume": "NIfTI", None: "GeoTIFF or NIfTI"}[kind]
        raise DataError(f"no {what} files to predict under '{folder}': {len(typed)} GeoTIFF/NIfTI files, "
                        f"{len(of_kind)} of the model's kind, {len(kept)} left after the model's data.include "
                        f"{include} and data.exclude {exclude}.")
    return kept


def list_inputs(inputs: str | Path | Sequence[str | Path], data_cfg: Any = None, kind: str | None = None,
                ) -> list[Path]:
    """Files to predict: the given files, or the GeoTIFF/NIfTI files under a folder that ``data.include`` /
    ``data.exclude`` keep (files named as predict's outputs skipped; only ``kind``'s files when given); with
    ``data.channels`` set, each folder of stacked channel files under a folder is one input (each case of a folder
    of several: its first channel file), and so is a channel file named explicitly. A file named explicitly is
    predicted whatever data.include / data.exclude say."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    out: list[Path] = []
    for item in map(Path, items):
        if not item.exists():
            raise DataError(f"input '{item}' does not exist.")
        if item.is_dir() and getattr(data_cfg, "channels", None):
            out += _stacked_inputs(item, data_cfg)
        elif item.is_dir():
            out += _folder_files(item, data_cfg, kind)
        elif is_case_file(item, getattr(data_cfg, "channels", None)):  # one channel file: its whole stack
            record, = channel_records(item, data_cfg, getattr(data_cfg, "kind", "volume"), strict=True)
            out.append(Path(stack_input(record)))
        else:
            out.append(item)
    return list(dict.fromkeys(out))  # a stack named by several of its files (a shell glob) is one input


def model_kind(window: int | Sequence[int] | None, data_cfg: Any) -> str | None:
    """raster or volume: ``data.kind`` when a config is given, else from the window's length (None for an int)."""
    if data_cfg is not None and getattr(data_cfg, "kind", None) in ("raster", "volume"):
        return data_cfg.kind
    if isinstance(window, (list, tuple)):
        return "raster" if len(window) == 2 else "volume" if len(window) == 3 else None
    return None


def plan_outputs(inputs: str | Path | Sequence[str | Path], out_dir: str | Path, data_cfg: Any = None,
                 window: int | Sequence[int] | None = None) -> dict[Path, Path]:
    """Each input file (see :func:`list_inputs`) and the output it is predicted into. A file of the other kind than
    the model's (a NIfTI for a raster model, or the reverse) is refused in one line, and two inputs with one output
    name (ignoring case: on a case-insensitive filesystem, macOS's or Windows', they would be one file) are an
    error."""
    expected = model_kind(window, data_cfg)
    planned: dict[Path, Path] = {}
    for p in list_inputs(inputs, data_cfg, expected):
        check_input_kind(p, expected, "this model")
        kind, stem = _kind_and_stem(p, data_cfg)
        out = Path(out_dir) / f"{fitted_stem(stem, str(p))}_pred{'.tif' if kind == 'raster' else '.nii.gz'}"
        other = next((k for k, v in planned.items() if v.name.lower() == out.name.lower()), None)
        if other is not None:
            same = ("" if planned[other].name == out.name
                    else " (names that differ only in case: one file on macOS or Windows)")
            raise DataError(f"'{p}' and '{other}' would both be written to '{planned[other].name}' in "
                            f"'{out_dir}'{same}; predict them into separate output folders.")
        refuse_foreign_outputs(out, p)
        planned[p] = out
    return planned


@contextlib.contextmanager
def still_ours(out: Path, p: Path, probabilities: bool) -> Iterator[None]:
    """Held while ``out`` (and its probabilities) take their final names: the folder's lock, inside which neither
    name may have been taken by another job's input since :func:`plan_outputs` (several ``predict`` jobs may write
    one folder at once); without ``probabilities``, an earlier run's for this input go once the map is in place,
    under the same lock (another job's, committed after, are kept; a kill before leaves the earlier pair)."""
    with locked_briefly(out.parent):
        refuse_foreign_outputs(out, p)
        yield
        if not probabilities:  # they would be another model's beside the new class map (with GDAL's sidecar)
            proba_path(out).unlink(missing_ok=True)
            sidecar_path(proba_path(out)).unlink(missing_ok=True)


def refuse_foreign_outputs(out: Path, p: Path) -> None:
    """The class map ``out`` and its probabilities (replaced by predicting ``p``, or deleted without them): one that
    exists and records another input than ``p``, or none (an earlier geomed-ssl's, or not ours at all), is an
    error; so is GDAL's sidecar of either (``X_pred.tif.aux.xml``) where the map is not there (the user's, or a
    viewer's left when the map was deleted: GDAL would read it with the new map)."""
    for path in (out, proba_path(out)):
        if path.is_file() and (earlier := recorded_input(path)) != str(Path(p).resolve()):  # a folder: a later error
            held = (f"the prediction of '{earlier}'" if earlier is not None else
                    "a file that records no input (an earlier geomed-ssl's prediction, or not geomed-ssl's)")
            raise DataError(f"'{path}' holds {held}, and predicting '{p}' would replace it (their outputs share one "
                            "name): predict it into another --out folder" + ("" if earlier is not None else
                                                                             ", or delete that file first if it is "
                                                                             "this input's") + ".")
        side = sidecar_path(path)
        if not path.exists() and side.is_file():  # GDAL would read it as the new map's: the user's, not replaced
            raise DataError(f"'{side}' is GDAL's sidecar of no map there, and predicting '{p}' would write "
                            f"'{path.name}' beside it (GDAL reads the two together): move it away, or predict into "
                            "another --out folder.")


def recorded_model(path: Path) -> str | None:
    """The model (FT_DIR) an earlier class map at ``path`` says made it: its ``GEOMED_SSL_MODEL`` tag (a GeoTIFF's
    metadata, a volume's comment extension), or for a volume of an earlier version its ``descrip`` after "by"
    (maybe only its end, after "..."); None when it says none."""
    found = recorded_input(path, "GEOMED_SSL_MODEL")
    if found is not None or path.name.lower().endswith((".tif", ".tiff")):
        return found
    try:
        import nibabel as nib

        text = nib.load(str(path)).header["descrip"].tobytes().split(b"\0")[0].decode("ascii", "replace")
    except Exception:  # noqa: BLE001 - a map that cannot say is not known to be another model's
        return None
    return text.split(" by ", 1)[1] if text.startswith("geomed-ssl prediction by ") else None


def warn_other_models(planned: dict[Path, Path], model: str) -> None:
    """Say, before any is replaced, which class maps in OUT_DIR another model made (comparing two models in one
    folder loses the first one's maps)."""
    def other(found: str | None) -> bool:  # a volume's descrip holds ASCII ('?' for others), maybe only the end
        return found is not None and not any(found == m or (found.startswith("...") and m.endswith(found[3:]))
                                             for m in (model, model.encode("ascii", "replace").decode()))

    replaced = [(out, found) for out in planned.values() if out.is_file() and other(found := recorded_model(out))]
    if replaced:
        out, found = replaced[0]
        log.warning(f"warning: {len(replaced)} class map(s) in '{out.parent}' were made by another model (e.g. "
                    f"'{out.name}' by '{found}') and are replaced by this one's; to keep both, predict each model into "
                    "its own --out.")


def usable_inputs(planned: dict[Path, Path], data_cfg: Any, blend: str, stats: BandStats, strict: bool = False,
                  scale: dict[str, Any] | None = None, model: str = "the model",
                  window: Sequence[int] | None = None, room: tuple[Path, Sequence[int], bool | str] | None = None
                  ) -> dict[Path, Path]:
    """The planned inputs ``predict`` can read, checked before its output folder is made: an unknown ``blend`` is
    an error; a file the catalog's probe refuses (truncated, corrupt, not an image; any size is taken, the
    predictor pads a scene smaller than its window) is an error with ``strict``,
    else skipped with a warning; none left is an error; an input without one of the model's bands (matched by
    name, as ``predict`` reads them: :func:`_check_bands`) is an error. Files whose pixels / voxels are far from
    ``scale``, the size ``model`` was trained at, are warned about (``model_data.warn_other_scale``), and so are
    files under half the model's ``window`` along a side (:func:`warn_padded`) and, with ``room`` (the output
    folder, the class values, ``probabilities``), outputs the folder's disk may lack room for
    (:func:`warn_disk_room`)."""
    import logging

    from geomed_ssl.data.probe import ProbeError, probe_file
    from geomed_ssl.data.records import BLANK_VOLUMES, is_blank, record_from_probes
    from geomed_ssl.errors import ConfigError
    from geomed_ssl.models.model_data import as_record, warn_other_scale

    usable, bad, probed = {}, [], []
    for p, out in planned.items():
        kind, _ = _kind_and_stem(p, data_cfg)
        blends = RASTER_BLENDS if kind == "raster" else VOLUME_BLENDS
        if blend not in blends:
            raise ConfigError(f"--blend must be one of {', '.join(blends)}, got '{blend}'.")
        anywhere = (1,) * (2 if kind == "raster" else 3)  # any size: the predictor pads a scene under its window
        if p.is_file():
            try:
                probe = probe_file(str(p), kind, data_cfg, anywhere)
                if kind == "volume" and not getattr(data_cfg, "channels", None):  # a volume of nodata alone: the
                    record_from_probes([probe], kind, data_cfg)  # catalog's refusal (a raster's map is written)
            except ProbeError as err:
                bad.append(f"'{p}': {str(err).rstrip('.')}")
                continue
            if kind == "volume" and is_blank(probe.value_range):
                logging.getLogger("geomed_ssl").warning(BLANK_VOLUMES, 1, p)
            probed.append(with_read_shape(as_record(probe, kind), probe, data_cfg))
        elif (first := first_channel_file(p, data_cfg)) is not None:  # a stack: its first file's grid, for the scale
            try:
                probe = probe_file(str(first), kind, data_cfg, anywhere)
                probed.append(with_read_shape(as_record(probe, kind, path=str(p)), probe, data_cfg))
            except ProbeError:
                pass  # the stack's reading says what is wrong with it
        _check_bands(p, kind, data_cfg, stats, "error" if strict else "ignore")
        usable[p] = out
    if bad and (strict or not usable):
        raise DataError(f"cannot predict {'; '.join(bad)}. Replace or leave out "
                        f"{'that file' if len(bad) == 1 else 'those files'}.")
    if bad:
        logging.getLogger("geomed_ssl").warning(f"warning: skipped {len(bad)} input(s) it cannot read or predict: "
                                                f"{'; '.join(bad)}.")
    warn_other_scale(probed, scale, getattr(data_cfg, "spacing", None), model)
    if window is not None:
        warn_padded(probed, window, model)
    if room is not None:
        warn_disk_room(probed, *room)
    return usable


def output_bytes(records: Sequence[Any], class_values: Sequence[int], probabilities: bool | str) -> int:
    """The uncompressed size of the class maps (one byte a pixel / voxel; two for label values past 255) and
    probability files (one band a class, float32 or uint8) of ``records``, on their own grids, a raster's with its
    overviews (a third more): what the outputs take at most (those a new map replaces are counted too)."""
    labels = 1 if max(class_values) <= 255 else 2
    per_pixel = labels + len(class_values) * {None: 0, "uint8": 1}.get(proba_kind(probabilities), 4)
    return sum(math.prod(r.shape) * (4 if len(r.shape) == 2 else 3) // 3 for r in records) * per_pixel


def warn_disk_room(records: Sequence[Any], out_dir: Path, class_values: Sequence[int],
                   probabilities: bool | str) -> None:
    """A warning before predicting when the outputs of ``records`` uncompressed (:func:`output_bytes`) exceed the
    free space of the disk ``out_dir`` is (or will be) on: deflate shrinks class maps many times, probabilities
    much less, and a full disk stops the run at the file that does not fit (the finished ones stay)."""
    from geomed_ssl.outdirs import free_bytes, size_text

    free = free_bytes(out_dir)
    needed = output_bytes(records, class_values, probabilities)
    if free is not None and needed > free:
        proba = " and probabilities" if proba_kind(probabilities) else ""
        log.warning("warning: the class maps%s of these %d input(s) take up to %s uncompressed and the disk of "
                    "'%s' has %s free; compression usually leaves class maps much smaller%s. Free some space or "
                    "give --out on a larger disk if the run stops with 'no space left on device'.", proba,
                    len(records), size_text(needed), out_dir, size_text(free),
                    ", probabilities less so" if proba else "")


def with_read_shape(record: Any, probe: Any, data_cfg: Any) -> Any:
    """``record`` with ``grid``: the shape its windows are cut from (a raster's rows and columns; a volume's voxels
    reoriented to RAS and resampled to ``data.spacing``, as the volume reader gives them)."""
    if record.kind == "raster":
        record.grid = tuple(record.shape[-2:])
    else:
        from geomed_ssl.data.probe import read_shape

        record.grid = read_shape(tuple(probe.shape[:3]), np.asarray(probe.geo["affine"], np.float64),
                                 getattr(data_cfg, "spacing", None))
    return record


def warn_padded(records: Sequence[Any], window: Sequence[int], model: str) -> None:
    """One warning naming the inputs under half ``window`` along a side (``inspect``'s size rule): the predictor
    pads them with the band means, so padding fills most of every window and their maps say little (a strip 1 px
    tall came out one class). Sides are counted on the grid the windows are cut from (:func:`with_read_shape`)."""
    from geomed_ssl.data.probe import under_half

    win = tuple(window)
    small = [r for r in records if len(getattr(r, "grid", ())) == len(win) and under_half(r.grid, win)]
    if small:
        r = small[0]
        what = "a larger scene" if len(win) == 2 else "a larger volume"
        log.warning(
            "warning: %d input(s) are smaller than half the %s window of %s (e.g. '%s': %s): each is predicted padded "
            "with the band means, which fill most of its windows, so its map is unreliable; predict the area inside "
            "%s, or fine-tune with data.patch_size near its size.", len(small),
            "x".join(map(str, win)), model, r.path, "x".join(map(str, r.grid)), what)


def first_channel_file(folder: Path, data_cfg: Any) -> Path | None:
    """The file of a ``data.channels`` stack folder its first glob picks (None: none)."""
    first = (getattr(data_cfg, "channels", None) or ["*"])[0]
    return next((f for f in sorted(folder.iterdir()) if f.is_file() and glob_match(f.name, first)), None)


def _check_bands(path: Path, kind: str, data_cfg: Any, stats: BandStats, names_by_position: str) -> None:
    """A DataError naming the missing bands when ``path`` lacks one of the model's (the header only, read as
    ``predict`` will read it; band names assigned by position are reported once, by the prediction itself, unless
    ``names_by_position`` is "error")."""
    import contextlib

    from geomed_ssl.inference.raster import RasterInput, channel_files
    from geomed_ssl.inference.volume import prediction_config, volume_record

    if kind == "raster":
        files, stacked = channel_files(path, data_cfg, names_by_position)
        with contextlib.ExitStack() as stack:
            RasterInput.open(stack, path, files, stacked, stats, None, data_cfg, None, names_by_position)
    else:
        volume_record(path, prediction_config(Path(path), data_cfg), stats, None, names_by_position)


def predict_files(
    model_fn: ModelFn,
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    stats: BandStats,
    *,
    num_classes: int,
    window: int | Sequence[int],
    data_cfg: Any = None,
    band_names: Sequence[str] | None = None,
    overlap: float = DEFAULT_OVERLAP,
    blend: str = "gaussian",
    batch_size: int = 8,
    probabilities: bool | str = False,
    device: str | torch.device = "cpu",
    class_values: Sequence[int] | None = None,
    names_by_position: str = "warn",
    made_by: str | None = None,
    class_colors: Sequence[Sequence[int] | None] | None = None,
    runs: dict[Path, str] | None = None,
    class_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Predict every input into ``out_dir/<stem>_pred.tif`` or ``<stem>_pred.nii.gz``; returns one summary each;
    ``made_by`` (the model's folder) is recorded in each output (GeoTIFF metadata, NIfTI ``descrip``), and a
    GeoTIFF class map gets a colour table (``class_colors``, per class: its RGB, else a palette's), every output the
    classes' ``class_names`` (``GEOMED_SSL_CLASSES``: JSON of label value -> name), and ``runs`` (per
    input) the digest ``predict --resume`` compares (:mod:`geomed_ssl.inference.resume`).

    ``window`` is the raster window (2 ints) or the volume ROI (3 ints; an int serves both). A file of the other
    kind than the model's is refused in one line before anything is written; partial files a killed earlier run
    left in ``out_dir`` are deleted first, and without ``probabilities`` the ``*_pred_proba`` file an earlier run
    wrote for an input is deleted as its new class map takes its place, under the folder's lock (a killed run leaves
    the earlier pair).
    """
    planned = plan_outputs(inputs, out_dir, data_cfg, window)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out_dir)
    model = as_model(model_fn, device)
    summaries = []
    for p, out in planned.items():
        try:
            kind, _ = _kind_and_stem(p, data_cfg)
            commit = functools.partial(still_ours, out, p, bool(probabilities))
            if kind == "raster":
                summaries.append(predict_raster(
                    model, p, out, stats, band_names, window, overlap, blend, batch_size, num_classes=num_classes,
                    probabilities=probabilities, device=device, data_cfg=data_cfg, class_values=class_values,
                    names_by_position=names_by_position, made_by=made_by, class_colors=class_colors,
                    class_names=class_names, check_ranges=len(planned) == 1, commit_lock=commit,
                    run=(runs or {}).get(Path(p))))
            else:
                summaries.append(predict_volume(
                    model, p, out, stats, band_names, window, data_cfg, overlap, blend, num_classes=num_classes,
                    probabilities=probabilities, batch_size=batch_size, device=device, class_values=class_values,
                    names_by_position=names_by_position, made_by=made_by, class_names=class_names,
                    commit_lock=commit, run=(runs or {}).get(Path(p))))
        except DataError as err:  # a file deleted or cut short since the probe: the maps made so far stay
            if not summaries:
                raise
            raise DataError(f"{err} ({len(summaries)} of {len(planned)} inputs were predicted before it; their maps "
                            "stay: fix or remove it and predict again with --resume to do the rest)") from None
        if len(planned) > 1:  # a folder of large scenes is not silent until the last is done
            log.info("predicted %d/%d: %s (%.1f s)", len(summaries), len(planned), Path(out).name,
                     summaries[-1].get("seconds", 0.0))
    if len(planned) > 1:  # one warning for the folder, naming the first file far from the statistics and the count
        warn_inputs(summaries, stats)
    return summaries
