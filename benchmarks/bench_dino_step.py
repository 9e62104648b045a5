"""DINO training-step throughput: geomed-ssl's DINO vs the same step built from lightly's DINO components.

Both sides use the same ViTEncoder (timm Blocks) student / EMA teacher, the same crops and AdamW; the lightly side
uses ``DINOProjectionHead`` + ``DINOLoss`` + ``update_momentum`` from lightly. A step is: teacher forward on the
global crops, student forward on all crops, loss, backward, last-layer freeze, optimiser step, EMA.

    PYTHONPATH=. python benchmarks/bench_dino_step.py            # ViT-Ti, 13 bands, 2x64^2 + 6x32^2, batch 32
    PYTHONPATH=. python benchmarks/bench_dino_step.py --steps 5 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Callable

import torch

from geomed_ssl.methods.dino import DINO, DINOSettings
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder


def make_batch(args: argparse.Namespace, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    glob = [torch.randn(args.batch, args.bands, args.global_size, args.global_size, generator=g) for _ in range(2)]
    loc = [torch.randn(args.batch, args.bands, args.local_size, args.local_size, generator=g)
           for _ in range(args.n_local)]
    return {"views": {"global": [t.to(device) for t in glob], "local": [t.to(device) for t in loc]}}


def encoder_cfg(args: argparse.Namespace) -> EncoderConfig:
    return EncoderConfig(in_chans=args.bands, img_size=(args.global_size,) * 2, patch_size=(args.patch,) * 2,
                         embed_dim=args.dim, depth=args.depth, num_heads=args.heads)


def ours_step(args: argparse.Namespace, device: torch.device, ibot: bool) -> Callable[[dict, int], float]:
    torch.manual_seed(0)
    method_cfg = DINOSettings(out_dim=args.out_dim, ibot_loss_weight=1.0 if ibot else 0.0, freeze_last_layer_steps=1)
    m = DINO(encoder_cfg(args), method_cfg, max_steps=1000).to(device)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.04)

    def step(batch: dict, i: int) -> float:
        out = m.training_loss(batch, i, torch.Generator().manual_seed(i))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        m.before_optimizer_step(i)
        torch.nn.utils.clip_grad_norm_(m.parameters(), 3.0)
        opt.step()
        m.after_step(i)
        return out.loss.item()

    return step


def lightly_step(args: argparse.Namespace, device: torch.device) -> Callable[[dict, int], float]:
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule

    torch.manual_seed(0)
    student = ViTEncoder(encoder_cfg(args)).to(device)
    student_head = DINOProjectionHead(args.dim, 2048, 256, args.out_dim, freeze_last_layer=1).to(device)
    teacher = copy.deepcopy(student)
    teacher_head = DINOProjectionHead(args.dim, 2048, 256, args.out_dim).to(device)  # weight_norm: no deepcopy
    teacher_head.load_state_dict(student_head.state_dict())
    deactivate_requires_grad(teacher)
    deactivate_requires_grad(teacher_head)
    criterion = DINOLoss(output_dim=args.out_dim, warmup_teacher_temp=0.04, teacher_temp=0.07).to(device)
    params = [p for p in [*student.parameters(), *student_head.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.04)

    def step(batch: dict, i: int) -> float:
        glob, loc = batch["views"]["global"], batch["views"]["local"]
        with torch.no_grad():
            t_out = teacher_head(teacher(torch.cat(glob))[:, 0]).chunk(len(glob))
        s_cls = [student(torch.cat(glob))[:, 0], student(torch.cat(loc))[:, 0]]
        s_out = student_head(torch.cat(s_cls)).chunk(len(glob) + len(loc))
        loss = criterion(list(t_out), list(s_out), teacher_temp=0.04 + 0.03 * min(i, 300) / 300)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        student_head.cancel_last_layer_gradients(current_epoch=i)
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        opt.step()
        m = cosine_schedule(i, 1000, 0.996, 1.0)
        update_momentum(student, teacher, m)
        update_momentum(student_head, teacher_head, m)
        return loss.item()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(steps: dict[str, Callable[[dict, int], float]], batch: dict, args: argparse.Namespace,
                     device: torch.device) -> dict[str, list[float]]:
    """Seconds per step for each implementation, the implementations taking turns step by step so that load from
    other processes on a shared machine falls on all of them alike."""
    for step in steps.values():
        for i in range(args.warmup):
            step(batch, i)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.warmup, args.warmup + args.steps):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step(batch, i)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--bands", type=int, default=13)
    p.add_argument("--global-size", type=int, default=64)
    p.add_argument("--local-size", type=int, default=32)
    p.add_argument("--n-local", type=int, default=6)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out-dim", type=int, default=65536)
    p.add_argument("--steps", type=int, default=3, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-ibot", action="store_true", help="skip the 'ours + iBOT' row")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = make_batch(args, device)

    rows = {"geomed-ssl DINO": ours_step(args, device, ibot=False),
            "lightly DINO components": lightly_step(args, device)}
    if not args.no_ibot:
        rows["geomed-ssl DINO + iBOT"] = ours_step(args, device, ibot=True)
    times = time_interleaved(rows, batch, args, device)
    print(f"ViT d={args.dim} depth={args.depth} heads={args.heads} patch={args.patch}, {args.bands} bands, "
          f"2x{args.global_size}^2 + {args.n_local}x{args.local_size}^2 crops, batch {args.batch}, "
          f"out_dim {args.out_dim}, device {device}, threads {args.threads}, "
          f"{args.steps} timed steps each (interleaved) after {args.warmup} warmup")
    print(f"| {'implementation':<26} | {'median s/step':>13} | {'min s/step':>10} | {'images/s (median)':>17} |")
    print(f"|{'-' * 28}|{'-' * 15}|{'-' * 12}|{'-' * 19}|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name:<26} | {med:13.3f} | {min(ts):10.3f} | {args.batch / med:17.1f} |")


if __name__ == "__main__":
    main()
