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
