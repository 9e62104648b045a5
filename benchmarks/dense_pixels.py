"""Frozen per-pixel probes of an encoder exported by `geomed-ssl pretrain`, on Indian Pines, beside the same network
randomly initialised and the fixed random forest, on the same labelled and test pixels.

Until `geomed-ssl compare` lands this is how `recipes/mae_hyperspectral.yaml` is scored:

    geomed-ssl pretrain recipes/mae_hyperspectral.yaml --data IP_IMAGE_FOLDER --out /tmp/ip_run
    PYTHONPATH=$PWD nice -n 5 timeout 1800 python benchmarks/dense_pixels.py /tmp/ip_run --seeds 10 11   # selection
    PYTHONPATH=$PWD nice -n 5 timeout 1800 python benchmarks/dense_pixels.py /tmp/ip_run --seeds 0 1 2   # report

Features: the encoder's own preprocessing (its saved statistics), tiles of the crop size at stride T/2 over the
zero-padded scene, each tile computed once and only its central (T/2)^2 pixels kept; per pixel, the tokens of the
tapped blocks (``--layers``, default every block) concatenated and upsampled bilinearly to pixels. Probes (as in
benchmarks/research/research_pixels.py): 1-NN on L2-normalised features, and logistic regression (C=1) on
standardised ones. Splits and the RF (PCA 30 + 7x7 local means, 200 trees, balanced) come from
benchmarks/research/ip_data.py (the library's ``select_labels``, 5 labels per class, random and blocks splits).
Random init: ``ViTEncoder(config)`` under ``torch.manual_seed(--init-seed)``, same statistics. Prints a Markdown
table and appends JSON lines to ``--out`` (default runs/dense_pixels.jsonl; the rows quoted in the docs are in
benchmarks/dense_pixels.jsonl).

Measured (2026-12-02, shared 2-core CPU machine; rows in dense_pixels.jsonl): `geomed-ssl pretrain
recipes/mae_hyperspectral.yaml --data IP --out /tmp/ip_run` on a copy of the scene without band descriptions
(1000 steps, 363 CPU-s with OMP_NUM_THREADS=1; 27 min wall at 22 % of a CPU on the loaded machine). Overall
accuracy, 5 labels per class; "fine-tuned" is `geomed-ssl finetune segment recipes/mae_hyperspectral.yaml
--encoder none|/tmp/ip_run --head linear --set finetune.max_steps=150 --set finetune.loss=ce --set labels.seed=S`
(the same training pixels, checked in labels_used.npz; untuned fine-tuning settings, random split only):

| split | encoder / protocol | selection seeds 10 11 | report seeds 0 1 2 |
|---|---|---|---|
| random | pretrained, linear probe | 0.750 ± 0.005 | 0.699 ± 0.040 (0.658 0.687 0.753) |
| random | pretrained, k-NN probe | 0.737 ± 0.011 | 0.751 ± 0.043 (0.690 0.783 0.780) |
| random | random init, linear probe | 0.567 ± 0.019 | 0.523 ± 0.030 |
| random | random init, k-NN probe | 0.523 ± 0.037 | 0.473 ± 0.017 |
| random | pretrained, fine-tuned | 0.746 ± 0.022 (0.769 0.724) | 0.692 ± 0.064 (0.642 0.652 0.782) |
| random | random init, fine-tuned | 0.665 ± 0.016 (0.681 0.649) | 0.601 ± 0.040 (0.552 0.600 0.650) |
| random | random forest | 0.682 ± 0.028 | 0.643 ± 0.047 (0.580 0.656 0.693) |
| blocks | pretrained, linear probe | 0.568 ± 0.019 | 0.596 ± 0.104 |
| blocks | pretrained, k-NN probe | 0.640 ± 0.029 | 0.622 ± 0.081 |
| blocks | random init, linear / k-NN probe | 0.370 / 0.368 | 0.441 / 0.402 |
| blocks | random forest | 0.520 ± 0.020 | 0.545 ± 0.031 |

The selection seeds pick the linear probe (0.750 > 0.746 fine-tuned > 0.737 k-NN): on the report seeds it scores
0.699, +0.099 over random init fine-tuned (paired, per seed +0.106 +0.087 +0.103) and +0.056 over the RF (+0.078
+0.031 +0.060); the issue's targets (>= 0.80, >= RF + 0.15) are not met.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent / "research"))
from ip_data import get_split, rf_baseline, scores  # noqa: E402
from research_pixels import probe  # noqa: E402

from geomed_ssl import load_encoder  # noqa: E402
from geomed_ssl.models.encoder import ViTEncoder  # noqa: E402
from geomed_ssl.sample import IMAGE  # noqa: E402


@torch.no_grad()
def scene_features(enc: ViTEncoder, image: torch.Tensor, tile: int, layers: list[int], batch: int = 16
                   ) -> np.ndarray:
    """(H*W, D * len(layers)) per-pixel features of ``image`` (C, H, W), normalised; see the module docstring."""
    enc.eval()
    c, h, w = image.shape
    s, q = tile // 2, tile // 4
    padded = F.pad(image, (tile, tile, tile, tile))  # zeros = the band mean after normalisation
    starts = [(y, x) for y in range(-q, h - q, s) for x in range(-q, w - q, s)]
    out = torch.zeros(len(layers) * enc.embed_dim, h + tile, w + tile)
    for i in range(0, len(starts), batch):
        chunk = starts[i:i + batch]
        x = torch.stack([padded[:, y + tile:y + 2 * tile, x0 + tile:x0 + 2 * tile] for y, x0 in chunk])
        feats, grid = enc.forward_features(x, layers)  # [(B, N, D)]
        m = torch.cat(feats, -1).transpose(1, 2).reshape(len(chunk), -1, *grid)
        m = F.interpolate(m, size=(tile, tile), mode="bilinear", align_corners=False)  # (B, D', T, T)
        for j, (y, x0) in enumerate(chunk):
            out[:, y + q:y + q + s, x0 + q:x0 + q + s] = m[j, :, q:q + s, q:q + s]
    return out[:, :h, :w].reshape(out.shape[0], -1).T.numpy()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a pretraining RUN_DIR (or its encoder folder)")
    ap.add_argument("--image", default=str(IMAGE), help="the scene (default: the bundled Indian Pines)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[10, 11])
    ap.add_argument("--splits", nargs="+", default=["random", "blocks"])
    ap.add_argument("--k", type=int, default=5, help="labels per class")
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--layers", type=int, nargs="+", default=None, help="tapped blocks (default: all)")
    ap.add_argument("--init-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-rf", action="store_true")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default="runs/dense_pixels.jsonl")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    pre = load_encoder(args.run)
    torch.manual_seed(args.init_seed)
    rand = ViTEncoder(pre.config)
    layers = args.layers if args.layers is not None else list(range(pre.config.depth))
    with rasterio.open(args.image) as src:
        raw = src.read().astype(np.float32)  # (C, H, W)
    x, _ = pre.preprocess(raw)
    rows = []

    def emit(**row) -> None:
        row = {"tag": args.tag, "run": str(args.run), "k": args.k, **row}
        rows.append(row)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    for name, enc in (("pretrained", pre), ("random init", rand)):
        t0 = time.time()
        feat = scene_features(enc, x[0], args.tile, layers)
        feat_s = time.time() - t0
        for split in args.splits:
            for seed in args.seeds:
                sp = get_split(args.k, split, seed)
                for kind in ("knn", "linear"):
                    emit(encoder=name, protocol=kind, split=split, seed=seed,
                         **scores(sp.test_y, probe(feat, sp, kind), sp.n_classes), feature_seconds=feat_s)
    if not args.no_rf:
        for split in args.splits:
            for seed in args.seeds:
                emit(encoder="rf", protocol="rf", split=split, seed=seed, **rf_baseline(get_split(args.k, split, seed),
                                                                                       seed))
    print(table(rows))


def table(rows: list[dict]) -> str:
    """Markdown: OA mean ± std over seeds per (encoder, protocol, split), with the per-seed values."""
    keys = sorted({(r["split"], r["encoder"], r["protocol"]) for r in rows},
                  key=lambda k: (k[0] != "random", ["pretrained", "random init", "rf"].index(k[1]), k[2]))
    out = ["| split | encoder | protocol | OA mean ± std | per seed |", "|---|---|---|---|---|"]
    for split, enc, prot in keys:
        oa = [r["OA"] for r in rows if (r["split"], r["encoder"], r["protocol"]) == (split, enc, prot)]
        out.append(f"| {split} | {enc} | {prot} | {np.mean(oa):.3f} ± {np.std(oa):.3f} | "
                   f"{' '.join(f'{v:.3f}' for v in oa)} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
