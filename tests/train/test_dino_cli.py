"""DINO end to end through the CLI (in-process): the recipes run on GeoTIFF and NIfTI folders, the loss falls, the
teacher and centre live in the Lightning checkpoint so a killed run resumes exactly, attention maps and the k-NN
monitor work, and a collapsing run says so."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from geomed_ssl.cli import app
from tests.conftest import TINY_BASE, BarCapture, KillAt, write_geotiff

runner = CliRunner()

# A tiny DINO: 16 px windows, 4 px tokens, 2 local crops of 8 px, 64 prototypes. The loss is the cross-entropy
# H(teacher) + KL(teacher || student); in a 30-40 step run the teacher-temperature warmup and a slowly settling
# centre raise H faster than the student lowers the KL, so the test fixes the teacher temperature (0.04) and lets
# the centre settle within a few steps (momentum 0.5). With these, the last-10 / first-10 loss ratio was 0.56-0.76
# over seeds 0-3 (2D) and 0.74-0.78 over seeds 0-2 (3D); the tests use seed 0 and a 0.9 bound.
DINO_TINY = [*TINY_BASE, "method.out_dim=64", "method.head_hidden_dim=32", "method.head_bottleneck_dim=16",
             "method.center_momentum=0.5", "method.teacher_temp_warmup_steps=0", "method.teacher_temp=0.04",
             "data.n_local_crops=2", "data.global_crop_size=16", "data.local_crop_size=8", "data.patch_size=16"]
CLASSES = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread, and are immune to oversubscribed shared CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sets(*extra: str) -> list[str]:
    out = []
    for item in [*DINO_TINY, *extra]:
        out += ["--set", item]
    return out


def metrics(run_dir: Path) -> dict[int, dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def losses(run_dir: Path) -> dict[int, float]:
    return {s: float(r["loss"]) for s, r in metrics(run_dir).items()}


def write_classes(root: Path, per_class: int = 3, size: int = 32, bands: int = 4) -> Path:
    """Folder-per-class GeoTIFFs: each class a spectral signature and a stripe texture of its own orientation."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for c in range(CLASSES):
        (root / f"class_{c}").mkdir(parents=True)
        signature = np.roll(np.linspace(0.4, 1.6, bands, dtype=np.float32), c)[:, None, None]
        angle, freq = np.pi * c / CLASSES, [0.15, 0.3, 0.6, 1.0][c]
        for i in range(per_class):
            texture = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6))
            image = 2000 + 1000 * signature * (1 + 0.5 * texture[None]) + rng.normal(0, 30, (bands, size, size))
            write_geotiff(root / f"class_{c}" / f"img_{i}.tif", image.astype(np.uint16))
    return root




@pytest.fixture(scope="module")
def raster_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, run folder) of one 40-step DINO run on class-folder GeoTIFFs, k-NN monitor on the same
    folder every 20 steps, attention previews every 20 steps."""
    tmp = tmp_path_factory.mktemp("dino2d")
    data = write_classes(tmp / "data")
    out = tmp / "run"
    result = runner.invoke(app, ["pretrain", "recipes/dino_sentinel2.yaml", "--data", str(data), "--out", str(out),
                                 *sets("data.sensor=null", "train.max_steps=40", "train.checkpoint_every=20",
                                       "train.preview_every=20", f"data.val_labels={data}", "data.knn_every=20")])
    assert result.exit_code == 0, result.output
    return data, out


def test_dino_rasters_from_cli_loss_finite_and_falling(raster_run) -> None:
    _, out = raster_run
    curve = losses(out)
    assert sorted(curve) == list(range(1, 41))
    assert all(np.isfinite(v) for v in curve.values())
    first, last = np.mean([curve[s] for s in range(1, 11)]), np.mean([curve[s] for s in range(31, 41)])
    assert last < 0.9 * first, (first, last)
    rows = metrics(out)
    assert {"dino_loss", "teacher_entropy", "kl_teacher_student", "teacher_std", "collapse"} <= set(rows[40])
    assert float(rows[40]["collapse"]) == 0.0

    from geomed_ssl import load_encoder

    enc = load_encoder(out)  # the teacher
    assert enc.config.in_chans == 4 and enc(torch.randn(2, 4, 16, 16)).shape == (2, 1 + 16, 32)
    assert sorted(p.name for p in (out / "previews").glob("*.png")) == ["step-000020.png", "step-000040.png"]


def test_knn_monitor_logs_accuracy_into_metrics(raster_run) -> None:
    _, out = raster_run
    rows = metrics(out)
    logged = {s: float(r["knn_acc"]) for s, r in rows.items() if r.get("knn_acc")}
    assert sorted(logged) == [20, 40]
    assert all(0.0 <= v <= 1.0 for v in logged.values())
    assert logged[40] > 1.5 / CLASSES, logged  # well above chance on these separable classes


def test_attention_command_writes_png(raster_run, tmp_path: Path) -> None:
    data, out = raster_run
    image = data / "class_1" / "img_0.tif"
    for extra in ([], ["--window", "0,0"]):
        png = tmp_path / f"attn{len(extra)}.png"
        result = runner.invoke(app, ["attention", str(out), str(image), "--out", str(png), *extra])
        assert result.exit_code == 0, result.output
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = runner.invoke(app, ["attention", str(out), str(image), "--out", str(tmp_path / "x.png"), "--window", "99,0"])
    assert bad.exit_code == 2 and "outside" in bad.output and "Traceback" not in bad.output


def test_attention_matches_bands_by_name_and_refuses_missing_ones(raster_run, tmp_path: Path) -> None:
    import rasterio

    data, out = raster_run
    with rasterio.open(data / "class_1" / "img_0.tif") as src:
        array, profile = src.read(), src.profile
    names = ["band_1", "band_2", "band_3", "band_4"]
    for fname, idx in (("reversed.tif", [3, 2, 1, 0]), ("three.tif", [0, 1, 2])):
        with rasterio.open(tmp_path / fname, "w", **{**profile, "count": len(idx)}) as dst:
            dst.write(array[idx])
            dst.descriptions = tuple(names[i] for i in idx)
    ok = runner.invoke(app, ["attention", str(out), str(tmp_path / "reversed.tif"), "--out", str(tmp_path / "r.png")])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["attention", str(out), str(tmp_path / "three.tif"), "--out", str(tmp_path / "t.png")])
    assert bad.exit_code == 2 and "band_4" in bad.output and "Traceback" not in bad.output
    missing = tmp_path / "no_run"  # the docs' --out inside the run folder: the missing run is what is named
    gone = runner.invoke(app, ["attention", str(missing), str(tmp_path / "reversed.tif"), "--out",
                               str(missing / "a.png")])
    assert gone.exit_code == 2 and "no encoder found" in gone.output and "--out" not in gone.output


@pytest.mark.parametrize("embedding", [
    ["model.embedding=spectral"],
    ["model.embedding=grouped", "model.band_groups=[[band_1, band_2], [band_3, band_4]]"],
], ids=["spectral", "grouped"])
def test_dino_with_ibot_on_band_unit_embeddings_exports_encoder_and_attention(
    embedding: list[str], raster_dir: Path, tmp_path: Path
) -> None:
    from geomed_ssl import load_encoder

    out = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "recipes/dino_sentinel2.yaml", "--data", str(raster_dir), "--out",
                                 str(out), *sets("data.sensor=null", "train.max_steps=3", "train.checkpoint_every=3",
                                                 "train.preview_every=3", "method.ibot_loss_weight=1.0",
                                                 "method.ibot_mask_prob=1.0", *embedding)])
    assert result.exit_code == 0, result.output
    rows = metrics(out)
    assert sorted(rows) == [1, 2, 3] and all(np.isfinite(float(r["loss"])) for r in rows.values())
    assert float(rows[3]["ibot_loss"]) > 0
    assert (out / "previews" / "step-000003.png").is_file()  # the attention preview of the teacher

    enc = load_encoder(out)
    assert enc.config.embedding == embedding[0].split("=")[1] and enc.units() != [[0, 1, 2, 3]]
    x = torch.randn(2, 4, 16, 16)
    assert enc(x).shape == (2, 1 + 16, 32)
    feats, grid = enc.forward_features(x, [-1])
    assert grid == (4, 4) and feats[0].shape == (2, 16, 32)
    png = tmp_path / "attn.png"
    result = runner.invoke(app, ["attention", str(out), str(raster_dir / "scene_0.tif"), "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dino_volumes_from_cli_with_ibot_loss_falling_and_attention(volume_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run3d"
    result = runner.invoke(app, ["pretrain", "recipes/dino_ct.yaml", "--data", str(volume_dir), "--out", str(out),
                                 *sets("train.max_steps=30", "train.batch_size=4", "train.checkpoint_every=30",
                                       "train.preview_every=30")])
    assert result.exit_code == 0, result.output
    curve = losses(out)
    assert len(curve) == 30 and all(np.isfinite(v) for v in curve.values())
    first, last = np.mean([curve[s] for s in range(1, 9)]), np.mean([curve[s] for s in range(23, 31)])
    assert last < 0.9 * first, (first, last)
    assert float(metrics(out)[30]["ibot_loss"]) > 0  # the CT recipe has iBOT on
    assert (out / "previews" / "step-000030.png").is_file()
    png = tmp_path / "attn3d.png"
    result = runner.invoke(app, ["attention", str(out / "encoder"), str(volume_dir / "subject_0.nii.gz"),
                                 "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_resume_after_kill_restores_teacher_and_centre_and_continues_same_curve(tmp_path: Path) -> None:
    from geomed_ssl.train.pretrain import pretrain

    data = write_classes(tmp_path / "data", per_class=2)
    overrides = [*DINO_TINY, "data.sensor=null", "train.max_steps=10", "train.checkpoint_every=5",
                 "train.log_every=1"]
    full = pretrain("recipes/dino_sentinel2.yaml", data, tmp_path / "full", overrides=overrides, progress=False)
    assert full.steps == 10

    killed = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="simulated kill"):
        pretrain("recipes/dino_sentinel2.yaml", data, killed, overrides=overrides, progress=False,
                 callbacks=[KillAt(5)])
    ckpt = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 5
    state = ckpt["state_dict"]
    assert state["method.dino_loss.center"].abs().sum() > 0
    teacher = {k[len("method.teacher."):]: v for k, v in state.items() if k.startswith("method.teacher.")}
    student = {k[len("method.student."):]: v for k, v in state.items() if k.startswith("method.student.")}
    assert teacher and set(teacher) == set(student) and any("teacher_head" in k for k in state)
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)  # an EMA, not a copy
    # the teacher saved is the one after update 5's EMA: the encoder exported at step 5 is the same weights
    from safetensors.torch import load_file

    exported = load_file(str(killed / "encoder" / "model.safetensors"))
    for k, v in exported.items():
        torch.testing.assert_close(teacher[k], v, rtol=0, atol=0)

    result = runner.invoke(app, ["pretrain", "recipes/dino_sentinel2.yaml", "--data", str(data), "--out", str(killed),
                                 "--resume"])
    assert result.exit_code == 0, result.output
    a, b = losses(tmp_path / "full"), losses(killed)
    assert sorted(b) == list(range(1, 11))
    np.testing.assert_allclose([b[s] for s in range(6, 11)], [a[s] for s in range(6, 11)], rtol=0, atol=1e-5)


def test_forced_collapse_warns_and_shows_in_progress_bar(tmp_path: Path, caplog) -> None:
    import logging

    from geomed_ssl.train.pretrain import pretrain

    data = write_classes(tmp_path / "data", per_class=1)
    capture = BarCapture()
    # a teacher temperature of 100 makes every teacher output uniform: the collapse DINO's sharpening prevents
    overrides = [*DINO_TINY, "data.sensor=null", "train.max_steps=3", "train.checkpoint_every=3",
                 "method.warmup_teacher_temp=100", "method.teacher_temp=100", "method.centering=none"]
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        pretrain("recipes/dino_sentinel2.yaml", data, tmp_path / "run", overrides=overrides, progress=False,
                 callbacks=capture.callbacks())
    assert "warning: DINO collapse at step 0" in caplog.text
    assert capture.bars and all(bar.get("collapse") == 1.0 for bar in capture.bars)
    assert float(metrics(tmp_path / "run")[3]["collapse"]) == 1.0


def test_dino_config_errors_name_the_key(tmp_path: Path) -> None:
    data = write_classes(tmp_path / "data", per_class=1)
    for bad, key in (("data.local_crop_size=6", "data.local_crop_size"), ("method.centering=mean", "method.centering"),
                     ("data.knn_every=5", "data.val_labels")):
        result = runner.invoke(app, ["pretrain", "recipes/dino_sentinel2.yaml", "--data", str(data), "--out",
                                     str(tmp_path / "x"), *sets(bad)])
        assert result.exit_code == 2 and key in result.output, result.output
        assert "Traceback" not in result.output


def test_a_missing_knn_labels_folder_is_refused_before_the_run_folder_is_made(tmp_path: Path, monkeypatch) -> None:
    """data.val_labels is read before RUN_DIR exists (a wrong one left a folder the corrected retry was refused
    into), and `~` in it means the home folder, as in --data."""
    data = write_classes(tmp_path / "data", per_class=1)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    result = runner.invoke(app, ["pretrain", "recipes/dino_sentinel2.yaml", "--data", str(data), "--out",
                                 str(tmp_path / "run"), *sets("data.val_labels=~/classes", "data.knn_every=5",
                                                               "train.max_steps=2", "data.sensor=null")])
    assert result.exit_code == 2 and "classes" in result.output, result.output
    assert not (tmp_path / "run").exists()
    write_classes(tmp_path / "home" / "classes", per_class=2)
    result = runner.invoke(app, ["pretrain", "recipes/dino_sentinel2.yaml", "--data", str(data), "--out",
                                 str(tmp_path / "run"), *sets("data.val_labels=~/classes", "data.knn_every=1",
                                                               "train.max_steps=2", "data.sensor=null")])
    assert result.exit_code == 0, result.output
    assert "k-NN monitor:" in result.output and "home/classes" in result.output
