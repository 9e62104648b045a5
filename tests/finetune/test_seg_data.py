"""Training windows of few-label segmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geomed_ssl.config import DataConfig
from geomed_ssl.data.catalog import scan
from geomed_ssl.data.stats import compute_stats
from geomed_ssl.finetune.seg_data import SparseLabelDataset, sparse_target
from tests.conftest import structured_raster, write_geotiff


def shown_columns(ds: SparseLabelDataset, stats, n: int = 24) -> np.ndarray:
    """Image columns of every valid pixel the first ``n`` windows show (band 0 holds 1000 + 100 * column)."""
    cols = []
    for i in range(n):
        sample = ds[i]
        band0 = sample["image"].numpy()[0][sample["valid"].numpy()]
        cols.append((band0 * stats.std[0] + stats.mean[0] - 1000) / 100)
    return np.concatenate(cols)


def test_windows_of_a_blocks_split_never_show_test_block_pixels(tmp_path: Path) -> None:
    img = structured_raster(np.random.default_rng(0), 3, 48)
    img[0] = 1000 + 100 * np.arange(48)[None, :]  # band 0 tells each pixel's column
    (tmp_path / "img").mkdir()
    write_geotiff(tmp_path / "img" / "scene.tif", img)
    cfg = DataConfig(kind="raster", patch_size=16, stats_windows=8)
    catalog = scan(tmp_path / "img", cfg)
    stats = compute_stats(catalog, cfg)
    allowed = np.zeros((48, 48), bool)
    allowed[:, :24] = True  # training blocks: the left half
    flat = np.ravel_multi_index(([5, 30, 40], [20, 3, 22]), (48, 48))  # training pixels, two near the edge
    target = sparse_target((48, 48), flat, np.array([0, 1, 0]))
    blocks = SparseLabelDataset(catalog.records, [target], stats, cfg, (16, 16), augment=False, allowed=[allowed])
    plain = SparseLabelDataset(catalog.records, [target], stats, cfg, (16, 16), augment=False)
    assert shown_columns(plain, stats).max() > 25  # the same windows reach into the right half ...
    assert shown_columns(blocks, stats).max() < 24.5  # ... which a blocks split never shows


def test_scenes_that_fit_the_cache_together_are_read_once_and_give_the_same_windows(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    from geomed_ssl.finetune import seg_data

    (tmp_path / "img").mkdir()
    for k in range(3):
        write_geotiff(tmp_path / "img" / f"scene_{k}.tif", structured_raster(np.random.default_rng(k), 3, 48))
    cfg = DataConfig(kind="raster", patch_size=16, stats_windows=8)
    catalog = scan(tmp_path / "img", cfg)
    stats = compute_stats(catalog, cfg)
    flat = np.ravel_multi_index(([5, 30, 40], [20, 3, 22]), (48, 48))
    targets = [sparse_target((48, 48), flat, np.array([0, 1, 0]))] * 3
    whole = SparseLabelDataset(catalog.records, targets, stats, cfg, (16, 16), seed=1)
    small = seg_data.RasterReader
    monkeypatch.setattr(seg_data, "RasterReader", lambda: small(cache_bytes=2 * 48 * 48 * 3 * 8))  # 2 of 3 scenes
    direct = SparseLabelDataset(catalog.records, targets, stats, cfg, (16, 16), seed=1)
    for i in range(12):
        a, b = whole[i], direct[i]
        assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in ("image", "valid", "target"))
    assert whole.raster_reader.counters["region_reads"] == 3 and whole.raster_reader.counters["direct_reads"] == 0
    assert direct.raster_reader.counters["region_reads"] == 0 and direct.raster_reader.counters["direct_reads"] == 12


def test_windows_are_flipped_and_turned_only_as_the_recipes_augment_section_says(tmp_path: Path) -> None:
    """``augment.flip=false`` (labels defined by their side) and ``rot90=false`` reach the fine-tune's windows: with
    both off every window is the plain read; with them on some are not."""
    from geomed_ssl.config.sections import AugmentConfig

    img = structured_raster(np.random.default_rng(0), 3, 48)
    (tmp_path / "img").mkdir()
    write_geotiff(tmp_path / "img" / "scene.tif", img)
    cfg = DataConfig(kind="raster", patch_size=16, stats_windows=8)
    catalog = scan(tmp_path / "img", cfg)
    stats = compute_stats(catalog, cfg)
    target = sparse_target((48, 48), np.ravel_multi_index(([20, 30], [20, 12]), (48, 48)), np.array([0, 1]))

    def windows(**kw) -> list[np.ndarray]:
        return [SparseLabelDataset(catalog.records, [target], stats, cfg, (16, 16), seed=3, **kw)[i]["image"].numpy()
                for i in range(16)]

    plain = windows(augment=False)
    kept = windows(aug_cfg=AugmentConfig(flip=False, rot90=False))
    moved = windows(aug_cfg=AugmentConfig())
    assert all(np.array_equal(a, b) for a, b in zip(plain, kept))
    assert sum(not np.array_equal(a, b) for a, b in zip(plain, moved)) >= 8


def test_classes_on_opposite_sides_of_the_left_right_axis_are_told_apart_from_lopsided_ones() -> None:
    """Left- / Right- structures (as FreeSurfer's aseg) are sided; a tumour in one hemisphere beside a background
    on both sides is not a pair that a flip would swap."""
    from geomed_ssl.data.labelled import sided_classes

    values = np.zeros((20, 8, 8), np.int16)
    values[2:9] = 2    # Left-Cerebral-White-Matter: low i (RAS i runs towards the right)
    values[11:18] = 41  # Right-Cerebral-White-Matter
    labelled = np.ones(values.shape, bool)
    assert sided_classes([values], [labelled], [0, 2, 41]) == ([2], [41])
    tumour = np.zeros((20, 8, 8), np.int16)
    tumour[3:7, 2:6, 2:6] = 1
    assert sided_classes([tumour], [labelled], [0, 1])[1] == []
    one_side = np.zeros((20, 8, 8), np.int16)  # a left hemisphere only: cortex lateral, thalamus medial
    one_side[1:4], one_side[6:9] = 3, 10
    assert sided_classes([one_side], [one_side > 0], [3, 10]) == ([3, 10], [])


def test_a_volume_fine_tune_with_flips_warns_about_sided_classes_and_not_without_them(caplog) -> None:
    from geomed_ssl.config import as_recipe
    from geomed_ssl.data.labelled import warn_sided_flips

    values = np.zeros((20, 8, 8), np.int16)
    values[2:9], values[11:18] = 2, 41
    labelled = np.ones(values.shape, bool)
    recipe = as_recipe(None, ["data.kind=volume", "data.patch_size=8"])
    warn_sided_flips(recipe, [values], [labelled], [0, 2, 41])
    assert "classes [2] lie on the left and of classes [41] on the right" in caplog.text
    assert "--set augment.flip=false" in caplog.text
    caplog.clear()
    warn_sided_flips(as_recipe(None, ["data.kind=volume", "data.patch_size=8", "augment.flip=false"]),
                     [values], [labelled], [0, 2, 41])
    assert "augment.flip" not in caplog.text
