"""Patch embeddings compared: tokens, MAE step time and memory at the Indian Pines config, and a cross-sensor check.

Part 1 (always): an MAE training step (forward + backward + AdamW) per embedding kind at 200 bands, 32x32 windows,
patch 4, embed 128, depth 4 (decoder 64 wide, 2 deep), random data. Each kind runs in its own spawned process so the
peak memory is its own: CUDA ``max_memory_allocated`` on a GPU, the growth of the process's peak RSS on a CPU.

Part 2 (``--cross-sensor``, needs ``/work/shared/data/eurosat_ms_200``; skipped cleanly without it): for each kind,
pretrain on the 13-band EuroSAT-MS patches (bands B01..B12, B8A), then a linear probe (``finetune_classify``,
``labels.per_class=10``, frozen encoder) on the 13 bands and on a 6-band copy (B02 B03 B04 B08 B11 B12) written to
a temporary folder. ``plain`` and ``grouped`` refuse the 6-band copy; ``spectral`` and ``wavelength`` run on it.

Part 3 (``--few-label``): Indian Pines few-label segmentation per embedding kind after the same wall-clock MAE
pretraining budget: each kind's step time is measured (steps 10 to 40 of a short run), its step count set to
``--budget-seconds`` / step time, then ``finetune_segment`` with 5 labelled pixels per class (the demo recipe's
fine-tuning, ``--seg-head``) over ``--seeds``; the random-init plain encoder is the reference row.

    PYTHONPATH=. python benchmarks/bench_embeddings.py --steps 3 --batch 4 --cross-sensor --pretrain-steps 150
    PYTHONPATH=. python benchmarks/bench_embeddings.py --steps 3 --few-label --budget-seconds 60 --num-workers 8
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
    p.add_argument("--few-label", action="store_true", help="also run the Indian Pines few-label comparison")
    p.add_argument("--budget-seconds", type=float, default=300, help="pretraining wall clock per kind (few-label)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="label seeds (few-label)")
    p.add_argument("--seg-head", default="linear", help="finetune.head for the few-label runs")
    p.add_argument("--num-workers", type=int, default=0, help="data.num_workers for the few-label runs")
    return p.parse_args()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def step_worker(label: str, batch: int, steps: int, threads: int, queue: mp.Queue) -> None:
    """One kind's MAE steps in a fresh process: tokens, median step seconds, peak memory."""
    from geomed_ssl.config import MethodConfig
    from geomed_ssl.bands.names import indian_pines_bands
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
    from geomed_ssl.finetune.classify import finetune_classify
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


FEW_LABEL_KINDS = {"plain": {}, "grouped (50 x 4 bands)": {"embedding": "grouped"},
                   "spectral chunk 10": {"embedding": "spectral", "spectral_chunk": 10},
                   "wavelength": {"embedding": "wavelength"}}


def seconds_per_step(recipe_raw: dict, work: Path, first: int = 10, last: int = 40) -> float:
    """Warm step time: wall clock between steps ``first`` and ``last`` of a short pretraining."""
    import lightning as L

    from geomed_ssl.config import recipe_from_dict
    from geomed_ssl.sample import SAMPLE_DIR
    from geomed_ssl.train.pretrain import pretrain

    marks: dict[int, float] = {}

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:  # noqa: ANN001
            if trainer.global_step in (first, last):
                marks[trainer.global_step] = time.perf_counter()

    raw = {k: dict(v) for k, v in recipe_raw.items()}
    raw["train"].update(max_steps=last, checkpoint_every=100_000, preview_every=0)
    pretrain(recipe_from_dict(raw), SAMPLE_DIR, work, overwrite=True, progress=False, callbacks=[Clock()])
    return (marks[last] - marks[first]) / (last - first)


def few_label(a: argparse.Namespace) -> None:
    import numpy as np

    from geomed_ssl.config import recipe_from_dict
    from geomed_ssl.demo import DEMO_RECIPE
    from geomed_ssl.finetune.segment import finetune_segment
    from geomed_ssl.sample import LABELS, SAMPLE_DIR
    from geomed_ssl.train.pretrain import pretrain

    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\n## Indian Pines, 5 labels per class, {a.budget_seconds:.0f} s of MAE pretraining per kind on {device} "
          f"(demo recipe: patch 4, embed 128, depth 6), head '{a.seg_head}', seeds {a.seeds}\n")
    print("| embedding | tokens / image | s / step | steps in budget | OA | AA | kappa |")
    print("|---|---|---|---|---|---|---|")
    work = Path(tempfile.mkdtemp(prefix="bench_embeddings_fl_"))
    try:
        for label, model in [*FEW_LABEL_KINDS.items(), ("plain, random init", None)]:
            raw = {k: dict(v) for k, v in DEMO_RECIPE.items()}
            raw["model"].update(model or {})
            raw["data"]["num_workers"] = a.num_workers
            raw["finetune"]["head"] = a.seg_head
            encoder, cells = None, ["", "", ""]
            if model is not None:
                sec = seconds_per_step(raw, work / "clock")
                steps = max(1, int(a.budget_seconds / sec))
                raw["train"].update(max_steps=steps, warmup_steps=max(1, steps // 20), checkpoint_every=100_000,
                                    preview_every=0)
                run = pretrain(recipe_from_dict(raw), SAMPLE_DIR, work / "pre", overwrite=True, progress=False)
                encoder = run.run_dir
                from geomed_ssl import load_encoder

                enc = load_encoder(run.run_dir)
                x = torch.zeros(1, enc.config.in_chans, *enc.config.img_size)
                cells = [str(enc.embed(x)[0].shape[1]), f"{sec:.3f}", str(steps)]
            scores = []
            for seed in a.seeds:
                r = {k: dict(v) for k, v in raw.items()}
                r["labels"].update(seed=seed, per_class=5, split="random")
                res = finetune_segment(recipe_from_dict(r), encoder, SAMPLE_DIR, LABELS, work / f"ft_{seed}",
                                       overwrite=True, progress=False)
                scores.append([res.metrics["test"][m] for m in ("OA", "AA", "kappa")])
            s = np.array(scores)
            stats = " | ".join(f"{s[:, j].mean():.3f} ± {s[:, j].std():.3f}" for j in range(3))
            print(f"| {label} | {' | '.join(cells)} | {stats} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    a = parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    step_table(a)
    if a.cross_sensor:
        cross_sensor(a)
    if a.few_label:
        few_label(a)


if __name__ == "__main__":
    main()
