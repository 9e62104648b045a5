"""Indian Pines data for the label-efficiency research: the cube, the label selections, the fixed RF baseline.

Selections come from the library's ``select_labels`` (k per class, rare classes at most half; ``random`` or
``blocks`` split with 16x16 blocks), so every model and baseline sees exactly the same training and test pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import rasterio

from geomed_ssl.config.sections import LabelsConfig
from geomed_ssl.labels.sampling import select_labels
from geomed_ssl.finetune.metrics import classification_metrics, confusion_matrix
from geomed_ssl.sample import CLASS_NAMES, IMAGE, LABELS


@lru_cache(1)
def load_scene() -> tuple[np.ndarray, np.ndarray]:
    """(cube (C, H, W) float32 standardised per band, labels (H, W) int64 with 0 = unlabelled)."""
    with rasterio.open(IMAGE) as src:
        cube = src.read().astype(np.float32)
    with rasterio.open(LABELS) as src:
        gt = src.read(1).astype(np.int64)
    mean = cube.reshape(cube.shape[0], -1).mean(1)[:, None, None]
    std = cube.reshape(cube.shape[0], -1).std(1)[:, None, None] + 1e-6
    return (cube - mean) / std, gt


@lru_cache(4)
def load_pca(n: int, whiten: bool) -> np.ndarray:
    """The scene projected on its first ``n`` principal components (fit on every pixel, no labels): (n, H, W),
    each component scaled to unit variance when ``whiten``, else all scaled by the first component's std."""
    from sklearn.decomposition import PCA

    cube, _ = load_scene()
    c, h, w = cube.shape
    z = PCA(n, random_state=0).fit_transform(cube.reshape(c, -1).T)  # (H*W, n)
    z = z / (z.std(0, keepdims=True) if whiten else z[:, :1].std())
    return z.T.reshape(n, h, w).astype(np.float32)


@dataclass
class Split:
    """Training / test pixels as flat indices into the (H, W) grid and class indices 0..K-1."""

    train_idx: np.ndarray
    train_y: np.ndarray
    test_idx: np.ndarray
    test_y: np.ndarray
    train_mask: np.ndarray  # (H, W) bool: pixels a training window may read (all, or the training blocks)
    n_classes: int
    notes: list


@lru_cache(64)
def get_split(k: int, split: str, seed: int) -> Split:
    _, gt = load_scene()
    cfg = LabelsConfig(per_class=k, split=split, seed=seed, block_size=16)
    sel = select_labels([gt], [gt != 0], cfg, CLASS_NAMES)
    cmap = sel.class_map
    if split == "blocks":
        from geomed_ssl.windows.splits import block_split

        train_mask = block_split(gt.shape, 16, seed, gt, gt != 0)
        assert train_mask.reshape(-1)[sel.train_index].all() and not train_mask.reshape(-1)[sel.test_index].any()
    else:
        train_mask = np.ones(gt.shape, bool)
    return Split(sel.train_index, cmap.encode(sel.train_value), sel.test_index, cmap.encode(sel.test_value),
                 train_mask, len(cmap), sel.notes)


def scores(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> dict[str, float]:
    m = classification_metrics(confusion_matrix(y_true, y_pred, n))
    return {"OA": float(m["OA"]), "AA": float(m["AA"]), "kappa": float(m["kappa"])}


@lru_cache(1)
def rf_features(window: int = 7) -> np.ndarray:
    """The issue's fixed RF features: 30 PCA components of the standardised spectra + their ``window`` local means;
    (H*W, 60)."""
    from scipy.ndimage import uniform_filter
    from sklearn.decomposition import PCA

    cube, _ = load_scene()
    c, h, w = cube.shape
    pcs = PCA(30, random_state=0).fit_transform(cube.reshape(c, -1).T).T.reshape(30, h, w)
    local = np.stack([uniform_filter(p, window, mode="reflect") for p in pcs])
    return np.concatenate([pcs, local]).reshape(60, -1).T


def rf_baseline(sp: Split, seed: int) -> dict[str, float]:
    """Random forest (200 trees, balanced class weights) on the fixed features, same pixels as every model."""
    from sklearn.ensemble import RandomForestClassifier

    t0 = time.time()
    feats = rf_features()
    rf = RandomForestClassifier(200, class_weight="balanced", random_state=seed, n_jobs=2)
    rf.fit(feats[sp.train_idx], sp.train_y)
    out = scores(sp.test_y, rf.predict(feats[sp.test_idx]), sp.n_classes)
    out["seconds"] = time.time() - t0
    return out
