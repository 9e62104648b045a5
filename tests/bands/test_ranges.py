"""Whether new data is in the units a model was trained on: the statistics remember the scale / offset tags of the
files they were computed on, and every command applying a model to files tagged otherwise says so."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from geomed_ssl.bands.ranges import other_scaling, warn_other_scaling
from geomed_ssl.cli import app
from geomed_ssl.data.stats import BandStats
from tests.conftest import TINY, structured_raster, write_geotiff

runner = CliRunner()
SAID = "scale / offset tags ("


def tagged(folder: Path, n: int, offset: float | None, seed: int = 0) -> Path:
    """``n`` 4-band uint16 scenes; with ``offset``, tagged scale 1e-4 and that offset in every band (Sentinel-2 L2A
    from processing baseline 04.00: reflectance = DN * 1e-4 - 0.1)."""
    import rasterio

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = write_geotiff(folder / f"s{i}.tif", (structured_raster(rng, 4, 48) + 1000).astype(np.uint16))
        if offset is not None:
            with rasterio.open(path, "r+") as dst:
                dst.scales, dst.offsets = (1e-4,) * 4, (offset,) * 4
    return folder


def test_statistics_keep_the_tags_they_were_computed_under_and_older_ones_know_none() -> None:
    stats = BandStats(["a", "b"], [1.0, 2.0], [1.0, 1.0], [0.0, 0.0], [5.0, 5.0], [10, 10],
                      scaling=[[1e-4, 1e-4], [-0.1, -0.1]])
    back = BandStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert back.scaling == [[1e-4, 1e-4], [-0.1, -0.1]]
    assert other_scaling(None, back) and not other_scaling([[1e-4, 1e-4], [-0.1, -0.1]], back)
    old = stats.to_dict()
    for band in old["bands"]:
        del band["scale"], band["offset"]
    assert BandStats.from_dict(old).scaling is None and not other_scaling([[2.0, 2.0], [0.0, 0.0]],
                                                                          BandStats.from_dict(old))


def test_a_model_trained_on_tagged_files_says_so_when_it_meets_untagged_ones(tmp_path: Path) -> None:
    """Pretrained on files with an offset tag, embedded and predicted on files without: one warning each time,
    naming both tags; on files like its own: none."""
    same = tagged(tmp_path / "new", 3, -0.1)
    other = tagged(tmp_path / "old", 2, None, seed=1)
    sets = [f"--set={s}" for s in [*TINY, "data.sensor=null", "data.patch_size=16", "train.max_steps=2"]]
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(same), "--out", str(run),
                                 *sets])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "stats.json").read_text())["bands"][0]["offset"] == pytest.approx(-0.1)
    for data, warned in ((same, False), (other, True)):
        result = runner.invoke(app, ["embed", str(run), str(data), "--out", str(tmp_path / f"e_{data.name}")])
        assert result.exit_code == 0, result.output
        said = [line for line in result.output.splitlines() if SAID in line]
        assert bool(said) == warned, result.output
        if warned:
            assert "(none: values as stored)" in said[0] and "(scale 0.0001, offset -0.1)" in said[0]


def test_predict_reads_each_files_tags(tmp_path: Path, caplog) -> None:
    from geomed_ssl.config import DataConfig
    from geomed_ssl.inference.raster import RasterInput

    folder = tagged(tmp_path / "new", 1, -0.1)
    stats = BandStats(["B1", "B2", "B3", "B4"], [0.0] * 4, [1.0] * 4, [0.0] * 4, [1.0] * 4, [1] * 4)
    with contextlib.ExitStack() as stack:
        scene = RasterInput.open(stack, folder / "s0.tif", [str(folder / "s0.tif")], None, stats,
                                 ["B4", "B3", "B2", "B1"], DataConfig(), None, "ignore")
        assert scene.scaling == [[1e-4] * 4, [-0.1] * 4]
    stats.scaling = [[1.0] * 4, [0.0] * 4]
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        assert warn_other_scaling([("s0.tif", scene.scaling)], stats) == ["s0.tif"]
    assert SAID in caplog.text
