"""Which per-image features a classification probe should read (selection seeds only): the pooled tapped blocks
``compare`` reads (mean and std of each block's tokens), the encoder's normed CLS token (what the siamese and
self-distillation methods train: ``encoder(x)[:, 0]``), the normed tokens' mean, and their concatenations.

    PYTHONPATH=$PWD python benchmarks/research/cls_probe.py RUN_DIR --data ../shared/data/eurosat_ms_200 [--k 5]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from geomed_ssl.models.probe import probe_layers
from probe_common import class_probe_args, oa_per_split, probe_task  # beside this script


def image_features(encoder, layers, load, n: int) -> dict[str, np.ndarray]:
    """Per image, each candidate feature set."""
    out: dict[str, list[np.ndarray]] = {"taps": [], "cls": [], "final_mean": []}
    with torch.no_grad():
        for i in range(n):
            final, feats, _ = encoder.forward_with_taps(torch.from_numpy(load(i))[None], layers)
            out["taps"].append(torch.cat([torch.cat([f.mean(1), f.std(1, unbiased=False)], 1) for f in feats], 1)[0]
                               .numpy())
            normed = final[0]  # (1+N, D), after the final norm
            out["cls"].append(normed[0].numpy())
            out["final_mean"].append(normed[1:].mean(0).numpy())
    feats = {k: np.stack(v).astype(np.float32) for k, v in out.items()}
    feats["taps+cls"] = np.concatenate([feats["taps"], feats["cls"]], 1)
    feats["taps+cls+final_mean"] = np.concatenate([feats["taps+cls"], feats["final_mean"]], 1)
    feats["cls+final_mean"] = np.concatenate([feats["cls"], feats["final_mean"]], 1)
    return feats


def main() -> None:
    a = class_probe_args()
    torch.set_num_threads(1)
    recipe, task, splits, sources = probe_task(a)
    n = len(task.records)
    for (src, load), name in zip(sources, ["pretrained", "random"]):
        enc = src.encoder.eval()
        layers = probe_layers(enc.config.depth, recipe.finetune.layers)
        feats = image_features(enc, layers, load, n)
        for fname, x in feats.items():
            for protocol in ("linear", "knn"):
                oas = oa_per_split(protocol, x, task, recipe, splits)
                row = {"tag": a.tag, "run": a.run_dir, "encoder": name, "features": fname, "protocol": protocol,
                       "oa": [round(v, 3) for v in oas], "mean": round(float(np.mean(oas)), 3)}
                print(json.dumps(row), flush=True)
                with open(Path(__file__).parent / "cls_probe.jsonl", "a") as fh:
                    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
