"""At which scale should a frozen encoder read a whole image (selection seeds only)? The two-view methods train on
random resized crops (25-100 % of a 64-px window's area resized to ``data.global_crop_size``), so at 32 px the
ground they saw per pixel was 1.0-2.0 times the image's own; ``compare`` reads the whole image at its own scale.
This scores ``compare``'s features (the tapped blocks' token means and stds and the normed CLS token) with the image
resized to each of ``--sizes`` px first (FixRes, Touvron et al. 2019: the train/test apparent-size discrepancy), and
the mean of the features of the 8 flips / quarter turns (``--dihedral``), pretrained and random init alike.

    PYTHONPATH=$PWD python benchmarks/research/cls_scale.py RUN_DIR --data ../shared/data/eurosat_ms_200 \
        --sizes 32,40,48,64 --tag T
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geomed_ssl.compare.features import encoder_image_fn
from geomed_ssl.models.probe import probe_layers
from probe_common import class_probe_args, oa_per_split, probe_task  # beside this script


def resized(load, size: int, patch: int):
    """``load`` with each (C, H, W) image resized (area-averaged down, bilinear up) to ``size`` px, a multiple of
    ``patch``."""
    size = max(patch, size // patch * patch)

    def fn(i: int) -> np.ndarray:
        x = torch.from_numpy(load(i))[None]
        if x.shape[-1] != size:
            mode = "area" if size < x.shape[-1] else "bilinear"
            x = F.interpolate(x, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
        return x[0].numpy()

    return fn


def dihedral_mean(encoder, layers, load):
    """Per image: ``compare``'s features averaged over its 8 flips / quarter turns."""
    def fn(i: int) -> np.ndarray:
        x = load(i)
        views = [np.ascontiguousarray(np.rot90(y, k, axes=(1, 2))) for y in (x, x[:, :, ::-1]) for k in range(4)]
        per_view = encoder_image_fn(encoder, layers, lambda j: views[j])
        return np.mean([per_view(j) for j in range(len(views))], 0)

    return fn


def main() -> None:
    def extra(ap) -> None:
        ap.add_argument("--sizes", default="32,40,48,64")
        ap.add_argument("--dihedral", action="store_true")

    a = class_probe_args(extra)
    torch.set_num_threads(1)
    recipe, task, splits, sources = probe_task(a)
    n = len(task.records)
    for (src, load), name in zip(sources, ["pretrained", "random"]):
        enc = src.encoder.eval()
        patch = int(enc.config.patch_size[0])
        layers = probe_layers(enc.config.depth, recipe.finetune.layers)
        for size in [int(s) for s in a.sizes.split(",")]:
            scaled = resized(load, size, patch)
            fn = encoder_image_fn(enc, layers, scaled)
            variants = {"plain": fn}
            if a.dihedral:
                variants["dihedral"] = dihedral_mean(enc, layers, scaled)
            for vname, vf in variants.items():
                x = np.stack([vf(i) for i in range(n)]).astype(np.float32)
                for protocol in ("linear", "knn"):
                    oas = oa_per_split(protocol, x, task, recipe, splits)
                    row = {"tag": a.tag, "run": a.run_dir, "encoder": name, "size": size, "views": vname,
                           "protocol": protocol, "oa": [round(v, 3) for v in oas],
                           "mean": round(float(np.mean(oas)), 3)}
                    print(json.dumps(row), flush=True)
                    with open(Path(__file__).parent / "cls_scale.jsonl", "a") as fh:
                        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
