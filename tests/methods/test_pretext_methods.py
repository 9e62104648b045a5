"""The masked-image-modelling variants and classic pretext tasks of issue 14, each end to end through the CLI:
the loss falls on generated GeoTIFFs (and NIfTIs where the method applies), ``--resume`` replays the uninterrupted
run's loss curve exactly, and the exported encoder is accepted by ``embed`` and ``finetune``.

Volumes: simmim, maskfeat, beit, cae, ijepa, inpainting and rotation (about the first axis) run on them; jigsaw and
context are 2D-only (refused, see test_bad_input.py), cross_band needs two bands (the NIfTIs here have one).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from geomed_ssl.cli import app
from tests.conftest import TINY_BASE, KillAt, write_class_folders

runner = CliRunner()

# per method: tiny settings of its own (decoders, codebook fit, classes)
METHOD_SETS: dict[str, list[str]] = {
    "simmim": [],
    "maskfeat": [],
    "beit": ["method.tokenizer_windows=16"],
    "cae": ["method.regressor_depth=1", "method.decoder_depth=1"],
    "ijepa": ["method.predictor_depth=1", "method.predictor_num_heads=2", "method.num_targets=2"],
    "inpainting": ["method.decoder_embed_dim=32", "method.decoder_depth=1", "method.decoder_num_heads=2"],
    "rotation": ["method.head_hidden_dim=32"],
    "jigsaw": ["method.head_hidden_dim=32", "method.permutations=10"],
    "context": ["method.head_hidden_dim=32"],
    "cross_band": [],
}
VOLUME_METHODS = ["simmim", "maskfeat", "beit", "cae", "ijepa", "inpainting"]
STEPS, KILL = 24, 16
# The classification tasks do not move their loss within 24 steps on these smooth plane-wave scenes (they have no
# up, and few distinct tiles); that they are learnable is checked in test_pretext_learnable.py instead.
SHORT_RUN_LEARNERS = {"simmim", "maskfeat", "beit", "cae", "ijepa", "inpainting", "cross_band"}


def overrides(method: str, *extra: str) -> list[str]:
    return [*TINY_BASE, f"method.name={method}", *METHOD_SETS[method], "train.base_lr=0.05", *extra]


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def losses(run_dir: Path) -> dict[int, float]:
    with (run_dir / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def assert_learns(method: str, curve: dict[int, float], recipe: str, data: Path, items: list[str],
                  tmp_path: Path) -> None:
    """The run's last 8 losses are below those of the untrained model on the same batches and masks (a run with
    base_lr 0: both come from the seed and the step); windows vary too much in difficulty to compare early and
    late steps of one run."""
    from geomed_ssl.train.pretrain import pretrain

    frozen = tmp_path / "frozen"
    pretrain(recipe, data, frozen, overrides=[*items, "train.base_lr=0"], progress=False)
    untrained = losses(frozen)
    late = range(STEPS - 7, STEPS + 1)
    trained_late, untrained_late = np.mean([curve[s] for s in late]), np.mean([untrained[s] for s in late])
    assert trained_late < 0.97 * untrained_late, (method, trained_late, untrained_late)


@pytest.mark.parametrize("method", list(METHOD_SETS))
def test_cli_run_loss_falls_resume_is_exact_and_the_export_is_usable(method: str, raster_dir: Path,
                                                                      tmp_path: Path) -> None:
    from geomed_ssl.train.pretrain import pretrain

    items = overrides(method, "data.sensor=null", "data.patch_size=16", f"train.max_steps={STEPS}",
                      f"train.checkpoint_every={KILL}")
    full = tmp_path / "full"
    result = runner.invoke(app, ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(raster_dir), "--out",
                                 str(full), *sets(items)])
    assert result.exit_code == 0, result.output
    curve = losses(full)
    if method in SHORT_RUN_LEARNERS:
        assert_learns(method, curve, "recipes/mae_sentinel2.yaml", raster_dir, items, tmp_path)

    killed = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="simulated kill"):
        pretrain("recipes/mae_sentinel2.yaml", raster_dir, killed, overrides=items, progress=False,
                 callbacks=[KillAt(KILL)])
    result = runner.invoke(app, ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(raster_dir), "--out", str(killed), "--resume"])
    assert result.exit_code == 0, result.output
    resumed = losses(killed)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([resumed[s] for s in range(KILL + 1, STEPS + 1)],
                               [curve[s] for s in range(KILL + 1, STEPS + 1)], rtol=0, atol=1e-5)

    emb = runner.invoke(app, ["embed", str(full), str(raster_dir), "--out", str(tmp_path / "emb"),
                              "--exclude", "*mask*"])
    assert emb.exit_code == 0, emb.output
    assert "vectors of 32 dims" in emb.output


@pytest.mark.parametrize("method", VOLUME_METHODS)
def test_cli_run_on_volumes_loss_falls(method: str, volume_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run3d"
    items = overrides(method, "data.patch_size=16", f"train.max_steps={STEPS}", "train.batch_size=4",
                      f"train.checkpoint_every={STEPS}")
    result = runner.invoke(app, ["pretrain", "recipes/mae_mri.yaml", "--data", str(volume_dir), "--out", str(out),
                                 *sets(items)])
    assert result.exit_code == 0, result.output
    assert_learns(method, losses(out), "recipes/mae_mri.yaml", volume_dir, items, tmp_path)
    from geomed_ssl import load_encoder

    assert load_encoder(out / "encoder").config.spatial_dims == 3


def test_a_pretext_export_fine_tunes_a_classifier(raster_dir: Path, tmp_path: Path) -> None:
    from geomed_ssl.train.pretrain import pretrain

    pre = tmp_path / "pre"
    pretrain("recipes/pretext_sentinel2.yaml", raster_dir, pre, progress=False,
             overrides=overrides("cross_band", "data.sensor=null", "data.patch_size=16", "train.max_steps=3"))
    classes = write_class_folders(tmp_path / "classes", ["Forest", "River"], per_class=4)
    ft = tmp_path / "ft"
    result = runner.invoke(app, ["finetune", "classify", "recipes/pretext_sentinel2.yaml", "--encoder", str(pre),
                                 "--data", str(classes), "--out", str(ft), "--labels-per-class", "2",
                                 "--linear-probe", *sets([*TINY_BASE, "data.sensor=null", "data.patch_size=16",
                                                          "finetune.max_steps=10", "finetune.batch_size=4"])])
    assert result.exit_code == 0, result.output
    assert json.loads((ft / "metrics.json").read_text())["train"]["n"] == 4


def test_beit_codebook_is_fitted_once_logged_and_restored_on_resume(raster_dir: Path, tmp_path: Path) -> None:
    import torch

    from geomed_ssl.train.pretrain import pretrain

    items = overrides("beit", "data.sensor=null", "data.patch_size=16", "train.max_steps=4",
                      "train.checkpoint_every=2")
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated kill"):
        pretrain("recipes/mae_sentinel2.yaml", raster_dir, run, overrides=items, progress=False,
                 callbacks=[KillAt(2)])
    saved = (run / "config.yaml").read_text()
    assert "codebook_size: auto" not in saved and "codebook_size:" in saved  # auto resolved and recorded
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    codebook = next(v for k, v in first.items() if k.endswith("tokenizer.codebook"))
    assert codebook.abs().sum() > 0
    result = runner.invoke(app, ["pretrain", "recipes/mae_sentinel2.yaml", "--data", str(raster_dir), "--out", str(run), "--resume"])
    assert result.exit_code == 0, result.output
    assert "codebook of" not in result.output  # not fitted again: the checkpoint's is used
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(next(v for k, v in last.items() if k.endswith("tokenizer.codebook")), codebook)


def test_beits_codebook_is_fitted_on_the_patches_its_loss_reads_not_on_nodata() -> None:
    """Patches mostly nodata (zeroed) took a near-zero 'fill' code of their own: the codebook is fitted on the
    patches at least half valid, the ones the loss scores."""
    import torch

    from geomed_ssl.methods.beit import BEiT
    from geomed_ssl.models.encoder import EncoderConfig

    cfg = EncoderConfig(in_chans=2, img_size=(8, 8), patch_size=(4, 4), embed_dim=32, depth=1, num_heads=2)
    method = BEiT(cfg, {"codebook_size": 2, "tokenizer_windows": 2, "tokenizer_patches": 100}, max_steps=10)
    valid = torch.ones(8, 8, dtype=torch.bool)
    valid[:, :4] = False  # the left two of four patches: nodata
    samples = [{"image": torch.randn(2, 8, 8) + 5, "valid": valid} for _ in range(2)]
    seen = []
    fit = method.tokenizer.fit
    method.tokenizer.fit = lambda v, *a, **k: seen.append(v) or fit(v, *a, **k)
    method.fit_to_data(samples, seed=0)
    assert seen[0].shape == (4, 32) and (seen[0].abs().sum(1) > 0).all()  # 2 valid patches of each window
