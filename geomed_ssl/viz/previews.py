"""Reconstruction previews: input, mask and reconstruction side by side, in false colour (middle slice for 3D)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from geomed_ssl.bands.names import false_colour_bands  # noqa: E402
from geomed_ssl.models.tokens import token_grid  # noqa: E402


def stretch(image: np.ndarray, bands: tuple[int, int, int], valid: np.ndarray) -> np.ndarray:
    """(3, 2) low/high display limits: the 2nd and 98th percentile of each chosen band over valid pixels."""
    limits = np.zeros((3, 2), np.float32)
    for c, b in enumerate(bands):
        values = image[b][valid]
        limits[c] = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
    return limits


def to_rgb(image: np.ndarray, bands: tuple[int, int, int], limits: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(C, H, W) normalised array → (H, W, 3) in [0, 1] with the given display limits; invalid pixels black."""
    rgb = np.stack([image[b] for b in bands], axis=-1).astype(np.float32)
    out = np.clip((rgb - limits[:, 0]) / np.maximum(limits[:, 1] - limits[:, 0], 1e-6), 0, 1)
    out[~valid] = 0
    return out


def middle_slice(x: np.ndarray) -> np.ndarray:
    """(C, D, H, W) → (C, H, W) at the middle of D; 2D arrays pass through."""
    return x[:, x.shape[1] // 2] if x.ndim == 4 else x


def render_reconstruction(method: torch.nn.Module, batch: dict, band_names: list[str],
                          wavelengths: list[float | None] | None, path: Path, seed: int = 0) -> None:
    """Write a PNG: one row per sample with input, masked input, reconstruction, reconstruction + visible patches."""
    image, valid = batch["image"], batch["valid"]
    device = next(method.parameters()).device
    patch = method.export_encoder().config.patch_size
    noise_shape = (image.shape[0], math.prod(token_grid(image.shape[2:], patch)))
    noise = torch.rand(noise_shape, generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.no_grad():
        out = method.reconstruct(image.to(device), valid.to(device), noise=noise)
    pred = out["pred_image"].float().cpu().numpy()
    masked = out["mask_image"].cpu().numpy()
    img, val = image.numpy(), valid.numpy()
    bands = false_colour_bands(band_names, wavelengths)
    rows = img.shape[0]
    fig, axes = plt.subplots(rows, 4, figsize=(8, 2 * rows + 0.3), squeeze=False)
    for r in range(rows):
        x, p = middle_slice(img[r]), middle_slice(pred[r])
        v = middle_slice(val[r][None])[0]
        m = middle_slice(masked[r][None])[0]
        visible = x.copy()
        visible[:, m] = np.nan
        pasted = np.where(m[None], p, x)
        lim = stretch(x, bands, v)  # the input's stretch for every panel, so colours compare
        panels = [to_rgb(x, bands, lim, v), to_rgb(np.nan_to_num(visible), bands, lim, v & ~m),
                  to_rgb(p, bands, lim, v), to_rgb(pasted, bands, lim, v)]
        panels[1][m] = 0.5
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(["input", "masked", "reconstruction", "recon + visible"][c], fontsize=8)
    fig.suptitle(f"bands {[band_names[b] for b in bands]}; loss {float(out['loss']):.4f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
