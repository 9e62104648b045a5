"""Notes said once per command, not once per process: the next command in the same Python process (a notebook,
CliRunner) says them again, and a command run inside another (compare's fine-tunes) does not repeat them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from typer.testing import CliRunner

from geomed_ssl.cli import app

runner = CliRunner()


def test_the_next_command_in_the_same_process_says_its_notes_again(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(1, 200, (4, 64, 64)).astype("uint8")
    pixels[3] = 255
    with rasterio.open(folder / "rgba.tif", "w", driver="GTiff", width=64, height=64, count=4, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(0, 640, 10, 10), photometric="RGB",
                       alpha="YES") as dst:
        dst.write(pixels)
    for _ in range(2):
        result = runner.invoke(app, ["inspect", str(folder)])
        assert result.exit_code == 0, result.output
        assert "band 4 of" in result.output and "is an alpha band" in result.output
