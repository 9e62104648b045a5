"""Label-efficiency research on Indian Pines with a dense (tile) pixel ViT: self-supervised pretraining on tiles of
the whole scene, then frozen multi-layer probes and fine-tuning with a per-pixel head, each beside the same network
from random initialisation (probe AND fine-tune) and the fixed random forest, on the same pixels.

    PYTHONPATH=$PWD nice -n 5 timeout 3000 python benchmarks/research/research_dense.py --tag NAME \
        [--ssl none|mae|vicreg] [--tile 16] [--patch 1] [--dim 64] [--depth 3] [--pre-steps 300] ...

Appends one JSON line per (encoder, protocol, split, seed) to benchmarks/research/results.jsonl. Selection seeds
are 10 and 11 (the default); the final seeds 0 1 2 are run once with the chosen settings.
Blocks split: fine-tuning tiles read the scene with every test-block pixel set to 0 (the band mean), so no training
tile sees a test block; frozen features and all predictions read the whole scene; pretraining reads the whole
scene (no labels).
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
from dense import DenseVICReg, Scene, dihedral_pair, scene_features, spectral_neighbours, token_map  # noqa: E402
from ip_data import Split, get_split, load_pca, load_scene, rf_baseline, scores  # noqa: E402
from pixnet import PixMAE, PixViT, cosine_lr, spectral_aug  # noqa: E402
from research_pixels import probe, record, rss_mib  # noqa: E402


def make_aug(args: argparse.Namespace):
    def aug(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return spectral_aug(x, g, args.aug_scale, args.aug_noise, args.band_drop, args.aug_shift)
    return aug


def pretrain(args: argparse.Namespace, enc: PixViT, cube: torch.Tensor, on_eval=None) -> dict:
    """SSL on tiles drawn anywhere in the scene, ``--pre-steps`` steps (stops early at ``--pre-seconds``)."""
    g = torch.Generator().manual_seed(args.pre_seed)
    scene = Scene(cube, args.tile)
    aug = make_aug(args)
    if args.ssl == "mae":
        model = PixMAE(enc, cube.shape[0], args.dec_dim, args.dec_depth, args.mask_ratio, args.band_mask)
    else:
        nn_idx = None
        if args.spec_frac:
            t_nn = time.time()
            nn_idx = spectral_neighbours(cube, args.spec_k, args.spec_smooth, min_dist=args.spec_min_dist)
            print(f"  spectral neighbours in {time.time() - t_nn:.1f}s", flush=True)
        model = DenseVICReg(enc, tuple(args.taps), args.proj, args.shift, args.neigh, args.match, args.glob,
                            nn_idx, args.spec_frac, args.spec_r)
    opt = torch.optim.AdamW(model.parameters(), lr=args.pre_lr, weight_decay=0.05, betas=(0.9, 0.95))
    t0, losses, times = time.time(), [], []
    step = 0
    while step < args.pre_steps and time.time() - t0 < args.pre_seconds:
        ts = time.time()
        for gr in opt.param_groups:
            gr["lr"] = cosine_lr(step, args.pre_steps, args.pre_lr, args.pre_warmup)
        if args.ssl == "mae":
            t = args.tile
            ys = torch.randint(-t // 4, scene.h - 3 * t // 4 + 1, (args.pre_batch,), generator=g)
            xs = torch.randint(-t // 4, scene.w - 3 * t // 4 + 1, (args.pre_batch,), generator=g)
            fwd, _ = dihedral_pair(int(torch.randint(4, (1,), generator=g)), bool(torch.rand(1, generator=g) < .5))
            loss = model.loss(fwd(spectral_aug(scene.tiles(ys, xs), g, args.aug_scale, 0.0)), g)
        else:
            loss = model.loss(scene, args.pre_batch, g, aug)
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
            t0 += time.time() - te  # evaluation time is not pretraining time
        if step % 50 == 0:
            print(f"  pretrain step {step} loss {np.mean(losses[-50:]):.4f} {time.time() - t0:.0f}s "
                  f"median step {np.median(times):.2f}s", flush=True)
    secs = time.time() - t0
    return {"pre_steps_done": step, "pre_seconds": secs, "pre_s_per_step_median": float(np.median(times)),
            "pre_s_per_step_min": float(np.min(times)), "loss_first": float(np.mean(losses[:20])),
            "loss_last": float(np.mean(losses[-20:]))}


class PixelHead(torch.nn.Module):
    """Per-pixel linear classifier on (B, D', T, T) features: BatchNorm (no affine) + 1x1 conv."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(d, affine=False)
        self.fc = torch.nn.Conv2d(d, k, 1)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(m))


def finetune(enc: PixViT, cube: torch.Tensor, sp: Split, args: argparse.Namespace, seed: int
             ) -> tuple[np.ndarray, dict]:
    """Encoder + per-pixel head trained on tiles that hold a training pixel in their central half (where whole-scene
    inference reads its outputs); loss on the training pixels of that central half. Returns test predictions."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    allowed = torch.as_tensor(sp.train_mask)
    scene = Scene(cube, args.tile, None if allowed.all() else allowed)
    t, q = args.tile, args.tile // 4
    h, w = scene.h, scene.w
    target = torch.full((h + 2 * t, w + 2 * t), -1, dtype=torch.long)
    ty, tx = torch.as_tensor(sp.train_idx // w), torch.as_tensor(sp.train_idx % w)
    target[ty + t, tx + t] = torch.as_tensor(sp.train_y)
    inner = torch.full((t, t), False)
    inner[q:t - q, q:t - q] = True
    head = PixelHead(enc.dim * len(args.probe_taps), sp.n_classes)
    params = [{"params": head.parameters(), "lr": args.ft_lr},
              {"params": enc.parameters(), "lr": args.ft_lr * args.ft_enc_mult}]
    opt = torch.optim.AdamW(params, weight_decay=args.ft_wd)
    base = [p["lr"] for p in opt.param_groups]
    aug = make_aug(argparse.Namespace(**{**vars(args), "aug_noise": args.ft_noise, "band_drop": 0.0}))
    t0 = time.time()
    enc.train()
    for step in range(args.ft_steps):
        for gr, b in zip(opt.param_groups, base):
            gr["lr"] = cosine_lr(step, args.ft_steps, b, max(1, args.ft_steps // 10))
        pick = torch.randint(0, len(ty), (args.ft_batch,), generator=g)
        ys = ty[pick] - q - torch.randint(0, t - 2 * q, (args.ft_batch,), generator=g)
        xs = tx[pick] - q - torch.randint(0, t - 2 * q, (args.ft_batch,), generator=g)
        ar = torch.arange(t)
        tgt = target[(ys[:, None] + ar + t)[:, :, None], (xs[:, None] + ar + t)[:, None, :]]  # (B, T, T)
        tgt = torch.where(inner[None], tgt, torch.full_like(tgt, -1))
        fwd, _ = dihedral_pair(int(torch.randint(4, (1,), generator=g)), bool(torch.rand(1, generator=g) < .5))
        logits = head(token_map(enc, fwd(aug(scene.tiles(ys, xs), g)), tuple(args.probe_taps)))
        loss = F.cross_entropy(logits, fwd(tgt), ignore_index=-1, label_smoothing=args.ft_smooth)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    secs = time.time() - t0
    head.eval()
    t1 = time.time()
    logits = scene_features(enc, Scene(cube, args.tile), tuple(args.probe_taps), head=head)  # (K, H, W)
    pred = logits.reshape(logits.shape[0], -1).argmax(0).numpy()[sp.test_idx]
    return pred, {"ft_seconds": secs, "ft_s_per_step": secs / max(1, args.ft_steps), "ft_loss_last": float(loss.detach()),
                  "predict_seconds": time.time() - t1}


def probe_all(args: argparse.Namespace, enc: PixViT, cube: torch.Tensor, name: str) -> None:
    """Frozen whole-scene features of ``enc``, then every probe on every split and seed."""
    t0 = time.time()
    feat = scene_features(enc, Scene(cube, args.tile), tuple(args.probe_taps))
    feat = feat.reshape(feat.shape[0], -1).T.numpy()  # (H*W, D')
    feat_s = time.time() - t0
    for split in args.splits:
        for seed in args.seeds:
            sp = get_split(args.k, split, seed)
            for kind in args.probes:
                t0 = time.time()
                pred = probe(feat, sp, kind)
                record(args, encoder=name, protocol=kind, split=split, seed=seed, k=args.k,
                       **scores(sp.test_y, pred, sp.n_classes), seconds=time.time() - t0, feature_seconds=feat_s)


def build(args: argparse.Namespace, c: int) -> PixViT:
    torch.manual_seed(args.init_seed)
    return PixViT(c, args.patch, args.dim, args.depth, args.heads, args.mlp_ratio)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    cube = torch.as_tensor(load_pca(args.pca, args.whiten) if args.pca else load_scene()[0])
    c, h, w = cube.shape
    encoders = {}
    if args.ssl != "none":
        enc = build(args, c)
        info = pretrain(args, enc, cube, lambda step: probe_all(args, enc, cube, f"pretrained@{step}"))
        record(args, encoder="pretrained", protocol="pretrain", **info, rss_mib=rss_mib())
        encoders["pretrained"] = enc.state_dict()
        if args.save:
            torch.save({"state": enc.state_dict(), "config": vars(args)}, args.save)
    if not args.skip_random:
        encoders["random"] = build(args, c).state_dict()
    for name, state in encoders.items():
        enc = build(args, c)
        enc.load_state_dict(state)
        if args.probes:
            probe_all(args, enc, cube, name)
        for split in args.splits:
            for seed in args.seeds:
                sp = get_split(args.k, split, seed)
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
    ap.add_argument("--skip-random", action="store_true")
    ap.add_argument("--pca", type=int, default=0, help="encode the scene's first N principal components, not bands")
    ap.add_argument("--whiten", action="store_true", help="with --pca: unit variance per component")
    ap.add_argument("--tile", type=int, default=16)
    ap.add_argument("--patch", type=int, default=1)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mlp-ratio", type=float, default=2.0)
    ap.add_argument("--init-seed", type=int, default=0)
    ap.add_argument("--ssl", default="none", choices=["none", "mae", "vicreg"])
    ap.add_argument("--pre-steps", type=int, default=300)
    ap.add_argument("--pre-seconds", type=float, default=900)
    ap.add_argument("--pre-batch", type=int, default=16)
    ap.add_argument("--pre-lr", type=float, default=1e-3)
    ap.add_argument("--pre-warmup", type=int, default=30)
    ap.add_argument("--pre-seed", type=int, default=0)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--band-mask", type=float, default=0.0)
    ap.add_argument("--dec-dim", type=int, default=64)
    ap.add_argument("--dec-depth", type=int, default=1)
    ap.add_argument("--shift", type=int, default=4, help="vicreg: max shift between the two views' tiles (px)")
    ap.add_argument("--neigh", type=int, default=0, help="vicreg: positives up to this many px apart")
    ap.add_argument("--match", type=int, default=32, help="vicreg: matched pixels per tile pair")
    ap.add_argument("--glob", type=float, default=0.0, help="vicreg: weight of a tile-mean VICReg term")
    ap.add_argument("--spec-frac", type=float, default=0.0, help="vicreg: share of tile pairs that are spectral "
                    "nearest neighbours far apart in the scene (0: only spatial neighbours)")
    ap.add_argument("--spec-k", type=int, default=10)
    ap.add_argument("--spec-smooth", type=int, default=3)
    ap.add_argument("--spec-min-dist", type=int, default=8)
    ap.add_argument("--spec-r", type=int, default=2)
    ap.add_argument("--proj", type=int, default=256)
    ap.add_argument("--taps", type=int, nargs="+", default=[-1])
    ap.add_argument("--aug-scale", type=float, default=0.1)
    ap.add_argument("--aug-noise", type=float, default=0.05)
    ap.add_argument("--aug-shift", type=float, default=0.0)
    ap.add_argument("--band-drop", type=float, default=0.0)
    ap.add_argument("--save", default="", help="write the pretrained encoder's state dict here")
    ap.add_argument("--eval-every", type=int, default=0, help="probe the encoder every N pretraining steps")
    ap.add_argument("--probes", nargs="*", default=["linear", "knn"])
    ap.add_argument("--probe-taps", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ft-steps", type=int, default=150)
    ap.add_argument("--ft-batch", type=int, default=16)
    ap.add_argument("--ft-lr", type=float, default=1e-3)
    ap.add_argument("--ft-enc-mult", type=float, default=1.0)
    ap.add_argument("--ft-wd", type=float, default=0.05)
    ap.add_argument("--ft-noise", type=float, default=0.05)
    ap.add_argument("--ft-smooth", type=float, default=0.1)
    return ap.parse_args(argv)


if __name__ == "__main__":
    main()
