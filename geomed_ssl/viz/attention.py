"""Last-layer CLS attention maps of a :class:`ViTEncoder` (DINO's "attention heads look at objects"), as arrays and
as a PNG beside a false-colour view of the image (2D) or middle slices (3D)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from geomed_ssl.config import DataConfig
from geomed_ssl.data.stats import BandStats, normalize
from geomed_ssl.files.cases import is_case_file
from geomed_ssl.windows.tiling import centre_start, patch_floor
from geomed_ssl.outdirs import check_out_file, prepare_out_file
from geomed_ssl.outfiles import save_figure
from geomed_ssl.process import keeps_process_state


@torch.no_grad()
def cls_attention(encoder: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Attention of the CLS token to every patch in the last block, per head: ``(1, C, *S)`` -> ``(heads, *grid)``.

    The input of the last block's attention (its ``norm1`` output) is captured with a hook and q, k are recomputed
    with the block's own ``qkv`` weights (and q/k norms): ``softmax(q k^T * scale)[cls, patches]``. Each head's map
    sums to 1 minus the attention the CLS token pays to itself.

    Grouped / spectral encoders have ``U`` tokens per position (band groups / chunks, unit-major): the CLS
    attention to the ``U`` tokens of a position is summed, so the map is still ``(heads, *grid)`` and still sums
    to 1 minus the self-attention (how much the CLS token looks at a place, whatever band group it reads there).
    """
    if image.ndim < 4 or image.shape[0] != 1:
        raise ValueError(f"cls_attention takes one image (1, C, *S), got shape {tuple(image.shape)}.")
    attn = encoder.blocks[-1].attn
    captured: list[torch.Tensor] = []
    handle = attn.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    was_training = encoder.training
    encoder.eval()
    try:
        param = next(encoder.parameters())
        tokens, grid = encoder.embed(image.to(device=param.device, dtype=param.dtype))  # (1, T, D); T = U*N
        encoder.run_blocks(encoder.add_cls(tokens))
    finally:
        handle.remove()
        encoder.train(was_training)
    x = captured[-1]  # (1, 1+T, D)
    b, t, _ = x.shape
    qkv = attn.qkv(x).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (1, H, 1+T, hd)
    weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (1, H, 1, 1+T)
    per_token = weights[0, :, 0, 1:].unflatten(1, (-1, math.prod(grid)))  # (H, U, N); U = 1 for plain/wavelength
    return per_token.sum(dim=1).reshape(attn.num_heads, *grid).float().cpu()  # (H, *grid)


def _stretch(x: np.ndarray) -> np.ndarray:
    """2-98 percentile stretch of one band to [0, 1]."""
    lo, hi = np.nanpercentile(x, 2), np.nanpercentile(x, 98)
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _display_image(
    image_np: np.ndarray, band_names: Sequence[str], wavelengths: Sequence[float | None] | None
) -> np.ndarray:
    """(C, H, W) -> false-colour (H, W, 3); (C, D, H, W) -> middle depth slice of the same."""
    from geomed_ssl.bands.names import false_colour_bands

    img = np.asarray(image_np, dtype=np.float32)
    if img.ndim == 4:
        img = img[:, img.shape[1] // 2]  # (C, H, W) middle slice
    names = list(band_names) if band_names else [f"band_{i + 1}" for i in range(img.shape[0])]
    idx = false_colour_bands(names, wavelengths)
    return np.stack([_stretch(img[i]) for i in idx], axis=-1)  # (H, W, 3)


def save_attention_png(
    encoder: torch.nn.Module,
    image_np: np.ndarray,
    band_names: Sequence[str],
    wavelengths: Sequence[float | None] | None,
    out_path: str | Path,
) -> Path:
    """Write a figure: the image in false colour (middle slice for volumes) and one panel per attention head,
    upsampled to the image size. ``image_np`` is a normalised (C, *S) window; returns the written path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image_np = np.asarray(image_np, dtype=np.float32)
    maps = cls_attention(encoder, torch.from_numpy(image_np)[None])  # (H, *grid)
    size = image_np.shape[1:]
    mode = "bilinear" if len(size) == 2 else "trilinear"
    maps = F.interpolate(maps[:, None], size=size, mode=mode, align_corners=False)[:, 0].numpy()  # (H, *S)
    if maps.ndim == 4:
        maps = maps[:, maps.shape[1] // 2]  # middle depth slice
    rgb = _display_image(image_np, band_names, wavelengths)

    n = 1 + maps.shape[0]
    fig = Figure(figsize=(2.6 * n, 2.8))  # Agg canvas, no pyplot state
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title("image" if image_np.ndim == 3 else "image (mid sagittal slice)", fontsize=9)
    for h in range(maps.shape[0]):
        axes[0, h + 1].imshow(maps[h], cmap="inferno")
        axes[0, h + 1].set_title(f"head {h}", fontsize=9)
    for ax in axes[0]:
        ax.axis("off")
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out_path, dpi=100)


def _data_config(meta: dict, spatial_dims: int, patch: Sequence[int], stacked: bool = False) -> DataConfig:
    """The pretraining run's ``data`` settings (band names, nodata, spacing, intensity) for reading one file, or
    with ``stacked`` one folder of its ``data.channels`` files."""
    import dataclasses

    from geomed_ssl.models.model_data import export_data

    saved = export_data(meta)
    known = {f.name for f in dataclasses.fields(DataConfig)}
    values = {k: v for k, v in saved.items() if k in known}
    values.update(kind="raster" if spatial_dims == 2 else "volume", include=["**/*"], exclude=[],
                  channels=saved.get("channels") if stacked else None, patch_size=list(patch), val_labels=None,
                  knn_every=0)
    return DataConfig(**values)


def _stacked_channels(meta: dict) -> list[str] | None:
    """The ``data.channels`` globs an encoder (its saved ``meta``) was pretrained on (one sample is a folder, or a
    case of one)."""
    from geomed_ssl.models.model_data import export_data

    return export_data(meta).get("channels") or None


def _start(size: int, want: int, offset: int | None, axis: str, path: Path) -> tuple[int, int]:
    """(start, length) along one axis: the centred window, or the one at ``offset``, moved back inside the image
    (with a note) where it would run past its edge: a whole window, not the sliver left beyond ``offset``."""
    import logging

    from geomed_ssl.errors import DataError

    length = min(size, want)
    if offset is None:
        return centre_start(size, length), length
    if not 0 <= offset < size:
        raise DataError(f"--window {axis} {offset} lies outside '{path}' ({size} pixels along {axis}s).")
    if offset + length > size:
        axes = {"row": "rows", "col": "columns"}.get(axis, f"{axis}s")
        logging.getLogger("geomed_ssl").info(f"note: a {length}-pixel window from {axis} {offset} runs past the "
                                             f"image's {size} {axes}; it starts at {axis} {size - length} instead.")
        return size - length, length
    return offset, length


@keeps_process_state
def attention_for_file(
    encoder_path: str | Path,
    image_path: str | Path,
    out_path: str | Path,
    window: Sequence[int] | None = None,
    strict: bool = False,
) -> Path:
    """Attention PNG of a pretrained encoder on one GeoTIFF window or NIfTI patch.

    The file is read with the pretraining run's ``data`` settings (band names, nodata; volumes: RAS, spacing,
    intensity), its bands picked and ordered by name for the encoder (the one band rule of every command:
    ``model_data.catalog_for_encoder``; missing bands are an error, extra ones dropped) and normalised with the
    encoder's statistics, with the one range check. The window has the encoder's ``img_size`` (less where the image
    is smaller, rounded down to the token patch): the centre window, or for rasters the one whose top-left pixel is
    ``window = (row, col)``. ``strict``: band names assigned by position are an error.
    """
    from geomed_ssl.checkpoint import read_encoder_config
    from geomed_ssl.errors import DataError

    image_path = Path(image_path)
    rule = {"inputs": {"image": image_path, "encoder": encoder_path}}
    saved = read_encoder_config(encoder_path)  # a missing encoder is named before --out is judged against it
    check_out_file(out_path, **rule)  # written (and its folder made) once the window is read
    stacks = image_path.is_dir() and _stacked_channels(saved[1])
    if not image_path.is_file() and not stacks:
        what = "is a folder" if image_path.is_dir() else "not found"
        raise DataError(f"image '{image_path}' {what}; pass one GeoTIFF (.tif) or NIfTI (.nii, .nii.gz) file (or, "
                        "for an encoder pretrained on data.channels, one folder of those files).")
    cfg, encoder, record, data_cfg = _encoder_for_image(encoder_path, saved, image_path, window, strict)
    stats = BandStats.from_dict(encoder.config.stats, source=f"encoder {encoder_path}")
    image = _read_window(cfg, record, data_cfg, stats, image_path, window)
    prepare_out_file(out_path, command="attention", **rule)
    return save_attention_png(encoder, image, encoder.config.band_names, encoder.config.wavelengths, out_path)


def _encoder_for_image(encoder_path: str | Path, saved: tuple[Any, dict], image_path: Path,
                       window: Sequence[int] | None, strict: bool) -> tuple[Any, torch.nn.Module, Any, DataConfig]:
    """The encoder's saved config (``saved``: its ``read_encoder_config``), the encoder for the image's bands (by
    name), the image's catalog record and the pretraining run's data settings it is read with; the image's values
    are checked against the statistics."""
    from geomed_ssl.checkpoint import load_encoder
    from geomed_ssl.data.catalog import scan
    from geomed_ssl.files.kinds import check_input_kind
    from geomed_ssl.errors import DataError, GeomedError
    from geomed_ssl.models.model_data import catalog_for_encoder, check_value_ranges

    cfg, meta = saved
    if cfg.stats is None:
        raise GeomedError(f"encoder '{encoder_path}' carries no normalisation statistics; re-export it with "
                          "`geomed-ssl pretrain`.")
    nd, patch = cfg.spatial_dims, tuple(cfg.patch_size)
    stacked = image_path.is_dir() or is_case_file(image_path, _stacked_channels(meta))  # data.channels
    if not stacked:
        check_input_kind(image_path, "raster" if nd == 2 else "volume", f"encoder '{encoder_path}'")
    if window is not None and (nd != 2 or len(window) != 2):
        raise DataError("--window ROW,COL applies to rasters (2D encoders); volumes use their centre patch.")
    data_cfg = _data_config(meta, nd, patch, stacked)
    try:
        catalog = scan(image_path, data_cfg, strict=True, names_by_position="error" if strict else "warn")
    except DataError as err:
        raise DataError(f"reading the image with the encoder's pretraining data settings: {err}") from None
    if len(catalog.records) != 1:
        raise DataError(f"'{image_path}' holds {len(catalog.records)} samples of the encoder's data.channels "
                        f"{data_cfg.channels}; pass the folder of one (in a folder of several cases, one file of "
                        "the case).")
    catalog = catalog_for_encoder(cfg, catalog)
    encoder = load_encoder(encoder_path, bands=catalog.band_names, wavelengths=catalog.wavelengths,
                           bandwidths=catalog.bandwidths)
    check_value_ranges(catalog.records, BandStats.from_dict(encoder.config.stats, source=f"encoder {encoder_path}"))
    return cfg, encoder, catalog.records[0], data_cfg


def _read_window(cfg: Any, record: Any, data_cfg: DataConfig, stats: BandStats, image_path: Path,
                 window: Sequence[int] | None) -> np.ndarray:
    """The normalised window (C, *S) the maps are drawn on: the encoder's ``img_size`` (less where the image is
    smaller, rounded down to the token patch), centred or (rasters) with its top-left pixel at ``window``."""
    from geomed_ssl.data.readers import RasterReader, VolumeReader
    from geomed_ssl.errors import DataError

    nd, patch = cfg.spatial_dims, tuple(cfg.patch_size)
    volumes = VolumeReader(data_cfg) if nd == 3 else None
    if nd == 2:
        shape = tuple(record.shape[-2:])
        offsets = list(window) if window is not None else [None, None]
    else:
        shape = tuple(volumes.volume_shape(record))
        offsets = [None] * 3
    box = [_start(s, w, o, a, image_path) for s, w, o, a in zip(shape, cfg.img_size, offsets, ("row", "col", "z"))]
    short = [(a, n, p, s) for (_, n), p, a, s in zip(box, patch, ("rows", "columns", "z"), shape)
             if patch_floor(n, p) == 0]
    if short:  # (a window running past an edge was moved back inside: only the image itself can be too small)
        axis, _, p, whole = short[0]
        raise DataError(f"'{image_path}' ({'x'.join(map(str, shape))}): it has {whole} {axis}, fewer than one token "
                        f"patch ({p}); give an image at least one token patch wide along every axis.")
    box = [(start, patch_floor(n, p)) for (start, n), p in zip(box, patch)]
    starts, sizes = [s for s, _ in box], [n for _, n in box]
    if nd == 2:
        raw = RasterReader().read_window(record, *starts, *sizes)  # (C, h, w), the encoder's bands by name
    else:
        raw = volumes.read_box(record, *starts, *sizes)  # (C, d, h, w)
    nodata = data_cfg.nodata if data_cfg.nodata is not None else record.nodata
    image, valid = normalize(raw, stats, nodata)
    if not valid.any():
        raise DataError(f"the chosen window of '{image_path}' holds no valid pixels (all nodata); pick another "
                        "with --window ROW,COL.")
    return image
