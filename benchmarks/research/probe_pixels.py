"""Hypercolumns with the input layer: ``compare``'s ``linear`` probe on the encoder's per-pixel features (``tokens``),
on those with the pixel's own normalised bands appended (``tokens+pixel``; the finest layer of a hypercolumn: tokens
of several pixels cannot place a boundary inside a token, the pixel's spectrum can), and on the bands alone
(``pixel``), for RUN_DIR and ``none``. OA / AA / mIoU of the test pixels, one JSON line per encoder x seed x variant.

    python benchmarks/research/probe_pixels.py RUN_DIR --images IMG_DIR --labels LABELS --k 10 [--seeds 10,11]
        [--variants tokens,tokens+pixel,pixel]
"""

from __future__ import annotations

import json

import numpy as np
from probe_common import probe_args, probe_task

from geomed_ssl.compare.features import SegmentFeatures
from geomed_ssl.compare.probes import classify, scores
from geomed_ssl.compare.run import needed_rows
from geomed_ssl.models.probe import encoder_points, probe_layers


def main() -> None:
    args = probe_args("tokens,tokens+pixel,pixel")
    recipe, task, splits, sources = probe_task(args)
    variants = args.variants.split(",")
    rows = needed_rows(splits)
    for src, load in sources:
        point_fn = encoder_points(src.encoder, probe_layers(src.encoder.config.depth, recipe.finetune.layers))
        tokens = SegmentFeatures(task, load, point_fn, rows).features(rows)
        pixel = np.empty((rows.size, load(0).shape[0]), np.float32)
        for f in np.unique(task.files[rows]):
            sel = np.flatnonzero(task.files[rows] == f)
            image = load(int(f))
            pixel[sel] = image.reshape(image.shape[0], -1)[:, task.flats[rows[sel]]].T
        feats = {"tokens": tokens, "pixel": pixel, "tokens+pixel": np.concatenate([tokens, pixel], 1)}
        for split in splits:
            tr, te = np.searchsorted(rows, split.train), np.searchsorted(rows, split.test)
            for v in variants:
                pred = classify("linear", feats[v][tr], task.values[split.train], feats[v][te], split.seed)
                m = scores(task.values[split.test], pred, len(task.class_names), True)
                print(json.dumps({"encoder": src.name, "seed": split.seed, "k": args.k, "variant": v,
                                  **{key: round(m[key], 4) for key in ("oa", "aa", "miou")}}), flush=True)


if __name__ == "__main__":
    main()
