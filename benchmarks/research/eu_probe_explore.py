"""EuroSAT probe variants on a saved encoder (selection seeds only): pooling, taps, logistic C.

    PYTHONPATH=$PWD python benchmarks/research/eu_probe_explore.py /tmp/enc.pt [--random]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from eurosat_data import band_stats, eu_split, linear_probe, load_eurosat  # noqa: E402
from pixnet import PixViT  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("--random", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    ck = torch.load(a.ckpt, weights_only=True)
    cfg = ck["config"]
    xn, y, _ = load_eurosat()
    x = torch.as_tensor(xn)
    torch.manual_seed(cfg["init_seed"])
    enc = PixViT(13, cfg["patch"], cfg["dim"], cfg["depth"], cfg["heads"], cfg["mlp_ratio"])
    if not a.random:
        enc.load_state_dict(ck["state"])
    enc.eval()
    with torch.no_grad():
        toks = [torch.cat(t) for t in zip(*[enc(x[i:i + 32], taps=tuple(range(cfg["depth"])))
                                          for i in range(0, len(x), 32)])]  # per tap (N, T, D)
        emb = enc.tokens(x)[0]
    pools = {"mean": lambda t: t.mean(1), "mean+std": lambda t: torch.cat([t.mean(1), t.std(1)], -1),
             "mean+std+max": lambda t: torch.cat([t.mean(1), t.std(1), t.amax(1)], -1)}
    bs = band_stats(xn)[:, :26]
    for pname, pool in pools.items():
        for tname, taps in (("last", [cfg["depth"] - 1]), ("all", list(range(cfg["depth"]))), ("emb+all", None)):
            src = [emb] + toks if taps is None else [toks[t] for t in taps]
            f = torch.cat([pool(t) for t in src], -1).numpy()
            for c in (0.01, 0.1, 1.0):
                r = [linear_probe(f, y, *eu_split(5, s), c) for s in (10, 11)]
                print(f"{pname:14s} {tname:8s} C={c:<5} {np.mean(r):.3f} ({r[0]:.3f} {r[1]:.3f})", flush=True)
    for c in (0.01, 0.1, 1.0):
        r = [linear_probe(bs, y, *eu_split(5, s), c) for s in (10, 11)]
        print(f"band stats C={c}: {np.mean(r):.3f}")


if __name__ == "__main__":
    main()
