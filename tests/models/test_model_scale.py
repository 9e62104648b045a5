"""A model records the pixel / voxel size it was trained at, and the commands that apply it to data warn when the
data's differs: a 10 m Sentinel-2 encoder on 30 m Landsat, or a 1 mm brain model on 2 mm voxels, ran silently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from affine import Affine
from typer.testing import CliRunner

from geomed_ssl.cli import app
from geomed_ssl.config import DataConfig
from geomed_ssl.data.catalog import scan
from geomed_ssl.models.model_data import training_scale, warn_other_scale
from tests.conftest import TINY, structured_raster, write_geotiff

runner = CliRunner()


def rasters(folder: Path, metres: float, n: int = 3, crs: str | None = "EPSG:32633") -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        write_geotiff(folder / f"scene_{i}.tif", structured_raster(rng, 4, 48),
                      transform=Affine(metres, 0, 500000, 0, -metres, 5100000), crs=crs)
    return folder


def test_the_training_scale_is_the_most_common_size_and_other_sizes_are_named(tmp_path: Path, caplog) -> None:
    cfg = DataConfig(patch_size=16)
    ten = scan(rasters(tmp_path / "s2", 10.0), cfg).records
    assert training_scale(ten) == {"size": [10.0, 10.0], "units": "m"}
    thirty = scan(rasters(tmp_path / "l8", 30.0, 2), cfg).records
    assert warn_other_scale(ten, {"size": [10.0, 10.0], "units": "m"}, None, "encoder 'x'") == []
    warned = warn_other_scale(ten[:1] + thirty, {"size": [10.0, 10.0], "units": "m"}, None, "encoder 'x'")
    assert len(warned) == 2
    line = caplog.records[-1].getMessage()
    assert "2 of 3 file(s) have pixels far from the 10 x 10 m encoder 'x' was trained at" in line
    assert "30 x 30 m, 3.0x along an axis" in line and "gdalwarp -tr" in line
    plain = scan(rasters(tmp_path / "none", 1.0, 1, crs=None), cfg).records  # no CRS: nothing to compare
    assert training_scale(plain) is None and warn_other_scale(plain, training_scale(ten), None, "m") == []
    mixed = ten[:1] + scan(rasters(tmp_path / "ten_ish", 10.4, 2), cfg).records  # no two files alike: the median
    assert training_scale(mixed + thirty[:1]) == {"size": [10.4, 10.4], "units": "m"}


def test_volumes_are_compared_in_mm_as_read(tmp_path: Path, caplog) -> None:
    import nibabel as nib

    for name, mm in (("one", 1.0), ("two", 2.0)):
        (tmp_path / name).mkdir()
        nib.save(nib.Nifti1Image(np.ones((24, 24, 24), np.float32), np.diag([mm, mm, mm, 1.0])),
                 str(tmp_path / name / "v.nii.gz"))
    cfg = DataConfig(kind="volume", patch_size=8)
    trained = training_scale(scan(tmp_path / "one", cfg).records)
    assert trained == {"size": [1.0, 1.0, 1.0], "units": "mm"}
    two = scan(tmp_path / "two", cfg).records
    assert len(warn_other_scale(two, trained, None, "model 'ft'")) == 1
    assert "have voxels far from the 1 x 1 x 1 mm model 'ft'" in caplog.records[-1].getMessage()
    assert warn_other_scale(two, trained, [1.0, 1.0, 1.0], "model 'ft'") == []  # read at data.spacing


def test_pretrain_records_its_scale_and_embed_warns_on_other_pixels(tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = [*TINY, "data.sensor=null", "data.patch_size=16", "train.max_steps=2"]
    data = rasters(tmp_path / "s2", 10.0)
    result = runner.invoke(app, ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(data), "--out", str(run),
                                 *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    scale = json.loads((run / "encoder" / "config.json").read_text())["encoder"]["scale"]
    assert scale == {"size": [10.0, 10.0], "units": "m"}
    l8 = rasters(tmp_path / "l8", 30.0)
    emb = runner.invoke(app, ["embed", str(run), str(l8), "--out", str(tmp_path / "e")])
    assert emb.exit_code == 0, emb.output
    assert "3 of 3 file(s) have pixels far from the 10 x 10 m encoder" in emb.output
    (tmp_path / "gt").mkdir()  # fine-tuned on the 30 m scenes, the model is a 30 m model: predict says so of 10 m
    for i in range(3):
        gt = np.ones((1, 48, 48), np.uint8)
        gt[0, :, 24:] = 2
        write_geotiff(tmp_path / "gt" / f"scene_{i}_gt.tif", gt, transform=Affine(30.0, 0, 500000, 0, -30.0, 5100000))
    ft = runner.invoke(app, ["finetune", "segment", str(run / "config.yaml"), "--encoder", str(run), "--images",
                             str(l8), "--labels", str(tmp_path / "gt"), "--out", str(tmp_path / "ft"),
                             "--labels-per-class", "5", "--head", "probe", "--set", "data.num_workers=0"])
    assert ft.exit_code == 0, ft.output
    assert "pixels far from the 10 x 10 m encoder" in ft.output
    meta = json.loads((tmp_path / "ft" / "model" / "config.json").read_text())
    assert meta["encoder"]["scale"] == {"size": [30.0, 30.0], "units": "m"}
    own = runner.invoke(app, ["predict", str(tmp_path / "ft"), str(l8), "--out", str(tmp_path / "p30")])
    assert own.exit_code == 0 and "far from" not in own.output, own.output
    other = runner.invoke(app, ["predict", str(tmp_path / "ft"), str(data), "--out", str(tmp_path / "p10")])
    assert other.exit_code == 0 and "3 of 3 file(s) have pixels far from the 30 x 30 m model" in other.output


def test_a_fine_tune_reads_the_data_as_the_encoder_was_pretrained_on_it(tmp_path: Path, caplog) -> None:
    """An encoder pretrained with data.sensor=landsat8 and data.nodata=0 fine-tuned with a shipped Sentinel-2 recipe:
    the recipe's sensor refused the same data over its wavelengths, and with the sensor set the all-zero collar was
    labelled and scored as clear sky (OA 0.919 against 0.697 with nodata 0)."""
    import logging

    from geomed_ssl.config import load_recipe
    from geomed_ssl.finetune.fit import with_encoder_naming
    from geomed_ssl.models.model_data import note_encoder_naming
    from tests.embeddings.test_extract import make_encoder

    enc = make_encoder(rasters(tmp_path / "l8", 30.0), tmp_path / "enc")
    meta = json.loads((enc / "config.json").read_text())
    meta["recipe"]["data"].update(sensor="landsat8", nodata=0)
    (enc / "config.json").write_text(json.dumps(meta))
    recipe = load_recipe("recipes/mae_sentinel2.yaml")
    read, taken = with_encoder_naming(recipe, enc)  # a sensor the recipe names stays (cross-sensor fine-tuning);
    assert taken == {"nodata": 0} and (read.data.sensor, read.data.nodata) == ("sentinel2", 0)  # refusals name it
    unset, taken = with_encoder_naming(load_recipe("recipes/mae_sentinel2.yaml", ["data.sensor=null"]), enc)
    assert taken == {"sensor": "landsat8", "nodata": 0}
    with caplog.at_level(logging.INFO, logger="geomed_ssl"):
        note_encoder_naming([], taken)
    assert "data.sensor is the encoder's recipe's (landsat8)" in caplog.text
    mine, taken = with_encoder_naming(recipe, enc, ["data.sensor=sentinel2", "data.nodata=null"])  # the user's word
    assert taken == {} and (mine.data.sensor, mine.data.nodata) == ("sentinel2", None)


def test_predict_compares_a_channel_stack_folder_by_its_first_file(tmp_path: Path, caplog, monkeypatch) -> None:
    """Only single files were probed for their pixel size: a folder of stacked band files was never compared."""
    import logging

    from geomed_ssl.inference import predict as predict_mod

    stack = tmp_path / "p1"
    stack.mkdir()
    rng = np.random.default_rng(1)
    for band in ("red", "nir"):
        write_geotiff(stack / f"{band}.tif", structured_raster(rng, 1, 32),
                      transform=Affine(30.0, 0, 500000, 0, -30.0, 5100000))
    monkeypatch.setattr(predict_mod, "_check_bands", lambda *a, **k: None)  # bands are not what is tested here
    cfg = DataConfig(channels=["red*", "nir*"])
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        predict_mod.usable_inputs({stack: tmp_path / "out.tif"}, cfg, "gaussian", None,
                                  scale={"size": [10.0, 10.0], "units": "m"}, model="model 'ft'")
    assert f"1 of 1 file(s) have pixels far from the 10 x 10 m model 'ft' was trained at (e.g. '{stack}'" in caplog.text
