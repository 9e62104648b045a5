"""The fine-tuning entry's encoder set-up: the data is read as the pretrained encoder needs, by band name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geomed_ssl.config import Recipe
from geomed_ssl.data.catalog import scan
from geomed_ssl.data.readers import RasterReader
from geomed_ssl.finetune.fit import encoder_and_stats
from geomed_ssl.errors import DataError
from tests.conftest import structured_raster
from tests.embeddings.test_extract import described, make_encoder


def test_fine_tuning_reads_another_band_order_by_name_and_refuses_only_missing_bands(tmp_path: Path) -> None:
    arr = structured_raster(np.random.default_rng(3), 4, 32)
    enc = make_encoder(described(tmp_path / "train", [arr], ["B02", "B03", "B04", "B08"]), tmp_path / "enc")
    other = described(tmp_path / "other", [np.concatenate([arr[[3, 2, 1, 0]], arr[:1]])],
                      ["B08", "B04", "B03", "B02", "B11"])
    recipe = Recipe()
    recipe.data.patch_size = 16
    encoder, stats, _, catalog = encoder_and_stats(enc, recipe, scan(other, recipe.data))
    assert catalog.band_names == stats.band_names == encoder.config.band_names == ["B02", "B03", "B04", "B08"]
    np.testing.assert_array_equal(RasterReader().read_window(catalog.records[0], 0, 0, 32, 32), arr.astype(np.float32))
    short = described(tmp_path / "short", [arr[:3]], ["B02", "B03", "B04"])
    with pytest.raises(DataError, match=r"missing \['B08'\]"):
        encoder_and_stats(enc, recipe, scan(short, recipe.data))


def test_the_classification_stream_augments_each_image_anew_on_every_pass(tmp_path: Path) -> None:
    """The stream of a classification fine-tune: every pass shows each training image once, with a new flip /
    rotation / intensity draw each time (not the same augmented copy on every pass), the same for the same seed."""
    from geomed_ssl.config import load_recipe
    from geomed_ssl.data.labelled import ImageDataset, scan_class_folders
    from geomed_ssl.data.stats import compute_stats
    from geomed_ssl.data.catalog import Catalog
    from geomed_ssl.finetune.classify import Repeat
    from tests.conftest import write_class_folders

    root = write_class_folders(tmp_path / "classes", ["a", "b"], per_class=2)
    recipe = load_recipe("recipes/mae_sentinel2.yaml", ["data.sensor=null", "data.patch_size=16"])
    records, labels, _ = scan_class_folders(root, recipe.data)
    catalog = Catalog(records=records, problems=[], kind="raster", band_names=records[0].band_names,
                      wavelengths=records[0].wavelengths, bandwidths=records[0].bandwidths)
    stats = compute_stats(catalog, recipe.data, seed=0)
    data = ImageDataset(records, labels, stats, recipe.data, (8, 8), augment=True, seed=3)
    train = np.array([0, 3])

    def passes(stream: Repeat) -> list[dict[int, np.ndarray]]:
        out = []
        for p in range(6):
            items = [stream[p * 2 + j] for j in range(2)]
            out.append({int(it["target"]): it["image"].numpy() for it in items})
        return out

    first, again = passes(Repeat(data, train, seed=3)), passes(Repeat(data, train, seed=3))
    for label in first[0]:
        views = [p[label] for p in first]
        assert any(not np.array_equal(views[0], v) for v in views[1:])  # not one fixed copy
        assert all(np.array_equal(a[label], b[label]) for a, b in zip(first, again))  # seeded


def test_random_init_fine_tunes_every_block_at_the_full_rate(tmp_path, caplog) -> None:
    """Layer-wise decay keeps a pretrained encoder's early blocks; ``none`` and a random encoder saved as such
    (compare's encoder_none_seed<seed>) have none to keep. A decay set on purpose is overridden aloud."""
    import dataclasses
    import logging

    from geomed_ssl.checkpoint import save_encoder
    from geomed_ssl.finetune.fit import RANDOM_INIT, from_scratch
    from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

    recipe = Recipe()
    enc = ViTEncoder(EncoderConfig(in_chans=2, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=2,
                                   num_heads=2))
    save_encoder(enc, tmp_path / "random", {"method": RANDOM_INIT})
    save_encoder(enc, tmp_path / "pretrained", {"method": "mae"})
    assert from_scratch(recipe, "none").finetune.layer_decay == 1.0
    assert from_scratch(recipe, tmp_path / "random").finetune.layer_decay == 1.0
    assert from_scratch(recipe, tmp_path / "pretrained") is recipe and recipe.finetune.layer_decay == 0.75
    chosen = dataclasses.replace(recipe, finetune=dataclasses.replace(recipe.finetune, layer_decay=0.9))
    caplog.clear()  # the default's note above (at INFO where an earlier test left the logger there)
    with caplog.at_level(logging.INFO, logger="geomed_ssl"):
        assert from_scratch(chosen, None).finetune.layer_decay == 1.0
    assert [r.levelno for r in caplog.records] == [logging.WARNING] and "0.9" in caplog.records[0].getMessage()
