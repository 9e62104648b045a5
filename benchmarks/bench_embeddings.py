"""Patch embeddings compared: tokens, MAE step time and memory at the Indian Pines config, and a cross-sensor check.

Part 1 (always): an MAE training step (forward + backward + AdamW) per embedding kind at 200 bands, 32x32 windows,
patch 4, embed 128, depth 4 (decoder 64 wide, 2 deep), random data. Each kind runs in its own spawned process so the
peak memory is its own: CUDA ``max_memory_allocated`` on a GPU, the growth of the process's peak RSS on a CPU.

Part 2 (``--cross-sensor``, needs ``/work/shared/data/eurosat_ms_200``; skipped cleanly without it): for each kind,
pretrain on the 13-band EuroSAT-MS patches (bands B01..B12, B8A), then a linear probe (``finetune_classify``,
``labels.per_class=10``, frozen encoder) on the 13 bands and on a 6-band copy (B02 B03 B04 B08 B11 B12) written to
a temporary folder. ``plain`` and ``grouped`` refuse the 6-band copy; ``spectral`` and ``wavelength`` run on it.

    PYTHONPATH=. python benchmarks/bench_embeddings.py --steps 3 --batch 4 --cross-sensor --pretrain-steps 150
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

EUROSAT = Path(__file__).resolve().parents[2] / "shared" / "data" / "eurosat_ms_200"
EUROSAT_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]
SUBSET = ["B02", "B03", "B04", "B08", "B11", "B12"]
STEP_KINDS = {  # label -> (embedding, extra EncoderConfig keys)
    "plain": ("plain", {}),
    "grouped (50 x 4 bands)": ("grouped", {}),
    "spectral chunk 10": ("spectral", {"spectral_chunk": 10}),
    "spectral chunk 1": ("spectral", {"spectral_chunk": 1}),
    "wavelength": ("wavelength", {}),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3, help="timed MAE steps per kind")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--skip-chunk1", action="store_true", help="leave out spectral chunk 1 (12800 tokens per image)")
    p.add_argument("--cross-sensor", action="store_true", help="also run the EuroSAT 13 -> 6 band check")
    p.add_argument("--pretrain-steps", type=int, default=150)
    p.add_argument("--kinds", default="plain,grouped,spectral,wavelength", help="kinds for the cross-sensor check")
    return p.parse_args()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def step_worker(label: str, batch: int, steps: int, threads: int, queue: mp.Queue) -> None:
    """One kind's MAE steps in a fresh process: tokens, median step seconds, peak memory."""
    from geomed_ssl.config import MethodConfig
    from geomed_ssl.data.bands import indian_pines_bands
    from geomed_ssl.methods.mae import MAE
    from geomed_ssl.models.encoder import EncoderConfig

    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, extra = STEP_KINDS[label]
    names, wl = indian_pines_bands()
    cfg = EncoderConfig(in_chans=200, img_size=(32, 32), patch_size=(4, 4), embedding=kind, embed_dim=128, depth=4,
                        num_heads=4, band_names=names, wavelengths=wl, **extra)
    base_rss = peak_rss_mb()
    torch.manual_seed(0)
    mae = MAE(cfg, MethodConfig(decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4), steps).to(device)
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    batch_data = {"image": torch.randn(batch, 200, 32, 32, device=device)}
    tokens = mae.encoder.embed(batch_data["image"][:1])[0].shape[1]
    times = []
    for i in range(steps + 1):  # the first step warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = mae.training_loss(batch_data, i, gen).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    mem = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mb() - base_rss
    params = sum(p.numel() for p in mae.encoder.patch_embed.parameters())
    queue.put((label, tokens, statistics.median(times), mem, params, loss.item()))


def step_table(a: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"## MAE step at the Indian Pines config: 200 bands, 32x32, patch 4, embed 128, depth 4, batch {a.batch}, "
          f"{device}\n")
    print("| embedding | tokens / image | patch-embed params | step (s) | peak memory (MiB) | loss |")
    print("|---|---|---|---|---|---|")
    for label in STEP_KINDS:
        if a.skip_chunk1 and label == "spectral chunk 1":
            continue
        queue = ctx.Queue()
        proc = ctx.Process(target=step_worker, args=(label, a.batch, a.steps, a.threads, queue))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            print(f"| {label} | failed (exit {proc.exitcode}) | | | | |")
            continue
        _, tokens, sec, mem, params, loss = queue.get()
        print(f"| {label} | {tokens} | {params / 1e6:.2f} M | {sec:.3f} | {mem:.0f} | {loss:.3f} |", flush=True)


def six_band_copy(src: Path, dst: Path) -> Path:
    """EuroSAT with only B02 B03 B04 B08 B11 B12, same georeference, in ``dst``."""
    import rasterio

    idx = [EUROSAT_BANDS.index(b) + 1 for b in SUBSET]
    for path in sorted(src.glob("*/*.tif")):
        out = dst / path.parent.name / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path) as f:
            profile = {**f.profile, "count": len(idx)}
            data = f.read(idx)
        with rasterio.open(out, "w", **profile) as g:
            g.write(data)
    return dst


def cross_sensor(a: argparse.Namespace) -> None:
    if not EUROSAT.is_dir():
        print(f"\n(cross-sensor check skipped: {EUROSAT} not found)")
        return
    from geomed_ssl.downstream.classify import finetune_classify
    from geomed_ssl.errors import GeomedError
    from geomed_ssl.train.pretrain import pretrain

    model = ["model.patch_size=8", "model.embed_dim=64", "model.depth=4", "model.num_heads=4",
             "method.decoder_embed_dim=64", "method.decoder_depth=2", "method.decoder_num_heads=4"]
    extra = {"plain": [], "grouped": [], "spectral": ["method.channel_sampling=true", "method.channel_sampling_min=3"],
             "wavelength": ["method.channel_sampling=true", "method.channel_sampling_min=3"]}
    common = ["data.sensor=sentinel2", "data.patch_size=64", "data.num_workers=0", "data.stats_windows=64",
              "data.exclude=[]", "train.accelerator=auto"]
    probe = ["labels.per_class=10", "finetune.freeze_encoder=true", "finetune.head=linear", "finetune.max_steps=300",
             "labels.seed=0"]
    bands13 = f"data.band_names=[{', '.join(EUROSAT_BANDS)}]"
    bands6 = f"data.band_names=[{', '.join(SUBSET)}]"
    print(f"\n## Cross-sensor: pretrained on EuroSAT-MS 13 bands ({a.pretrain_steps} MAE steps, embed 64, depth 4, "
          "patch 8), linear probe with 10 labels per class (100 train / 100 test images)\n")
    print("| embedding | probe OA, 13 bands | probe OA, 6 bands (B02 B03 B04 B08 B11 B12) | pretrain (s) |")
    print("|---|---|---|---|")
    work = Path(tempfile.mkdtemp(prefix="bench_embeddings_"))
    try:
        six = six_band_copy(EUROSAT, work / "eurosat6")
        for kind in a.kinds.split(","):
            run = work / f"pre_{kind}"
            t0 = time.perf_counter()
            pretrain(None, EUROSAT, run, progress=False,
                     overrides=[*model, *common, bands13, f"model.embedding={kind}", *extra[kind],
                                f"train.max_steps={a.pretrain_steps}", "train.batch_size=32", "train.base_lr=1.5e-3",
                                "train.warmup_steps=20", "train.checkpoint_every=100000", "train.preview_every=0"])
            took = time.perf_counter() - t0
            scores = []
            for data, bands in ((EUROSAT, bands13), (six, bands6)):
                try:
                    res = finetune_classify(None, run, data, work / f"ft_{kind}_{len(scores)}", progress=False,
                                            overrides=[*model, *common, bands, *probe])
                    scores.append(f"{res.metrics['test']['OA']:.3f}")
                except GeomedError as err:
                    missing = re.search(r"missing \[(.*?)\]", str(err))
                    scores.append(f"refused (names the {len(missing.group(1).split(','))} missing bands)" if missing
                                  else f"refused ({str(err)[:60]})")
            print(f"| {kind} | {scores[0]} | {scores[1]} | {took:.0f} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    a = parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    step_table(a)
    if a.cross_sensor:
        cross_sensor(a)


if __name__ == "__main__":
    main()
