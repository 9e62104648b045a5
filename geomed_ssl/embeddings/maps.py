"""Maps of embedding rows on their files' grids: the grid geometry of window / patch levels, GeoTIFF / NIfTI writers
for any per-cell array (PCA components of patch embeddings, cluster labels) and PNG previews of label maps.

A level's map has one cell per window (window level; cell side = the stride, centred on its window) or per token
(patch level; cell side = the token patch). Raster maps get the input's CRS and its transform scaled by the cell
size (plus the half-window offset for overlapping windows). Volume maps are written in the orientation the volume
reader uses (RAS: array axes i, j, k run towards Right, Anterior, Superior) with the reader's affine scaled by the
cell size and shifted to the cell centre, so they overlay the input in world (scanner mm) coordinates.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from geomed_ssl.geo.gdal_read import check_written
from geomed_ssl.geo.grids import placed
from geomed_ssl.windows.tiling import grid_shape
from geomed_ssl.errors import DataError
from geomed_ssl.outcommands import INPUT_TAG, MAP_DESCRIP, distinct_names, fitted_stem, provenance_tags
from geomed_ssl.outfiles import atomic_path, remove_stale_partials, save_figure

PCA_FIT_ROWS = 50_000  # rows sampled to fit the PCA of embedding maps
ROW_CHUNK = 65_536


def map_geometry(kind: str, shape: Sequence[int], level: str, window: Sequence[int], stride: Sequence[int],
                 patch: Sequence[int], transform: Sequence[float] | None = None,
                 affine: Any = None) -> dict[str, Any]:
    """The map grid of one file at ``level``: ``grid`` (cells per axis) and ``map_transform`` (rasters, 6 floats)
    or ``map_affine`` (volumes, 4x4); None entries at image level."""
    if level == "image":
        return {"grid": None}
    if level == "window":
        grid = grid_shape(shape, window, stride)
        cell, span = list(stride), list(window)  # cell k is the central stride-sized part of window k
    else:
        grid = [math.ceil(s / p) for s, p in zip(shape, patch)]
        cell, span = list(patch), list(patch)
    if kind == "raster":
        a, b, c, d, e, f = (float(v) for v in (transform or [1, 0, 0, 0, 1, 0])[:6])
        (ch, cw), (oh, ow) = cell, [(s - k) / 2 for s, k in zip(span, cell)]
        return {"grid": grid,
                "map_transform": [a * cw, b * ch, a * ow + b * oh + c, d * cw, e * ch, d * ow + e * oh + f]}
    m = np.eye(4)
    m[:3, :3] = np.diag(cell)
    m[:3, 3] = [(s - 1) / 2 for s in span]  # cell k's centre is voxel k * cell + (span - 1) / 2
    return {"grid": grid, "map_affine": (np.asarray(affine, np.float64) @ m).tolist()}


def raster_gcps(path: str) -> dict[str, Any]:
    """``{"gcps": [[row, col, x, y, z], ...], "gcp_crs": WKT}`` of a raster georeferenced by ground control points
    (Sentinel-1 GRD: no transform, no CRS of its own), ``{"rpcs": {...}}`` of one georeferenced by rational
    polynomial coefficients (raw optical scenes), else ``{}``; the maps get them on their own grid."""
    import rasterio

    try:
        with rasterio.open(path) as src:
            (gcps, crs), rpcs = src.gcps, src.rpcs
    except rasterio.errors.RasterioError:
        return {}
    if gcps:
        return {"gcps": [[g.row, g.col, g.x, g.y, g.z or 0.0] for g in gcps],
                "gcp_crs": crs.to_wkt() if crs else None}
    return {"rpcs": rpcs.to_dict()} if rpcs is not None else {}


def map_rpcs(file_meta: dict[str, Any]) -> Any:
    """The file's RPCs for its map grid (None without): line and sample rescaled to map pixels, whose ``map_transform``
    places them on the input's pixels (the input's own transform being the identity); RPC line / sample count from
    pixel centres."""
    if not file_meta.get("rpcs"):
        return None
    from rasterio.rpc import RPC

    cw, _, ow, _, ch, oh = (float(v) for v in file_meta["map_transform"][:6])
    rpc = dict(file_meta["rpcs"])
    rpc.update(line_off=(rpc["line_off"] + 0.5 - oh) / ch - 0.5, line_scale=rpc["line_scale"] / ch,
               samp_off=(rpc["samp_off"] + 0.5 - ow) / cw - 0.5, samp_scale=rpc["samp_scale"] / cw)
    return RPC(**rpc)


def map_gcps(file_meta: dict[str, Any]) -> tuple[list[Any], Any] | None:
    """The file's ground control points moved onto its map grid (a map pixel is the input area its
    ``map_transform`` maps it to, the input's own transform being the identity), or None."""
    if not file_meta.get("gcps"):
        return None
    from affine import Affine
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    to_map = ~Affine(*file_meta["map_transform"])
    points = []
    for row, col, x, y, z in file_meta["gcps"]:
        mcol, mrow = to_map @ (col, row)
        points.append(GroundControlPoint(row=mrow, col=mcol, x=x, y=y, z=z))
    return points, CRS.from_wkt(file_meta["gcp_crs"]) if file_meta.get("gcp_crs") else None


def grid_stem(file_meta: dict[str, Any]) -> str:
    """An output name for a file: its path relative to the data folder, without extension, '/' -> '__' (a case of
    a folder of several: the folder's path and the case, as predict names it; not unique alone: ``a/b.tif`` and
    ``a__b.tif``, ``s.tif`` and ``s.tiff``; see :func:`grid_stems`)."""
    rel = file_meta.get("rel") or os.path.basename(file_meta["path"])
    if file_meta.get("case"):
        rel = os.path.join(os.path.dirname(rel), file_meta["case"])
    for ext in (".nii.gz", ".nii", ".tiff", ".tif"):
        if rel.lower().endswith(ext):
            rel = rel[: -len(ext)]
            break
    return fitted_stem(rel.replace(os.sep, "__").replace("/", "__"), file_meta.get("rel") or file_meta["path"])


def grid_stems(files: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Each file's (by path) output name: :func:`grid_stem`, followed by 6 hex digits of its relative path's hash
    where two files would share one (case-insensitively: one map must never replace another's)."""
    names = distinct_names([(grid_stem(f), f.get("rel") or f["path"]) for f in files])
    return {f["path"]: name for f, name in zip(files, names)}


def map_tags(manifest: dict[str, Any], file_meta: dict[str, Any]) -> dict[str, str]:
    """What a map was made from, as predict's outputs say it: the toolkit's version, the encoder, the input."""
    return provenance_tags(str(file_meta["path"]), encoder=(manifest.get("settings") or {}).get("encoder"))


def write_grid(file_meta: dict[str, Any], array: np.ndarray, path: Path, nodata: float | None,
               descriptions: Sequence[str] | None = None, tags: dict[str, str] | None = None) -> Path:
    """Write ``array`` (K, *grid) on the file's map grid: GeoTIFF (rasters; input CRS, map transform, or the input's
    ground control points on the map grid) or NIfTI (volumes; map affine, RAS order, 4D when K > 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if file_meta["kind"] == "raster":
            import rasterio
            from affine import Affine

            k, h, w = array.shape
            profile = {"driver": "GTiff", "height": h, "width": w, "count": k, "dtype": array.dtype.name,
                       "crs": file_meta.get("crs"), "transform": Affine(*file_meta["map_transform"]),
                       "nodata": nodata, "compress": "deflate"}
            if h >= 256 and w >= 256:
                profile.update(tiled=True, blockxsize=256, blockysize=256)
            gcps = map_gcps(file_meta)
            if gcps is not None:  # georeferenced by ground control points: those, on the map's grid
                profile.pop("transform")
                profile.update(gcps=gcps[0], crs=gcps[1])
            elif not placed(file_meta.get("crs"), file_meta.get("transform")):
                profile.pop("transform")  # an input placed nowhere: its map is not placed either
            with rasterio.open(tmp, "w", **profile) as dst:
                if (rpcs := map_rpcs(file_meta)) is not None:  # georeferenced by RPCs: those, on the map's grid
                    dst.rpcs = rpcs
                dst.write(array)
                for i, name in enumerate(descriptions or [], start=1):
                    dst.set_band_description(i, str(name))
                if tags:
                    dst.update_tags(**tags)
            check_written(tmp, path)
        else:
            import nibabel as nib

            data = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)  # (X, Y, Z[, K])
            affine = np.asarray(file_meta["map_affine"])
            img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
            code = space_code(file_meta)
            img.set_qform(affine, code=code)
            img.set_sform(affine, code=code)
            img.header.set_xyzt_units("mm")  # the map affine is the input's world, in mm (geo.voxels.mm_affine)
            if tags:
                img.header["descrip"] = f"{MAP_DESCRIP}{os.path.basename(tags[INPUT_TAG])}".encode(
                    "ascii", "replace")[:79]
            nib.save(img, str(tmp))
    return path


def space_code(file_meta: dict[str, Any]) -> int:
    """The NIfTI space code of an embedded volume's world (its sform's, else its qform's: 4 MNI, 3 Talairach, 2
    aligned to another scan), which its map shares; 1 (scanner) when it has none or is no longer readable."""
    import nibabel as nib

    try:
        header = nib.load((file_meta.get("paths") or [file_meta["path"]])[0]).header
        return int(header["sform_code"]) or int(header["qform_code"]) or 1
    except Exception:  # moved since it was embedded, or a header without codes
        return 1


def fill_grid(file_meta: dict[str, Any], grid_index: np.ndarray, values: np.ndarray, fill: float,
              dtype: Any) -> np.ndarray:
    """(K, *grid) array with ``values`` (n, K) at the rows' ``grid_index`` (n, nd), ``fill`` elsewhere."""
    grid = tuple(file_meta["grid"])
    out = np.full((values.shape[1], *grid), fill, dtype=dtype)
    idx = tuple(grid_index[:, a] for a in range(len(grid)))
    out[(slice(None), *idx)] = values.T
    return out


def fit_pca(vectors: np.ndarray, dims: int, seed: int = 0) -> Any:
    """sklearn PCA of at most ``PCA_FIT_ROWS`` rows sampled from ``vectors`` (read from the memory map in order)."""
    from sklearn.decomposition import PCA

    n = vectors.shape[0]
    rows = np.sort(np.random.default_rng(seed).choice(n, PCA_FIT_ROWS, replace=False)) if n > PCA_FIT_ROWS \
        else np.arange(n)
    sample = np.asarray(vectors[rows], dtype=np.float32)
    return PCA(n_components=max(1, min(dims, sample.shape[0], sample.shape[1])), random_state=seed).fit(sample)


def write_embedding_maps(emb_dir: Path, manifest: dict[str, Any], vectors: np.ndarray, grid_index: np.ndarray,
                         dims: int) -> list[str]:
    """Per input with a map grid: its embedding map (float32 PCA components, NaN where no cell) as
    ``maps/<name>_embedding.tif`` or ``.nii.gz``; the PCA is saved as ``pca.npz``. Returns the written paths."""
    files = [f for f in manifest["files"] if f.get("grid") and int(f["rows"])]
    if not files or dims <= 0:
        return []
    pca = fit_pca(vectors, dims)
    if pca.n_components_ < dims:
        logging.getLogger("geomed_ssl").info(
            "--pca %d: the maps hold %d components, as many as the %d rows of %d dimensions allow", dims,
            pca.n_components_, vectors.shape[0], vectors.shape[1])
    with atomic_path(emb_dir / "pca.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, components=pca.components_, mean=pca.mean_, explained_variance_ratio=pca.explained_variance_ratio_)
    remove_stale_partials(emb_dir / "maps")
    names = [f"pc{i + 1}" for i in range(pca.n_components_)]
    written = []
    stems = grid_stems(manifest["files"])  # over every file, as cluster names its maps
    for f in files:
        a, n = int(f["first_row"]), int(f["rows"])
        proj = np.concatenate([pca.transform(np.asarray(vectors[s:min(s + ROW_CHUNK, a + n)], np.float32))
                               for s in range(a, a + n, ROW_CHUNK)]).astype(np.float32)  # (n, K)
        arr = fill_grid(f, grid_index[a:a + n], proj, np.nan, np.float32)
        ext = ".tif" if f["kind"] == "raster" else ".nii.gz"
        path = emb_dir / "maps" / f"{stems[f['path']]}_embedding{ext}"
        written.append(str(write_grid(f, arr, path, np.nan, names, map_tags(manifest, f)).absolute()))  # any folder
    return written


def save_label_png(labels: np.ndarray, path: Path, title: str, nodata: int) -> Path:
    """A label grid (2D, or 3D shown at its middle axial slice) as a PNG, one colour per label."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid = labels if labels.ndim == 2 else labels[:, :, labels.shape[2] // 2].T[::-1]  # axial slice, anterior up
    shown = np.ma.masked_equal(grid, nodata)
    if shown.count() == 0:
        raise DataError(f"nothing to draw for {path}: every cell is nodata.")
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm, ListedColormap

    top = int(shown.max())
    colours = ["lightgrey"] + [colormaps["tab20"](i % 20) for i in range(top + 1)]  # -1 (noise) grey, then labels
    norm = BoundaryNorm(np.arange(-1.5, top + 1.5), len(colours))
    fig = Figure(figsize=(5, 5 * grid.shape[0] / max(grid.shape[1], 1) + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap=ListedColormap(colours), norm=norm, interpolation="nearest")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_ticks(list(range(-1, top + 1)) if top < 20 else [])
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(fig, path)
