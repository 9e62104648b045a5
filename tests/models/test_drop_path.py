"""Stochastic depth: timm's semantics, and in pretraining each sample's own draws, whatever batch it lands in."""

from __future__ import annotations

import torch

from geomed_ssl.models.blocks import SampleDropPath, drop_path_draws, make_blocks
from geomed_ssl.train.module import per_sample_draws


def kept_rows(layer: SampleDropPath, rows: int) -> torch.Tensor:
    """(rows,) bool: which rows of a forward kept the residual branch."""
    return layer(torch.ones(rows, 3, 2))[:, 0, 0] > 0


def test_rows_are_dropped_or_scaled_like_timms_drop_path() -> None:
    layer = SampleDropPath(0.25).train()
    torch.manual_seed(0)
    out = layer(torch.ones(4000, 5))
    assert set(out[:, 0].unique().tolist()) <= {0.0, torch.tensor(1 / 0.75).item()}
    assert (out == out[:, :1]).all()  # a whole row at once
    assert abs((out[:, 0] == 0).float().mean().item() - 0.25) < 0.03
    assert torch.equal(layer.eval()(torch.ones(8, 5)), torch.ones(8, 5))  # identity at inference
    blocks = make_blocks(16, 3, 2, 2.0, True, 1e-6, drop_path=0.2)
    assert [b.drop_path2.drop_prob for b in blocks] == [0.0, 0.1, 0.2]
    assert set(blocks[0].state_dict()) == set(make_blocks(16, 1, 2, 2.0, True, 1e-6)[0].state_dict())


def test_a_samples_drops_do_not_depend_on_the_batch_it_lands_in() -> None:
    """One batch of samples 0-5 in one process, or samples 0-2 and 3-5 on two ranks: each sample drops the same
    layers, in each view of a stacked pair of views; other samples of the batch draw differently."""
    net = torch.nn.ModuleList([SampleDropPath(0.5), SampleDropPath(0.5), SampleDropPath(0.0)]).train()

    def drops(indices: list[int]) -> list[torch.Tensor]:
        batch = {"index": torch.tensor(indices)}
        with drop_path_draws(net, per_sample_draws(batch, seed=7)) as count:
            assert count == 2  # layers that never drop draw nothing
            rows = len(indices)
            # layer 0 twice (two calls), layer 1 on two stacked views
            return [kept_rows(net[0], rows), kept_rows(net[0], rows), kept_rows(net[1], 2 * rows)]

    whole, first, second = drops(list(range(6))), drops([0, 1, 2]), drops([3, 4, 5])
    for w, a, b in zip(whole[:2], first[:2], second[:2]):
        assert torch.equal(w, torch.cat([a, b]))
    two_views = whole[2].view(2, 6)
    assert torch.equal(two_views, torch.cat([first[2].view(2, 3), second[2].view(2, 3)], dim=1))
    kept = torch.stack([*whole[:2], *two_views])
    assert 0 < kept.float().mean() < 1 and not all(torch.equal(kept[0], k) for k in kept[1:])
    assert net[0].draws is None  # the context is over: the global RNG again
    torch.manual_seed(1)
    a = kept_rows(net[0], 64)
    torch.manual_seed(1)
    assert torch.equal(a, kept_rows(net[0], 64))


def test_rows_that_are_not_whole_views_draw_from_the_global_rng() -> None:
    layer = SampleDropPath(0.5).train()
    with drop_path_draws(layer, per_sample_draws({"index": torch.tensor([0, 1, 2])}, seed=7)):
        torch.manual_seed(3)
        a = kept_rows(layer, 4)
        torch.manual_seed(3)
        assert torch.equal(a, kept_rows(layer, 4))
