"""Frozen multi-layer probes: per-pixel features of a frozen encoder (the tokens of several tapped blocks,
concatenated and interpolated at each pixel from the token grids of the windows holding it, blended as
``predict`` blends its windows; never the CLS token alone), the classifiers fitted on them (``linear``: logistic
regression on standardised features, classes weighted by ``finetune.class_weights``; ``knn``: k nearest neighbours,
cosine, distance-weighted votes; ``propagate``: the labels spread over a graph of the scene's pixels, then the
``linear`` probe on every node's propagated class, see :mod:`geomed_ssl.models.propagate`) and the same classifiers
as a segmentation head (:class:`ProbeDecoder`), so a fitted probe is saved, loaded and run on whole scenes like any
fine-tuned model. ``compare``'s frozen protocols and ``finetune segment`` with ``finetune.head=probe`` share them."""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geomed_ssl.data.readers import RasterReader, VolumeReader
from geomed_ssl.data.stats import BandStats, normalize
from geomed_ssl.windows.tiling import DEFAULT_OVERLAP, blend_weights, overlap_stride, slab_rows, window_starts
from geomed_ssl.models.encoder import ViTEncoder

PROBES = ("linear", "knn", "propagate")
KNN_K = 5
READ_ROWS = 512  # at least this many rows per read of a whole raster (a tiled GeoTIFF's usual block height)
PointFn = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]


def probe_layers(depth: int, layers: Sequence[int] | None = None) -> list[int]:
    """The blocks a frozen probe reads: ``finetune.layers`` when set, else 1/4, 1/2, 3/4 of the depth and the
    last block."""
    if layers:
        return sorted({int(i) for i in layers})
    return sorted({max(0, min(depth - 1, round(depth * f))) for f in (0.25, 0.5, 0.75)} | {depth - 1})


# -- per-pixel features ----------------------------------------------------------------------------------------
def read_image(record: Any, stats: BandStats, data_cfg: Any, nd: int,
               volumes: VolumeReader | None = None) -> np.ndarray:
    """A whole image, normalised with ``stats``: float32 (C, *S) on the grid the label arrays use (a raster read
    and normalised in slabs of rows, so only the normalised image and one slab are held)."""
    nodata = data_cfg.nodata if data_cfg.nodata is not None else record.nodata
    if nd == 3:
        raw, _ = (volumes or VolumeReader(data_cfg, max_cached=1)).load(record)
        return normalize(raw, stats, nodata)[0]
    h, w = record.shape[-2:]
    reader = RasterReader(max_open=2)
    image = np.empty((len(stats.band_names), h, w), np.float32)
    rows = max(READ_ROWS, slab_rows((h, w), record.num_bands))
    for r0 in range(0, h, rows):
        part = reader.read_window(record, r0, 0, min(rows, h - r0), w)
        image[:, r0:r0 + part.shape[1]] = normalize(part, stats, nodata)[0]
    return image


def blank(image: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    """``image`` (C, *S) with the pixels outside ``allowed`` set to 0 (the normalised mean)."""
    return image if allowed is None else image * allowed[None].astype(image.dtype)


def crop(image: np.ndarray, start: Sequence[int], window: Sequence[int],
         allowed: np.ndarray | None = None) -> np.ndarray:
    """``image[:, start:start+window]`` with zeros outside the image (and, with ``allowed``, outside it: as
    :func:`blank` would set them): (C, *window)."""
    out = np.zeros((image.shape[0], *window), np.float32)
    src = tuple(slice(s, min(s + w, n)) for s, w, n in zip(start, window, image.shape[1:]))
    dst = (slice(None), *[slice(0, sl.stop - sl.start) for sl in src])
    out[dst] = image[(slice(None), *src)]
    if allowed is not None:
        out[dst] *= allowed[src]
    return out


def sample_grid(maps: torch.Tensor, rel: np.ndarray, window: Sequence[int]) -> torch.Tensor:
    """Interpolate (F, *grid) token maps at pixel centres ``rel`` (n, nd) of a window: (n, F)."""
    nd = len(window)
    coords = (torch.as_tensor(rel, dtype=torch.float32) + 0.5) / torch.tensor(window, dtype=torch.float32) * 2 - 1
    grid = coords.flip(-1).reshape((1,) + (1,) * (nd - 1) + (-1, nd)).to(maps.device)  # (x, y[, z]) order
    out = F.grid_sample(maps[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(maps.shape[0], -1).T


def encoder_points(encoder: ViTEncoder, layers: list[int], batch: int = 16,
                   overlap: float = DEFAULT_OVERLAP) -> PointFn:
    """The point function of a frozen encoder: ``fn(image (C, *S), points (n, nd), allowed) -> (n, L * D)``, the
    tapped blocks' tokens concatenated and interpolated per pixel (pixels outside ``allowed`` blanked in
    each window).

    Each pixel's features are the Gaussian-weighted mean over the windows holding it of ``predict``'s sliding
    windows (the encoder's window, ``overlap``, the same weights), so a probe is fitted on the features it meets
    when ``predict`` runs it on the scene (volumes: MONAI's sliding window places its own windows, with the same
    overlap and Gaussian). Only windows holding a point are computed."""
    window = tuple(encoder.config.img_size)
    device = encoder.cls_token.device
    weights = blend_weights(window, "gaussian")

    def fn(image: np.ndarray, points: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        windows, which, point = point_windows(points, image.shape[1:], window, overlap)
        bounds = np.searchsorted(which, np.arange(len(windows) + 1))
        out = np.zeros((points.shape[0], len(layers) * encoder.embed_dim), np.float64)
        wsum = np.zeros(points.shape[0], np.float64)
        with torch.no_grad():
            for b0 in range(0, len(windows), batch):
                starts = windows[b0:b0 + batch]
                x = torch.from_numpy(np.stack([crop(image, s, window, allowed) for s in starts])).to(device)
                feats, grid = encoder.forward_features(x, layers)  # L x (B, N, D)
                maps = torch.cat([f.transpose(1, 2).reshape(f.shape[0], f.shape[2], *grid) for f in feats], 1)
                for j in range(maps.shape[0]):
                    idx = point[bounds[b0 + j]:bounds[b0 + j + 1]]
                    rel = points[idx] - starts[j]
                    w = weights[tuple(rel.T)].astype(np.float64)
                    out[idx] += w[:, None] * sample_grid(maps[j], rel, window).cpu().numpy()
                    wsum[idx] += w
        return (out / wsum[:, None]).astype(np.float32)

    return fn


def point_windows(points: np.ndarray, shape: Sequence[int], window: Sequence[int], overlap: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sliding windows (``predict``'s origins) holding each point: the origins (W, nd) of the windows holding
    any point, and (window index, point index) pairs (m,), (m,) sorted by window."""
    starts = [np.asarray(window_starts(int(n), int(w), overlap)) for n, w in zip(shape, window)]
    last = [np.searchsorted(s, points[:, ax], side="right") - 1 for ax, s in enumerate(starts)]  # at or before p
    reach = [int(np.ceil(w / overlap_stride(int(w), overlap))) + 1 for w in window]  # windows per pixel
    found_points, found_origins = [], []
    for back in itertools.product(*[range(r) for r in reach]):
        ks = [lt - b for lt, b in zip(last, back)]
        ok = np.ones(points.shape[0], bool)
        for ax, (k, s, w) in enumerate(zip(ks, starts, window)):
            ok &= (k >= 0) & (s[np.maximum(k, 0)] + w > points[:, ax])
        found_points.append(np.flatnonzero(ok))
        found_origins.append(np.stack([s[k[ok]] for k, s in zip(ks, starts)], 1))
    windows, which = np.unique(np.concatenate(found_origins), axis=0, return_inverse=True)
    which = which.reshape(-1)
    order = np.argsort(which, kind="stable")
    return windows, which[order], np.concatenate(found_points)[order]


# -- the classifiers -------------------------------------------------------------------------------------------
def standardiser(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of ``train`` (n, F) (a std under 1e-6 taken as 1): what the probes standardise by."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std < 1e-6] = 1.0
    return mean, std


def _row_space(train: np.ndarray) -> np.ndarray:
    """(F, r) orthonormal basis of the training rows' span when there are fewer rows than features (an
    L2-penalised linear model's weights lie in it: the same fit, faster), else the identity."""
    if train.shape[0] >= train.shape[1]:
        return np.eye(train.shape[1])
    lam, u = np.linalg.eigh(train @ train.T)  # (n,), (n, n): the small Gram matrix (a thin SVD is far slower)
    keep = lam > lam.max() * 1e-10
    return train.T @ (u[:, keep] / np.sqrt(lam[keep]))


def check_class_weights(class_weights: Any, num_classes: int) -> None:
    """A ConfigError unless ``finetune.class_weights`` is null, "balanced" or one weight per class, some above 0."""
    from geomed_ssl.errors import ConfigError

    if class_weights is None or class_weights == "balanced":
        return
    if not isinstance(class_weights, (list, tuple)) or len(class_weights) != num_classes:
        raise ConfigError(f"finetune.class_weights must be null, 'balanced' or a list of {num_classes} numbers; "
                          f"got {class_weights!r}.")
    if not any(float(w) > 0 for w in class_weights):
        raise ConfigError(f"finetune.class_weights {list(class_weights)}: every class weighs 0, so nothing would be "
                          "learnt; give the classes to learn a weight above 0.")


def fit_probe(kind: str, x_train: np.ndarray, y_train: np.ndarray, num_classes: int,
              x_nodes: np.ndarray | None = None, class_weights: Any = None) -> dict[str, np.ndarray]:
    """The fitted ``kind`` probe on (x_train (n, F), y_train (n,) in 0..K-1) as arrays: ``mean``, ``std`` (F,);
    linear: ``weight`` (K, F), ``bias`` (K,) on standardised features (classes without training samples never
    win), each training row weighted by ``class_weights`` (``finetune.class_weights``: None, alike, so the
    classes keep the shares they have among the training rows; "balanced"; or one weight per class); knn:
    ``memory`` (n, F) standardised training features, ``memory_labels`` (n,); propagate: linear's, fitted on the
    training rows and the unlabelled ``x_nodes`` (m, F) with their propagated classes."""
    if kind != "knn":
        check_class_weights(class_weights, num_classes)
    if kind == "propagate":
        from geomed_ssl.models.propagate import propagated

        empty = np.zeros((0, x_train.shape[1]), np.float32)
        x_train, y_train = propagated(x_train, y_train, empty if x_nodes is None else x_nodes, num_classes)
        kind = "linear"
    x = x_train.astype(np.float64)
    mean, std = standardiser(x)
    z = (x - mean) / std
    out = {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}
    if kind == "knn":
        return {**out, "memory": z.astype(np.float32), "memory_labels": y_train.astype(np.int64)}
    if kind != "linear":
        raise ValueError(f"unknown probe {kind!r}")
    weight = np.zeros((num_classes, x.shape[1]))
    bias = np.full(num_classes, -1e4)
    classes = np.unique(y_train)
    basis = _row_space(z) if classes.size > 1 else None  # (F, r)
    if classes.size == 1 or basis.shape[1] == 0:  # one class, or every training feature alike: nothing to fit
        bias[classes] = 0.0
    else:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        if isinstance(class_weights, (list, tuple)):
            class_weights = {int(c): float(class_weights[c]) for c in classes}
        model = LogisticRegression(C=1.0, max_iter=1000, class_weight=class_weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(z @ basis, y_train)
        coef, icpt = model.coef_, model.intercept_  # (K', r), (K',); binary: (1, r), (1,)
        if classes.size == 2:
            coef, icpt = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-icpt / 2, icpt / 2])
        weight[classes] = coef @ basis.T
        bias[classes] = icpt
    return {**out, "weight": weight.astype(np.float32), "bias": bias.astype(np.float32)}


def knn_scores(z: torch.Tensor, memory: torch.Tensor, labels: torch.Tensor, num_classes: int,
               k: int = KNN_K, chunk: int = 2048) -> torch.Tensor:
    """Distance-weighted votes (P, K) of the k nearest ``memory`` rows (cosine) of standardised features z (P, F);
    a neighbour at distance 0 outvotes all others (scikit-learn's ``weights="distance"``). ``chunk`` rows at a
    time, so a large memory never needs a (P, n) matrix."""
    mem = F.normalize(memory, dim=1).T  # (F, n)
    out = torch.zeros(z.shape[0], num_classes, dtype=z.dtype, device=z.device)
    for a in range(0, z.shape[0], chunk):
        sims = F.normalize(z[a:a + chunk], dim=1) @ mem  # (c, n)
        top, idx = sims.topk(min(k, memory.shape[0]), dim=1)
        dist = (1 - top).clamp_min(0)
        exact = dist <= 1e-7
        weight = torch.where(exact.any(dim=1, keepdim=True), exact.to(z.dtype), 1 / dist.clamp_min(1e-7))
        out[a:a + chunk].scatter_add_(1, labels[idx], weight)
    return out


def predict_probe(state: dict[str, np.ndarray], x: np.ndarray, num_classes: int) -> np.ndarray:
    """Class indices (n,) of features x (n, F) by a fitted probe (as the head computes them)."""
    z = torch.from_numpy((x.astype(np.float32) - state["mean"]) / state["std"])
    if "memory" in state:
        scores = knn_scores(z, torch.from_numpy(state["memory"]), torch.from_numpy(state["memory_labels"]),
                            num_classes)
    else:
        scores = z @ torch.from_numpy(state["weight"]).T + torch.from_numpy(state["bias"])
    return scores.argmax(dim=1).numpy().astype(np.int64)


class ProbeDecoder(nn.Module):
    """A fitted frozen probe as a segmentation head: the taps' tokens concatenated (no final norm, no pixels),
    standardised, then ``linear`` / ``propagate``: class scores on the token grid, bilinearly (trilinearly)
    upsampled, or ``knn``: the features upsampled to pixels and classified by their nearest training pixels. Its
    tensors are buffers set by :meth:`load_fitted` (nothing here is trained by gradient)."""

    def __init__(self, spatial_dims: int, embed_dim: int, num_layers_tapped: int, num_classes: int,
                 kind: str = "linear", memory: int = 0) -> None:
        super().__init__()
        if kind not in PROBES:
            from geomed_ssl.errors import ConfigError

            raise ConfigError(f"finetune.probe '{kind}' is unknown; use one of {', '.join(PROBES)}.")
        feats = embed_dim * num_layers_tapped
        self.kind, self.num_taps, self.num_classes = kind, num_layers_tapped, num_classes
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"
        self.register_buffer("mean", torch.zeros(feats))
        self.register_buffer("std", torch.ones(feats))
        if kind != "knn":  # linear, and propagate's linear probe
            self.register_buffer("weight", torch.zeros(num_classes, feats))
            self.register_buffer("bias", torch.zeros(num_classes))
        else:
            self.register_buffer("memory", torch.zeros(memory, feats))
            self.register_buffer("memory_labels", torch.zeros(memory, dtype=torch.long))

    def load_fitted(self, state: dict[str, np.ndarray]) -> None:
        """Take the arrays of :func:`fit_probe`."""
        for name, buf in self.named_buffers():
            buf.copy_(torch.from_numpy(state[name]).to(buf.dtype))

    def forward(self, x_in: torch.Tensor, hidden: list[torch.Tensor], grid: tuple[int, ...],
                final: torch.Tensor) -> torch.Tensor:
        """Same arguments as the other decoders; ``x_in`` only gives the output size -> scores (B, K, *S)."""
        tokens = torch.cat(hidden, dim=-1)  # (B, N, L * D)
        maps = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)  # (B, F, *grid)
        shape = (1, -1) + (1,) * len(grid)
        maps = (maps - self.mean.view(shape)) / self.std.view(shape)
        size = tuple(x_in.shape[2:])
        if self.kind != "knn":
            logits = torch.einsum("bf...,kf->bk...", maps, self.weight) + self.bias.view(shape)
            return F.interpolate(logits, size=size, mode=self.mode, align_corners=False)
        z = F.interpolate(maps, size=size, mode=self.mode, align_corners=False)  # (B, F, *S)
        flat = z.movedim(1, -1).reshape(-1, z.shape[1])  # (B * prod(S), F)
        scores = knn_scores(flat, self.memory, self.memory_labels, self.num_classes)
        return scores.reshape(z.shape[0], *size, -1).movedim(-1, 1)
