"""Label-efficiency research on Indian Pines: pixel-window ViT, self-supervised pretraining on every pixel of the
scene, then frozen probes and fine-tuning, each beside the same network from random initialisation and the RF.

    PYTHONPATH=$PWD nice -n 5 timeout 3000 python benchmarks/research/research_pixels.py --tag NAME \
        [--ssl none|mae|vicreg] [--size 11] [--patch 1] [--dim 96] [--depth 4] [--pre-seconds 300] ...

Appends one JSON line per (encoder, protocol, split, seed) to benchmarks/research/results.jsonl. Selection seeds
are 10 and 11 (``--seeds``); the final seeds 0 1 2 are run once with the chosen settings (``--final``).
Training windows of a ``blocks`` split read the scene with every test-block pixel set to the band mean (0), so no
training window sees a test block; pretraining reads the whole scene (it uses no labels).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from ip_data import Split, get_split, load_scene, rf_baseline, scores  # noqa: E402
from pixnet import (PixMAE, PixViT, Windows, centre_index, cosine_lr, dihedral, projector, spectral_aug,  # noqa: E402
                    vicreg)

OUT = Path(__file__).parent / "results.jsonl"


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- pretraining --------------------------------------------------------------------------------------------------
def pretrain(args: argparse.Namespace, enc: PixViT, cube: torch.Tensor) -> dict:
    """Self-supervised pretraining on windows around every pixel of the scene, for ``--pre-steps`` steps or
    ``--pre-seconds`` of wall time, whichever comes first."""
    g = torch.Generator().manual_seed(args.pre_seed)
    c, h, w = cube.shape
    win = Windows(cube, args.size)
    if args.ssl == "mae":
        model = PixMAE(enc, c, args.dec_dim, args.dec_depth, args.mask_ratio, args.band_mask)
    else:
        model = torch.nn.ModuleDict({"enc": enc, "proj": projector(enc.dim * len(args.taps), args.proj, args.proj)})
    opt = torch.optim.AdamW(model.parameters(), lr=args.pre_lr, weight_decay=0.05, betas=(0.9, 0.95))
    t0, losses, step = time.time(), [], 0
    cidx = centre_index(args.size, args.patch)
    while step < args.pre_steps and time.time() - t0 < args.pre_seconds:
        for gr in opt.param_groups:
            gr["lr"] = cosine_lr(step, args.pre_steps, args.pre_lr, args.pre_warmup)
        flat = torch.randint(0, h * w, (args.pre_batch,), generator=g)
        if args.ssl == "mae":
            x = spectral_aug(win.get(flat, args.size), g, args.aug_scale, 0.0)
            loss = model.loss(dihedral(x, g), g)
        else:
            d = args.neigh
            views = []
            for _ in range(2):
                off = torch.randint(-d, d + 1, (args.pre_batch, 2), generator=g)
                x = win.get(flat, args.size, off)  # the window moves by up to d px; positives are neighbours
                x = spectral_aug(x, g, args.aug_scale, args.aug_noise, args.band_drop, args.aug_shift)
                views.append(dihedral(x, g))
            zs = []
            for x in views:
                feats = enc(x, taps=args.taps)
                zs.append(model["proj"](torch.cat([pool(f, args) for f in feats], -1)))
            loss = vicreg(*zs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        losses.append(float(loss))
        step += 1
        if step % 50 == 0:
            print(f"  pretrain step {step} loss {np.mean(losses[-50:]):.4f} {time.time() - t0:.0f}s", flush=True)
    secs = time.time() - t0
    return {"pre_steps_done": step, "pre_seconds": secs, "pre_s_per_step": secs / max(step, 1),
            "loss_first": float(np.mean(losses[:20])), "loss_last": float(np.mean(losses[-20:]))}


def pool(tokens: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """(B, N, D) -> (B, D): the centre token, or the mean of all tokens (``--pool mean``)."""
    if args.pool == "mean":
        return tokens.mean(1)
    return tokens[:, centre_index(args.size, args.patch)]


# -- features and probes ------------------------------------------------------------------------------------------
@torch.no_grad()
def pixel_features(enc: PixViT, win: Windows, flat: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """(N, D * taps) frozen features of pixels: the centre token of their window at each tapped block."""
    enc.eval()
    out = []
    for i in range(0, len(flat), 512):
        f = torch.as_tensor(flat[i:i + 512])
        feats = enc(win.get(f, args.size), taps=args.probe_taps)
        out.append(torch.cat([pool(t, args) for t in feats], -1).numpy())
    return np.concatenate(out)


def probe(feat_all: np.ndarray, sp: Split, kind: str) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    xtr, xte = feat_all[sp.train_idx], feat_all[sp.test_idx]
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    if kind == "knn":
        m = KNeighborsClassifier(1)
        xtr, xte = xtr / np.linalg.norm(xtr, axis=1, keepdims=True), xte / np.linalg.norm(xte, axis=1, keepdims=True)
    else:
        m = LogisticRegression(C=1.0, max_iter=3000)
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    return m.fit(xtr, sp.train_y).predict(xte)


# -- fine-tuning --------------------------------------------------------------------------------------------------
def finetune(enc: PixViT, cube: torch.Tensor, sp: Split, args: argparse.Namespace, seed: int) -> tuple[np.ndarray, dict]:
    """Fine-tune ``enc`` + a linear centre-pixel head on the training pixels (windows read only allowed pixels);
    returns test predictions."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    allowed = torch.as_tensor(sp.train_mask)
    win_tr = Windows(cube, args.size, None if allowed.all() else allowed)
    nt = len(args.probe_taps)
    head = torch.nn.Sequential(torch.nn.LayerNorm(enc.dim * nt), torch.nn.Linear(enc.dim * nt, sp.n_classes))
    params = [{"params": head.parameters(), "lr": args.ft_lr},
              {"params": enc.parameters(), "lr": args.ft_lr * args.ft_enc_mult}]
    opt = torch.optim.AdamW(params, weight_decay=args.ft_wd)
    base = [p["lr"] for p in opt.param_groups]
    ytr = torch.as_tensor(sp.train_y)
    tr = torch.as_tensor(sp.train_idx)
    t0 = time.time()
    enc.train()
    for step in range(args.ft_steps):
        for gr, b in zip(opt.param_groups, base):
            gr["lr"] = cosine_lr(step, args.ft_steps, b, args.ft_steps // 10)
        pick = torch.randint(0, len(tr), (args.ft_batch,), generator=g)
        x = win_tr.get(tr[pick], args.size)
        x = dihedral(spectral_aug(x, g, args.aug_scale, args.ft_noise), g)
        feats = enc(x, taps=args.probe_taps)
        logits = head(torch.cat([pool(t, args) for t in feats], -1))
        loss = F.cross_entropy(logits, ytr[pick], label_smoothing=args.ft_smooth)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    secs = time.time() - t0
    enc.eval()
    win = Windows(cube, args.size)
    preds = []
    with torch.no_grad():
        for i in range(0, len(sp.test_idx), 512):
            f = torch.as_tensor(sp.test_idx[i:i + 512])
            feats = enc(win.get(f, args.size), taps=args.probe_taps)
            preds.append(head(torch.cat([pool(t, args) for t in feats], -1)).argmax(-1).numpy())
    return np.concatenate(preds), {"ft_seconds": secs, "ft_s_per_step": secs / args.ft_steps,
                                   "ft_loss_last": float(loss)}


# -- one experiment -----------------------------------------------------------------------------------------------
def build(args: argparse.Namespace, c: int) -> PixViT:
    torch.manual_seed(args.init_seed)
    return PixViT(c, args.patch, args.dim, args.depth, args.heads, args.mlp_ratio)


def record(args: argparse.Namespace, **row) -> None:
    row = {"tag": args.tag, "time": time.strftime("%Y-%m-%d %H:%M"), **row,
           "config": {k: v for k, v in vars(args).items() if k not in ("tag",)}}
    with open(OUT, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    keep = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k not in ("config", "time")}
    print(json.dumps(keep), flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    cube_np, _ = load_scene()
    cube = torch.as_tensor(cube_np)
    c, h, w = cube.shape
    encoders = {}
    if args.ssl != "none":
        enc = build(args, c)
        info = pretrain(args, enc, cube)
        info["rss_mib"] = rss_mib()
        record(args, encoder="pretrained", protocol="pretrain", **info)
        encoders["pretrained"] = enc.state_dict()
    encoders["random"] = build(args, c).state_dict()
    all_flat = np.arange(h * w)
    for name, state in encoders.items():
        enc = build(args, c)
        enc.load_state_dict(state)
        if args.probes:
            t0 = time.time()
            feat = pixel_features(enc, Windows(cube, args.size), all_flat, args)
            feat_s = time.time() - t0
        for split in args.splits:
            for seed in args.seeds:
                sp = get_split(args.k, split, seed)
                # frozen probes (whole-scene features; for blocks the test windows read the whole scene)
                for kind in args.probes:
                    t0 = time.time()
                    pred = probe(feat, sp, kind)
                    record(args, encoder=name, protocol=kind, split=split, seed=seed, k=args.k,
                           **scores(sp.test_y, pred, sp.n_classes), seconds=time.time() - t0 + feat_s)
                if args.ft_steps:
                    e2 = build(args, c)
                    e2.load_state_dict(state)
                    pred, info = finetune(e2, cube, sp, args, seed)
                    record(args, encoder=name, protocol="finetune", split=split, seed=seed, k=args.k,
                           **scores(sp.test_y, pred, sp.n_classes), **info, rss_mib=rss_mib())
    if args.rf:
        for split in args.splits:
            for seed in args.seeds:
                record(args, encoder="rf", protocol="rf", split=split, seed=seed, k=args.k,
                       **rf_baseline(get_split(args.k, split, seed), seed))


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[10, 11])
    ap.add_argument("--splits", nargs="+", default=["random", "blocks"])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--rf", action="store_true")
    # model
    ap.add_argument("--size", type=int, default=11)
    ap.add_argument("--patch", type=int, default=1)
    ap.add_argument("--dim", type=int, default=96)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mlp-ratio", type=float, default=2.0)
    ap.add_argument("--init-seed", type=int, default=0)
    # pretraining
    ap.add_argument("--ssl", default="none", choices=["none", "mae", "vicreg"])
    ap.add_argument("--pre-steps", type=int, default=1000)
    ap.add_argument("--pre-seconds", type=float, default=300)
    ap.add_argument("--pre-batch", type=int, default=128)
    ap.add_argument("--pre-lr", type=float, default=1e-3)
    ap.add_argument("--pre-warmup", type=int, default=50)
    ap.add_argument("--pre-seed", type=int, default=0)
    ap.add_argument("--mask-ratio", type=float, default=0.6)
    ap.add_argument("--band-mask", type=float, default=0.0)
    ap.add_argument("--dec-dim", type=int, default=64)
    ap.add_argument("--dec-depth", type=int, default=1)
    ap.add_argument("--neigh", type=int, default=2, help="vicreg: max window shift between the two views (px)")
    ap.add_argument("--proj", type=int, default=512)
    ap.add_argument("--taps", type=int, nargs="+", default=[-1])
    ap.add_argument("--pool", default="centre", choices=["centre", "mean"])
    ap.add_argument("--aug-scale", type=float, default=0.1)
    ap.add_argument("--aug-noise", type=float, default=0.05)
    ap.add_argument("--aug-shift", type=float, default=0.0)
    ap.add_argument("--band-drop", type=float, default=0.0)
    # probes and fine-tuning
    ap.add_argument("--probes", nargs="*", default=["linear", "knn"])
    ap.add_argument("--probe-taps", type=int, nargs="+", default=[-1])
    ap.add_argument("--ft-steps", type=int, default=200)
    ap.add_argument("--ft-batch", type=int, default=64)
    ap.add_argument("--ft-lr", type=float, default=1e-3)
    ap.add_argument("--ft-enc-mult", type=float, default=1.0)
    ap.add_argument("--ft-wd", type=float, default=0.05)
    ap.add_argument("--ft-noise", type=float, default=0.05)
    ap.add_argument("--ft-smooth", type=float, default=0.1)
    return ap.parse_args(argv)


if __name__ == "__main__":
    main()
