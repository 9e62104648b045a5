"""MAE training-step throughput: geomed-ssl vs HF ``ViTMAEForPreTraining`` at the identical config, one process.

A step is forward + backward + AdamW step, masking noise drawn each step. The two models alternate step by step
(order flipped every step) so background load hits both alike. FLOPs per step (forward + backward) are counted once
with ``torch.utils.flop_counter.FlopCounterMode`` (attention through the math SDPA backend so its matmuls count);
achieved GFLOP/s is set against a measured fp32 GEMM peak (``torch.mm``) on the same machine.
On a CPU shared with other work, ``--threads 1`` avoids OpenMP threads spinning against each other.

    PYTHONPATH=. python benchmarks/bench_mae_step.py --steps 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from geomed_ssl.config import MethodConfig
from geomed_ssl.methods.mae import MAE
from geomed_ssl.models.encoder import EncoderConfig


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bands", type=int, default=13)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args()


def build_ours(a: argparse.Namespace) -> MAE:
    enc = EncoderConfig(in_chans=a.bands, img_size=(a.size, a.size), patch_size=(a.patch, a.patch), embed_dim=192,
                        depth=12, num_heads=3, mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-6)
    method = MethodConfig(mask_ratio=0.75, norm_pix_loss=True, decoder_embed_dim=128, decoder_depth=4,
                          decoder_num_heads=4)
    return MAE(enc, method, max_steps=1)


def build_hf(a: argparse.Namespace):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    cfg = ViTMAEConfig(
        image_size=a.size, patch_size=a.patch, num_channels=a.bands, hidden_size=192, num_hidden_layers=12,
        num_attention_heads=3, intermediate_size=768, decoder_hidden_size=128, decoder_num_hidden_layers=4,
        decoder_num_attention_heads=4, decoder_intermediate_size=512, mask_ratio=0.75, norm_pix_loss=True,
        qkv_bias=True, layer_norm_eps=1e-6, hidden_act="gelu", attn_implementation="sdpa",
    )
    return ViTMAEForPreTraining(cfg)


def gemm_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def main() -> None:
    a = parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    images = torch.randn(a.batch, a.bands, a.size, a.size)
    n_tokens = (a.size // a.patch) ** 2
    ours, hf = build_ours(a).train(), build_hf(a).train()
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95))
            for name, m in (("geomed-ssl", ours), ("transformers", hf))}
    gens = {"geomed-ssl": torch.Generator().manual_seed(0), "transformers": torch.Generator().manual_seed(0)}

    def loss_of(name: str) -> torch.Tensor:
        if name == "geomed-ssl":
            return ours.training_loss({"image": images}, 0, gens[name]).loss
        noise = torch.rand(a.batch, n_tokens, generator=gens[name])
        return hf(pixel_values=images, noise=noise).loss

    def step(name: str) -> float:
        t = time.perf_counter()
        loss = loss_of(name)
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()
        return time.perf_counter() - t

    flops = {}
    for name in opts:
        # the math SDPA backend decomposes into counted matmuls (the fused CPU kernel is not counted)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            loss_of(name).backward()
        flops[name] = counter.get_total_flops()
        opts[name].zero_grad(set_to_none=True)

    names = list(opts)
    for _ in range(a.warmup):
        for name in names:
            step(name)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(a.steps):
        for name in (names if i % 2 == 0 else names[::-1]):
            times[name].append(step(name))
    peak = gemm_peak_gflops()

    print(f"MAE training step (fwd+bwd+AdamW), fp32 CPU, batch {a.batch}, {a.bands}x{a.size}x{a.size}, "
          f"patch {a.patch}, ViT embed 192 depth 12 heads 3, decoder 128/4/4, mask 0.75, norm_pix")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"{platform.processor() or platform.machine()}, load avg {os.getloadavg()[0]:.1f}, "
          f"{a.warmup} warmup + {a.steps} timed steps each, interleaved")
    print(f"fp32 GEMM peak (torch.mm 2048^2, best of 5): {peak:.1f} GFLOP/s")
    header = f"| {'impl':<13}| {'median s/step':>13} | {'min s/step':>10} | {'img/s (median)':>14} | " \
             f"{'GFLOP/step':>10} | {'GFLOP/s':>8} | {'% GEMM peak':>11} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name in names:
        med, best = statistics.median(times[name]), min(times[name])
        gf = flops[name] / 1e9
        print(f"| {name:<13}| {med:>13.3f} | {best:>10.3f} | {a.batch / med:>14.1f} | {gf:>10.1f} | "
              f"{gf / med:>8.1f} | {100 * gf / med / peak:>10.1f}% |")
    med = statistics.median(times["transformers"]) / statistics.median(times["geomed-ssl"])
    best = min(times["transformers"]) / min(times["geomed-ssl"])
    print(f"speed-up geomed-ssl vs transformers: {med:.2f}x on median step time, {best:.2f}x on best step time "
          "(best is the steadier figure on a loaded machine)")


if __name__ == "__main__":
    main()
