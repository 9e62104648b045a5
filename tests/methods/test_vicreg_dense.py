"""vicreg_dense: the shifted-pair view and the pixel matching pick the same ground pixels; the method trains from
the CLI (loss falls) on rasters and volumes, and resumes exactly."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from geomed_ssl.cli import app
from geomed_ssl.config import DataConfig
from geomed_ssl.views.builder import ShiftedPairView, ViewSpec, build_views
from geomed_ssl.methods.base import PerSample
from geomed_ssl.methods.vicreg_dense import VICRegDense, dihedral, match_pixels
from geomed_ssl.models.encoder import EncoderConfig
from tests.conftest import TINY_DENSE, KillAt

RECIPE = "recipes/mae_hyperspectral.yaml"


def coordinate_scene(h: int = 30, w: int = 30) -> np.ndarray:
    """(2, H, W) float32: band 0 holds each pixel's row, band 1 its column."""
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([rows, cols])


def pair_batch(n: int, shift: int, size: int = 16, seed: int = 0, scene: np.ndarray | None = None) -> dict:
    """``n`` shifted pairs of a coordinate scene (default: :func:`coordinate_scene`; a volume gives 3D pairs),
    batched as the dataset does."""
    scene = coordinate_scene() if scene is None else scene
    view = ShiftedPairView((size,) * (scene.ndim - 1), shift)
    valid = np.ones(scene.shape[1:], bool)
    samples = [view(scene, valid, np.random.default_rng([seed, i])) for i in range(n)]
    return {"views": {"global": [torch.stack([s["views"]["global"][k] for s in samples]) for k in (0, 1)]},
            "offset": torch.stack([s["offset"] for s in samples]), "index": torch.arange(n)}


def test_shifted_pair_crops_sit_at_the_reported_offset() -> None:
    batch = pair_batch(32, shift=4)
    x1, x2 = batch["views"]["global"]
    origin1, origin2 = x1[:, :, 0, 0], x2[:, :, 0, 0]  # (B, 2): the scene row / column of each crop's corner
    assert torch.equal(origin2 - origin1, batch["offset"].float())
    assert batch["offset"].abs().max() <= 4 and batch["offset"].abs().max() > 0


def test_matched_pixels_are_the_same_ground_pixel() -> None:
    batch = pair_batch(16, shift=4)
    x1, x2 = batch["views"]["global"]
    i1, i2 = match_pixels(batch["offset"], (16, 16), 64, 0, PerSample(torch.Generator().manual_seed(1), range(16)))
    at1 = torch.gather(x1.flatten(2), 2, i1[:, None].expand(-1, 2, -1))  # (B, 2, m) scene row / column
    at2 = torch.gather(x2.flatten(2), 2, i2[:, None].expand(-1, 2, -1))
    assert torch.equal(at1, at2)


def test_matched_neighbours_stay_within_the_neighbourhood() -> None:
    batch = pair_batch(16, shift=4)
    x1, x2 = batch["views"]["global"]
    i1, i2 = match_pixels(batch["offset"], (16, 16), 256, 3, PerSample(torch.Generator().manual_seed(2), range(16)))
    at1 = torch.gather(x1.flatten(2), 2, i1[:, None].expand(-1, 2, -1))
    at2 = torch.gather(x2.flatten(2), 2, i2[:, None].expand(-1, 2, -1))
    gap = (at1 - at2).abs()
    assert gap.max() <= 3 and gap.max() == 3  # moved, but never further than the neighbourhood


def test_matching_after_undoing_each_crops_flip_and_turn_finds_the_same_pixels() -> None:
    batch = pair_batch(8, shift=3)
    x1, x2 = batch["views"]["global"]
    codes = [torch.tensor([[f, k] for f in (0, 1) for k in range(4)]), torch.tensor([[1, 3], [0, 2]] * 4)]
    back = [dihedral(dihedral(x, c), c, inverse=True) for x, c in zip((x1, x2), codes)]  # what the method sees
    assert not torch.equal(dihedral(x1, codes[0]), x1)
    i1, i2 = match_pixels(batch["offset"], (16, 16), 64, 0, PerSample(torch.Generator().manual_seed(3), range(8)))
    at1 = torch.gather(back[0].flatten(2), 2, i1[:, None].expand(-1, 2, -1))
    at2 = torch.gather(back[1].flatten(2), 2, i2[:, None].expand(-1, 2, -1))
    assert torch.equal(at1, at2)


def test_matching_skips_pixels_invalid_in_either_crop() -> None:
    offset = torch.tensor([[2, -1]])
    valid1 = torch.ones(1, 8, 8, dtype=torch.bool)
    valid1[:, :, :4] = False  # left half of crop 1 is nodata
    valid2 = torch.ones(1, 8, 8, dtype=torch.bool)
    valid2[:, :3] = False  # top rows of crop 2 are nodata
    i1, i2 = match_pixels(offset, (8, 8), 200, 0, PerSample(torch.Generator().manual_seed(4), [0]), valid1, valid2)
    assert valid1.reshape(1, -1).gather(1, i1).all() and valid2.reshape(1, -1).gather(1, i2).all()


def test_a_neighbour_move_never_lands_on_nodata() -> None:
    """The partner was checked before its move by up to neighbourhood px: 10 % of partners sat on crop 2's nodata
    (zeroed pixels) at the recipes' neighbourhood 3 with blob-shaped gaps."""
    gen = torch.Generator().manual_seed(0)
    valid1 = torch.rand(8, 32, 32, generator=gen) > 0.05
    valid2 = torch.ones(8, 32, 32, dtype=torch.bool)
    valid2[:, 10:14, :] = False  # a band of cloud across crop 2
    valid2[:, :, 20:23] = False
    offset = torch.randint(-3, 4, (8, 2), generator=gen)
    i1, i2 = match_pixels(offset, (32, 32), 128, 3, PerSample(torch.Generator().manual_seed(4), list(range(8))),
                          valid1, valid2)
    assert valid1.reshape(8, -1).gather(1, i1).all() and valid2.reshape(8, -1).gather(1, i2).all()
    rows1, rows2 = i1 // 32, i2 // 32
    assert ((rows1 - offset[:, :1] - rows2).abs() <= 3).all()  # still within the neighbourhood


def test_non_square_crops_turn_only_by_half_turns_so_the_batch_keeps_one_shape() -> None:
    """An odd quarter turn made a 32x48 crop 48x32 and the batch failed to stack at the first step."""
    torch.manual_seed(0)
    method = VICRegDense(EncoderConfig(in_chans=2, spatial_dims=2, img_size=(32, 48), patch_size=(2, 2), embed_dim=32,
                                       depth=1, num_heads=2), {"max_shift": 2, "projector_dim": 32, "matches": 16})
    scene = np.stack(np.mgrid[0:40, 0:60].astype(np.float32))
    view = ShiftedPairView((32, 48), 2)
    samples = [view(scene, np.ones(scene.shape[1:], bool), np.random.default_rng([0, i])) for i in range(8)]
    batch = {"views": {"global": [torch.stack([s["views"]["global"][k] for s in samples]) for k in (0, 1)]},
             "offset": torch.stack([s["offset"] for s in samples]), "index": torch.arange(8)}
    out = method.training_loss(batch, 0, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("neighbourhood", [0, 2])
def test_matched_voxels_are_the_same_place_or_within_the_neighbourhood(neighbourhood: int) -> None:
    volume = np.stack(np.mgrid[0:20, 0:20, 0:20].astype(np.float32))  # bands: each voxel's z, y and x
    batch = pair_batch(12, shift=3, size=12, seed=5, scene=volume)
    x1, x2 = batch["views"]["global"]
    assert batch["offset"].shape == (12, 3) and batch["offset"].abs().max() > 0
    i1, i2 = match_pixels(batch["offset"], (12, 12, 12), 200, neighbourhood,
                          PerSample(torch.Generator().manual_seed(4), range(12)))
    at1 = torch.gather(x1.flatten(2), 2, i1[:, None].expand(-1, 3, -1))  # (B, 3, m) z, y, x of each match
    at2 = torch.gather(x2.flatten(2), 2, i2[:, None].expand(-1, 3, -1))
    assert (at1 - at2).abs().max() == neighbourhood


def test_a_volume_flip_per_axis_is_undone() -> None:
    x = torch.randn(8, 2, 6, 6, 6)
    codes = torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    flipped = dihedral(x, codes)
    assert torch.equal(flipped[0], x[0]) and not torch.equal(flipped[7], x[7])
    assert torch.equal(flipped[4], x[4].flip(1))  # code (1, 0, 0): the first spatial axis
    assert torch.equal(dihedral(flipped, codes, inverse=True), x)


def test_vicreg_dense_trains_on_volumes_from_the_cli_with_the_mri_recipe(volume_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = cli_run(volume_dir, out, "model.patch_size=4", "train.max_steps=30",
                     "train.checkpoint_every=30", "train.base_lr=0.5", "train.warmup_steps=5",
                     recipe="recipes/vicreg_dense_mri.yaml")
    assert result.exit_code == 0, result.output
    curve = losses(out)
    assert len(curve) == 30 and all(np.isfinite(v) for v in curve.values())
    first, last = np.mean([curve[s] for s in range(1, 6)]), np.mean([curve[s] for s in range(26, 31)])
    assert last < first, (first, last)
    from geomed_ssl import load_encoder

    feats, grid = load_encoder(out).forward_features(torch.randn(1, 1, 16, 16, 16), layers=[0, 1])
    assert grid == (4, 4, 4) and [f.shape for f in feats] == [(1, 64, 32)] * 2


def test_the_method_view_carries_its_max_shift() -> None:
    cfg = EncoderConfig(in_chans=3, img_size=(20, 20), patch_size=(2, 2), embed_dim=32, depth=1, num_heads=2)
    method = VICRegDense(cfg, {"max_shift": 6, "projector_dim": 16})
    assert method.views == ViewSpec(crops=2, shift=6, intensity=True)
    view = build_views(method.views, DataConfig(patch_size=22, global_crop_size=16), 2, patch_size=2)
    out = view(np.zeros((3, 22, 22), np.float32), np.ones((22, 22), bool), np.random.default_rng(0))
    assert out["views"]["global"][0].shape == (3, 16, 16) and out["offset"].shape == (2,)


def test_crops_no_window_can_give_are_refused_with_a_crop_size_that_works() -> None:
    """8-px tokens and a shift of 4: a window less the shift is never a multiple of 8, and the refusal suggested a
    data.patch_size (24, then 16, ...) that failed the same way; it names data.global_crop_size now, which trains."""
    from geomed_ssl.errors import ConfigError

    spec = ViewSpec(crops=2, shift=4, intensity=True)
    with pytest.raises(ConfigError, match=r'--set "data.global_crop_size=\[24, 24\]"'):
        build_views(spec, DataConfig(patch_size=32), 2, patch_size=8)
    view = build_views(spec, DataConfig(patch_size=32, global_crop_size=24), 2, patch_size=8)
    assert view(np.zeros((3, 32, 32), np.float32), np.ones((32, 32), bool),
                np.random.default_rng(0))["views"]["global"][0].shape == (3, 24, 24)


def cli_run(data: Path, out: Path, *extra: str, resume: bool = False, recipe: str = RECIPE):
    args = ["pretrain", recipe, "--data", str(data), "--out", str(out)]
    for item in [*TINY_DENSE, *extra]:
        args += ["--set", item]
    return CliRunner().invoke(app, args)


def losses(run_dir: Path) -> dict[int, float]:
    with (run_dir / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def test_vicreg_dense_trains_from_the_cli_and_its_loss_falls(raster_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = cli_run(raster_dir, out, "train.max_steps=40", "train.checkpoint_every=40", "train.base_lr=0.5",
                     "train.warmup_steps=5")
    assert result.exit_code == 0, result.output
    curve = losses(out)
    assert len(curve) == 40
    first, last = np.mean([curve[s] for s in range(1, 6)]), np.mean([curve[s] for s in range(36, 41)])
    assert last < 0.95 * first, (first, last)  # VICReg's floor is high: ~21 -> ~19 in 40 steps here
    with (out / "metrics.csv").open() as fh:  # the collapse flag every method logs: 0 / 1, beside the spread
        rows = list(csv.DictReader(fh))
    assert {r["collapse"] for r in rows} == {"0.0"} and all(float(r["embedding_std"]) > 0 for r in rows)
    from geomed_ssl import load_encoder

    enc = load_encoder(out)
    feats, grid = enc.forward_features(torch.randn(1, 4, 16, 16), layers=[0, 1])
    assert grid == (8, 8) and [f.shape for f in feats] == [(1, 64, 32)] * 2


def test_resume_after_kill_continues_the_same_loss_curve(raster_dir: Path, tmp_path: Path) -> None:
    from geomed_ssl.train.pretrain import pretrain

    overrides = [*TINY_DENSE, "train.max_steps=8", "train.checkpoint_every=4", "method.global_weight=0.5"]
    pretrain(RECIPE, raster_dir, tmp_path / "full", overrides=overrides, progress=False)
    killed = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="simulated kill"):
        pretrain(RECIPE, raster_dir, killed, overrides=overrides, progress=False, callbacks=[KillAt(4)])
    resumed = pretrain(None, raster_dir, killed, resume=True, progress=False)
    assert resumed.steps == 8
    a, b = losses(tmp_path / "full"), losses(killed)
    assert sorted(b) == list(range(1, 9))
    np.testing.assert_allclose([b[s] for s in range(5, 9)], [a[s] for s in range(5, 9)], rtol=0, atol=1e-5)


def test_the_dates_recipe_trains_on_two_dates_of_one_grid(tmp_path: Path) -> None:
    from tests.data.conftest import gradient, write_tif

    rng = np.random.default_rng(0)
    base = gradient(4, 40, 40, dtype="float32") + rng.normal(0, 5, (4, 40, 40)).astype("float32")
    names = ["B02", "B03", "B04", "B08"]
    write_tif(tmp_path / "scene" / "2020-05.tif", base, descriptions=names)
    write_tif(tmp_path / "scene" / "2020-08.tif", base * 1.1 + 20, descriptions=names)
    args = ["pretrain", "recipes/vicreg_dense_sentinel2.yaml", "--data", str(tmp_path / "scene"), "--out",
            str(tmp_path / "run")]
    for item in [*TINY_DENSE, "train.max_steps=4", "train.checkpoint_every=4", "train.warmup_steps=1"]:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(losses(tmp_path / "run")) == 4 and (tmp_path / "run" / "encoder").is_dir()
