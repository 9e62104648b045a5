"""I-JEPA: the official collator's block sizes, masks whose context never shows a target token, the loss on the
target encoder's layer-normed tokens computed by hand, the EMA target as the export, and refusals of windows too
small for the blocks. The CLI run (loss falls, exact resume, usable export; rasters and volumes) is in
test_pretext_methods.py, two processes in test_contrastive_ddp.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from geomed_ssl.errors import ConfigError
from geomed_ssl.methods import METHODS, MethodContext
from geomed_ssl.methods.ijepa import IJEPASettings
from geomed_ssl.methods.masking import jepa_block_sides, jepa_masks
from geomed_ssl.models.encoder import EncoderConfig

ENC = EncoderConfig(in_chans=4, img_size=(32, 32), patch_size=(4, 4), embed_dim=32, depth=2, num_heads=2)
SMALL = {"predictor_depth": 1, "predictor_num_heads": 2}


def build(cfg: EncoderConfig = ENC, **settings) -> torch.nn.Module:
    torch.manual_seed(0)
    return METHODS["ijepa"](cfg, {**SMALL, **settings}, max_steps=100)


def by_hand(method: torch.nn.Module, image: torch.Tensor, targets: torch.Tensor,
            context_ids: torch.Tensor) -> torch.Tensor:
    """The smooth L1 of every target token (B, T, M), the method's computation written out sample by sample."""
    enc = method.encoder
    tokens, grid = enc.embed(image)
    visible = torch.stack([tokens[i, context_ids[i]] for i in range(len(image))])
    latent = enc.run_blocks(enc.add_cls(visible))[0][:, 1:]
    predicted = method.predictor(latent, context_ids, targets, grid)
    full = F.layer_norm(method.target_encoder(image)[:, 1:], (enc.embed_dim,))
    wanted = torch.stack([full[i, targets[i]] for i in range(len(image))])  # (B, T, M, D)
    return F.smooth_l1_loss(predicted, wanted, reduction="none").mean(-1)


@pytest.mark.parametrize("u", [0.0, 0.3, 0.5, 0.77, 0.999])
def test_block_sides_follow_the_official_collator_in_2d(u: float) -> None:
    """MaskCollator._sample_block_size: one draw sets both the scale and the aspect ratio."""
    s, r = 0.15 + u * 0.05, 0.75 + u * 0.75
    keep = int(14 * 14 * s)
    assert jepa_block_sides((14, 14), (0.15, 0.2), (0.75, 1.5), u) == (round(math.sqrt(keep * r)),
                                                                       round(math.sqrt(keep / r)))


def test_masks_hide_the_targets_from_the_context_and_are_each_samples_own() -> None:
    grid = (8, 8)
    gens = [torch.Generator().manual_seed(i) for i in range(6)]
    targets, context = jepa_masks(grid, (2, 3), 4, (7, 7), gens)
    assert targets.shape == (6, 4, 6) and context.shape == (6, 64)
    for i in range(6):
        hidden = torch.zeros(64, dtype=torch.bool)
        hidden[targets[i].flatten()] = True
        assert not (context[i] & hidden).any() and context[i].sum() >= 6
        for block in targets[i]:  # a 2 x 3 box: rows r..r+1, columns c..c+2
            rows, cols = block // 8, block % 8
            assert rows.max() - rows.min() == 1 and cols.max() - cols.min() == 2
    again, _ = jepa_masks(grid, (2, 3), 4, (7, 7), [torch.Generator().manual_seed(i) for i in (3, 0)])
    assert torch.equal(again[0], targets[3]) and torch.equal(again[1], targets[0])


@pytest.mark.parametrize("grid", [(6, 8, 8), (4, 16, 16), (2, 8, 8), (8, 24, 24), (4, 16), (8, 32)])
def test_blocks_hold_the_asked_share_of_any_grid(grid: tuple[int, ...]) -> None:
    """Slabs and non-square windows too: a block is shaped like the grid, so no clipped axis loses volume."""
    n = math.prod(grid)
    for u in (0.0, 0.5, 0.99):
        target = math.prod(jepa_block_sides(grid, (0.15, 0.2), (0.75, 1.5), u)) / n
        context = math.prod(jepa_block_sides(grid, (0.85, 1.0), (1.0, 1.0), u)) / n
        asked_t, asked_c = 0.15 + u * 0.05, 0.85 + u * 0.15
        assert 0.6 * asked_t <= target <= 1.6 * asked_t, (grid, u, target)
        assert 0.8 * asked_c <= context <= 1.0, (grid, u, context)
    sides = jepa_block_sides(grid, (0.15, 0.2), (0.75, 1.5), 0.5)
    targets, context = jepa_masks(grid, sides, 4, grid, [torch.Generator().manual_seed(0)])
    assert targets.shape == (1, 4, math.prod(sides)) and context.sum() >= n - 4 * math.prod(sides)


def test_loss_is_smooth_l1_to_the_target_encoders_layer_normed_tokens() -> None:
    method = build().train()
    image = torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    batch = {"image": image, "index": torch.tensor([5, 9, 2])}
    targets, context_ids = method.masks(batch, (8, 8), torch.Generator().manual_seed(3))
    assert context_ids.shape[0] == 3 and context_ids.shape[1] == len(set(context_ids[0].tolist()))
    for i in range(3):
        assert not set(context_ids[i].tolist()) & set(targets[i].flatten().tolist())
    out = method(image, None, targets, context_ids)
    torch.testing.assert_close(out["loss"], by_hand(method, image, targets, context_ids).mean())

    out["loss"].backward()
    assert method.predictor.mask_token.grad is not None and method.encoder.patch_embed.proj.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in method.target_encoder.parameters())


def test_nodata_target_tokens_leave_the_loss() -> None:
    method = build().train()
    image = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[:, :, :16] = False  # the left half of every window is nodata
    batch = {"image": image, "valid": valid, "index": torch.arange(2)}
    targets, context_ids = method.masks(batch, (8, 8), torch.Generator().manual_seed(3))
    left = (targets % 8) < 4  # target tokens on the nodata half
    assert left.any() and (~left).any()
    loss = method(image, valid, targets, context_ids)["loss"]
    with torch.no_grad():  # the loss of the valid target tokens alone
        per_token = by_hand(method, image, targets, context_ids)
    torch.testing.assert_close(loss.detach(), per_token[~left].mean())


def test_the_target_encoder_follows_by_ema_on_a_linear_schedule_and_is_exported() -> None:
    method = build(momentum=0.9)
    assert method.export_encoder() is method.target_encoder
    assert method.momentum(0) == pytest.approx(0.9) and method.momentum(50) == pytest.approx(0.95)
    assert method.momentum(100) == pytest.approx(1.0)
    before = method.target_encoder.patch_embed.proj.weight.clone()
    with torch.no_grad():
        method.encoder.patch_embed.proj.weight.add_(1.0)
    method.after_step(0)
    torch.testing.assert_close(method.target_encoder.patch_embed.proj.weight, before + 0.1)


def test_training_loss_runs_on_volumes_and_logs_the_collapse_monitor() -> None:
    cfg = EncoderConfig(in_chans=1, img_size=(16, 16, 16), patch_size=(4, 4, 4), embed_dim=36, depth=1,
                        num_heads=2, spatial_dims=3)
    method = build(cfg)
    out = method.training_loss({"image": torch.randn(2, 1, 16, 16, 16), "index": torch.arange(2)}, 0,
                               torch.Generator().manual_seed(0))
    assert out.loss.item() > 0 and {"jepa_loss", "embedding_std", "collapse"} <= set(out.logs)
    assert method.predictor.width == 18  # half the encoder's width, a valid 3D sin-cos width


def test_windows_too_small_for_the_blocks_and_unit_embeddings_are_refused() -> None:
    from geomed_ssl.config import load_recipe

    recipe = load_recipe("recipes/ijepa_sentinel2.yaml", ["data.patch_size=64", "data.global_crop_size=16"])
    assert MethodContext.from_recipe(recipe).crop == (16, 16)
    small = MethodContext(window=(16, 16), patch=(4, 4), spatial_dims=2)
    with pytest.raises(ConfigError, match="can hide all 16 tokens of a 4x4 token grid.*method.num_targets"):
        IJEPASettings().check("recipe.yaml", small)
    IJEPASettings(num_targets=2).check("recipe.yaml", small)
    cropped = MethodContext(window=(64, 64), crop=(16, 16), patch=(4, 4), spatial_dims=2)  # the crops' grid counts
    with pytest.raises(ConfigError, match="4x4 token grid"):
        IJEPASettings().check("recipe.yaml", cropped)
    with pytest.raises(ConfigError, match="tokens_per_position=1"):
        IJEPASettings().check("recipe.yaml", MethodContext(embedding="grouped"))
    with pytest.raises(ConfigError, match=r"target_scale must be \[min, max\]"):
        IJEPASettings(target_scale=[0.3, 0.2]).check("recipe.yaml", MethodContext())
    with pytest.raises(ConfigError, match="predictor_dim"):
        IJEPASettings(predictor_dim=18, predictor_num_heads=3).check("recipe.yaml", MethodContext(spatial_dims=2))
    with pytest.raises(ConfigError, match="method.predictor_num_heads 7 heads.*set method.predictor_dim"):
        build(predictor_num_heads=7)  # no width up to 32 splits into 7 heads: one line, not timm's assertion


def test_each_target_block_is_predicted_from_the_context_alone_at_its_positions() -> None:
    """Moving one target block leaves another block's prediction unchanged (one predictor pass per block); the
    context's positions enter the prediction (the same latents placed elsewhere predict something else)."""
    method = build().eval()
    context = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(0))
    context_ids = torch.arange(10).repeat(2, 1)
    targets = torch.tensor([[[20, 21, 28, 29], [40, 41, 48, 49]]] * 2)
    with torch.no_grad():
        first = method.predictor(context, context_ids, targets, (8, 8))
        moved = targets.clone()
        moved[:, 1] += 3
        second = method.predictor(context, context_ids, moved, (8, 8))
        elsewhere = method.predictor(context, context_ids + 50, targets, (8, 8))
    torch.testing.assert_close(first[:, 0], second[:, 0])
    assert not torch.allclose(first[:, 1], second[:, 1])
    assert not torch.allclose(first, elsewhere)


def test_targets_that_hide_the_whole_crop_stop_the_run_with_the_fix() -> None:
    method = build()
    method.settings.target_scale = [1.0, 1.0]  # past the build's check, as crops of another size would be
    batch = {"image": torch.randn(2, 4, 32, 32), "index": torch.arange(2)}
    with pytest.raises(ConfigError, match="hid every token of a 8x8 token grid.*method.num_targets"):
        method.training_loss(batch, 0, torch.Generator().manual_seed(0))


def test_the_loss_is_computed_in_float32_under_bf16_autocast() -> None:
    method = build().train()
    batch = {"image": torch.randn(2, 4, 32, 32), "index": torch.arange(2)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method.training_loss(batch, 0, torch.Generator().manual_seed(0))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
