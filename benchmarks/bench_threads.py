"""What too many torch threads cost: one MAE training step (ViT depth 6, width 192, batch 32 of 13x64x64, 8-px
tokens) timed at torch thread counts of 1x to 8x the CPUs this process may use, interleaved so background load hits
all alike. A container whose CPU quota is below the host's cores (``docker --cpus``, a Kubernetes limit) gets torch's
default pool, one thread per host core, unless ``geomed_ssl.cpus.fit_threads_to_quota`` lowers it, as every command
does; on a quota the extra threads are throttled as well as interleaved, so this table is the milder case.

    PYTHONPATH=. python benchmarks/bench_threads.py

2026-12-04, 2 idle cores: 0.134 s per step at 2 threads, 0.198 / 0.194 s at 4 / 8 (1.48x / 1.45x), 0.268 s at 16
(2.00x).
"""

from __future__ import annotations

import statistics
import time

import torch

from geomed_ssl.config import MethodConfig
from geomed_ssl.cpus import usable_cpus
from geomed_ssl.methods.mae import MAE
from geomed_ssl.models.encoder import EncoderConfig


def main(rounds: int = 8) -> None:
    enc = EncoderConfig(in_chans=13, img_size=(64, 64), patch_size=(8, 8), embed_dim=192, depth=6, num_heads=3,
                        mlp_ratio=4.0)
    method = MAE(enc, MethodConfig(mask_ratio=0.75, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
                 max_steps=1)
    optimizer = torch.optim.AdamW(method.parameters(), 1e-4)
    batch = {"image": torch.randn(32, 13, 64, 64), "index": torch.arange(32)}

    def step() -> None:
        loss = method.training_loss(batch, 0, torch.Generator().manual_seed(0)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    cpus = usable_cpus()
    times: dict[int, list[float]] = {cpus * k: [] for k in (1, 2, 4, 8)}
    for threads in times:  # warm-up
        torch.set_num_threads(threads)
        step()
    for _ in range(rounds):
        for threads, seen in times.items():
            torch.set_num_threads(threads)
            start = time.perf_counter()
            step()
            seen.append(time.perf_counter() - start)
    best = statistics.median(times[cpus])
    print(f"| torch threads ({cpus} usable CPUs) | s per step (median of {rounds}) | vs {cpus} threads |")
    print("|---|---|---|")
    for threads, seen in times.items():
        print(f"| {threads} | {statistics.median(seen):.3f} | {statistics.median(seen) / best:.2f}x |")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds over the thread counts (default 8)")
    main(ap.parse_args().rounds)
