"""EuroSAT-MS 200 (20 patches per class, 13 bands, B8A stored last) for the label-efficiency research: the images,
the k-per-class selections (the library's ``sample_images_per_class``) and the per-band-statistics baseline."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import rasterio

from geomed_ssl.labels.sampling import sample_images_per_class

ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "eurosat_ms_200"
if not ROOT.is_dir():
    ROOT = Path("/work/shared/data/eurosat_ms_200")


@lru_cache(1)
def load_eurosat() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images (N, 13, 64, 64) float32 standardised per band over all images, labels (N,), class names)."""
    names = sorted(p.name for p in ROOT.iterdir() if p.is_dir())
    imgs, labels = [], []
    for i, name in enumerate(names):
        for f in sorted((ROOT / name).glob("*.tif")):
            with rasterio.open(f) as src:
                imgs.append(src.read().astype(np.float32))
            labels.append(i)
    x = np.stack(imgs)
    mean = x.mean((0, 2, 3), keepdims=True)
    std = x.std((0, 2, 3), keepdims=True) + 1e-6
    return (x - mean) / std, np.array(labels), names


def eu_split(k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    _, y, names = load_eurosat()
    train, test, _ = sample_images_per_class(y, k, seed, names)
    return train, test


def band_stats(x: np.ndarray) -> np.ndarray:
    """Per-band mean, std, 10th and 90th percentiles of each image: (N, 4 * 13)."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return np.concatenate([flat.mean(-1), flat.std(-1), np.percentile(flat, 10, -1), np.percentile(flat, 90, -1)], 1)


def linear_probe(feat: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, c: float = 1.0) -> float:
    """Accuracy of a standardised logistic regression trained on ``train`` rows, tested on ``test`` rows."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = feat[train].mean(0), feat[train].std(0) + 1e-6
    m = LogisticRegression(C=c, max_iter=5000).fit((feat[train] - mu) / sd, y[train])
    return float((m.predict((feat[test] - mu) / sd) == y[test]).mean())
