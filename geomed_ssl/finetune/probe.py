"""``finetune segment`` with ``finetune.head=probe``: the encoder stays frozen and a linear, k-NN or propagated
linear classifier is fitted on its multi-layer per-pixel features (the ``linear`` / ``knn`` / ``propagate``
protocol of ``compare``, the same code: ``geomed_ssl.models.probe``) at the training pixels (``propagate``: and at
a sample of the images' other pixels, unlabelled), then saved as the model's head so ``evaluate`` and ``predict``
run it on whole scenes like any fine-tuned model."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from geomed_ssl.config import Recipe
from geomed_ssl.data.stats import BandStats
from geomed_ssl.labels.sampling import LabelSelection
from geomed_ssl.models.encoder import ViTEncoder
from geomed_ssl.models.probe import encoder_points, fit_probe, probe_layers, read_image
from geomed_ssl.models.propagate import sample_nodes
from geomed_ssl.models.seg_decoder import SegmentationModel

log = logging.getLogger("geomed_ssl")


def fit_probe_model(enc: ViTEncoder, recipe: Recipe, records: list[Any], selection: LabelSelection,
                    stats: BandStats, allowed: list[np.ndarray] | None) -> SegmentationModel:
    """A ``SegmentationModel`` whose head is the ``finetune.probe`` classifier fitted on the frozen features of
    the training pixels (with the ``blocks`` split, read from the image with its test blocks blanked; the ``images``
    split's training images are wholly allowed)."""
    f = recipe.finetune
    layers = probe_layers(enc.config.depth, f.layers)
    enc.eval()
    points_fn = encoder_points(enc, layers)
    nd = enc.config.spatial_dims
    nodes = (sample_nodes(selection.shapes, f.probe_nodes, recipe.labels.seed, allowed)
             if f.probe == "propagate" else [np.zeros(0, np.int64)] * len(records))
    feats, values, node_feats = [], [], []
    for i, record in enumerate(records):
        sel = selection.train_file == i
        if not sel.any() and not nodes[i].size:
            continue
        image = read_image(record, stats, recipe.data, nd)  # (C, *S) normalised
        view = None if allowed is None else allowed[i]
        if sel.any():  # (an image may hold graph nodes only)
            points = np.stack(np.unravel_index(selection.train_index[sel], image.shape[1:]), axis=1)  # (n, nd)
            feats.append(points_fn(image, points, view))
            values.append(selection.train_value[sel])
        if nodes[i].size:
            node_feats.append(points_fn(image, np.stack(np.unravel_index(nodes[i], image.shape[1:]), axis=1), view))
    x = np.concatenate(feats)  # (Ntr, L * D)
    y = selection.class_map.encode(np.concatenate(values))
    k = len(selection.classes)
    x_nodes = np.concatenate(node_feats) if node_feats else None
    state = fit_probe(f.probe, x, y, k, x_nodes, f.class_weights)
    memory = state["memory"].shape[0] if "memory" in state else 0
    model = SegmentationModel(enc, k, layers, head="probe", probe=f.probe, memory=memory)
    model.decoder.load_fitted(state)
    unit = "voxels" if nd == 3 else "pixels"
    log.info("probe head: %s on %d training %s x %d features (blocks %s)%s", f.probe, len(y), unit, x.shape[1],
             layers, f", {0 if x_nodes is None else len(x_nodes)} unlabelled {unit} in the graph"
             if f.probe == "propagate" else "")
    return model.eval()
