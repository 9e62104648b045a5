"""Whether a label file lies on its image's pixel / voxel grid: the differences in words, and the refusal naming both
files and the fix (rasters: size, CRS, transform or ground control points; volumes: shape and affine in RAS)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from geomed_ssl.data.catalog import FileRecord
from geomed_ssl.errors import DataError, innermost_message
from geomed_ssl.geo.grids import crs_name, gcp_grid, grid_diffs, placed
from geomed_ssl.geo.voxels import GRID_TOLERANCE, grid_gap, mm_affine


def _raster_header(path: str) -> tuple[tuple[int, int], str | None, list[float], int]:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as src:
                crs = src.crs.to_wkt() if src.crs else None
                return (src.height, src.width), crs, [float(v) for v in list(src.transform)[:6]], src.count
        except rasterio.errors.RasterioIOError as err:
            raise DataError(f"cannot open label raster '{path}' ({err}); is it a GeoTIFF?") from None


def _unreadable(path: str) -> str | None:
    """Why the label raster's last row cannot be read (a file cut short), or None when it can."""
    import rasterio
    from rasterio.windows import Window

    try:
        with rasterio.open(path) as src:
            src.read(1, window=Window(0, src.height - 1, src.width, 1))
    except Exception as err:  # noqa: BLE001 - any failure to read is the answer
        return innermost_message(err)
    return None


def _raster_diffs(record: FileRecord, label: str) -> list[str]:
    shape, crs, tr, _ = _raster_header(label)
    # only a file without a CRS can be placed by ground control points: the others are not opened again
    label_gcps = gcp_grid(label) if crs is None else None
    image_gcps = gcp_grid(record.path) if record.crs is None else None
    if label_gcps is None and image_gcps is None:
        return grid_diffs(shape, crs, tr, record.shape, record.crs, record.transform)
    if label_gcps is None or image_gcps is None:
        return [f"georeferenced by ground control points in the {'label' if label_gcps else 'image'} only"]
    return grid_diffs(shape, *label_gcps, record.shape, *image_gcps, tolerance=0.5)


def raster_grid_diffs(image_shape: Sequence[int], image_crs: str | None, image_transform: Sequence[float] | None,
                      label: str) -> list[str]:
    """How the label raster's pixel grid differs from an image's (size (rows, cols), CRS WKT, transform): one
    phrase per difference, label vs image; empty when they share the grid."""
    shape, crs, tr, _ = _raster_header(label)
    return grid_diffs(shape, crs, tr, image_shape, image_crs, image_transform)


def ras_grid(shape: Sequence[int], affine: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, affine) after nibabel's closest-canonical (RAS) reorientation, from the header alone."""
    from nibabel.orientations import inv_ornt_aff, io_orientation

    ornt = io_orientation(affine)
    out = [0, 0, 0]
    for src, (dst, _) in enumerate(ornt):
        out[int(dst)] = int(shape[src])
    return tuple(out), affine @ inv_ornt_aff(ornt, tuple(shape[:3]))


def _volume_diffs(record: FileRecord, label: str) -> list[str]:
    return volume_grid_diffs(*ras_grid(record.shape[:3], np.asarray(
        record.affine if record.affine is not None else np.eye(4), np.float64)), label)


def volume_grid_diffs(ras_shape: Sequence[int], ras_affine: np.ndarray, label: str) -> list[str]:
    """How the label volume's voxel grid, reoriented to RAS, differs from an image's RAS ``(shape, affine)``: one
    phrase per difference, label vs image; empty when they share the grid."""
    import nibabel as nib

    try:
        img = nib.load(label)
    except Exception as err:
        raise DataError(f"cannot open label volume '{label}' ({err}); is it a NIfTI file?") from None
    from geomed_ssl.labels.read import check_label_affine

    affine = mm_affine(img)
    check_label_affine(label, affine)
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        return [f"label shape {list(shape)} is not 3D"]
    l_shape, l_aff = ras_grid(shape, affine)
    i_shape, i_aff = tuple(int(v) for v in ras_shape), np.asarray(ras_affine, np.float64)
    diffs = []
    sizes = [np.round(np.linalg.norm(a[:3, :3], axis=0), 4).tolist() for a in (l_aff, i_aff)]
    if l_shape != i_shape:  # then the RAS origins of flipped axes differ too, by the shapes: say only what else does
        diffs.append(f"shape {'x'.join(map(str, l_shape))} vs {'x'.join(map(str, i_shape))} (RAS order)")
        if not np.allclose(l_aff[:3, :3], i_aff[:3, :3], atol=1e-3 * float(np.abs(i_aff[:3, :3]).max())):
            unit = [a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0) for a in (l_aff, i_aff)]
            turn = float(np.degrees(np.arccos(np.clip(np.sum(unit[0] * unit[1], axis=0), -1, 1))).max())
            diffs.append(f"voxel axes differ (voxel sizes {sizes[0]} vs {sizes[1]}; axes turned by up to {turn:.2g} "
                         "degrees)")
    elif grid_gap(i_shape, i_aff, l_aff) > GRID_TOLERANCE:
        offset = np.round(np.linalg.solve(i_aff, l_aff[:, 3])[:3], 3).tolist()  # label origin in image voxels
        diffs.append(f"affine differs by up to {np.abs(l_aff - i_aff).max():.4g} (label origin at image voxel "
                     f"{offset}; voxel sizes {sizes[0]} vs {sizes[1]})")
    return diffs


def _georeference_to_copy(record: FileRecord, label: str) -> str | None:
    """What georeferencing a label raster of its image's size lacks where the image has it ("no CRS", "no CRS and
    no transform"), when that is all that differs; else None."""
    shape, crs, tr, _ = _raster_header(label)
    if tuple(shape) != tuple(record.shape) or crs is not None or record.crs is None:
        return None
    if not placed(None, tr):
        return "no CRS and no transform"
    return "no CRS" if not grid_diffs(shape, record.crs, tr, record.shape, record.crs, record.transform) else None


def _gdal_edit(record: FileRecord, label: str) -> str | None:
    """The gdal_edit.py command that gives ``label`` the image's CRS and extent (north-up images only)."""
    from affine import Affine

    t = Affine(*list(record.transform)[:6])
    code = crs_name(record.crs, "")
    if t.b or t.d or t.e >= 0 or not code.upper().startswith("EPSG:"):
        return None
    rows, cols = record.shape
    right, bottom = t * (cols, rows)
    return f"gdal_edit.py -a_srs {code} -a_ullr {t.c:.10g} {t.f:.10g} {right:.10g} {bottom:.10g} '{label}'"


def check_grid(record: FileRecord, label_path: str | Path, kind: str, peers: Sequence[FileRecord] = ()) -> None:
    """DataError naming both files and each difference unless the label is on the image's pixel / voxel grid
    (``peers``: the other images the label serves; when one of them is on its grid, the image is the one to
    resample, as resampling the label would break it for them)."""
    label = str(label_path)
    differ = _raster_diffs if kind == "raster" else _volume_diffs
    diffs = differ(record, label)
    if diffs and diffs[0].endswith(" is not 3D"):  # e.g. two label maps stacked as frames
        shape = diffs[0].removeprefix("label shape ").removesuffix(" is not 3D")
        raise DataError(f"label '{label}' (of image '{record.path}') has shape {shape}: a label volume is 3D, one "
                        "class id per voxel; save one label map per file.")
    if diffs and kind == "raster" and (broken := _unreadable(label)):  # a header cut short reads as no CRS
        raise DataError(f"cannot read label raster '{label}' ({broken}): it is truncated or corrupt; copy or export "
                        "it again.")
    if diffs and kind == "raster" and (copy := _georeference_to_copy(record, label)):
        raise DataError(f"label '{label}' is not on the pixel grid of image '{record.path}': {'; '.join(diffs)} "
                        f"(label vs image). It has the image's size but {copy}: copy the image's georeferencing "
                        "onto it (rasterio: open the label in r+ mode and set its crs and transform to the image's"
                        + (f"; GDAL: {cmd}" if (cmd := _gdal_edit(record, label)) else "") + "), or fix which label "
                        "belongs to which image (labels CSV).")
    if diffs:
        what = "pixel grid (size, CRS, transform)" if kind == "raster" else "voxel grid (shape, affine)"
        fitting = [p for p in peers if not differ(p, label)]
        raise DataError(f"label '{label}' is not on the {what} of image '{record.path}': {'; '.join(diffs)} "
                        + ("(label vs image). Resample the label onto the image grid (nearest neighbour) or fix "
                           "which label belongs to which image (labels CSV)." if not fitting else
                           f"(label vs image). The label serves {len(peers) + 1} images (dates of one ground) and "
                           f"'{fitting[0].path}' is on its grid: resample this image onto theirs (gdalwarp with "
                           "their -te and -tr), or leave it out with --set \"data.exclude=[...]\"."))
