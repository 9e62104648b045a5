"""The encoder-free baselines, the linear probe and label propagation on scenes where the classes differ only in
their spectrum (far above chance) and on pure noise (at chance)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geomed_ssl.compare.baselines import baseline_features
from geomed_ssl.compare.options import Budget
from geomed_ssl.compare.run import _images, frozen_scores
from geomed_ssl.compare.task import load_segment_task, make_split
from geomed_ssl.config import load_recipe
from geomed_ssl.data.stats import compute_stats
from tests.conftest import write_geotiff

CLASSES, BANDS, SIZE = 4, 6, 64


def spectral_scene(root: Path, informative: bool) -> tuple[Path, Path]:
    """A 6-band scene of 8x8 patches of 4 classes. ``informative``: each class has its own mean spectrum (plus
    noise) and nothing else tells them apart; else every pixel is noise and the labels are drawn independently."""
    rng = np.random.default_rng(7)
    cls = rng.integers(0, CLASSES, size=(SIZE // 8, SIZE // 8)).repeat(8, 0).repeat(8, 1)
    signatures = rng.uniform(1000, 3000, size=(CLASSES, BANDS))
    noise = rng.normal(0, 150, size=(BANDS, SIZE, SIZE))
    img = (signatures[cls].transpose(2, 0, 1) + noise) if informative else 2000 + 400 * noise / 150
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    write_geotiff(root / "images" / "scene.tif", img.astype(np.float32))
    write_geotiff(root / "labels" / "scene_gt.tif", (cls + 1)[None].astype(np.uint8))
    return root / "images", root / "labels"


def oa_of(root: Path, name: str, protocol: str, informative: bool) -> float:
    images, labels = spectral_scene(root, informative)
    recipe = load_recipe("recipes/mae_sentinel2.yaml", ["data.sensor=null", "data.stats_windows=16",
                                                        "data.patch_size=16"])
    task = load_segment_task(recipe, images, labels, strict=False)
    stats = compute_stats(task.catalog, recipe.data)
    feats = baseline_features(name, task, _images(task, task.records, stats, recipe, (1, 1)), BANDS)
    split = make_split(task, recipe, Budget(per_class=20), 0, "random")
    return float(frozen_scores(feats, task, split, protocol, recipe)["oa"])


PAIRS = [("rf", "forest"), ("random_conv", "linear"), ("random_conv", "propagate")]


@pytest.mark.parametrize("name,protocol", PAIRS)
def test_baseline_separates_classes_that_differ_only_in_spectrum(tmp_path: Path, name: str, protocol: str) -> None:
    assert oa_of(tmp_path, name, protocol, informative=True) > 0.8  # chance: 0.25


@pytest.mark.parametrize("name,protocol", PAIRS)
def test_baseline_stays_at_chance_on_pure_noise(tmp_path: Path, name: str, protocol: str) -> None:
    assert oa_of(tmp_path, name, protocol, informative=False) < 0.4


def test_band_stats_and_random_conv_classify_images_by_their_spectrum(tmp_path: Path) -> None:
    from geomed_ssl.compare.task import load_classify_task
    from tests.conftest import write_class_folders

    data = write_class_folders(tmp_path / "classes", ["a", "b", "c"], per_class=8)
    recipe = load_recipe("recipes/mae_sentinel2.yaml", ["data.sensor=null", "data.stats_windows=16",
                                                        "data.patch_size=16", "finetune.task=classify"])
    task = load_classify_task(recipe, data, strict=False)
    stats = compute_stats(task.catalog, recipe.data)
    split = make_split(task, recipe, Budget(per_class=2), 0, "random")
    for name, protocol in (("band_stats", "linear"), ("random_conv", "linear"), ("band_stats", "propagate")):
        feats = baseline_features(name, task, _images(task, task.records, stats, recipe, (1, 1)), 4)
        assert frozen_scores(feats, task, split, protocol, recipe)["oa"] > 0.8, name


def test_a_class_weight_list_is_one_weight_per_task_class_even_when_a_split_lacks_one() -> None:
    from geomed_ssl.compare.probes import classify
    from geomed_ssl.errors import ConfigError

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)  # the task has 4 classes; this split drew none of class 3
    x = rng.normal(size=(60, 5)) + 3 * np.eye(5)[y]
    pred = classify("linear", x, y, x, 0, class_weights=[1.0, 1.0, 1.0, 5.0], num_classes=4)
    assert set(np.unique(pred)) <= {0, 1, 2} and (pred == y).mean() > 0.9
    with pytest.raises(ConfigError, match="list of 4 numbers"):
        classify("linear", x, y, x, 0, class_weights=[1.0, 1.0, 1.0], num_classes=4)


@pytest.mark.parametrize("shape", [(23, 17), (9, 8, 7)])
def test_baseline_maps_computed_in_slabs_of_rows_equal_the_whole_scenes(shape, monkeypatch) -> None:
    """rf's and random_conv's per-pixel features are computed slab by slab with a halo (so a large scene is never
    held as maps): the same values as one pass over the whole scene, with and without blanked test blocks."""
    from geomed_ssl.compare import baselines
    from geomed_ssl.compare.baselines import RandomConv, conv_points, rf_points

    rng = np.random.default_rng(3)
    image = rng.normal(size=(5, *shape)).astype(np.float32)
    allowed = rng.random(shape) > 0.3
    points = np.stack(np.unravel_index(rng.choice(image[0].size, 40, replace=False), shape), 1)
    mean = image.reshape(5, -1).mean(axis=1)
    comps = np.linalg.qr(rng.normal(size=(5, 5)))[0][:3].astype(np.float32)
    for name, fn in (("rf", rf_points(mean, comps)), ("random_conv", conv_points(RandomConv(5, len(shape))))):
        for view in (None, allowed):
            whole = fn(image, points, view)  # a scene this small is one slab
            with monkeypatch.context() as m:
                m.setattr(baselines, "slab_rows", lambda s, channels: 2)
                slabbed = fn(image, points, view)
            if name == "rf":  # sums in a fixed order: exactly equal
                np.testing.assert_array_equal(slabbed, whole)
            else:  # a convolution's arithmetic may depend on its input's size
                np.testing.assert_allclose(slabbed, whole, rtol=1e-5, atol=1e-6)


def test_local_mean_is_the_mean_over_the_window_inside_the_scene_and_the_allowed_pixels() -> None:
    from scipy.ndimage import uniform_filter

    from geomed_ssl.compare.baselines import RF_WINDOW, local_mean

    rng = np.random.default_rng(4)
    for shape in [(20, 13), (9, 10, 8)]:
        maps = rng.normal(size=(2, *shape)).astype(np.float32)
        allowed = rng.random(shape) > 0.5
        w = allowed.astype(np.float64)
        num = uniform_filter(maps * w[None], size=(1,) + (RF_WINDOW,) * len(shape), mode="constant")
        den = uniform_filter(w, size=RF_WINDOW, mode="constant")
        np.testing.assert_allclose(local_mean(maps, allowed), num / np.maximum(den, 1e-6)[None], rtol=1e-4,
                                   atol=1e-5)
        one = tuple(s // 2 for s in shape)  # one pixel by hand: the mean of its allowed neighbours
        box = tuple(slice(max(0, c - 3), c + 4) for c in one)
        expected = maps[(slice(None), *box)][:, allowed[box]].mean(axis=1)
        np.testing.assert_allclose(local_mean(maps, allowed)[(slice(None), *one)], expected, rtol=1e-5, atol=1e-6)
