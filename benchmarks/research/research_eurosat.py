"""Label-efficiency research on EuroSAT-MS 200 (5 images per class): self-supervised pretraining on all 200
patches (no labels), then a linear / k-NN probe on pooled multi-layer token features and fine-tuning, beside the same
network from random initialisation (probe AND fine-tune) and the per-band statistics + linear baseline.

    PYTHONPATH=$PWD nice -n 5 timeout 3000 python benchmarks/research/research_eurosat.py --tag NAME \
        [--ssl none|vicreg|mae|global] [--patch 4] [--dim 64] [--depth 3] [--pre-steps 300] ...

Pooled features: per tapped block, the mean and the standard deviation of the tokens over the image (never only a
CLS token; there is none). One JSON line per (encoder, protocol, seed) in benchmarks/research/results.jsonl.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from dense import DenseVICReg, Scene, dihedral_pair  # noqa: E402
from eurosat_data import band_stats, eu_split, linear_probe, load_eurosat  # noqa: E402
from pixnet import PixMAE, PixViT, cosine_lr, projector, spectral_aug, vicreg  # noqa: E402
from research_pixels import record, rss_mib  # noqa: E402


def pooled(enc: PixViT, x: torch.Tensor, taps: tuple[int, ...]) -> torch.Tensor:
    """(B, 2 * D * taps): mean and std of the tokens of each tapped block."""
    feats = enc(x, taps=taps)
    return torch.cat([torch.cat([f.mean(1), f.std(1)], -1) for f in feats], -1)


@torch.no_grad()
def features(enc: PixViT, x: torch.Tensor, taps: tuple[int, ...]) -> np.ndarray:
    enc.eval()
    return torch.cat([pooled(enc, x[i:i + 32], taps) for i in range(0, len(x), 32)]).numpy()


def pretrain(args: argparse.Namespace, enc: PixViT, x: torch.Tensor, on_eval=None) -> dict:
    g = torch.Generator().manual_seed(args.pre_seed)
    scene = Scene(x, args.tile)
    def aug(v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return spectral_aug(v, gen, args.aug_scale, args.aug_noise, args.band_drop, args.aug_shift)
    if args.ssl == "mae":
        model = PixMAE(enc, x.shape[1], args.dec_dim, args.dec_depth, args.mask_ratio, args.band_mask)
    elif args.ssl == "global":
        model = torch.nn.ModuleDict({"enc": enc, "proj": projector(2 * enc.dim * len(args.taps), args.proj,
                                                                   args.proj)})
    else:
        model = DenseVICReg(enc, tuple(args.taps), args.proj, args.shift, args.neigh, args.match, args.glob)
    opt = torch.optim.AdamW(model.parameters(), lr=args.pre_lr, weight_decay=0.05, betas=(0.9, 0.95))
    t0, losses, times, step = time.time(), [], [], 0
    t = args.tile
    while step < args.pre_steps:
        ts = time.time()
        for gr in opt.param_groups:
            gr["lr"] = cosine_lr(step, args.pre_steps, args.pre_lr, args.pre_warmup)
        if args.ssl == "vicreg":
            loss = model.loss(scene, args.pre_batch, g, aug)
        else:
            img = torch.randint(0, len(x), (args.pre_batch,), generator=g)
            views = []
            for _ in range(2 if args.ssl == "global" else 1):
                ys = torch.randint(0, scene.h - t + 1, (args.pre_batch,), generator=g)
                xs = torch.randint(0, scene.w - t + 1, (args.pre_batch,), generator=g)
                fwd, _ = dihedral_pair(int(torch.randint(4, (1,), generator=g)), bool(torch.rand(1, generator=g) < .5))
                views.append(fwd(aug(scene.tiles(ys, xs, img=img), g)))
            if args.ssl == "mae":
                loss = model.loss(views[0], g)
            else:
                z = [model["proj"](pooled(enc, v, tuple(args.taps))) for v in views]
                loss = vicreg(*z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        losses.append(float(loss.detach()))
        times.append(time.time() - ts)
        step += 1
        if on_eval is not None and args.eval_every and step % args.eval_every == 0 and step < args.pre_steps:
            te = time.time()
            on_eval(step)
            enc.train()
            t0 += time.time() - te
        if step % 50 == 0:
            print(f"  pretrain step {step} loss {np.mean(losses[-50:]):.4f} {time.time() - t0:.0f}s "
                  f"median step {np.median(times):.2f}s", flush=True)
    return {"pre_steps_done": step, "pre_seconds": time.time() - t0, "pre_s_per_step_median": float(np.median(times)),
            "loss_first": float(np.mean(losses[:20])), "loss_last": float(np.mean(losses[-20:]))}


def probe_all(args: argparse.Namespace, enc: PixViT, x: torch.Tensor, y: np.ndarray, name: str) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    t0 = time.time()
    feat = features(enc, x, tuple(args.probe_taps))
    fs = time.time() - t0
    for seed in args.seeds:
        tr, te = eu_split(args.k, seed)
        if "linear" in args.probes:
            record(args, encoder=name, protocol="linear", seed=seed, k=args.k, dataset="eurosat",
                   OA=linear_probe(feat, y, tr, te, args.probe_c), feature_seconds=fs)
        if "knn" in args.probes:
            f = feat - feat[tr].mean(0)
            f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)
            acc = float((KNeighborsClassifier(1).fit(f[tr], y[tr]).predict(f[te]) == y[te]).mean())
            record(args, encoder=name, protocol="knn", seed=seed, k=args.k, dataset="eurosat", OA=acc)


def finetune(enc: PixViT, x: torch.Tensor, y: np.ndarray, tr: np.ndarray, te: np.ndarray,
             args: argparse.Namespace, seed: int) -> tuple[float, dict]:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    d = 2 * enc.dim * len(args.probe_taps)
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(d, affine=False), torch.nn.Linear(d, int(y.max()) + 1))
    opt = torch.optim.AdamW([{"params": head.parameters(), "lr": args.ft_lr},
                             {"params": enc.parameters(), "lr": args.ft_lr * args.ft_enc_mult}],
                            weight_decay=args.ft_wd)
    base = [p["lr"] for p in opt.param_groups]
    yt = torch.as_tensor(y)
    t0 = time.time()
    enc.train()
    for step in range(args.ft_steps):
        for gr, b in zip(opt.param_groups, base):
            gr["lr"] = cosine_lr(step, args.ft_steps, b, max(1, args.ft_steps // 10))
        pick = torch.as_tensor(tr)[torch.randint(0, len(tr), (args.ft_batch,), generator=g)]
        fwd, _ = dihedral_pair(int(torch.randint(4, (1,), generator=g)), bool(torch.rand(1, generator=g) < .5))
        v = fwd(spectral_aug(x[pick], g, args.aug_scale, args.ft_noise))
        loss = F.cross_entropy(head(pooled(enc, v, tuple(args.probe_taps))), yt[pick], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    secs = time.time() - t0
    enc.eval()
    head.eval()
    with torch.no_grad():
        pred = torch.cat([head(pooled(enc, x[te][i:i + 32], tuple(args.probe_taps))).argmax(-1)
                          for i in range(0, len(te), 32)]).numpy()
    return float((pred == y[te]).mean()), {"ft_seconds": secs, "ft_s_per_step": secs / max(1, args.ft_steps)}


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    xn, y, _ = load_eurosat()
    x = torch.as_tensor(xn)
    if args.baseline:
        feats = band_stats(xn)[:, :26]
        for seed in args.seeds:
            record(args, encoder="band_stats", protocol="linear", seed=seed, k=args.k, dataset="eurosat",
                   OA=linear_probe(feats, y, *eu_split(args.k, seed)))
    def build() -> PixViT:
        torch.manual_seed(args.init_seed)
        return PixViT(x.shape[1], args.patch, args.dim, args.depth, args.heads, args.mlp_ratio)
    encoders = {}
    if args.ssl != "none":
        enc = build()
        info = pretrain(args, enc, x, lambda s: probe_all(args, enc, x, y, f"pretrained@{s}"))
        record(args, encoder="pretrained", protocol="pretrain", dataset="eurosat", **info, rss_mib=rss_mib())
        encoders["pretrained"] = enc.state_dict()
        if args.save:
            torch.save({"state": enc.state_dict(), "config": vars(args)}, args.save)
    if not args.skip_random:
        encoders["random"] = build().state_dict()
    for name, state in encoders.items():
        enc = build()
        enc.load_state_dict(state)
        probe_all(args, enc, x, y, name)
        if args.ft_steps:
            for seed in args.seeds:
                e2 = build()
                e2.load_state_dict(state)
                acc, info = finetune(e2, x, y, *eu_split(args.k, seed), args, seed)
                record(args, encoder=name, protocol="finetune", seed=seed, k=args.k, dataset="eurosat", OA=acc,
                       **info)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[10, 11])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--baseline", action="store_true")
    ap.add_argument("--skip-random", action="store_true")
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mlp-ratio", type=float, default=2.0)
    ap.add_argument("--init-seed", type=int, default=0)
    ap.add_argument("--ssl", default="none", choices=["none", "mae", "vicreg", "global"])
    ap.add_argument("--pre-steps", type=int, default=300)
    ap.add_argument("--pre-batch", type=int, default=16)
    ap.add_argument("--pre-lr", type=float, default=1e-3)
    ap.add_argument("--pre-warmup", type=int, default=30)
    ap.add_argument("--pre-seed", type=int, default=0)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--band-mask", type=float, default=0.0)
    ap.add_argument("--dec-dim", type=int, default=64)
    ap.add_argument("--dec-depth", type=int, default=1)
    ap.add_argument("--shift", type=int, default=8)
    ap.add_argument("--neigh", type=int, default=4)
    ap.add_argument("--match", type=int, default=32)
    ap.add_argument("--glob", type=float, default=0.0)
    ap.add_argument("--proj", type=int, default=256)
    ap.add_argument("--taps", type=int, nargs="+", default=[-1])
    ap.add_argument("--aug-scale", type=float, default=0.1)
    ap.add_argument("--aug-noise", type=float, default=0.05)
    ap.add_argument("--aug-shift", type=float, default=0.0)
    ap.add_argument("--band-drop", type=float, default=0.0)
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--save", default="")
    ap.add_argument("--probes", nargs="*", default=["linear", "knn"])
    ap.add_argument("--probe-taps", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--probe-c", type=float, default=1.0)
    ap.add_argument("--ft-steps", type=int, default=0)
    ap.add_argument("--ft-batch", type=int, default=16)
    ap.add_argument("--ft-lr", type=float, default=1e-3)
    ap.add_argument("--ft-enc-mult", type=float, default=1.0)
    ap.add_argument("--ft-wd", type=float, default=0.05)
    ap.add_argument("--ft-noise", type=float, default=0.05)
    return ap.parse_args(argv)


if __name__ == "__main__":
    main()
