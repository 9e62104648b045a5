"""The ``propagate`` probe: label propagation (Zhou et al., 2004) from the few labelled pixels over a k-NN graph
of frozen features of the scene's pixels, then a linear probe fitted on every node's propagated class.

The graph's nodes are the training pixels and a random sample of the images' pixels (every pixel when there are
at most ``finetune.probe_nodes``; the sample is unlabelled: test pixels may be among them, never their labels).
Edges join each node to its ``K`` nearest (cosine on standardised features), weighted ``exp(-d / median d)``,
symmetrised and normalised (``D^-1/2 W D^-1/2``); ``ITERATIONS`` steps of ``F <- ALPHA S F + (1 - ALPHA) Y`` spread
the labels (each label weighs alike: with k labels per class the classes weigh alike, with a fraction of the
labels a class weighs as much as it is labelled). The propagated scores, as posteriors, assume the classes are as
common in the scene as among the labels; k labels per class say every class is, which a scene rarely is, so the
classes' shares are re-estimated on the unlabelled nodes by EM (Saerens, Latinne & Decaestecker, 2002; when the
graph holds enough nodes for it: ``EM_MIN_NODES_PER_CLASS``) and each node takes its best class under them
(training pixels keep theirs). The ``linear`` probe is then fitted on all nodes
with those classes: a head as small and fast in ``predict`` as the plain linear probe's, which on Indian Pines
scored as the k-NN memory of the nodes did (docs/label_efficiency.md). Graph settings fixed before any score; the
shares' EM chosen on selection seeds (Indian Pines and a Sentinel-2 tile)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

K = 10
ALPHA = 0.99
ITERATIONS = 50
EM_ITERATIONS = 100
# the shares are estimated only from this many unlabelled nodes per class on average: with ~20 (EuroSAT's 200
# images, 10 classes) the propagated posteriors are soft and EM drifts to extreme shares (OA 0.53 -> 0.33 on the
# selection seeds; a class of a synthetic 10-class set emptied where the plain argmax was right everywhere); from
# ~200 (and Indian Pines' ~1,300) it is stable
EM_MIN_NODES_PER_CLASS = 100


def knn_graph(z: np.ndarray, k: int = K, chunk: int = 1024) -> "scipy.sparse.csr_matrix":  # noqa: F821
    """The symmetric normalised affinity ``D^-1/2 W D^-1/2`` (n, n) of the ``k`` nearest rows (cosine) of z."""
    import scipy.sparse as sp

    n = z.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return sp.csr_matrix((n, n))
    zn = F.normalize(torch.from_numpy(np.ascontiguousarray(z, np.float32)), dim=1)
    dist, idx = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
    for a in range(0, n, chunk):
        sims = zn[a:a + chunk] @ zn.T  # (c, n)
        sims[torch.arange(sims.shape[0]), torch.arange(a, a + sims.shape[0])] = -2.0  # not its own neighbour
        top, j = sims.topk(k, dim=1)
        dist[a:a + chunk], idx[a:a + chunk] = (1 - top).clamp_min(0).numpy(), j.numpy()
    w = np.exp(-dist.ravel() / max(float(np.median(dist)), 1e-9))
    graph = sp.csr_matrix((w, (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, n))
    graph = graph + graph.T
    dinv = sp.diags(1 / np.sqrt(np.asarray(graph.sum(1)).ravel() + 1e-12))
    return (dinv @ graph @ dinv).tocsr()


def propagate_labels(z: np.ndarray, train: np.ndarray, y_train: np.ndarray, num_classes: int, k: int = K,
                     alpha: float = ALPHA, iterations: int = ITERATIONS) -> np.ndarray:
    """Class scores (n, K) of every row of z (n, F) after propagating the labels y_train of rows ``train``."""
    s = knn_graph(z, k)
    y = np.zeros((z.shape[0], num_classes))
    y[train, y_train] = 1
    f = y.copy()
    for _ in range(iterations):
        f = alpha * (s @ f) + (1 - alpha) * y
    return f


def prior_shift(scores: np.ndarray, label_shares: np.ndarray, iterations: int = EM_ITERATIONS
                ) -> tuple[np.ndarray, np.ndarray]:
    """(posteriors (n, K), shares (K,)): the rows of ``scores`` (n, K) as posteriors under ``label_shares``,
    re-weighted to the class shares that EM estimates on these rows (Saerens et al. 2002: p(c|x) is rescaled by
    share(c) / label_share(c) and the shares are the mean of the rescaled posteriors, until they settle)."""
    tiny = np.finfo(np.float64).tiny  # a node reached by a score of 1e-30 still counts as one node
    post = scores / np.maximum(scores.sum(axis=1, keepdims=True), tiny)
    ratio_base = np.maximum(label_shares, tiny)
    shares = label_shares.astype(np.float64)
    adjusted = post
    for _ in range(iterations):
        adjusted = post * (shares / ratio_base)
        adjusted /= np.maximum(adjusted.sum(axis=1, keepdims=True), tiny)
        new = adjusted.mean(axis=0)
        if np.abs(new - shares).max() < 1e-6:
            break
        shares = new
    return adjusted, shares


def node_classes(z: np.ndarray, y_train: np.ndarray, num_classes: int, shares: str = "estimated"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(keep (n,) bool, labels (n,)) of the rows of z (n, F), the first ``len(y_train)`` of them labelled
    ``y_train``, after propagating those labels over the graph of z: training rows keep their labels; nodes no
    label reached within the iterations (a part of the graph cut off from every labelled row) are not kept.
    ``shares``: ``estimated`` (each node's best class under the class shares EM estimates on the nodes,
    :func:`prior_shift`, when there are at least ``EM_MIN_NODES_PER_CLASS`` per class; else as ``labels``) or
    ``labels`` (under the labels' shares: the plain argmax; the protocol before the estimate)."""
    if shares not in ("estimated", "labels"):
        raise ValueError(f"shares must be 'estimated' or 'labels', not {shares!r}")
    train = np.arange(y_train.size)
    scores = propagate_labels(z, train, y_train, num_classes)
    keep = scores.max(axis=1) > 0
    labels = scores.argmax(axis=1)
    nodes = np.flatnonzero(keep[train.size:]) + train.size
    if shares == "estimated" and nodes.size >= EM_MIN_NODES_PER_CLASS * num_classes:
        label_shares = np.bincount(y_train, minlength=num_classes) / max(y_train.size, 1)
        labels[nodes] = prior_shift(scores[nodes], label_shares)[0].argmax(axis=1)
    labels[train] = y_train
    keep[train] = True
    return keep, labels.astype(np.int64)


def propagated(x_train: np.ndarray, y_train: np.ndarray, x_nodes: np.ndarray, num_classes: int,
               shares: str = "estimated") -> tuple[np.ndarray, np.ndarray]:
    """(x (r, F), labels (r,)): the training rows and the unlabelled ``x_nodes`` with their classes after
    propagation over the standardised features (:func:`node_classes`; nodes no label reached are left out)."""
    from geomed_ssl.models.probe import standardiser

    x = np.concatenate([x_train, x_nodes]).astype(np.float32)
    mean, std = standardiser(x.astype(np.float64))
    keep, labels = node_classes(((x - mean) / std).astype(np.float32), y_train, num_classes, shares)
    return x[keep], labels[keep]


def sample_nodes(shapes: Sequence[Sequence[int]], max_nodes: int, seed: int,
                 allowed: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """Per image, the sorted flat positions of the graph's unlabelled nodes: every pixel (inside ``allowed``)
    when the images hold at most ``max_nodes``, else a uniform random sample of ``max_nodes`` of them."""
    pools = [None] * len(shapes) if allowed is None else [np.flatnonzero(a) for a in allowed]
    sizes = np.array([p.size if p is not None else int(np.prod(s)) for p, s in zip(pools, shapes)], np.int64)
    total = int(sizes.sum())
    if total <= max_nodes:
        picks = [np.arange(n) for n in sizes]
    else:
        chosen = np.sort(np.random.default_rng(seed).choice(total, max_nodes, replace=False))
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        picks = [chosen[(chosen >= lo) & (chosen < hi)] - lo for lo, hi in zip(bounds[:-1], bounds[1:])]
    return [pick if pool is None else pool[pick] for pick, pool in zip(picks, pools)]
