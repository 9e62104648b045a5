"""``finetune segment`` with ``finetune.head=probe``: the encoder stays frozen and a linear or k-NN classifier is
fitted on its multi-layer per-pixel features (the ``linear`` / ``knn`` protocol of ``compare``, the same code:
``geomed_ssl.models.probe``) at the training pixels, then saved as the model's head so ``evaluate`` and
``predict`` run it on whole scenes like any fine-tuned model."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from geomed_ssl.config import Recipe
from geomed_ssl.data.stats import BandStats
from geomed_ssl.finetune.sampling import LabelSelection
from geomed_ssl.models.encoder import ViTEncoder
from geomed_ssl.models.probe import encoder_points, fit_probe, probe_layers, read_image
from geomed_ssl.models.seg_decoder import SegmentationModel

log = logging.getLogger("geomed_ssl")


def fit_probe_model(enc: ViTEncoder, recipe: Recipe, records: list[Any], selection: LabelSelection,
                    stats: BandStats, allowed: list[np.ndarray] | None) -> SegmentationModel:
    """A ``SegmentationModel`` whose head is the ``finetune.probe`` classifier fitted on the frozen features of
    the training pixels (with the ``blocks`` split, read from the image with its test blocks blanked)."""
    f = recipe.finetune
    layers = probe_layers(enc.config.depth, f.layers)
    enc.eval()
    points_fn = encoder_points(enc, layers)
    nd = enc.config.spatial_dims
    feats, values = [], []
    for i, record in enumerate(records):
        sel = selection.train_file == i
        if not sel.any():
            continue
        image = read_image(record, stats, recipe.data, nd)  # (C, *S) normalised
        points = np.stack(np.unravel_index(selection.train_index[sel], image.shape[1:]), axis=1)  # (n, nd)
        feats.append(points_fn(image, points, None if allowed is None else allowed[i]))
        values.append(selection.train_value[sel])
    x = np.concatenate(feats)  # (Ntr, L * D)
    y = selection.class_map.encode(np.concatenate(values))
    k = len(selection.classes)
    state = fit_probe(f.probe, x, y, k)
    model = SegmentationModel(enc, k, layers, head="probe", probe=f.probe, memory=len(y) if f.probe == "knn" else 0)
    model.decoder.load_fitted(state)
    log.info("probe head: %s on %d training %s x %d features (blocks %s)", f.probe, len(y),
             "voxels" if nd == 3 else "pixels", x.shape[1], layers)
    return model.eval()
