"""``geomed-ssl cluster``: k-means or HDBSCAN over stored embeddings, with maps, a 2D scatter and scores.

Vectors are L2-normalised first (cosine geometry; ``normalize=False`` keeps them raw). HDBSCAN runs on a PCA
reduction to ``pca_dims`` (default 32) since density estimates degrade in high dimensions. Large tables are fitted
on a random subsample (``fit_max`` rows) and every row is then assigned: k-means by its nearest centre, HDBSCAN by
``hdbscan.approximate_predict`` when that package is installed, else by the cluster of the nearest fitted row
(scikit-learn's HDBSCAN has no predict). Noise (HDBSCAN) is cluster -1.

Outputs in ``out_dir``: ``clusters.parquet`` and ``clusters.csv`` (id, file, box, grid_index, centre, cluster,
label with labels, crs), ``summary.json`` (sizes, silhouette, NMI/ARI against labels when given),
``scatter.png`` (UMAP when umap-learn is installed, else PCA; coloured by cluster and by true label), and for
window / patch levels ``maps/<name>_clusters.tif|.nii.gz`` (int16 cluster per cell on the file's map grid, nodata
-32768) with a PNG.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from geomed_ssl.embeddings.maps import fill_grid, grid_stems, map_tags, save_label_png, write_grid
from geomed_ssl.embeddings.store import fixed_list, load_embeddings, optional_module, read_columns
from geomed_ssl.embeddings.truth import check_classes, true_labels
from geomed_ssl.errors import ConfigError
from geomed_ssl.geo.grids import crs_name
from geomed_ssl.outcommands import MAPS_TAGGED
from geomed_ssl.outdirs import check_out_dir, prepare_out_dir
from geomed_ssl.process import keeps_process_state
from geomed_ssl.outfiles import atomic_path, atomic_write_text, save_figure

log = logging.getLogger("geomed_ssl")
METHODS = ("kmeans", "hdbscan")
MAP_NODATA = -32768
SAMPLE = 5000  # rows for the silhouette score and the scatter plot
CHUNK = 65_536


@dataclass
class ClusterResult:
    """What a clustering run produced."""

    out_dir: Path
    summary: dict[str, Any]
    clusters: np.ndarray  # (N,) int, -1 = noise


def features(vectors: np.ndarray, rows: np.ndarray | None = None, normalize: bool = True) -> np.ndarray:
    """float32 (n, D) vectors of ``rows`` (all when None), L2-normalised unless ``normalize`` is False."""
    x = np.asarray(vectors if rows is None else vectors[rows], dtype=np.float32)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _chunks(n: int) -> list[slice]:
    return [slice(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]


def fit_predict(vectors: np.ndarray, method: str, k: int = 8, seed: int = 0, min_cluster_size: int | None = None,
                normalize: bool = True, pca_dims: int | None = None,
                fit_max: int | None = None) -> tuple[np.ndarray, dict]:
    """Cluster every row of ``vectors`` (N, D) (a memory map is read in chunks): labels (N,) int64 and fit info.

    The model is fitted on at most ``fit_max`` sampled rows (reduced by PCA to ``pca_dims`` first when asked,
    HDBSCAN's default 32); every row is then assigned chunk by chunk."""
    if method not in METHODS:
        raise ConfigError(f"--method must be kmeans or hdbscan, got '{method}'.")
    n = vectors.shape[0]
    fit_max = fit_max or (200_000 if method == "kmeans" else 20_000)
    rng = np.random.default_rng(seed)
    fit_rows = np.sort(rng.choice(n, fit_max, replace=False)) if n > fit_max else np.arange(n)
    dims = pca_dims if pca_dims is not None else (32 if method == "hdbscan" else 0)
    x_fit, project = fit_projection(vectors, fit_rows, normalize, dims, seed)
    reduced = bool(dims) and dims < vectors.shape[1]
    info: dict[str, Any] = {"fit_rows": int(len(fit_rows)), "pca_dims": int(x_fit.shape[1]) if reduced else None}
    same = not bool(np.any(np.ptp(x_fit, axis=0) > 1e-6)) if len(x_fit) else False
    # distinct rows counted where it is cheap (k-means' own warning otherwise comes with scikit-learn's file path)
    distinct = 1 if same else len(np.unique(np.round(x_fit, 6), axis=0)) if len(x_fit) <= 8192 else len(x_fit)
    if same:
        log.warning(f"warning: all {len(x_fit)} vectors are the same (an encoder that maps every input alike, or "
                    "one input embedded many times): the clusters mean nothing.")
    if method == "kmeans":
        with warnings.catch_warnings():
            if distinct < k:  # scikit-learn's ConvergenceWarning with its file path: said below in one line
                warnings.simplefilter("ignore", category=UserWarning)
            fitted, assign = fit_kmeans(x_fit, k, seed, info)
        if 2 <= distinct < k:
            log.warning(f"warning: only {distinct} distinct vectors for --k {k}: some clusters stay empty.")
    else:
        fitted, assign = fit_hdbscan(x_fit, min_cluster_size, len(fit_rows) < n, info)
        if len(fit_rows) == n:
            return fitted, info
    labels = np.empty(n, np.int64)
    for s in _chunks(n):
        labels[s] = assign(project(np.arange(s.start, s.stop)))
    if fitted is not None:
        labels[fit_rows] = fitted
    return labels, info


def fit_projection(vectors: np.ndarray, fit_rows: np.ndarray, normalize: bool, dims: int,
                   seed: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The fitting rows as features (n, D') and the projection of any rows into the same space: L2-normalised
    (unless ``normalize`` is False), then PCA to ``dims`` components when that is fewer than D."""
    x_fit = features(vectors, fit_rows, normalize)
    if not dims or dims >= x_fit.shape[1]:
        return x_fit, lambda rows: features(vectors, rows, normalize)
    from sklearn.decomposition import PCA

    reducer = PCA(n_components=min(dims, len(x_fit)), random_state=seed).fit(x_fit)
    return (reducer.transform(x_fit).astype(np.float32),
            lambda rows: reducer.transform(features(vectors, rows, normalize)).astype(np.float32))


def fit_kmeans(x_fit: np.ndarray, k: int, seed: int, info: dict[str, Any]) -> tuple[None, Callable]:
    """k-means on the fitting rows (faiss when installed, else scikit-learn): (None: every row is assigned, the
    assignment of rows to their nearest centre); the backend goes into ``info``."""
    if not 2 <= k <= len(x_fit):
        raise ConfigError(f"k (--k) must be between 2 and the number of rows ({len(x_fit)}), got {k}.")
    faiss = optional_module("faiss", "faiss-cpu", "scikit-learn k-means")
    if faiss is not None:
        km = faiss.Kmeans(x_fit.shape[1], k, niter=25, seed=seed, verbose=False)
        km.train(np.ascontiguousarray(x_fit))
        info["backend"] = "faiss.Kmeans"
        return None, lambda x: km.index.search(np.ascontiguousarray(x), 1)[1][:, 0]
    from sklearn.cluster import KMeans, MiniBatchKMeans

    km = (KMeans(k, n_init=4, random_state=seed) if len(x_fit) <= 20_000 else
          MiniBatchKMeans(k, batch_size=4096, n_init=3, random_state=seed)).fit(x_fit)
    info["backend"] = type(km).__name__
    return None, km.predict


def fit_hdbscan(x_fit: np.ndarray, min_cluster_size: int | None, sampled: bool,
                info: dict[str, Any]) -> tuple[np.ndarray, Callable]:
    """HDBSCAN on the fitting rows: (their labels, the assignment of other rows: ``hdbscan.approximate_predict``
    when that package is installed, else the cluster of the nearest fitted row); ``sampled``: other rows exist."""
    mcs = int(min_cluster_size or max(5, round(0.01 * len(x_fit))))
    if mcs > len(x_fit):
        from geomed_ssl.errors import ConfigError

        raise ConfigError(f"--min-cluster-size {mcs} is larger than the {len(x_fit)} rows clustered; choose at most "
                          f"{len(x_fit)} (default: 1 % of the rows, at least 5).")
    info["min_cluster_size"] = mcs
    hdb = optional_module("hdbscan", "hdbscan",
                          "scikit-learn's HDBSCAN, unfitted rows take their nearest fitted row's cluster")
    if hdb is not None:
        model = hdb.HDBSCAN(min_cluster_size=mcs, prediction_data=True).fit(x_fit)
        info["backend"] = "hdbscan.HDBSCAN"
        return model.labels_.astype(np.int64), lambda x: hdb.approximate_predict(model, x)[0]
    from sklearn.cluster import HDBSCAN
    from sklearn.neighbors import NearestNeighbors

    fitted = HDBSCAN(min_cluster_size=mcs, copy=True).fit(x_fit).labels_.astype(np.int64)
    info["backend"] = "sklearn.HDBSCAN"
    nn = NearestNeighbors(n_neighbors=1).fit(x_fit) if sampled else None
    return fitted, lambda x: fitted[nn.kneighbors(x, return_distance=False)[:, 0]]


def silhouette(x: np.ndarray, clusters: np.ndarray, seed: int) -> float | None:
    """Cosine silhouette of the non-noise rows of ``x`` (at most ``SAMPLE`` of them); None with < 2 clusters."""
    from sklearn.metrics import silhouette_score

    keep = clusters >= 0
    if len(np.unique(clusters[keep])) < 2 or keep.sum() <= len(np.unique(clusters[keep])):
        return None
    return float(silhouette_score(x[keep], clusters[keep], metric="cosine",
                                  sample_size=min(SAMPLE, int(keep.sum())), random_state=seed))


def agreement(clusters: np.ndarray, truth: Sequence[str | None]) -> dict[str, Any]:
    """NMI and ARI of the clusters (noise counts as one more cluster) against the known labels."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    known = np.array([t is not None for t in truth])
    if not known.any():
        return {"labelled_rows": 0, "classes": 0, "nmi": None, "ari": None}
    t = np.array([str(v) for v, k in zip(truth, known) if k], dtype=object)
    return {"labelled_rows": int(known.sum()), "classes": int(len(set(t))),
            "nmi": float(normalized_mutual_info_score(t, clusters[known])),
            "ari": float(adjusted_rand_score(t, clusters[known]))}


def scatter_png(x: np.ndarray, clusters: np.ndarray, truth: Sequence[str | None] | None, path: Path, seed: int,
                title: str) -> str:
    """2D UMAP (umap-learn) or PCA of ``x`` coloured by cluster, and by true label when given; returns the method."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    umap = optional_module("umap", "umap-learn", "the scatter plot uses PCA")
    if umap is not None and len(x) > 15:
        xy, how = umap.UMAP(n_components=2, random_state=seed, metric="cosine").fit_transform(x), "UMAP"
    else:
        from sklearn.decomposition import PCA

        xy, how = PCA(n_components=2, random_state=seed).fit_transform(x), "PCA"
    panels = [("cluster", [str(c) if c >= 0 else None for c in clusters])] + \
        ([("true label", list(truth))] if truth is not None else [])
    fig = Figure(figsize=(5.5 * len(panels), 5), dpi=100)
    FigureCanvasAgg(fig)
    for i, (name, values) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        cats = sorted({v for v in values if v is not None}, key=lambda v: (len(v), v))
        idx = {c: j for j, c in enumerate(cats)}
        code = np.array([idx[v] if v is not None else -1 for v in values])
        if (code < 0).any():
            ax.scatter(xy[code < 0, 0], xy[code < 0, 1], s=3, c="lightgrey",
                       label="noise" if name == "cluster" else "unlabelled")
        for j, c in enumerate(cats):
            m = code == j
            ax.scatter(xy[m, 0], xy[m, 1], s=3, color=colormaps["tab20"](j % 20), label=c)
        ax.set_title(f"{title}: {how}, coloured by {name}", fontsize=9)
        if len(cats) <= 20:
            ax.legend(fontsize=6, markerscale=3, loc="best")
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, path)
    return how


@keeps_process_state  # the random generators as found; the folder's lock let go when it returns
def cluster_embeddings(emb_dir: str | Path, out_dir: str | Path, method: str = "kmeans", k: int | None = None,
                       labels: str | Path | None = None, seed: int = 0, min_cluster_size: int | None = None,
                       normalize: bool = True, pca_dims: int | None = None, ignore_value: int | None = 0,
                       overwrite: bool = False) -> ClusterResult:
    """Cluster the embeddings of ``emb_dir`` into ``out_dir`` (see the module docstring). ``k``: k-means' number
    of clusters (default 8); ``min_cluster_size``: HDBSCAN's; each is refused with the other method."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if method == "hdbscan" and k is not None:
        raise ConfigError("--k is k-means' number of clusters; HDBSCAN finds its own number: leave --k out (its "
                          "knob is --min-cluster-size), or use --method kmeans.")
    if method == "kmeans" and min_cluster_size is not None:
        raise ConfigError("--min-cluster-size is HDBSCAN's; k-means takes --k: leave it out, or use --method hdbscan.")
    from geomed_ssl.config.loading import whole_number

    k = whole_number(8 if k is None else k, "k (--k)")
    seed = whole_number(seed, "seed (--seed)")
    if min_cluster_size is not None:
        min_cluster_size = whole_number(min_cluster_size, "min_cluster_size (--min-cluster-size)")
    t0 = time.perf_counter()
    out = Path(out_dir)
    rule = {"command": "cluster", "overwrite": overwrite,
            "inputs": {"embedding folder": emb_dir, "labels": None if str(labels) == "folders" else labels}}
    check_out_dir(out, **rule)  # the folder is made once the embeddings, labels and settings are read
    manifest, vectors = load_embeddings(emb_dir)
    rule["inputs"]["embedded data folder"] = manifest["settings"].get("data_dir")  # read for labels and maps
    check_out_dir(out, **rule)
    clusters, info = fit_predict(vectors, method, k, seed, min_cluster_size, normalize, pca_dims)
    cols = read_columns(emb_dir, ["id", "file", "box", "grid_index", "x", "y", "z", "crs"])
    truth_rows, truth_source = true_labels(labels, manifest, cols, ignore_value) if labels is not None else (None, None)
    if truth_rows is not None:
        check_classes(truth_rows, truth_source)  # before anything is written
    prepare_out_dir(out, **rule)
    n = len(clusters)
    sample = np.sort(np.random.default_rng(seed).choice(n, SAMPLE, replace=False)) if n > SAMPLE else np.arange(n)
    x = features(vectors, sample, normalize)
    t_sample = [truth_rows[i] for i in sample] if truth_rows is not None else None
    summary: dict[str, Any] = {"emb_dir": str(Path(emb_dir).resolve()), "level": manifest["settings"]["level"],
                               "method": method, "k": k if method == "kmeans" else None, "rows": int(n),
                               "normalized": normalize, "seed": seed, **info}
    ids, counts = np.unique(clusters, return_counts=True)
    summary.update(clusters=int((ids >= 0).sum()), noise_fraction=float((clusters < 0).mean()),
                   sizes={str(int(i)): int(c) for i, c in zip(ids, counts)})
    if method == "hdbscan" and summary["clusters"] == 0:
        log.warning(f"warning: HDBSCAN found no cluster among {n} rows (all noise); lower --min-cluster-size (it was "
                    f"{info.get('min_cluster_size')}) or use --method kmeans.")
    summary["silhouette"] = silhouette(x, clusters[sample], seed)
    if truth_rows is not None:
        summary.update(agreement(clusters, truth_rows))
    if truth_source:
        summary["labels"] = truth_source
    summary["scatter"] = scatter_png(x, clusters[sample], t_sample, out / "scatter.png", seed,
                                     f"{method} ({manifest['settings']['level']} level)")
    names = {wkt: crs_name(wkt) for wkt in set(cols["crs"])}  # of x / y: the files' own (tiles of several zones)
    crs = [names[wkt] for wkt in cols["crs"]]
    table = {"id": cols["id"], "file": cols["file"], "cluster": clusters.astype(np.int32)}
    if truth_rows is not None:
        table["label"] = truth_rows
    with atomic_path(out / "clusters.parquet") as tmp:
        pq.write_table(pa.table({**table, "box": fixed_list(cols["box"]), "grid_index": fixed_list(cols["grid_index"]),
                                 "x": cols["x"], "y": cols["y"], "z": pa.array(cols["z"], pa.float64()),
                                 "crs": pa.array(crs, pa.string())}), tmp)
    with atomic_path(out / "clusters.csv") as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "file", "box", "x", "y", "z", "cluster"] + (["label"] if truth_rows is not None else [])
                   + ["crs"])  # last: the columns before it are where they always were
        for i in range(n):
            z = cols["z"][i]
            w.writerow([int(cols["id"][i]), cols["file"][i], " ".join(map(str, cols["box"][i])), f"{cols['x'][i]:.6f}",
                        f"{cols['y'][i]:.6f}", "" if z is None or z != z else f"{z:.6f}", int(clusters[i])]
                       + ([truth_rows[i] if truth_rows[i] is not None else ""] if truth_rows is not None else [])
                       + [crs[i]])
    summary["maps"] = write_cluster_maps(out, manifest, cols["grid_index"], clusters)
    summary[MAPS_TAGGED] = True  # each map says it is ours: --overwrite takes no file in maps/ for its name alone
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return ClusterResult(out, summary, clusters)


def write_cluster_maps(out: Path, manifest: dict[str, Any], grid_index: np.ndarray, clusters: np.ndarray) -> list[str]:
    """Per file with a map grid of more than one cell: its cluster map (GeoTIFF / NIfTI, int16) and a PNG."""
    written = []
    stems = grid_stems(manifest["files"])
    for f in manifest["files"]:
        if not f.get("grid") or np.prod(f["grid"]) <= 1 or not int(f["rows"]):
            continue
        a, n = int(f["first_row"]), int(f["rows"])
        arr = fill_grid(f, grid_index[a:a + n], clusters[a:a + n, None], MAP_NODATA, np.int16)  # (1, *grid)
        ext = ".tif" if f["kind"] == "raster" else ".nii.gz"
        path = write_grid(f, arr, out / "maps" / f"{stems[f['path']]}_clusters{ext}", MAP_NODATA, ["cluster"],
                          map_tags(manifest, f))
        save_label_png(arr[0], path.with_name(f"{stems[f['path']]}_clusters.png"),
                       f"clusters of {os.path.basename(f['path'])}", MAP_NODATA)
        written.append(str(path.absolute()))  # the same from any folder
    return written
