"""The frozen multi-layer probe: fitted once on per-pixel features, it classifies the same as a segmentation head
(what ``finetune.head=probe`` saves and ``predict`` runs) as on the sampled features (``compare``'s protocol)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomed_ssl.data.stats import BandStats
from geomed_ssl.windows.tiling import DEFAULT_OVERLAP, blend_weights, window_starts
from geomed_ssl.inference.predict import predict_raster
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
from geomed_ssl.models.probe import encoder_points, fit_probe, predict_probe, probe_layers
from geomed_ssl.models.seg_decoder import SegmentationModel
from tests.conftest import write_geotiff


def encoder() -> ViTEncoder:
    torch.manual_seed(0)
    return ViTEncoder(EncoderConfig(in_chans=3, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=2,
                                    num_heads=2)).eval()


def test_default_probe_layers_tap_quarters_and_the_last_block() -> None:
    assert probe_layers(8) == [2, 4, 6, 7]
    assert probe_layers(8, [5, 1, 5]) == [1, 5]


@pytest.mark.parametrize("kind", ["linear", "knn", "propagate"])
def test_probe_head_on_a_window_predicts_as_the_probe_on_sampled_pixel_features(kind: str) -> None:
    enc = encoder()
    layers = probe_layers(enc.config.depth)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 16, 16)).astype(np.float32)
    points = np.stack(np.meshgrid(np.arange(16), np.arange(16), indexing="ij"), -1).reshape(-1, 2)  # (256, 2)
    feats = encoder_points(enc, layers)(image, points, None)  # (256, L * D)
    y = (image[0].reshape(-1) > 0).astype(np.int64) + 2 * (image[1].reshape(-1) > 0)  # 4 classes
    train = rng.choice(points.shape[0], 40, replace=False)
    state = fit_probe(kind, feats[train], y[train], 4, feats if kind == "propagate" else None)
    expected = predict_probe(state, feats, 4)
    model = SegmentationModel(enc, 4, layers, head="probe", probe=kind, memory=40 if kind == "knn" else 0)
    model.decoder.load_fitted(state)
    with torch.no_grad():
        got = model.eval()(torch.from_numpy(image)[None]).argmax(1)[0].reshape(-1).numpy()  # (256,)
    assert (got == expected).mean() > 0.99  # float order of operations may flip a near tie
    assert (expected[train] == y[train]).mean() > 0.5  # it learnt from its training pixels (chance 0.25)


def test_linear_probe_keeps_the_training_rows_class_shares_unless_class_weights_say_otherwise() -> None:
    """A fraction of the pixels labels a rare class (a tumour) in its true share: weighing the rows alike (the
    default, as the fine-tune's CE) keeps that prior; "balanced" gives both classes the same total weight, so the
    rare class is over-predicted (over-segmented)."""
    rng = np.random.default_rng(5)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = (rng.random(n) < 0.05).astype(np.int64)
        return rng.normal(size=(n, 4)) + y[:, None], y  # overlapping classes

    x, y = draw(2000)
    x_test, _ = draw(4000)
    ratio = float((y == 0).sum() / (y == 1).sum())  # what "balanced" weighs the rare class by
    shares = {str(w): (predict_probe(fit_probe("linear", x, y, 2, class_weights=w), x_test, 2) == 1).mean()
              for w in (None, "balanced", [1.0, ratio])}
    assert shares["None"] < y.mean() < 0.15 < shares["balanced"]
    assert shares[str([1.0, ratio])] == pytest.approx(shares["balanced"], abs=0.02)
    even = np.repeat([0, 1], 20)
    fits = [fit_probe("linear", x[:40], even, 2, class_weights=w) for w in (None, "balanced")]
    np.testing.assert_allclose(fits[0]["weight"], fits[1]["weight"], rtol=1e-6)  # k per class: the same fit
    from geomed_ssl.errors import ConfigError

    with pytest.raises(ConfigError, match="list of 2 numbers"):
        fit_probe("linear", x, y, 2, class_weights=[1.0, 2.0, 3.0])


def test_linear_probe_never_predicts_a_class_it_had_no_training_samples_of() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 8))
    y = np.repeat([0, 2], 15)
    pred = predict_probe(fit_probe("linear", x, y, 3), rng.normal(size=(200, 8)), 3)
    assert set(np.unique(pred)) <= {0, 2}


def test_pixel_features_are_the_gaussian_blend_of_predicts_overlapping_windows() -> None:
    enc = encoder()
    layers = probe_layers(enc.config.depth)
    image = np.random.default_rng(2).normal(size=(3, 30, 23)).astype(np.float32)
    points = np.stack(np.meshgrid(np.arange(30), np.arange(23), indexing="ij"), -1).reshape(-1, 2)
    got = encoder_points(enc, layers, batch=3)(image, points, None)  # (690, L * D)
    acc, wsum = np.zeros((len(layers) * 32, 30, 23)), np.zeros((30, 23))
    weight = blend_weights((16, 16), "gaussian")
    for y in window_starts(30, 16, DEFAULT_OVERLAP):  # every window predict computes, whole maps
        for x in window_starts(23, 16, DEFAULT_OVERLAP):
            with torch.no_grad():
                feats, grid = enc.forward_features(torch.from_numpy(image[None, :, y:y + 16, x:x + 16]), layers)
            maps = torch.cat([f.transpose(1, 2).reshape(1, -1, *grid) for f in feats], 1)
            maps = torch.nn.functional.interpolate(maps, size=(16, 16), mode="bilinear", align_corners=False)
            acc[:, y:y + 16, x:x + 16] += maps[0].numpy() * weight
            wsum[y:y + 16, x:x + 16] += weight
    expected = (acc / wsum).reshape(acc.shape[0], -1).T
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    some = np.array([5, 300, 689])  # only the windows holding the points asked for: the same values
    np.testing.assert_allclose(encoder_points(enc, layers)(image, points[some], None), got[some], rtol=1e-5,
                               atol=1e-6)


def test_a_fitted_linear_probe_maps_a_scene_through_predict_as_it_classified_its_features(tmp_path) -> None:
    enc = encoder()
    layers = probe_layers(enc.config.depth)
    rng = np.random.default_rng(4)
    raw = rng.normal(size=(3, 40, 37)).astype(np.float32)
    path = write_geotiff(tmp_path / "scene.tif", raw)
    stats = BandStats([f"band_{i}" for i in range(1, 4)], [0.0] * 3, [1.0] * 3, [-3.0] * 3, [3.0] * 3, [1] * 3)
    points = np.stack(np.meshgrid(np.arange(40), np.arange(37), indexing="ij"), -1).reshape(-1, 2)
    feats = encoder_points(enc, layers)(raw, points, None)
    y = (raw[0].reshape(-1) > 0).astype(np.int64) + (raw[1].reshape(-1) > 0)  # 3 classes
    train = rng.choice(points.shape[0], 60, replace=False)
    state = fit_probe("linear", feats[train], y[train], 3)
    expected = predict_probe(state, feats, 3).reshape(40, 37)
    model = SegmentationModel(enc, 3, layers, head="probe", probe="linear")
    model.decoder.load_fitted(state)
    predict_raster(model.eval(), path, tmp_path / "pred.tif", stats, window=(16, 16), num_classes=3)
    import rasterio

    with rasterio.open(tmp_path / "pred.tif") as ds:
        got = ds.read(1)
    # predict blends the windows' class probabilities, the probe was fitted on blended features: near ties differ
    assert (got == expected).mean() > 0.97


def test_a_whole_raster_read_in_slabs_of_rows_equals_one_read(tmp_path, monkeypatch) -> None:
    from geomed_ssl.config import DataConfig
    from geomed_ssl.data.catalog import scan
    from geomed_ssl.data.readers import RasterReader
    from geomed_ssl.data.stats import normalize
    from geomed_ssl.models import probe

    raw = np.random.default_rng(5).normal(100, 20, size=(3, 41, 19)).astype(np.float32)
    raw[:, 7, 3] = -9999  # a missing pixel and a band gap: normalised per pixel, slab or not
    raw[1, 30, 10] = -9999
    write_geotiff(tmp_path / "scene.tif", raw, nodata=-9999)
    cfg = DataConfig(kind="raster", patch_size=16)
    record = scan(tmp_path, cfg).records[0]
    stats = BandStats(record.band_names, [100.0] * 3, [20.0] * 3, [60.0] * 3, [140.0] * 3, [1] * 3)
    whole = normalize(RasterReader().read_window(record, 0, 0, 41, 19), stats, -9999)[0]
    monkeypatch.setattr(probe, "READ_ROWS", 1)
    monkeypatch.setattr(probe, "slab_rows", lambda shape, channels: 6)  # 41 rows: six slabs of 6 and one of 5
    np.testing.assert_array_equal(probe.read_image(record, stats, cfg, 2), whole)


def test_blanked_pixel_features_blank_each_window_as_blanking_the_image_would() -> None:
    from geomed_ssl.models.probe import blank

    enc = encoder()
    layers = probe_layers(enc.config.depth)
    rng = np.random.default_rng(6)
    image = rng.normal(size=(3, 30, 23)).astype(np.float32)
    allowed = rng.random((30, 23)) > 0.4
    points = np.argwhere(allowed)[::7]
    fn = encoder_points(enc, layers)
    np.testing.assert_array_equal(fn(image, points, allowed), fn(blank(image, allowed), points, None))


def test_a_linear_probe_on_training_features_all_alike_predicts_without_failing() -> None:
    """Two classes whose training images are identical (one per class, the same scan filed twice): no direction
    separates them; a ValueError traceback from scikit-learn before."""
    from geomed_ssl.models.probe import fit_probe, predict_probe

    x = np.ones((2, 6), np.float32)
    fitted = fit_probe("linear", x, np.array([0, 1]), 3)
    pred = predict_probe(fitted, np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32), 3)
    assert pred.shape == (5,) and set(pred.tolist()) <= {0, 1}  # a class it saw, never the unseen class 2
