"""Probe variants on a saved pretrained encoder (selection seeds only): taps, k-NN k, logistic C, feature smoothing.

    PYTHONPATH=$PWD python benchmarks/research/probe_explore.py /tmp/enc.pt [--random]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import uniform_filter

sys.path.insert(0, str(Path(__file__).parent))
from dense import Scene, scene_features  # noqa: E402
from ip_data import get_split, load_scene, scores  # noqa: E402
from pixnet import PixViT  # noqa: E402


def knn(f, sp, k=1):
    from sklearn.neighbors import KNeighborsClassifier
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)
    m = KNeighborsClassifier(k, weights="distance" if k > 1 else "uniform").fit(f[sp.train_idx], sp.train_y)
    return m.predict(f[sp.test_idx])


def lr(f, sp, c=1.0):
    from sklearn.linear_model import LogisticRegression
    mu, sd = f[sp.train_idx].mean(0), f[sp.train_idx].std(0) + 1e-6
    m = LogisticRegression(C=c, max_iter=3000).fit((f[sp.train_idx] - mu) / sd, sp.train_y)
    return m.predict((f[sp.test_idx] - mu) / sd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("--random", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[10, 11])
    a = ap.parse_args()
    torch.set_num_threads(1)
    ck = torch.load(a.ckpt, weights_only=True)
    cfg = ck["config"]
    enc = PixViT(200, cfg["patch"], cfg["dim"], cfg["depth"], cfg["heads"], cfg["mlp_ratio"])
    if not a.random:
        enc.load_state_dict(ck["state"])
    cube = torch.as_tensor(load_scene()[0])
    h, w = cube.shape[1:]
    allf = scene_features(enc, Scene(cube, cfg["tile"]), tuple(range(cfg["depth"]))).numpy()  # (D*L, H, W)
    d = cfg["dim"]
    variants = {}
    for taps in ([cfg["depth"] - 1], list(range(cfg["depth"]))):
        f = np.concatenate([allf[t * d:(t + 1) * d] for t in taps])
        name = "taps" + "".join(map(str, taps))
        variants[name] = f
        for s in (3, 5):
            variants[f"{name}+mean{s}"] = np.concatenate([f, uniform_filter(f, (1, s, s), mode="nearest")])
            variants[f"{name}_smooth{s}"] = uniform_filter(f, (1, s, s), mode="nearest")
    for name, f in variants.items():
        flat = f.reshape(f.shape[0], -1).T
        for pname, fn in [("knn1", lambda x, sp: knn(x, sp, 1)), ("knn5", lambda x, sp: knn(x, sp, 5)),
                          ("lr0.1", lambda x, sp: lr(x, sp, 0.1)), ("lr1", lambda x, sp: lr(x, sp, 1.0))]:
            res = []
            for split in ("random", "blocks"):
                for seed in a.seeds:
                    sp = get_split(5, split, seed)
                    res.append(scores(sp.test_y, fn(flat, sp), sp.n_classes)["OA"])
            print(f"{name:22s} {pname:6s} random {np.mean(res[:2]):.3f} ({res[0]:.3f} {res[1]:.3f})  "
                  f"blocks {np.mean(res[2:]):.3f} ({res[2]:.3f} {res[3]:.3f})", flush=True)


if __name__ == "__main__":
    main()
