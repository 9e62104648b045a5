"""MSN: the masked anchor drops its share of positions per sample (every unit of a grouped position together), drawn
from the sample's own stream; the target branch takes no gradient and is the export; the official momentum and
weight-decay schedules. The loss against lightly is in losses/test_msn.py, the CLI runs (loss falls on rasters
and volumes, exact resume, usable export) in test_ssl_methods.py, two processes in test_contrastive_ddp.py."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from geomed_ssl.errors import ConfigError
from geomed_ssl.methods import METHODS, MethodContext
from geomed_ssl.methods import msn as msn_module
from geomed_ssl.methods.masking import num_keep
from geomed_ssl.models.encoder import EncoderConfig

ENC = EncoderConfig(in_chans=4, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=2, num_heads=2)
SMALL = {"proj_hidden_dim": 32, "proj_dim": 16, "n_prototypes": 8}


def build(cfg: EncoderConfig = ENC, **settings) -> torch.nn.Module:
    torch.manual_seed(0)
    return METHODS["msn"](cfg, {**SMALL, **settings}, max_steps=100)


def batch_of(n: int, seed: int = 0, index: list[int] | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    views = {"global": [torch.randn(n, 4, 16, 16, generator=g) for _ in range(2)],
             "local": [torch.randn(n, 4, 8, 8, generator=g) for _ in range(2)]}
    return {"views": views, "index": torch.tensor(index if index is not None else list(range(n)))}


def tokens_into_blocks(method, x: torch.Tensor, batch: dict) -> int:
    """How many tokens (CLS included) the masked anchor's blocks see."""
    seen = []
    run = method.encoder.run_blocks
    method.encoder.run_blocks = lambda tokens, *a, **k: seen.append(tokens.shape[1]) or run(tokens, *a, **k)
    try:
        method.masked_cls(x, batch, torch.Generator().manual_seed(1))
    finally:
        del method.encoder.run_blocks
    return seen[0]


@pytest.mark.parametrize("ratio", [0.15, 0.5, 0.7])
def test_the_masked_anchor_keeps_its_share_of_positions(ratio: float) -> None:
    method = build(mask_ratio=ratio)
    batch = batch_of(3)
    assert tokens_into_blocks(method, batch["views"]["global"][1], batch) == 1 + num_keep(16, ratio)


def test_grouped_positions_are_dropped_with_all_their_units(monkeypatch) -> None:
    cfg = EncoderConfig(in_chans=4, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=2, num_heads=2,
                        embedding="grouped", band_groups=[[0, 1], [2, 3]])
    method = build(cfg, mask_ratio=0.3)
    batch = batch_of(3)
    masks, original = [], msn_module.random_masking

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        masks.append(out[1])
        return out

    monkeypatch.setattr(msn_module, "random_masking", spy)
    assert tokens_into_blocks(method, batch["views"]["global"][1], batch) == 1 + 2 * num_keep(16, 0.3)
    units = masks[0].reshape(3, 2, 16)  # unit-major tokens: (B, U, N)
    assert torch.equal(units[:, 0], units[:, 1])  # a position is dropped with all its units
    assert (units[:, 0].sum(dim=1) == 16 - num_keep(16, 0.3)).all() and not torch.equal(units[0, 0], units[1, 0])


def test_each_sample_draws_its_own_mask_whatever_its_batch_position() -> None:
    method = build(mask_ratio=0.5).eval()
    pair = batch_of(2, index=[5, 7])
    alone = {"views": {k: [v[1:] for v in crops] for k, crops in pair["views"].items()}, "index": torch.tensor([7])}
    g = torch.Generator().manual_seed(3)
    both = method.masked_cls(pair["views"]["global"][1], pair, g)
    one = method.masked_cls(alone["views"]["global"][1], alone, torch.Generator().manual_seed(3))
    torch.testing.assert_close(both[1:], one)
    again = method.masked_cls(pair["views"]["global"][1], {**pair, "index": torch.tensor([6, 7])},
                              torch.Generator().manual_seed(3))
    assert not torch.allclose(again[0], both[0])  # another sample index, another mask


def test_no_mask_gives_the_plain_cls_token() -> None:
    method = build(mask_ratio=0.0)
    batch = batch_of(2)
    x = batch["views"]["global"][1]
    torch.testing.assert_close(method.masked_cls(x, batch, torch.Generator()), method.encoder(x)[:, 0])


def test_the_target_is_the_first_crop_unmasked_and_the_anchors_the_second_masked_and_the_locals() -> None:
    """Which crop each branch reads: the momentum encoder the first global crop as it is, the masked path the second,
    the online encoder's plain pass the local crops only."""
    method = build(mask_ratio=0.5)
    batch = batch_of(4)
    seen: dict[str, list[torch.Tensor]] = {"target": [], "masked": [], "plain": []}
    target_forward, masked, plain = method.target_encoder.forward, method.masked_cls, method.encoder.forward
    method.target_encoder.forward = lambda x: seen["target"].append(x) or target_forward(x)
    method.masked_cls = lambda x, *a: seen["masked"].append(x) or masked(x, *a)
    method.encoder.forward = lambda x: seen["plain"].append(x) or plain(x)
    out = method.training_loss(batch, 0, torch.Generator().manual_seed(0))
    g, local = batch["views"]["global"], batch["views"]["local"]
    assert [len(v) for v in seen.values()] == [1, 1, 1]
    assert torch.equal(seen["target"][0], g[0]) and torch.equal(seen["masked"][0], g[1])
    assert torch.equal(seen["plain"][0], torch.cat(local))
    out.loss.backward()
    assert method.prototypes.grad is not None and method.prototypes.grad.abs().sum() > 0
    assert method.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.export_encoder() is method.target_encoder
    assert {"msn_loss", "memax", "prototypes_used", "embedding_std"} <= out.logs.keys()
    assert 1 <= float(out.logs["prototypes_used"]) <= 4


def test_official_schedules_and_no_decay_on_the_prototypes() -> None:
    method = build(momentum=0.996, weight_decay_start=0.04, weight_decay_end=0.4)
    assert method.momentum(0) == pytest.approx(0.996)
    assert method.momentum(100) == pytest.approx(0.996 + 0.004 / 1.25)  # 1 is reached at 1.25 x the run
    # the official cosine spans 1.25 x the run too: 0.4 + (0.04 - 0.4) (1 + cos(0.8 pi)) / 2 at its end
    assert method.weight_decay(0) == pytest.approx(0.04)
    assert method.weight_decay(100) == pytest.approx(0.4 - 0.18 * (1 + math.cos(0.8 * math.pi)))
    assert "prototypes" in method.no_weight_decay()


def test_a_batch_of_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="train.batch_size must be at least 2"):
        METHODS["msn"].Settings.from_section({"name": "msn"}).validated("recipe.yaml", MethodContext(batch_size=1))


def test_a_crop_whose_tokens_the_ratio_cannot_drop_is_refused() -> None:
    settings = METHODS["msn"].Settings.from_section({"name": "msn", "mask_ratio": 0.15})
    with pytest.raises(ConfigError, match=r"mask_ratio 0.15 drops no token of a crop of 1 token\(s\)"):
        settings.validated("recipe.yaml", MethodContext(batch_size=8, window=(64, 64), crop=(8, 8), patch=(8, 8)))
    ok = MethodContext(batch_size=8, window=(64, 64), crop=(16, 16), patch=(8, 8))  # 4 tokens: one dropped
    settings.validated("recipe.yaml", ok)


def test_more_prototypes_than_the_global_batch_warn_once(caplog) -> None:
    method = build(n_prototypes=8)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        for step in range(2):
            method.training_loss(batch_of(4), step, torch.Generator().manual_seed(step))
    assert [r.getMessage() for r in caplog.records if "msn: Sinkhorn" in r.getMessage()] == [
        "warning: msn: Sinkhorn gives each of the 8 prototypes an equal share of the global batch of 4, so no target "
        "can exceed 4/8 and the sharpening is undone; use method.n_prototypes <= 4 (the official runs keep them about "
        "equal), a larger train.batch_size, or method.sinkhorn_iterations=0."]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        build(n_prototypes=4).training_loss(batch_of(4), 0, torch.Generator())
        build(n_prototypes=8, sinkhorn_iterations=0).training_loss(batch_of(4), 0, torch.Generator())
    assert not [r for r in caplog.records if "msn: Sinkhorn" in r.getMessage()]
