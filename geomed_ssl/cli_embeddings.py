"""``geomed-ssl embed``, ``cluster`` and ``similar``: the embedding commands (registered on the app of
:mod:`geomed_ssl.cli`, in its order)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from geomed_ssl.cli_options import SetOpt, StrictOpt, progress_shown, terminable, user_errors
from geomed_ssl.errors import GeomedError


@user_errors
@terminable
def embed(
    encoder: Path = typer.Argument(..., metavar="ENC", help="RUN_DIR, RUN_DIR/encoder or a fine-tune folder."),
    data_dir: Path = typer.Argument(..., metavar="DATA_DIR", help="Folder of GeoTIFFs or NIfTI volumes (or one file)."),
    out: Path = typer.Option(..., "--out", help="Embedding folder (embeddings.parquet, vectors.npy, manifest.json)."),
    level: str = typer.Option("image", "--level", help="image (one vector per file), window, or patch (per token)."),
    window: Optional[str] = typer.Option(None, "--window", help="Window size, e.g. 64 or 64,64,32 (default: the "
                                         "encoder's training window)."),
    stride: Optional[str] = typer.Option(None, "--stride", help="Window stride (default: the window)."),
    pool: str = typer.Option("auto", "--pool", help="auto (what the encoder's training read), cls, or mean (of "
                             "the tokens holding valid pixels)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Windows per forward pass."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float16 vectors."),
    pca: int = typer.Option(8, "--pca", help="Patch level: bands (PCA components) of the embedding maps; 0: none."),
    min_valid: float = typer.Option(0.0, "--min-valid", help="Skip windows / cells with less valid area."),
    include: Optional[list[str]] = typer.Option(None, "--include", help="Glob of files to embed (repeatable)."),
    exclude: Optional[list[str]] = typer.Option(None, "--exclude", help="Glob of files to skip (repeatable)."),
    overrides: Optional[list[str]] = SetOpt,
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda[:N]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing embedding folder."),
    strict: bool = StrictOpt,
) -> None:
    """Embed a folder with a pretrained encoder into a Parquet table + vectors.npy (resumes an interrupted run)."""
    from geomed_ssl.embeddings.extract import embed_folder

    result = embed_folder(encoder, data_dir, out, level=level, window=window, stride=stride, pool=pool,
                          batch_size=batch_size, dtype=dtype, pca_dims=pca, min_valid=min_valid, overrides=overrides,
                          include=include, exclude=exclude, overwrite=overwrite, device=device,
                          progress=progress_shown(), strict=strict)
    m = result.manifest
    n_files = len(m["files"])
    typer.echo(f"{m['count']} vector{'s' if m['count'] != 1 else ''} of {m['dim']} dims from {n_files} "
               f"file{'s' if n_files != 1 else ''} ({result.files_embedded} "
               f"embedded now, {result.files_skipped} done before; {result.windows_per_s:.1f} windows/s)")
    typer.echo(f"table: {out / 'embeddings.parquet'}  vectors: {out / 'vectors.npy'}"
               + (f"  maps: {out / 'maps'}" if m.get("maps") else ""))


@user_errors
@terminable
def cluster(
    emb_dir: Path = typer.Argument(..., metavar="EMB_DIR", help="An embedding folder (from `geomed-ssl embed`)."),
    out: Path = typer.Option(..., "--out", help="Output folder (clusters, summary, scatter, maps)."),
    method: str = typer.Option("kmeans", "--method", help="kmeans or hdbscan."),
    k: Optional[int] = typer.Option(None, "--k", help="k-means: number of clusters (default 8)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="True labels: a CSV of file,label; 'folders' "
                                         "(class folder names); or a label GeoTIFF/NIfTI on the image's grid."),
    min_cluster_size: Optional[int] = typer.Option(None, "--min-cluster-size", help="HDBSCAN (default 1% of the "
                                                   "rows it is fitted on, at least 5)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    ignore_value: str = typer.Option("0", "--ignore-value", help="A label map's value for unlabelled pixels / "
                                     "voxels (none: every value is a class, e.g. a binary mask's 0)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
) -> None:
    """Cluster stored embeddings (k-means or HDBSCAN): labels, maps on the inputs' grids, scatter plot, scores."""
    from geomed_ssl.embeddings.cluster import cluster_embeddings

    try:
        ignore = None if ignore_value.lower() in ("none", "null") else int(ignore_value)
    except ValueError:
        raise GeomedError(f"--ignore-value '{ignore_value}': an integer label value, or none.") from None
    s = cluster_embeddings(emb_dir, out, method=method, k=k, labels=labels, seed=seed,
                           min_cluster_size=min_cluster_size, ignore_value=ignore, overwrite=overwrite).summary
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    typer.echo(f"{s['clusters']} clusters over {s['rows']} rows (noise {s['noise_fraction']:.1%}); silhouette "
               f"{fmt(s['silhouette'])}" + (f"; NMI {fmt(s['nmi'])}  ARI {fmt(s['ari'])} vs {s['labels']}"
                                            if "nmi" in s else ""))
    typer.echo(f"summary: {out / 'summary.json'}  table: {out / 'clusters.csv'} (and .parquet)  scatter: "
               f"{out / 'scatter.png'}" + (f"  maps: {out / 'maps'}" if s["maps"] else ""))


@user_errors
@terminable
def similar(
    emb_dir: Path = typer.Argument(..., metavar="EMB_DIR", help="An embedding folder (from `geomed-ssl embed`)."),
    query: Path = typer.Option(..., "--query", help="The query file (GeoTIFF or NIfTI)."),
    box: Optional[str] = typer.Option(None, "--box", help="A box in it: ROW,COL,H,W (rasters) or I,J,K,DI,DJ,DK "
                                      "(volumes: voxel indices and sizes along the reader's RAS axes i=Right, "
                                      "j=Anterior, k=Superior, after data.spacing resampling, as the stored `box` "
                                      "column: not a viewer's voxel indices of a file stored otherwise, e.g. LPS); "
                                      "default the whole file."),
    at: Optional[str] = typer.Option(None, "--at", help="Or a point: X,Y on the query raster's map (in its CRS, or "
                                     "--at-crs), or X,Y,Z in the query volume's world mm (its NIfTI affine's, as a "
                                     "viewer's world / RAS coordinates): the stored grid's window nearest it, or the "
                                     "patch cell under it."),
    at_crs: Optional[str] = typer.Option(None, "--at-crs", help="The CRS of --at, e.g. EPSG:4326 (lon,lat)."),
    top: int = typer.Option(10, "--top", help="Number of neighbours."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default EMB_DIR/search/<query>)."),
    include_self: bool = typer.Option(False, "--include-self", help="Keep the query's own rows among the hits."),
    encoder: Optional[Path] = typer.Option(None, "--encoder", help="The encoder, if it moved since embedding."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda[:N]."),
    strict: bool = StrictOpt,
) -> None:
    """Nearest neighbours (cosine) of a file, a box in it or a map point among stored embeddings, with a contact
    sheet."""
    from geomed_ssl.embeddings.search import find_similar

    for line in find_similar(emb_dir, query, box=box, top=top, out_dir=out, include_self=include_self,
                             encoder=encoder, device=device, strict=strict, at=at, at_crs=at_crs).lines:
        typer.echo(line)
