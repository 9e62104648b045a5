"""Per-sample randomness: a sample's draws depend on its global index, not on its rank or batch position."""

from __future__ import annotations

import torch

from geomed_ssl.methods.base import PerSample, mix_seed


def step_generator(seed: int = 11) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_samples_draws_do_not_depend_on_how_the_batch_is_split() -> None:
    whole = PerSample(step_generator(), range(8)).rand(16)  # (8, 16): one process, batch 8
    halves = [PerSample(step_generator(), range(r * 4, r * 4 + 4)).rand(16) for r in range(2)]  # 2 ranks x 4
    assert torch.equal(whole, torch.cat(halves))
    assert not torch.equal(whole[0], whole[1])  # samples differ


def test_draws_change_with_the_step_generator_and_the_stream() -> None:
    a = PerSample(step_generator(1), [3]).rand(8)
    assert not torch.equal(a, PerSample(step_generator(2), [3]).rand(8))
    ps = PerSample(step_generator(1), [3])
    assert not torch.equal(ps.rand(8, stream=0), ps.rand(8, stream=1))


def test_batch_without_indices_counts_as_samples_from_zero() -> None:
    batch = {"image": torch.zeros(3, 1, 4, 4)}
    assert PerSample.from_batch(batch, step_generator()).indices == [0, 1, 2]
    batch["index"] = torch.tensor([7, 8, 9])
    assert PerSample.from_batch(batch, step_generator()).indices == [7, 8, 9]


def test_mixed_seeds_differ_for_neighbouring_keys() -> None:
    seeds = {mix_seed(5, 0, i) for i in range(1000)} | {mix_seed(5, 1, i) for i in range(1000)}
    assert len(seeds) == 2000 and all(0 <= s < 2**63 for s in seeds)
