"""The DINO method end to end on a tiny real ViTEncoder: 2D and 3D crops, iBOT masks, EMA, hooks, collapse monitor."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.dino import DINO, DINOSettings
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

SMALL = dict(out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16)


def make(spatial_dims: int = 2, max_steps: int = 100, **method) -> DINO:
    torch.manual_seed(0)
    size, patch = ((32, 32), (8, 8)) if spatial_dims == 2 else ((16, 16, 16), (4, 4, 4))
    cfg = EncoderConfig(in_chans=3, spatial_dims=spatial_dims, img_size=size, patch_size=patch, embed_dim=24,
                        depth=2, num_heads=2)
    return DINO(cfg, DINOSettings(**{**SMALL, **method}), max_steps=max_steps)


def batch(spatial_dims: int = 2, b: int = 4, n_local: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    gs, ls = ((32, 32), (16, 16)) if spatial_dims == 2 else ((16, 16, 16), (8, 8, 8))
    return {"views": {"global": [torch.randn(b, 3, *gs, generator=g) for _ in range(2)],
                      "local": [torch.randn(b, 3, *ls, generator=g) for _ in range(n_local)]}}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_step_with_ibot_and_koleo_gives_finite_logs_and_grads_only_to_student(spatial_dims: int) -> None:
    m = make(spatial_dims, ibot_loss_weight=1.0, koleo_loss_weight=0.1)
    out = m.training_loss(batch(spatial_dims), 0, gen())
    for key in ("loss", "dino_loss", "ibot_loss", "koleo", "teacher_entropy", "kl_teacher_student", "teacher_std",
                "collapse"):
        assert torch.isfinite(out.logs[key]), key
    assert out.logs["ibot_loss"] > 0 and out.logs["collapse"] == 0
    out.loss.backward()
    trainable = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable), [n for n, p in trainable if p.grad is None]
    assert all(not n.startswith("teacher") for n, _ in trainable)
    assert m.export_encoder() is m.teacher and isinstance(m.teacher, ViTEncoder)


def test_local_crops_are_optional_and_ibot_params_get_grads_without_any_mask() -> None:
    m = make(ibot_loss_weight=1.0, ibot_mask_prob=0.0)
    out = m.training_loss(batch(n_local=0), 0, gen())
    out.loss.backward()
    assert float(out.logs["ibot_loss"]) == 0.0 and m.mask_token.grad is not None


def test_same_generator_gives_same_loss_and_masks_differ_across_seeds() -> None:
    m = make(ibot_loss_weight=1.0, centering="none")
    a = m.training_loss(batch(), 3, gen(1)).loss
    b = m.training_loss(batch(), 3, gen(1)).loss
    c = m.training_loss(batch(), 3, gen(2)).loss
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_ibot_masks_follow_the_sample_index_so_the_batch_split_does_not_matter() -> None:
    m = make(ibot_loss_weight=1.0, ibot_mask_prob=1.0, centering="none")
    views = batch(b=4)

    def part(lo: int, hi: int) -> dict:
        return {"views": {k: [v[lo:hi] for v in vs] for k, vs in views["views"].items()},
                "index": torch.arange(lo, hi)}

    whole = m.training_loss(part(0, 4), 3, gen(1)).logs
    halves = [m.training_loss(part(lo, lo + 2), 3, gen(1)).logs for lo in (0, 2)]  # two ranks of 2
    for key in ("dino_loss", "ibot_loss"):
        torch.testing.assert_close(whole[key], (halves[0][key] + halves[1][key]) / 2)


def test_the_method_pickles_for_spawned_workers_and_loads_checkpoints_of_torchs_weight_norm() -> None:
    """``train.strategy=ddp_spawn`` sends the method to each worker pickled: a torch-parametrised weight norm
    cannot be; ours pickles, computes the same, and takes the state of torch's parametrisation (older checkpoints)."""
    import pickle

    from torch.nn.utils.parametrizations import weight_norm

    m = make()
    clone = pickle.loads(pickle.dumps(m))
    a, b = m.training_loss(batch(), 0, gen()), clone.training_loss(batch(), 0, gen())
    assert torch.equal(a.loss, b.loss)
    head = m.student_head
    old = weight_norm(torch.nn.Linear(head.last_layer.weight.shape[1], head.out_dim, bias=False))
    head.last_layer.load_state_dict(old.state_dict())
    torch.testing.assert_close(head.last_layer.weight, old.weight, rtol=0, atol=0)


def test_center_moves_towards_teacher_mean_after_a_step() -> None:
    m = make()
    assert torch.all(m.dino_loss.center == 0)
    m.training_loss(batch(), 0, gen())
    assert m.dino_loss.center.abs().sum() > 0


def test_after_step_is_ema_with_scheduled_momentum() -> None:
    m = make(momentum_teacher=0.9, max_steps=10)
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in m.teacher.named_parameters()}
    student = dict(m.student.named_parameters())
    step = 5
    mom = 1.0 - 0.5 * (1 - 0.9) * (1 + math.cos(math.pi * step / 10))
    m.after_step(step)
    for n, p in m.teacher.named_parameters():
        torch.testing.assert_close(p, mom * before[n] + (1 - mom) * student[n])
    assert not any(p.requires_grad for p in m.teacher.parameters())


def test_last_layer_grads_dropped_only_while_frozen() -> None:
    m = make(freeze_last_layer_steps=3, norm_last_layer=False)
    m.training_loss(batch(), 0, gen()).loss.backward()
    m.before_optimizer_step(2)
    assert all(p.grad is None for p in m.student_head.last_layer_parameters())
    assert m.student_head.mlp[0].weight.grad is not None
    m.training_loss(batch(), 3, gen()).loss.backward()
    m.before_optimizer_step(3)
    assert all(p.grad is not None for p in m.student_head.last_layer_parameters())


def test_schedules_exposed_for_the_trainer() -> None:
    m = make(max_steps=100, teacher_temp_warmup_steps=11)
    assert m.weight_decay(0) == pytest.approx(0.04) and m.weight_decay(100) == pytest.approx(0.4)
    assert m.weight_decay(50) == pytest.approx(0.22)
    assert m.teacher_temp(0) == pytest.approx(0.04) and m.teacher_temp(5) == pytest.approx(0.055)
    assert m.teacher_temp(11) == pytest.approx(0.07)
    assert m.momentum(0) == pytest.approx(0.996) and m.momentum(100) == 1.0
    assert make(max_steps=1000).teacher_temp_warmup_steps == 300


def test_no_weight_decay_names_exist_and_include_mask_token() -> None:
    m = make(ibot_loss_weight=0.5)
    names = m.no_weight_decay()
    assert {"mask_token", "student.cls_token"} <= names


def test_bad_settings_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="centering"):
        make(centering="mean")
    with pytest.raises(ConfigError, match="ibot_mask_ratio"):
        make(ibot_mask_ratio=[0.5, 0.2])


def test_healthy_init_does_not_warn(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        assert make().training_loss(batch(), 0, gen()).logs["collapse"] == 0
    assert "collapse" not in caplog.text


def test_constant_collapse_warns_when_every_image_maps_to_one_output(caplog) -> None:
    m = make()
    with torch.no_grad():
        for head in (m.student_head, m.teacher_head):
            head.mlp[-1].weight.zero_()  # bottleneck = bias for every image
            head.mlp[-1].bias.normal_()
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        out = m.training_loss(batch(), 0, gen())
    assert "warning: DINO collapse at step 0: teacher outputs are constant" in caplog.text
    assert out.logs["collapse"] == 1 and out.logs["teacher_std"] < 1e-6


def test_uniform_collapse_warns_without_centering_at_high_teacher_temperature(caplog) -> None:
    m = make(centering="none", warmup_teacher_temp=50.0, teacher_temp=50.0)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        out = m.training_loss(batch(), 0, gen())
    assert "teacher outputs are uniform" in caplog.text
    assert out.logs["collapse"] == 1
    assert out.logs["teacher_entropy"] > 0.99 * math.log(64)


# ---- spectral-aware embeddings -------------------------------------------------------------------------------
SPECTRAL_KINDS = {  # 6 bands, 16 px windows of 4 px tokens: grouped 2 units, spectral 3 units (chunks of 2)
    "grouped": dict(band_groups=[[0, 1, 2], [3, 4, 5]]),
    "spectral": dict(spectral_chunk=2),
    "wavelength": dict(wavelengths=[0.49, 0.56, 0.665, 0.705, 0.842, 1.61]),
}


def make_spectral(kind: str, **method) -> DINO:
    torch.manual_seed(0)
    cfg = EncoderConfig(in_chans=6, img_size=(16, 16), patch_size=(4, 4), embedding=kind, embed_dim=32, depth=2,
                        num_heads=2, **SPECTRAL_KINDS[kind])
    return DINO(cfg, DINOSettings(**{**SMALL, **method}), max_steps=10)


def spectral_batch(b: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"views": {"global": [torch.randn(b, 6, 16, 16, generator=g) for _ in range(2)],
                      "local": [torch.randn(b, 6, 8, 8, generator=g) for _ in range(2)]}}


@pytest.mark.parametrize("kind", list(SPECTRAL_KINDS))
def test_step_with_ibot_runs_on_spectral_embeddings_and_grads_reach_patch_embed(kind: str) -> None:
    m = make_spectral(kind, ibot_loss_weight=1.0, ibot_mask_prob=1.0, koleo_loss_weight=0.1)
    out = m.training_loss(spectral_batch(), 0, gen())
    assert torch.isfinite(out.loss) and out.logs["ibot_loss"] > 0 and torch.isfinite(out.logs["koleo"])
    out.loss.backward()
    grads = {n: p.grad for n, p in m.student.patch_embed.named_parameters()}
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    assert m.mask_token.grad is not None and m.mask_token.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["grouped", "spectral"])
def test_ibot_mask_hides_every_band_unit_of_a_masked_position(kind: str) -> None:
    m = make_spectral(kind, ibot_loss_weight=1.0).eval()
    x = torch.randn(1, 6, 16, 16, generator=gen())
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = True  # the token at rows 4..7, cols 8..11
    with torch.no_grad():
        out = m._student_globals(x, mask)  # (1, 1+16, 32): one token per position
        y = x.clone()
        y[:, :, 4:8, 8:12] += 5.0  # every band of the masked patch
        same = m._student_globals(y, mask)
        z = x.clone()
        z[:, 5, 0:4, 0:4] += 5.0  # one band of an unmasked patch
        moved = m._student_globals(z, mask)
    assert out.shape == (1, 17, 32)
    torch.testing.assert_close(same, out, rtol=0, atol=0)
    assert not torch.allclose(moved, out)


def with_valid(b: dict, valid_fn) -> dict:
    """``b`` plus per-crop valid masks ``valid_fn(shape)`` (bool (B, *S)), as the multi-crop views give them."""
    return {**b, "valid": {k: [valid_fn(x.shape[:1] + x.shape[2:]) for x in b["views"][k]] for k in b["views"]}}


def test_nodata_pixels_are_zeroed_before_student_and_teacher_as_in_mae() -> None:
    def half(shape):  # the left half of every crop is nodata
        v = torch.ones(shape, dtype=torch.bool)
        v[..., : shape[-1] // 2] = False
        return v

    clean = with_valid(batch(), half)
    for k, xs in clean["views"].items():  # augmentations leave invalid pixels off zero: make them zero here
        clean["views"][k] = [torch.where(v[:, None], x, 0.0) for x, v in zip(xs, clean["valid"][k])]
    garbage = {**clean, "views": {k: [torch.where(v[:, None], x, 1e4) for x, v in zip(xs, clean["valid"][k])]
                                  for k, xs in clean["views"].items()}}
    m = make(ibot_loss_weight=1.0, centering="none")
    a = m.training_loss(clean, 0, gen(1)).loss
    b = m.training_loss(garbage, 0, gen(1)).loss
    torch.testing.assert_close(a, b)


def test_masked_tokens_that_are_mostly_nodata_stay_out_of_the_ibot_loss(monkeypatch) -> None:
    from geomed_ssl.methods.dino import MIN_TOKEN_VALID, token_valid_fraction

    def top_rows_invalid(shape):  # 40 % of the rows nodata: token rows 0-1 of 4 (8-pixel patches) mostly invalid
        v = torch.ones(shape, dtype=torch.bool)
        v[..., : int(0.4 * shape[-2]), :] = False
        return v

    b = with_valid(batch(), top_rows_invalid)
    m = make(ibot_loss_weight=1.0, ibot_mask_prob=1.0, ibot_mask_ratio=[0.4, 0.6])
    seen = {}
    original = m.ibot_loss.forward

    def spy(student, teacher, mask, temp):
        seen["mask"] = mask.clone()
        return original(student, teacher, mask, temp)

    monkeypatch.setattr(m.ibot_loss, "forward", spy)
    m.training_loss(b, 0, gen(3))
    frac = token_valid_fraction(torch.cat(b["valid"]["global"]), (8, 8))  # (2B, 16)
    assert seen["mask"].any() and (frac[seen["mask"]] >= MIN_TOKEN_VALID).all()
    everything_invalid = with_valid(batch(), lambda shape: torch.zeros(shape, dtype=torch.bool))
    assert float(m.training_loss(everything_invalid, 0, gen(3)).logs["ibot_loss"]) == 0.0  # (a collapse warning)
