"""Last-layer CLS attention maps of a :class:`ViTEncoder` (DINO's "attention heads look at objects"), as arrays and
as a PNG beside a false-colour view of the image (2D) or middle slices (3D)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def cls_attention(encoder: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Attention of the CLS token to every patch in the last block, per head: ``(1, C, *S)`` -> ``(heads, *grid)``.

    The input of the last block's attention (its ``norm1`` output) is captured with a hook and q, k are recomputed
    with the block's own ``qkv`` weights (and q/k norms): ``softmax(q k^T * scale)[cls, patches]``. Each head's map
    sums to 1 minus the attention the CLS token pays to itself.
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
        tokens, grid = encoder.embed(image.to(device=param.device, dtype=param.dtype))  # (1, N, D)
        encoder.run_blocks(encoder.add_cls(tokens))
    finally:
        handle.remove()
        encoder.train(was_training)
    x = captured[-1]  # (1, 1+N, D)
    b, t, _ = x.shape
    qkv = attn.qkv(x).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (1, H, T, hd)
    weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (1, H, 1, T)
    return weights[0, :, 0, 1:].reshape(attn.num_heads, *grid).float().cpu()  # (H, *grid)


def _stretch(x: np.ndarray) -> np.ndarray:
    """2-98 percentile stretch of one band to [0, 1]."""
    lo, hi = np.nanpercentile(x, 2), np.nanpercentile(x, 98)
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _display_image(
    image_np: np.ndarray, band_names: Sequence[str], wavelengths: Sequence[float | None] | None
) -> np.ndarray:
    """(C, H, W) -> false-colour (H, W, 3); (C, D, H, W) -> middle depth slice of the same."""
    from geomed_ssl.data.bands import false_colour_bands

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
    axes[0, 0].set_title("image" if image_np.ndim == 3 else "image (mid slice)", fontsize=9)
    for h in range(maps.shape[0]):
        axes[0, h + 1].imshow(maps[h], cmap="inferno")
        axes[0, h + 1].set_title(f"head {h}", fontsize=9)
    for ax in axes[0]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
