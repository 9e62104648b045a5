"""Every patch embedding end to end through the CLI (in-process): pretrain, then fine-tune segment and classify;
a wavelength encoder meets data with fewer bands, a plain one refuses it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from geomed_ssl.cli import app
from tests.conftest import TINY, structured_raster, write_class_folders, write_geotiff

runner = CliRunner()
WAVELENGTHS = "data.wavelengths=[0.49, 0.56, 0.665, 0.842]"  # the 4-band fixtures as S2 B02 B03 B04 B08
KIND_SETS = {
    "plain": [],
    "grouped": ["model.band_groups=[[band_1, band_2], [band_3, band_4]]", "method.group_masking=consistent"],
    "spectral": ["method.channel_sampling=true", "method.channel_sampling_min=2"],
    "wavelength": ["method.channel_sampling=true"],
}
FT = ["finetune.batch_size=4", "finetune.warmup_steps=1", "finetune.feature_size=8", "finetune.base_lr=0.005",
      "data.patch_size=16", "data.sensor=null"]


def sets(*items: str) -> list[str]:
    return [arg for item in [*TINY, *items] for arg in ("--set", item)]


def pretrain(kind: str, data: Path, out: Path, *extra: str):
    return runner.invoke(app, ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(data), "--out", str(out),
                               *sets("data.sensor=null", "data.patch_size=16", "train.max_steps=3",
                                     "train.checkpoint_every=3", WAVELENGTHS, f"model.embedding={kind}",
                                     *KIND_SETS[kind], *extra)])


def scene(folder: Path, bands: int, seed: int = 3) -> tuple[Path, Path]:
    """A 64x64 scene whose three classes threshold its first band, and its label raster (0 = unlabelled)."""
    img = structured_raster(np.random.default_rng(seed), bands, 64)
    level = img[0].astype(float)
    cls = np.digitize(level, np.quantile(level, [1 / 3, 2 / 3])) + 1
    cls[::7, ::5] = 0
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir(parents=True)
    write_geotiff(folder / "images" / "scene.tif", img)
    write_geotiff(folder / "labels" / "scene_gt.tif", cls[None].astype(np.uint8))
    return folder / "images", folder / "labels"


def class_folders(root: Path, bands: int) -> Path:
    """Two classes of 16x16 patches whose brightness differs by class."""
    return write_class_folders(root, ["Forest", "Urban"], per_class=4, bands=bands)


@pytest.mark.parametrize("kind", ["plain", "grouped", "spectral", "wavelength"])
def test_pretrain_then_segment_and_classify_with_each_embedding(kind: str, raster_dir: Path, tmp_path: Path) -> None:
    pre = tmp_path / "pre"
    units = kind in ("grouped", "spectral")  # several tokens per position: their own preview path
    result = pretrain(kind, raster_dir, pre, f"train.preview_every={3 if units else 0}")
    assert result.exit_code == 0, result.output
    assert (pre / "previews" / "step-000003.png").is_file() == units
    enc_cfg = json.loads((pre / "encoder" / "config.json").read_text())["encoder"]
    assert enc_cfg["embedding"] == kind and enc_cfg["wavelengths"] == [0.49, 0.56, 0.665, 0.842]
    if kind == "grouped":
        assert enc_cfg["band_groups"] == [[0, 1], [2, 3]]

    images, labels = scene(tmp_path / "seg", 4)
    seg = runner.invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", str(pre),
                              "--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "ft"),
                              "--labels-per-class", "5", *sets(*FT, WAVELENGTHS, "finetune.max_steps=4")])
    assert seg.exit_code == 0, seg.output
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["test"]["n"] > 3000

    cls = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", str(pre),
                              "--data", str(class_folders(tmp_path / "cls", 4)), "--out", str(tmp_path / "ftc"),
                              "--labels-per-class", "2", "--linear-probe", *sets(*FT, WAVELENGTHS, "finetune.max_steps=20")])
    assert cls.exit_code == 0, cls.output
    metrics = json.loads((tmp_path / "ftc" / "metrics.json").read_text())
    assert metrics["train"]["n"] == 4 and metrics["test"]["n"] == 4


def test_wavelength_encoder_classifies_data_with_fewer_bands_and_plain_refuses(raster_dir: Path,
                                                                               tmp_path: Path) -> None:
    subset = ["data.band_names=[band_1, band_2, band_4]", "data.wavelengths=[0.49, 0.56, 0.842]"]
    folders = class_folders(tmp_path / "cls3", 3)
    for kind in ("wavelength", "plain"):
        pre = tmp_path / f"pre_{kind}"
        assert pretrain(kind, raster_dir, pre).exit_code == 0
        out = tmp_path / f"ft_{kind}"
        result = runner.invoke(app, ["finetune", "classify", "recipes/mae_sentinel2.yaml", "--encoder", str(pre),
                                     "--data", str(folders), "--out", str(out), "--labels-per-class", "2",
                                     "--linear-probe", *sets(*FT, *subset, "finetune.max_steps=20")])
        if kind == "wavelength":
            assert result.exit_code == 0, result.output
            assert "band_4 (0.842 µm) <- band_4 (0.842 µm) [name]" in result.output  # the band mapping is shown
            cfg = json.loads((out / "model" / "config.json").read_text())["encoder"]
            assert cfg["in_chans"] == 3 and [b["name"] for b in cfg["stats"]["bands"]] == ["band_1", "band_2", "band_4"]
            pr = runner.invoke(app, ["predict", str(out), str(folders), "--out", str(tmp_path / "pred")])
            assert pr.exit_code == 0, pr.output  # the 3-band model reloads from its own config
        else:
            assert result.exit_code == 2
            assert "missing ['band_3']" in result.output
