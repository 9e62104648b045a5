"""The true label of each embedded row, for ``cluster --labels``: class folders, a ``file,label`` CSV, or a label
GeoTIFF / NIfTI on the grid of the embedded files, read at each row's centre as training reads labels."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from geomed_ssl.errors import DataError
from geomed_ssl.geo.voxels import mm_affine, nearest_index
from geomed_ssl.tables import LINE, FileIndex, header_names, read_rows

log = logging.getLogger("geomed_ssl")


def true_labels(spec: str | Path, manifest: dict[str, Any], cols: dict[str, Any],
                ignore_value: int | None = 0) -> tuple[list[str | None], str]:
    """A label per row (None = unknown) from ``spec``: ``folders`` (the class folder of each file), a CSV with
    ``file,label`` columns (files named as :func:`_labels_from_csv` reads them), or a label
    GeoTIFF/NIfTI on the grid of the embedded file(s), read at each row's centre (``ignore_value`` = unlabelled)."""
    root = manifest["settings"]["data_dir"]
    files = cols["file"]
    if str(spec) == "folders":
        rel = [relative_to_root(f, root) for f in files]
        outside = [f for f, r in zip(files, rel) if r is None]
        if outside:
            raise DataError(f"--labels folders: '{outside[0]}' does not lie under the embedded data folder '{root}' "
                            "(moved since embedding?); give a CSV of file,label instead.")
        if any(os.sep not in r for r in rel):
            raise DataError(f"--labels folders: files lie directly in '{root}'; class folders are subfolders of it.")
        return [r.split(os.sep)[0] for r in rel], "class folders"
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"--labels '{spec}' is neither 'folders' nor an existing CSV / label raster / NIfTI file.")
    if path.name.lower().endswith((".tif", ".tiff", ".nii", ".nii.gz")):
        return _labels_from_map(path, manifest, cols, ignore_value), f"label map {path.name}"
    return _labels_from_csv(path, root, files), f"CSV {path.name}"


def _labels_from_csv(path: Path, root: str, files: Sequence[str]) -> list[str | None]:
    """Each row's label from a file,label CSV (or a classes CSV's image,class), its file named as ``finetune`` reads
    labels CSVs: absolute, relative to the CSV's folder, the working folder or the data folder, or by the end of its
    path (a file name) when that names one embedded file; one file under two labels is refused, rows naming no
    embedded file are said."""
    index = FileIndex((f, f) for f in dict.fromkeys(files))
    label_of: dict[str, tuple[str, str]] = {}  # embedded file -> (label, line)
    unused: list[str] = []
    header = set(header_names(path))
    table = {"image", "class"} <= header and not {"file", "label"} <= header
    rows = read_rows(path, ("file", "label"), "labels CSV") if not table else [
        {**r, "file": r["image"], "label": r["class"]} for r in read_rows(path, ("image", "class"), "classes CSV")]
    for row in rows:
        spelled = row["file"].replace("\\", "/") if os.sep == "/" else row["file"]  # a CSV written on Windows
        if not spelled:
            continue
        hit = index.find(spelled, (path.parent, ".", root), f"labels CSV '{path}' line {row[LINE]}",
                         "names {} embedded files", absolute_tails=True)
        if hit is None:
            unused.append(f"line {row[LINE]} ('{row['file']}')")
        elif hit in label_of and label_of[hit][0] != row["label"]:
            raise DataError(f"labels CSV '{path}' lists '{hit}' twice with different labels (line {label_of[hit][1]}: "
                            f"'{label_of[hit][0]}', line {row[LINE]}: '{row['label']}'); keep one row per file.")
        else:
            label_of[hit] = (row["label"], row[LINE])
    out = [label_of[f][0] if f in label_of else None for f in files]
    if all(v is None for v in out):
        raise DataError(f"no file of the embeddings is listed in '{path}' (e.g. {files[0]}); list paths absolute, "
                        f"relative to the CSV's folder, the working folder or {root}, or as file names.")
    if unused:
        shown = "; ".join(unused[:4]) + (" ..." if len(unused) > 4 else "")
        log.warning(f"warning: labels CSV '{path}': {len(unused)} row(s) name no embedded file ({shown}); they are "
                    f"not used (paths absolute, relative to the CSV's folder, the working folder or {root}, or file "
                    "names).")
    return out


def relative_to_root(path: str, root: str) -> str | None:
    """``path`` relative to ``root``, or None when it is not under it. Embedding manifests store file paths and
    ``data_dir`` the same way (absolute, links kept); an older manifest stored ``data_dir`` with links resolved,
    so a folder reached through a symlink is matched through the resolved paths too."""
    for a, b in ((path, root), (os.path.realpath(path), os.path.realpath(root))):
        rel = os.path.relpath(a, b)
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            return rel
    return None


def check_classes(truth: Sequence[str | None], source: str) -> None:
    """A labels source that yields fewer than two classes over the labelled rows is an error, not a score."""
    classes = sorted({str(t) for t in truth if t is not None})
    if len(classes) < 2:
        shown = f" ({', '.join(repr(c) for c in classes)})" if classes else ""
        raise DataError(f"--labels ({source}) gives {len(classes)} class{'' if len(classes) == 1 else 'es'}{shown} "
                        f"over {sum(t is not None for t in truth)} labelled rows; NMI and ARI need at least two "
                        "classes. Check the labels source (class folders under the embedded data folder, the CSV's "
                        "label column, the label map's values).")


def _labels_from_map(path: Path, manifest: dict[str, Any], cols: dict[str, Any], ignore: int | None) -> list:
    if manifest["settings"]["level"] == "image":
        raise DataError("a label map labels windows or patch cells: embed with --level window or patch, or give a "
                        "CSV of file,label for image-level embeddings.")
    nd = len(manifest["settings"]["window"])
    resampled = nd == 3 and (manifest["settings"].get("data") or {}).get("spacing") is not None
    lab, nodata = _read_label_map(path)
    out: list[Any] = [None] * len(cols["file"])
    box = cols["box"]
    centre = box[:, :nd] + box[:, nd:] // 2  # (N, nd) pixel / voxel at the box centre
    grids: dict[tuple[int, ...], np.ndarray] = {}  # the map on each grid rows were embedded on (one per shape)
    for f in labelled_files(path, manifest["files"], nd, native=resampled):
        a, n = int(f["first_row"]), int(f["rows"])
        key = tuple(f["shape"])
        if key not in grids:
            grids[key] = lab[nearest_index(lab.shape[:3], key)] if resampled else lab  # as training reads labels
        grid = grids[key]
        c = np.minimum(centre[a:a + n], np.asarray(grid.shape[:nd]) - 1)
        vals = grid[tuple(c[:, i] for i in range(nd))]
        out[a:a + n] = [None if not np.isfinite(v) or (nodata is not None and v == nodata)
                        or (ignore is not None and v == ignore) else str(int(v)) for v in vals]
    return out


def _read_label_map(path: Path) -> tuple[np.ndarray, float | None]:
    """The label map's array (a raster's first band; a volume in RAS, as the volume reader orients it) and its
    nodata value (rasters; None for NIfTI, whose NaNs are unlabelled too)."""
    try:
        if path.name.lower().endswith((".tif", ".tiff")):
            import rasterio

            with rasterio.open(path) as src:
                return src.read(1), src.nodata
        import nibabel as nib

        return np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj), None
    except Exception as err:  # not an image, truncated, corrupt: rasterio and nibabel raise their own kinds
        raise DataError(f"label map '{path}' cannot be read ({' '.join(str(err).split())[:200]}); give a GeoTIFF or "
                        "NIfTI label map, or a CSV of file,label.") from None


def _native_grid(f: dict[str, Any]) -> tuple[tuple[int, ...], np.ndarray]:
    """An embedded volume's own voxel grid in RAS (its file's header; the manifest holds the resampled one)."""
    import nibabel as nib

    try:
        img = nib.as_closest_canonical(nib.load(f["paths"][0]))
    except Exception:  # moved or unreadable: the recorded (resampled) grid, which the map will not match
        return tuple(f["shape"]), np.asarray(f["affine"])
    return tuple(int(v) for v in img.shape[:3]), mm_affine(img)


def labelled_files(path: Path, files: Sequence[dict[str, Any]], nd: int, native: bool = False
                   ) -> list[dict[str, Any]]:
    """The embedded files (manifest entries) the label map labels: those on its grid (rasters: size, CRS and
    transform; volumes: RAS shape and affine, the files' own voxels with ``native``, when the encoder resampled them
    to its data.spacing), and of those, when they lie in different folders, the ones in the folder nearest the map
    (patients of one atlas space share a grid; dates of one scene share the map's folder)."""
    from geomed_ssl.labels.grids import raster_grid_diffs, volume_grid_diffs

    def diffs(f: dict[str, Any]) -> list[str]:
        if nd == 2:
            return raster_grid_diffs(f["shape"], f.get("crs"), f.get("transform"), str(path))
        return volume_grid_diffs(*(_native_grid(f) if native else (f["shape"], np.asarray(f["affine"]))), str(path))

    found = [(f, diffs(f)) for f in files]
    same = [f for f, d in found if not d]
    if not same:
        f, d = found[0]
        raise DataError(f"label map '{path}' is on the grid of no embedded file (e.g. '{f['path']}': "
                        f"{'; '.join(d)}, label vs image); it must share the size and georeferencing of the image "
                        "it labels, or give a CSV of file,label.")
    home = os.path.dirname(os.path.abspath(path))
    depth = [len(os.path.commonpath([home, os.path.dirname(os.path.abspath(f["path"]))]).split(os.sep))
             for f in same]
    chosen = [f for f, d in zip(same, depth) if d == max(depth)]
    from geomed_ssl.geo.grids import placed

    nowhere = nd == 2 and not any(placed(f.get("crs"), f.get("transform")) for f in chosen)
    if (nd == 3 or nowhere) and len(chosen) > 1:  # subjects of one atlas space share a grid and often a folder, and
        chosen = _named_after(path, chosen)  # patches placed nowhere share the identity "grid" without one ground
    names = ", ".join(os.path.basename(f["path"]) for f in chosen[:4]) + (" ..." if len(chosen) > 4 else "")
    extra = f" (of {len(same)} on its grid: the ones in the folder nearest it)" if len(chosen) < len(same) else ""
    log.info("label map %s covers %d embedded file%s%s: %s", path.name, len(chosen), "s" if len(chosen) > 1 else "",
             extra, names)
    return chosen


def _named_after(path: Path, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of volumes sharing a label volume's grid and folder (or rasters placed nowhere), those it is named after
    (``case0_seg`` labels ``case0`` and its sequences ``case0_t1``, ``case0_flair``; a stack of ``data.channels``
    files by its folder's name), as ``finetune`` pairs them; all of them, with a warning, when it is named after
    none (then nothing tells one subject from another)."""
    from geomed_ssl.labels.pairs import _label_keys, _stem

    keys = _label_keys(_stem(path))

    def names(f: dict[str, Any]) -> list[str]:
        folder = os.path.basename(os.path.dirname(f["path"]))
        return [_stem(f["path"]).lower()] + ([(f.get("case") or folder).lower()] if len(f.get("paths") or []) > 1
                                             or f.get("case") else [])

    named = [f for f in files if any(n == k or n.startswith(k + s) for n in names(f) for k in keys for s in "_-.")]
    if named:
        return named
    log.warning(f"warning: label map '{path}' shares its grid and folder with {len(files)} embedded files and is "
                "named after none of them, so it labels them all; if they are different subjects or patches (one "
                "atlas space, or files placed nowhere), name it after its image (case0.nii.gz -> case0_seg.nii.gz) "
                "or give a CSV of file,label.")
    return files
