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
