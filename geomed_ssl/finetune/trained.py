"""What trained a fine-tune, found again wherever it is scored: its ``labels_used.npz`` read back, the labelled
positions or images it trained on matched by path, by ground (copies of one label map), by image, by byte copy, and
by place (a georeferenced raster on its grid shifted by whole pixels), through fine-tunes of fine-tunes; used by
``evaluate`` (scored apart), a fine-tune of a fine-tune (left out of its test set) and ``compare`` (refused)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from geomed_ssl.files.listing import content_key, content_sizes
from geomed_ssl.labels.sampling import LabelSelection
from geomed_ssl.windows.splits import GROUND_PREFIX

log = logging.getLogger("geomed_ssl")


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


def _scored_apart(n: int, total: int, unit: str, holders: Sequence[str] = ()) -> str:
    """The note (and warning) that ``n`` of the ``total`` labelled positions / images trained the model; ``holders``:
    the label files those positions lie in, whose other positions are still scored as test but are no new
    subject's or scene's."""
    shown = ", ".join(os.path.join(*Path(h).parts[-2:]) for h in holders[:3]) + (", ..." if len(holders) > 3 else "")
    which = f"label file ({shown})" if len(holders) == 1 else f"{len(holders)} label files ({shown})"
    note = (f"{n} of the {total} labelled {unit} trained this model; they are scored apart ('train' in "
            "metrics.json) and left out of the test metrics"
            + (f"; the other positions of their {which} are scored as test: they measure the images this model "
               "was trained on, not a new subject or scene" if holders else ""))
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
    unmatched: dict[str, int] = {}
    seen, _ = trained_positions(earlier, selection.paths, selection.shapes, selection.test_file, selection.test_index,
                                data, selection.grounds, selection.images, say=False, copies=copies, geo=geo,
                                unmatched=unmatched)
    if seen.any():
        log.warning(f"warning: {int(seen.sum())} of the {seen.size} test positions trained the encoder's own "
                    f"fine-tune '{earlier}' (its labels_used.npz); they are left out of this fine-tune's test set.")
        for part in ("file", "index", "value"):
            setattr(selection, f"test_{part}", getattr(selection, f"test_{part}")[~seen])
    if unmatched.get("regridded"):
        log.warning(f"warning: the encoder's own fine-tune '{earlier}' trained on {unmatched['regridded']} of these "
                    "label files on another grid (data.spacing): its training positions there cannot be told apart "
                    "and may be among the test positions, so the test metrics may be optimistic.")
    if unmatched.get("elsewhere"):
        log.warning(f"warning: {unmatched['elsewhere']} places the encoder's own fine-tune '{earlier}' trained on lie "
                    "inside these rasters on another grid (reprojected, resampled or cut at a fraction of a pixel): "
                    "they cannot be told apart and may be among the test positions, so the test metrics may be "
                    "optimistic.")


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
                      geo: Sequence[list | None] | None = None,
                      unmatched: dict[str, int] | None = None) -> tuple[np.ndarray, str | None]:
    """Which labelled positions (``files``, ``flats``) a segmentation fine-tune trained on: those of its
    ``labels_used.npz`` in the same label file on the same grid (a label file shared by several images trains a
    place at each of them), in a copy of it on that grid (``grounds``, :func:`label_grounds`: another date of the
    ground), on the same image (``images``: its label file edited or copied since) or in a byte copy of a training
    pair (``copies``: per file, its label file and image files, in order, renamed or moved since), at a place it
    trained on in a georeferenced raster shifted by whole pixels (``geo``: per file, :func:`geo_grid`), or, for a
    volume trained on
    its ``data.spacing`` grid (the fine-tune's ``data``), the label-file voxels its training positions were read
    from; and those the fine-tune whose encoder it fine-tuned trained on, if any. A label file whose grid no longer
    matches what was stored cannot be told apart: a note says so (``say``: else no note, nor warning), and
    ``unmatched`` gets their count (``regridded``: label files; ``elsewhere``: places in rasters on another grid)."""
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
    if unmatched is not None:
        unmatched.update(regridded=regridded, elsewhere=_elsewhere(used, geo, shapes) if geo is not None else 0)
    if (earlier := meta.get("encoder_fine_tune")) and depth < MAX_CHAIN:
        seen |= trained_positions(earlier, label_paths, shapes, files, flats, data, grounds, images, say=False,
                                  depth=depth + 1, copies=copies, geo=geo)[0]
    if not say:
        return seen, None
    trained, labelled = (np.bincount(f, minlength=len(label_paths)) for f in (files[seen], files))
    holders = [label_paths[f] for f in np.flatnonzero((trained > 0) & (labelled > trained))]  # the rest tested
    notes = [_scored_apart(int(seen.sum()), files.size, "positions", holders)] if seen.any() else []
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
