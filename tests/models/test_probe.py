"""The frozen multi-layer probe: fitted once on per-pixel features, it classifies the same as a segmentation head
(what ``finetune.head=probe`` saves and ``predict`` runs) as on the sampled features (``compare``'s protocol)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
from geomed_ssl.models.probe import encoder_points, fit_probe, predict_probe, probe_layers
from geomed_ssl.models.seg_decoder import SegmentationModel


def encoder() -> ViTEncoder:
    torch.manual_seed(0)
    return ViTEncoder(EncoderConfig(in_chans=3, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=2,
                                    num_heads=2)).eval()


def test_default_probe_layers_tap_quarters_and_the_last_block() -> None:
    assert probe_layers(8) == [2, 4, 6, 7]
    assert probe_layers(8, [5, 1, 5]) == [1, 5]


@pytest.mark.parametrize("kind", ["linear", "knn"])
def test_probe_head_on_a_window_predicts_as_the_probe_on_sampled_pixel_features(kind: str) -> None:
    enc = encoder()
    layers = probe_layers(enc.config.depth)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 16, 16)).astype(np.float32)
    points = np.stack(np.meshgrid(np.arange(16), np.arange(16), indexing="ij"), -1).reshape(-1, 2)  # (256, 2)
    feats = encoder_points(enc, layers)(image, points, None)  # (256, L * D)
    y = (image[0].reshape(-1) > 0).astype(np.int64) + 2 * (image[1].reshape(-1) > 0)  # 4 classes
    train = rng.choice(points.shape[0], 40, replace=False)
    state = fit_probe(kind, feats[train], y[train], 4)
    expected = predict_probe(state, feats, 4)
    model = SegmentationModel(enc, 4, layers, head="probe", probe=kind, memory=40 if kind == "knn" else 0)
    model.decoder.load_fitted(state)
    with torch.no_grad():
        got = model.eval()(torch.from_numpy(image)[None]).argmax(1)[0].reshape(-1).numpy()  # (256,)
    assert (got == expected).mean() > 0.99  # float order of operations may flip a near tie
    assert (expected[train] == y[train]).mean() > 0.5  # it learnt from its training pixels (chance 0.25)


def test_linear_probe_never_predicts_a_class_it_had_no_training_samples_of() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 8))
    y = np.repeat([0, 2], 15)
    pred = predict_probe(fit_probe("linear", x, y, 3), rng.normal(size=(200, 8)), 3)
    assert set(np.unique(pred)) <= {0, 2}
