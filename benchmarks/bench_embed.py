"""Embedding extraction and clustering benchmarks, printed as tables.

    python benchmarks/bench_embed.py --part throughput --size 4096     # patch level on a generated 13-band scene
    python benchmarks/bench_embed.py --part eurosat --steps 200        # k-means NMI/ARI on EuroSAT-MS (200 patches)
    python benchmarks/bench_embed.py --part pines --steps 150          # per-pixel-window clusters on Indian Pines
    python benchmarks/bench_embed.py                                    # all three (8192 px scene)

throughput: windows embedded per second and peak RSS growth (sampled from /proc/self/status every 5 ms over a
baseline taken just before) of ``embed_folder(level="patch")`` on an NxN 13-band uint16 deflate-tiled GeoTIFF
(generated once, as in bench_predict.py), with a random-init ViT (timing only). The time includes writing the
Parquet parts, the final table, ``vectors.npy`` and the PCA embedding GeoTIFF.

eurosat: a short MAE pretraining on the 200 EuroSAT-MS patches (run here, small), then image-level embeddings
(mean pooling) of every patch clustered with k-means (k=10) and scored against the class folders (NMI / ARI),
beside the same architecture at random initialisation and raw per-band means (normalised bands averaged over each
patch). DINO too when ``method.name=dino`` is registered (a short run; it is skipped otherwise).

pines: a short MAE on the bundled Indian Pines scene; window-level embeddings of small windows at stride 1 (one
window per pixel, centred on it), k-means with k=16, NMI / ARI against the ground truth at the labelled pixels, beside
a random-init encoder and k-means on the raw normalised pixel spectra; the cluster map PNG is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import RssSampler, scene_path  # noqa: E402

from geomed_ssl.checkpoint import save_encoder  # noqa: E402
from geomed_ssl.config import DataConfig  # noqa: E402
from geomed_ssl.data.catalog import scan  # noqa: E402
from geomed_ssl.data.stats import compute_stats  # noqa: E402
from geomed_ssl.embeddings.cluster import agreement, cluster_embeddings, fit_predict  # noqa: E402
from geomed_ssl.embeddings.extract import embed_folder  # noqa: E402
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder  # noqa: E402

EUROSAT = Path(__file__).resolve().parents[2] / "shared" / "data" / "eurosat_ms_200"
RECIPES = str(Path(__file__).resolve().parents[1] / "recipes")
EUROSAT_BANDS = "[B01,B02,B03,B04,B05,B06,B07,B08,B09,B10,B11,B12,B8A]"


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    print(f"\n{title}\n{line(header)}\n|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


def random_encoder(data: Path, out: Path, data_cfg: DataConfig, dim: int, depth: int, heads: int, patch: int,
                   window: int) -> Path:
    """A random-init encoder export whose statistics are computed on ``data`` (the baseline)."""
    catalog = scan(data, data_cfg)
    stats = compute_stats(catalog, data_cfg)
    cfg = EncoderConfig(in_chans=len(catalog.band_names), spatial_dims=2, img_size=(window, window),
                        patch_size=(patch, patch), embed_dim=dim, depth=depth, num_heads=heads,
                        band_names=catalog.band_names, wavelengths=catalog.wavelengths, stats=stats.to_dict())
    torch.manual_seed(0)
    return save_encoder(ViTEncoder(cfg), out, {"method": "none", "recipe": {"data": dataclasses.asdict(data_cfg)}})


def pretrain_small(recipe: str, data: Path, out: Path, sets: list[str]) -> Path:
    from geomed_ssl.train.pretrain import pretrain

    t0 = time.perf_counter()
    pretrain(recipe, data, out, overrides=sets, overwrite=True, progress=False)
    print(f"  pretrained {out.name} in {time.perf_counter() - t0:.0f} s")
    return out


# -- throughput -------------------------------------------------------------------------------------------------
def throughput(a: argparse.Namespace, work: Path) -> None:
    src = scene_path(work / "scenes", a.size, 13)
    data = work / f"scene_{a.size}"
    data.mkdir(exist_ok=True)
    link = data / src.name
    if not link.exists():
        os.symlink(src, link)
    cfg = DataConfig(kind="raster", patch_size=a.window, stats_windows=32)
    enc = random_encoder(data, work / f"enc_{a.dim}_{a.depth}", cfg, a.dim, a.depth, a.heads, a.patch, a.window)
    out = work / f"emb_patch_{a.size}"
    base = RssSampler.rss()
    t0 = time.perf_counter()
    with RssSampler() as rss:
        result = embed_folder(enc, data, out, level="patch", batch_size=a.batch_size, dtype=a.dtype, overwrite=True,
                              progress=False, device=a.device)
    seconds = time.perf_counter() - t0
    m = result.manifest
    size = lambda p: sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file()) / 2**20  # noqa: E731
    table(f"patch-level embedding of a {a.size}x{a.size}x13 uint16 GeoTIFF (device {a.device}, "
          f"{torch.get_num_threads()} torch threads)", ["metric", "value"], [
        ["encoder", f"random ViT dim {a.dim} depth {a.depth}, {a.patch} px tokens, {a.window} px windows"],
        ["windows (encoder inputs)", f"{result.windows}"],
        ["rows (patch cells) x dims", f"{m['count']} x {m['dim']} ({a.dtype})"],
        ["seconds (read, encode, parts, table, npy, PCA map)", f"{seconds:.1f}"],
        ["windows / s", f"{result.windows / seconds:.1f}"],
        ["peak RSS growth (MiB, sampled)", f"{(rss.peak - base) / 2**20:.0f}"],
        ["embeddings.parquet / vectors.npy / maps (MiB)",
         f"{(out / 'embeddings.parquet').stat().st_size / 2**20:.0f} / "
         f"{(out / 'vectors.npy').stat().st_size / 2**20:.0f}"
         f" / {size(out / 'maps'):.1f}"],
        ["scene on disk (MiB) / as float32 (MiB, never loaded)", f"{src.stat().st_size / 2**20:.0f} / "
         f"{a.size * a.size * 13 * 4 / 2**20:.0f}"],
    ])


# -- EuroSAT ----------------------------------------------------------------------------------------------------
def eurosat(a: argparse.Namespace, work: Path) -> None:
    if not EUROSAT.is_dir():
        print(f"\n(eurosat skipped: {EUROSAT} not found)")
        return
    from geomed_ssl.methods import METHODS

    small = ["model.embed_dim=128", "model.depth=4", "model.num_heads=4", "model.patch_size=8", "data.patch_size=64",
             f"data.band_names={EUROSAT_BANDS}", "data.num_workers=0", "train.batch_size=32",
             f"train.max_steps={a.steps}", "train.warmup_steps=20", "train.preview_every=0",
             f"train.checkpoint_every={a.steps}", "train.base_lr=1.5e-3"]
    runs = {"MAE": pretrain_small(RECIPES + "/mae_sentinel2.yaml", EUROSAT, work / "eurosat_mae",
                                  small + ["method.decoder_embed_dim=64", "method.decoder_depth=2"])}
    if "dino" in METHODS and Path(RECIPES, "dino_sentinel2.yaml").is_file():
        try:
            runs["DINO"] = pretrain_small(RECIPES + "/dino_sentinel2.yaml", EUROSAT, work / "eurosat_dino", small + [
                "data.n_local_crops=2", "method.out_dim=1024", "method.head_hidden_dim=256",
                "method.head_bottleneck_dim=64", "train.base_lr=5.0e-4"])
        except Exception as err:  # a method still in progress must not sink the other rows
            print(f"  DINO skipped: {type(err).__name__}: {err}")
    else:
        print("  DINO skipped: method.name=dino is not registered")
    data_cfg = DataConfig(kind="raster", patch_size=64, band_names=EUROSAT_BANDS.strip("[]").split(","),
                          stats_windows=128)
    runs["random init"] = random_encoder(EUROSAT, work / "eurosat_random", data_cfg, 128, 4, 4, 8, 64)
    rows = []
    for name, enc in runs.items():
        for pool in ("mean", "cls"):
            emb = work / f"eurosat_emb_{name.split()[0]}_{pool}"
            r = embed_folder(enc, EUROSAT, emb, level="image", pool=pool, overwrite=True, progress=False)
            s = cluster_embeddings(emb, work / f"eurosat_cl_{name.split()[0]}_{pool}", "kmeans", k=10,
                                   labels="folders", overwrite=True).summary
            rows.append([f"{name} ({pool} pool)", f"{s['nmi']:.3f}", f"{s['ari']:.3f}", f"{s['silhouette']:.3f}",
                         f"{r.windows_per_s:.0f}"])
    rows.append(["raw per-band means", *raw_means_scores(work, data_cfg), "-"])
    table(f"EuroSAT-MS, {len(list(EUROSAT.rglob('*.tif')))} patches of 10 classes: k-means (k=10) on image-level "
          f"embeddings vs class folders ({a.steps} pretraining steps)", ["features", "NMI", "ARI", "silhouette",
                                                                          "images/s"], rows)


def raw_means_scores(work: Path, data_cfg: DataConfig) -> list[str]:
    from geomed_ssl.data.readers import RasterReader
    from geomed_ssl.data.stats import normalize
    from geomed_ssl.embeddings.cluster import silhouette
    from geomed_ssl.data.labelled import scan_class_folders

    records, labels, _ = scan_class_folders(EUROSAT, data_cfg)
    stats = compute_stats(scan(EUROSAT, data_cfg), data_cfg)
    reader = RasterReader()
    feats = []
    for r in records:
        x, v = normalize(reader.read_window(r, 0, 0, *r.shape), stats, r.nodata)
        feats.append(x[:, v].mean(1))
    x = np.stack(feats).astype(np.float32)
    clusters, _ = fit_predict(x, "kmeans", k=10, normalize=False)
    s = agreement(clusters, [str(v) for v in labels])
    return [f"{s['nmi']:.3f}", f"{s['ari']:.3f}", f"{silhouette(x, clusters, 0):.3f}"]


# -- Indian Pines -----------------------------------------------------------------------------------------------
def pines(a: argparse.Namespace, work: Path) -> None:
    import rasterio

    from geomed_ssl.data.readers import RasterReader
    from geomed_ssl.data.stats import normalize
    from geomed_ssl.sample import IMAGE, LABELS, SAMPLE_DIR

    # an MAE run (recipes/mae_hyperspectral.yaml is dense VICReg now): the Sentinel-2 MAE recipe, sensor off
    mae = pretrain_small(RECIPES + "/mae_sentinel2.yaml", SAMPLE_DIR, work / "pines_mae", [
        "data.sensor=null", "data.include=[indian_pines.tif]", "data.patch_size=32", "data.num_workers=0", "model.patch_size=4",
        "model.embed_dim=128", "model.depth=4", "model.num_heads=4", "method.decoder_embed_dim=64",
        "method.decoder_depth=2", "train.batch_size=32", f"train.max_steps={a.steps}", "train.warmup_steps=15",
        "train.base_lr=1.5e-3", "train.preview_every=0", f"train.checkpoint_every={a.steps}"])
    cfg = DataConfig(kind="raster", patch_size=32, include=["indian_pines.tif"], stats_windows=128)
    rand = random_encoder(SAMPLE_DIR, work / "pines_random", cfg, 128, 4, 4, 4, 32)
    rows = []
    for name, enc in (("MAE", mae), ("random init", rand)):
        emb = work / f"pines_emb_{name.split()[0]}"
        t0 = time.perf_counter()
        r = embed_folder(enc, SAMPLE_DIR, emb, level="window", window=a.pines_window, stride=1,
                         include=["indian_pines.tif"], overwrite=True, progress=False, batch_size=256)
        cl = work / f"pines_cl_{name.split()[0]}"
        s = cluster_embeddings(emb, cl, "kmeans", k=16, labels=LABELS, overwrite=True).summary
        rows.append([name, f"{s['nmi']:.3f}", f"{s['ari']:.3f}", f"{r.manifest['count']}",
                     f"{time.perf_counter() - t0:.0f}", str(cl / "maps" / "indian_pines_clusters.png")])
    with rasterio.open(LABELS) as src:
        gt = src.read(1)
    rec = scan(IMAGE, cfg).records[0]
    stats = compute_stats(scan(IMAGE, cfg), cfg)
    x, _ = normalize(RasterReader().read_window(rec, 0, 0, *rec.shape), stats, rec.nodata)
    spectra = x.reshape(x.shape[0], -1).T.astype(np.float32)  # (H*W, C)
    clusters, _ = fit_predict(spectra, "kmeans", k=16, normalize=False)
    s = agreement(clusters, [str(int(g)) if g else None for g in gt.ravel()])
    rows.append(["raw pixel spectra", f"{s['nmi']:.3f}", f"{s['ari']:.3f}", f"{spectra.shape[0]}", "-", "-"])
    table(f"Indian Pines (145x145x200): k-means (k=16) per pixel-centred {a.pines_window} px window vs ground truth "
          f"(labelled pixels; {a.steps} pretraining steps)", ["features", "NMI", "ARI", "rows", "seconds", "map"], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "throughput", "eurosat", "pines"], default="all")
    p.add_argument("--size", type=int, default=8192, help="throughput: scene side in pixels")
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=200, help="pretraining steps (eurosat, pines)")
    p.add_argument("--pines-window", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "geomed_bench_embed"))
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.part in ("all", "throughput"):
        throughput(a, work)
    if a.part in ("all", "eurosat"):
        eurosat(a, work)
    if a.part in ("all", "pines"):
        pines(a, work)


if __name__ == "__main__":
    main()
