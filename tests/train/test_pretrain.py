"""End-to-end pretraining through the CLI (in-process): loss drops, exports load, resume is exact, errors are clear."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from geomed_ssl.cli import app
from geomed_ssl.errors import ConfigError
from tests.conftest import SHARED, TINY, KillAt
from geomed_ssl.once import forget_said

runner = CliRunner()


def cli(*args: str):
    result = runner.invoke(app, list(args))
    return result


def sets(*extra: str) -> list[str]:
    out = []
    for item in [*TINY, *extra]:
        out += ["--set", item]
    return out


def losses(run_dir: Path) -> dict[int, float]:
    with (run_dir / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def test_pretrain_rasters_from_cli_loss_drops_and_exports_load(raster_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = cli("pretrain", "recipes/mae_sentinel2.yaml", "--data", str(raster_dir), "--out", str(out),
                 *sets("data.sensor=null", "data.patch_size=16", "train.max_steps=40", "train.checkpoint_every=20",
                       "train.preview_every=20"))
    assert result.exit_code == 0, result.output
    curve = losses(out)
    assert len(curve) == 40
    first, last = np.mean([curve[s] for s in range(1, 11)]), np.mean([curve[s] for s in range(31, 41)])
    assert last < 0.9 * first, (first, last)

    for name in ("config.yaml", "stats.json", "catalog.json", "metrics.csv", "encoder/model.safetensors",
                 "encoder/config.json", "checkpoints/last.ckpt", "checkpoints/step-000020.ckpt"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "previews").glob("*.png")) == ["step-000020.png", "step-000040.png"]
    from geomed_ssl.outdirs import foreign_inside

    assert foreign_inside(out) == []  # --overwrite may replace all of it: every file, at any depth, is ours

    from geomed_ssl import load_encoder

    enc = load_encoder(out)
    assert enc.config.in_chans == 4 and enc.config.stats is not None
    assert len(enc.config.band_names) == 4
    x = torch.randn(2, 4, 16, 16)
    assert enc(x).shape == (2, 1 + 16, 32)
    feats, grid = enc.forward_features(x, layers=[0, 1])
    assert grid == (4, 4) and [f.shape for f in feats] == [(2, 16, 32)] * 2
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 40 and ckpt["geomed_ssl"]["encoder"]["in_chans"] == 4
    # the label file in the folder was excluded by the recipe
    assert "scene_0_mask" not in (out / "catalog.json").read_text()


def test_pretrain_volumes_from_cli_loss_drops(volume_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run3d"
    result = cli("pretrain", "recipes/mae_mri.yaml", "--data", str(volume_dir), "--out", str(out),
                 *sets("data.patch_size=16", "train.max_steps=30", "train.batch_size=4", "train.checkpoint_every=30",
                       "train.preview_every=30"))
    assert result.exit_code == 0, result.output
    curve = losses(out)
    first, last = np.mean([curve[s] for s in range(1, 11)]), np.mean([curve[s] for s in range(21, 31)])
    assert last < 0.9 * first, (first, last)
    from geomed_ssl import load_encoder

    enc = load_encoder(out / "encoder")
    assert enc.config.spatial_dims == 3
    assert enc(torch.randn(1, 1, 16, 16, 16)).shape == (1, 1 + 64, 32)
    assert (out / "previews" / "step-000030.png").is_file()




def test_resume_after_kill_continues_same_loss_curve(raster_dir: Path, tmp_path: Path) -> None:
    from geomed_ssl.train.pretrain import pretrain

    overrides = [*TINY, "data.sensor=null", "data.patch_size=16", "train.max_steps=10", "train.checkpoint_every=5"]
    full = pretrain("recipes/mae_sentinel2.yaml", raster_dir, tmp_path / "full", overrides=overrides, progress=False)
    assert full.steps == 10
    fds = Path("/proc/self/fd")  # the run's files are closed when it returns (a notebook's runs piled them up)
    if fds.is_dir():
        still_open = [os.readlink(f) for f in fds.iterdir() if os.path.exists(f)]
        assert not [f for f in still_open if f.startswith(str(raster_dir))], still_open

    killed = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="simulated kill"):
        pretrain("recipes/mae_sentinel2.yaml", raster_dir, killed, overrides=overrides, progress=False,
                 callbacks=[KillAt(5)])
    ckpt = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 5
    resumed = pretrain(None, raster_dir, killed, resume=True, progress=False)
    assert resumed.steps == 10
    a, b = losses(tmp_path / "full"), losses(killed)
    assert sorted(b) == list(range(1, 11))
    np.testing.assert_allclose([b[s] for s in range(6, 11)], [a[s] for s in range(6, 11)], rtol=0, atol=1e-5)


def test_a_run_killed_between_its_last_checkpoint_and_its_export_gets_the_final_encoder_on_resume(
        raster_dir: Path, tmp_path: Path) -> None:
    """The resume has nothing left to train (Lightning skips the training hooks): it still exports the final
    checkpoint's encoder when the folder holds an earlier one."""
    from safetensors.torch import load_file

    from geomed_ssl.train.pretrain import pretrain

    overrides = [*TINY, "data.sensor=null", "data.patch_size=16", "train.max_steps=6", "train.checkpoint_every=4"]
    run = tmp_path / "run"
    pretrain("recipes/mae_sentinel2.yaml", raster_dir, run, overrides=overrides, progress=False)
    final = load_file(run / "encoder" / "model.safetensors")
    earlier = tmp_path / "earlier"  # what the export of step 4 left, as a kill before the final export leaves it
    pretrain("recipes/mae_sentinel2.yaml", raster_dir, earlier, overrides=[*overrides, "train.max_steps=4"],
             progress=False)
    shutil.rmtree(run / "encoder")
    shutil.copytree(earlier / "encoder", run / "encoder")
    assert json.loads((run / "encoder" / "config.json").read_text())["step"] == 4
    pretrain(None, raster_dir, run, resume=True, progress=False)
    assert json.loads((run / "encoder" / "config.json").read_text())["step"] == 6
    again = load_file(run / "encoder" / "model.safetensors")
    assert all(torch.equal(final[k], again[k]) for k in final)


def test_more_workers_than_cpus_are_capped_and_the_run_is_the_same(raster_dir: Path, tmp_path: Path, monkeypatch,
                                                                    caplog) -> None:
    """A config.yaml made on a large machine (data.num_workers 6) on a 1-CPU process: one worker, the same losses."""
    from geomed_ssl.train import trainer
    from geomed_ssl.train.pretrain import pretrain

    overrides = [*TINY, "data.sensor=null", "data.patch_size=16", "train.max_steps=6", "train.checkpoint_every=6"]
    pretrain("recipes/mae_sentinel2.yaml", raster_dir, tmp_path / "main", overrides=overrides, progress=False)
    monkeypatch.setattr(trainer, "usable_cpus", lambda: 1)
    assert trainer.loader_workers(0) == 0 and trainer.loader_workers(1) == 1 and trainer.loader_workers(6) == 1
    forget_said()
    with caplog.at_level(logging.INFO, logger="geomed_ssl"):
        pretrain("recipes/mae_sentinel2.yaml", raster_dir, tmp_path / "capped", progress=False,
                 overrides=[*overrides, "data.num_workers=6"])
    assert "data.num_workers 6 lowered to 1, the number of CPUs this process may use." in caplog.text
    a, b = losses(tmp_path / "main"), losses(tmp_path / "capped")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=0, atol=1e-6)


def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(raster_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from geomed_ssl.errors import TrainingError
    from geomed_ssl.methods.mae import MAE
    from geomed_ssl.train.pretrain import pretrain

    original = MAE.training_loss

    def poisoned(self, batch, step, generator):
        out = original(self, batch, step, generator)
        if step >= 6:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MAE, "training_loss", poisoned)
    out = tmp_path / "nan"
    overrides = [*TINY, "data.sensor=null", "data.patch_size=16", "train.max_steps=10", "train.checkpoint_every=5"]
    with pytest.raises(TrainingError, match="in step 7; training stopped. The checkpoints written before it"):
        pretrain("recipes/mae_sentinel2.yaml", raster_dir, out, overrides=overrides, progress=False)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_a_diverging_run_never_saves_nan_weights_and_resume_skips_a_checkpoint_that_holds_them(
        raster_dir: Path, tmp_path: Path) -> None:
    """A rate far too high makes the gradients overflow before the loss does: the step stops before the update, so
    every checkpoint holds finite weights; a checkpoint that holds NaN anyway is skipped by --resume."""
    from geomed_ssl.errors import TrainingError
    from geomed_ssl.train.checkpointing import find_resume_checkpoint
    from geomed_ssl.train.pretrain import pretrain

    out = tmp_path / "diverged"
    overrides = [*TINY, "data.sensor=null", "data.patch_size=16", "train.max_steps=20", "train.checkpoint_every=1",
                 "train.warmup_steps=1", "train.base_lr=1e9"]
    with pytest.raises(TrainingError, match="NaN or infinite|loss became"):
        pretrain("recipes/mae_sentinel2.yaml", raster_dir, out, overrides=overrides, progress=False)
    ckpts = sorted((out / "checkpoints").glob("*.ckpt"))
    assert ckpts
    for path in ckpts:
        state = torch.load(path, weights_only=True, map_location="cpu")["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path.name
    ckpt = torch.load(ckpts[-1], weights_only=True, map_location="cpu")
    good = ckpt["global_step"]
    ckpt["global_step"] = good + 5
    next(v for v in ckpt["state_dict"].values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(ckpt, out / "checkpoints" / f"step-{good + 5:06d}.ckpt")
    point = find_resume_checkpoint(out)
    assert point.step == good


def test_skipped_problem_files_are_a_warning_line_shown_under_quiet(raster_dir: Path, tmp_path: Path) -> None:
    """--quiet hides the catalog summary, not what the run goes on despite (docs/cli.md)."""
    data = tmp_path / "data"
    shutil.copytree(raster_dir, data)
    (data / "broken.tif").write_bytes(b"II*\x00" + b"garbage" * 10)
    result = cli("--quiet", "pretrain", "recipes/mae_sentinel2.yaml", "--data", str(data), "--out",
                 str(tmp_path / "run"), *sets("data.sensor=null", "data.patch_size=16", "train.max_steps=1"))
    assert result.exit_code == 0, result.output
    assert "warning: 1 problem file(s) skipped" in result.output and "broken.tif: " in result.output
    assert "usable raster files" not in result.output  # the summary stays quiet


def test_existing_run_dir_is_not_overwritten_without_flag(raster_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = cli("pretrain", "recipes/mae_sentinel2.yaml", "--data", str(raster_dir), "--out", str(out))
    assert result.exit_code == 2
    assert "--resume" in result.output and "--overwrite" in result.output
    assert (out / "keep.txt").read_text() == "precious"


def test_a_failed_pretrain_leaves_no_out_and_the_next_try_needs_no_overwrite(raster_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    settings = sets("data.sensor=null", "data.patch_size=16", "train.max_steps=2", "train.checkpoint_every=2")
    failed = cli("pretrain", "recipes/mae_sentinel2.yaml", "--data", str(raster_dir), "--out", str(out), *settings,
                 "--set", "data.include=['*.jp2']")  # valid recipe, but no file matches: the scan fails
    assert failed.exit_code == 2 and "Traceback" not in failed.output
    assert not out.exists()
    again = cli("pretrain", "recipes/mae_sentinel2.yaml", "--data", str(raster_dir), "--out", str(out), *settings)
    assert again.exit_code == 0, again.output
    assert (out / "encoder" / "model.safetensors").is_file() and (out / ".geomed-ssl.json").is_file()


def test_unknown_recipe_key_names_the_valid_ones(raster_dir: Path, tmp_path: Path) -> None:
    result = cli("pretrain", "recipes/mae_sentinel2.yaml", "--data", str(raster_dir), "--out", str(tmp_path / "x"),
                 "--set", "model.depthh=3")
    assert result.exit_code == 2
    assert "model.depthh" in result.output and "embed_dim" in result.output
    assert "Traceback" not in result.output


def test_empty_data_folder_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("pretrain", "recipes/mae_sentinel2.yaml", "--data", str(empty), "--out", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert str(empty) in result.output


def test_inspect_lists_files_bands_and_problems(raster_dir: Path) -> None:
    (raster_dir / "broken.tif").write_bytes(b"this is not a tiff")
    result = cli("inspect", str(raster_dir), "--set", "data.exclude=['*mask*']")
    assert result.exit_code == 0, result.output
    assert "broken.tif" in result.output
    strict = cli("inspect", str(raster_dir), "--strict", "--set", "data.exclude=['*mask*']")
    assert strict.exit_code == 2 and "broken.tif" in strict.output


def test_inspect_takes_data_kind_from_set_over_its_guess(raster_dir: Path) -> None:
    as_volumes = cli("inspect", str(raster_dir), "--set", "data.kind=volume")
    assert as_volumes.exit_code == 2 and "raster" not in as_volumes.output.split("error:")[0]  # no raster summary
    bogus = cli("inspect", str(raster_dir), "--set", "data.kind=bogus")
    assert bogus.exit_code == 2 and "data.kind must be one of" in bogus.output


def test_inspect_without_a_recipe_sets_label_maps_apart_and_describes_volume_grids(tmp_path: Path) -> None:
    import nibabel as nib

    from tests.conftest import structured_raster, write_geotiff

    (tmp_path / "r").mkdir()
    write_geotiff(tmp_path / "r" / "scene.tif", structured_raster(np.random.default_rng(0), 4, 32))
    write_geotiff(tmp_path / "r" / "lulc_mask.tif", np.ones((1, 32, 32), np.uint8))
    result = cli("inspect", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert "1 usable raster file" in result.output and "problem" not in result.output
    assert "named like labels or quality masks, not counted as images (1): lulc_mask.tif" in result.output
    one = cli("inspect", str(tmp_path / "r" / "lulc_mask.tif"))  # a label's own grid, checked before a fine-tune
    assert one.exit_code == 0 and "1 usable raster file" in one.output, one.output
    bad = cli("inspect", str(tmp_path / "r"), "--kind", "image")
    assert bad.exit_code == 2 and "--kind must be raster or volume, got 'image'" in bad.output
    folder = cli("inspect", str(tmp_path / "r"), "--recipe", str(tmp_path))
    assert folder.exit_code == 2 and "is a folder. Pass a YAML file" in folder.output
    (tmp_path / "v").mkdir()
    for name, zooms in (("a.nii.gz", (1.0, 1.0, 1.0)), ("b.nii.gz", (3.0, 3.0, 3.0))):
        nib.save(nib.Nifti1Image(np.random.rand(40, 40, 40).astype(np.float32), np.diag([*zooms, 1.0])),
                 str(tmp_path / "v" / name))
    volumes = cli("inspect", str(tmp_path / "v"), "--set", "data.patch_size=32")
    assert volumes.exit_code == 0, volumes.output
    assert "voxel spacing: 1 x 1 x 1 mm (1 file), 3 x 3 x 3 mm (1 file)" in volumes.output
    assert "orientation: RAS (2 files)" in volumes.output


def _undescribed_sentinel2(folder: Path, n: int = 2) -> Path:
    from tests.conftest import structured_raster, write_geotiff

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        write_geotiff(folder / f"patch_{i}.tif", structured_raster(rng, 13, 32))  # no band descriptions
    return folder


def test_inspect_and_pretrain_warn_when_band_names_come_from_position(tmp_path: Path) -> None:
    data = _undescribed_sentinel2(tmp_path / "eurosat_like")
    shown = cli("inspect", str(data), "--recipe", "recipes/mae_sentinel2.yaml")
    assert shown.exit_code == 0, shown.output
    assert "assigned by position" in shown.output and "data.band_names" in shown.output
    strict = cli("inspect", str(data), "--recipe", "recipes/mae_sentinel2.yaml", "--strict")
    assert strict.exit_code == 2 and "error:" in strict.output and "assigned by position" in strict.output
    run = cli("pretrain", "recipes/mae_sentinel2.yaml", "--data", str(data), "--out", str(tmp_path / "run"),
              *sets("data.patch_size=16", "train.max_steps=1", "train.checkpoint_every=1"))
    assert run.exit_code == 0, run.output
    assert "assigned by position" in run.output


def test_pretrain_records_the_files_band_widths_for_the_wavelength_embedding(tmp_path: Path) -> None:
    import rasterio

    data = _undescribed_sentinel2(tmp_path / "data")
    widths = [0.02, 0.065, 0.035, 0.03, 0.015, 0.015, 0.02, 0.115, 0.02, 0.03, 0.09, 0.18, 0.02]
    for path in data.glob("*.tif"):
        with rasterio.open(path, "r+") as ds:
            for b, w in enumerate(widths, start=1):
                ds.update_tags(b, ns="IMAGERY", FWHM_UM=str(w))
    order = "[B01,B02,B03,B04,B05,B06,B07,B08,B09,B10,B11,B12,B8A]"
    run = cli("pretrain", "recipes/mae_sentinel2.yaml", "--data", str(data), "--out", str(tmp_path / "run"),
              *sets(f"data.band_names={order}", "model.embedding=wavelength", "data.patch_size=16",
                    "train.max_steps=1", "train.checkpoint_every=1"))
    assert run.exit_code == 0, run.output
    from geomed_ssl import load_encoder
    from geomed_ssl.models.spectral import WAVE_DIM

    enc = load_encoder(tmp_path / "run")
    assert enc.config.bandwidths == pytest.approx(widths)
    assert enc.patch_embed.band_features[:, WAVE_DIM:].abs().sum(1).min() > 0


@pytest.mark.skipif(not (SHARED / "eurosat_ms_200").is_dir(), reason="shared EuroSAT-MS sample not present")
def test_pretrain_on_real_eurosat_patches(tmp_path: Path) -> None:
    names = "[B01,B02,B03,B04,B05,B06,B07,B08,B09,B10,B11,B12,B8A]"  # EuroSAT-MS stores B8A last
    result = cli("pretrain", "recipes/mae_sentinel2.yaml", "--data", str(SHARED / "eurosat_ms_200"), "--out",
                 str(tmp_path / "eurosat"), *sets(f"data.band_names={names}", "data.patch_size=32",
                                                  "train.max_steps=4", "train.checkpoint_every=4"))
    assert result.exit_code == 0, result.output
    from geomed_ssl import load_encoder

    enc = load_encoder(tmp_path / "eurosat")
    assert enc.config.band_names[-1] == "B8A" and enc.config.wavelengths[-1] == pytest.approx(0.865, abs=0.01)


@pytest.mark.skipif(not (SHARED / "brain_t1_aseg").is_dir(), reason="shared T1 brain sample not present")
def test_pretrain_on_real_t1_volume(tmp_path: Path) -> None:
    result = cli("pretrain", "recipes/mae_mri.yaml", "--data", str(SHARED / "brain_t1_aseg"), "--out",
                 str(tmp_path / "t1"), *sets("data.patch_size=32", "model.patch_size=8", "train.batch_size=2",
                                             "train.max_steps=3", "train.checkpoint_every=3"))
    assert result.exit_code == 0, result.output
    assert "test_scan_aseg" not in (tmp_path / "t1" / "catalog.json").read_text()



def test_what_a_method_fits_before_training_stays_off_cuda_under_a_forking_strategy() -> None:
    """BEiT's codebook is fitted before the workers start: on the rank's own device, but never on CUDA in the
    parent of a forking strategy (its forked workers could not use CUDA afterwards)."""
    from types import SimpleNamespace

    import torch

    from geomed_ssl.train.pretrain import fit_device

    probe = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 1)))
    assert fit_device(probe, "ddp") == torch.device("cuda", 1)  # this rank's GPU, not always cuda:0
    assert fit_device(probe, "ddp_fork") == torch.device("cpu")
    assert fit_device(probe, "ddp_notebook") == torch.device("cpu")


def test_resume_says_that_a_recipe_given_beside_it_is_not_read(tmp_path: Path, caplog) -> None:
    """Silent for the recipe the run was started with (config.yaml is its full dump, never the same bytes); a note
    naming the settings an edited recipe changes, or saying a missing one cannot be read."""
    from geomed_ssl.config import load_recipe
    from geomed_ssl.train.resuming import note_unread_recipe

    saved = tmp_path / "run" / "config.yaml"
    saved.parent.mkdir()
    load_recipe("recipes/mae_sentinel2.yaml", None).save(saved)
    edited = tmp_path / "edited.yaml"
    edited.write_text(Path("recipes/mae_sentinel2.yaml").read_text().replace("mask_ratio: 0.75", "mask_ratio: 0.5"))
    assert edited.read_text() != Path("recipes/mae_sentinel2.yaml").read_text()
    with caplog.at_level(logging.INFO, logger="geomed_ssl"):
        note_unread_recipe("recipes/mae_sentinel2.yaml", saved)  # the same settings: nothing to say
        assert not caplog.records
        note_unread_recipe(tmp_path / "missing.yaml", saved)
        note_unread_recipe(edited, saved)
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 2 and "cannot be read" in notes[0] and "method.mask_ratio" in notes[1]
    assert all("is not read again" in n and "--set key=value" in n for n in notes)
    caplog.clear()
    started = ["train.max_steps=7", "method.mask_ratio=0.6"]  # a run started with --set values, resumed with them
    load_recipe("recipes/mae_sentinel2.yaml", started).save(saved)
    with caplog.at_level(logging.INFO, logger="geomed_ssl"):
        note_unread_recipe("recipes/mae_sentinel2.yaml", saved, started)
        assert not caplog.records  # the same settings once this command's --set values apply
        note_unread_recipe("recipes/mae_sentinel2.yaml", saved, ["train.max_steps=9"])
    note = caplog.records[0].getMessage()
    assert "differs in method.mask_ratio" in note and "train.max_steps" not in note  # set now: no difference


@pytest.mark.parametrize("recipe, overrides, message", [
    ("recipes/ijepa_sentinel2.yaml", ["data.date_pairs=true"], "data.date_pairs .* one view of each window"),
    ("recipes/simclr_sentinel2.yaml", ["data.global_crop_size=96"], r"data.global_crop_size \[96, 96\] does not fit"),
    ("recipes/mae_hyperspectral.yaml", ["data.patch_size=20", "data.global_crop_size=18", "method.max_shift=8"],
     r"cannot hold two \[18, 18\] crops shifted by up to 8 px"),  # the views follow the method's settings
])
def test_pretrain_refuses_views_the_recipe_cannot_have_before_reading_the_data(recipe, overrides, message, tmp_path,
                                                                                monkeypatch) -> None:
    """The views need only the recipe: their refusals come before the scan and the statistics of a large archive."""
    import geomed_ssl.train.pretrain as pretrain_module
    from geomed_ssl.train.pretrain import pretrain

    def no_scan(*args, **kwargs):
        raise AssertionError("the data was scanned before the recipe was refused")

    monkeypatch.setattr(pretrain_module, "scan", no_scan)
    with pytest.raises(ConfigError, match=message):
        pretrain(recipe, tmp_path / "data", tmp_path / "run", overrides=overrides, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_recipe_with_a_spectral_shift_passes_the_early_check_without_wavelengths() -> None:
    """The spectral shift needs the bands' wavelengths, known once the data is scanned: not refused from the recipe."""
    from geomed_ssl.train.resuming import check_views
    from geomed_ssl.config import load_recipe

    recipe = load_recipe("recipes/moco_v3_sentinel2_small.yaml", ["augment.spectral_shift_p=0.5", "data.sensor=null"])
    assert check_views(recipe) is recipe


def test_a_steps_logs_average_its_micro_batches_and_keep_values_they_share_exactly() -> None:
    from geomed_ssl.train.module import step_mean

    assert step_mean([0.1, 0.1, 0.1]) == 0.1  # the lr: the sum's rounding would give 0.10000000000000002
    assert step_mean([1.0, 2.0, 4.5]) == 2.5 and step_mean([3.0]) == 3.0


def test_a_run_resumed_past_its_end_says_what_rate_its_extra_steps_train_at(caplog) -> None:
    """A finished schedule stays at train.min_lr; one that ended inside its warmup (warmup_steps 100 >= 6 steps)
    stays at the rate it had reached, which the message called min_lr (the extra steps did train)."""
    from types import SimpleNamespace

    from geomed_ssl.train.resuming import resumed_clock

    point = SimpleNamespace(step=6, info={"schedule": None, "recipe": {"train": {"max_steps": 6}}})
    with caplog.at_level("INFO", logger="geomed_ssl"):
        resumed_clock(point, 10, 0.0, warmup_steps=1)
    assert "finished its schedules at step 6 (lr at train.min_lr)" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="geomed_ssl"):
        resumed_clock(point, 10, 0.0, warmup_steps=100)
    assert "ended inside its warmup (train.warmup_steps 100 >= its 6 steps): its 4 extra steps run at the rate it " \
           "had reached" in caplog.text and "min_lr" not in caplog.text
