"""Step-based schedules give DINO's values (its numpy ``cosine_scheduler`` and ``linspace`` warmup) at each step."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geomed_ssl.methods.schedules import ScheduleClock, cosine, linear_warmup, teacher_momentum, warmup_cosine


def official_cosine_scheduler(base: float, final: float, total: int, warmup: int = 0, start: float = 0.0) -> np.ndarray:
    """DINO's utils.cosine_scheduler with one iteration per epoch (the reference the schedules follow)."""
    warm = np.linspace(start, base, warmup) if warmup > 0 else np.array([])
    iters = np.arange(total - warmup)
    sched = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warm, sched))


@pytest.mark.parametrize("warmup", [0, 7])
def test_cosine_matches_official_scheduler_at_every_step(warmup: int) -> None:
    ref = official_cosine_scheduler(0.04, 0.4, 50, warmup, start=0.01)
    got = [cosine(i, 0.04, 0.4, 50, warmup, warmup_start=0.01) for i in range(50)]
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert cosine(50, 0.04, 0.4, 50) == 0.4 and cosine(10**6, 0.04, 0.4, 50) == 0.4


def test_weight_decay_and_momentum_endpoints_and_midpoint() -> None:
    assert cosine(0, 0.04, 0.4, 100) == pytest.approx(0.04)
    assert cosine(50, 0.04, 0.4, 100) == pytest.approx(0.22)
    assert teacher_momentum(0, 0.996, 100) == pytest.approx(0.996)
    assert teacher_momentum(50, 0.996, 100) == pytest.approx(0.998)
    assert teacher_momentum(100, 0.996, 100) == 1.0
    values = [teacher_momentum(i, 0.996, 100) for i in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_teacher_temperature_warmup_is_linspace_then_constant() -> None:
    ref = np.concatenate((np.linspace(0.04, 0.07, 30), np.full(20, 0.07)))
    np.testing.assert_allclose([linear_warmup(i, 0.04, 0.07, 30) for i in range(50)], ref, rtol=1e-12)
    assert linear_warmup(0, 0.04, 0.07, 0) == 0.07
    assert math.isclose(linear_warmup(15, 0.04, 0.07, 31), 0.055)


def test_lr_ramp_warmup_trains_from_step_0_then_follows_the_same_cosine() -> None:
    assert [warmup_cosine(s, 4, 100) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # (step + 1) / warmup
    assert [warmup_cosine(s, 4, 100, 0.01) for s in range(4, 101)] == [cosine(s, 1.0, 0.01, 100, 4)
                                                                        for s in range(4, 101)]
    assert warmup_cosine(100, 4, 100, 0.01) == 0.01 and warmup_cosine(0, 0, 100) == 1.0
    with pytest.raises(ValueError, match="warmup"):
        cosine(0, 1.0, 0.0, 10, 2, warmup="exponential")


def test_fresh_and_plainly_resumed_clocks_are_the_identity() -> None:
    fresh = ScheduleClock(100)
    resumed = fresh.resumed(37, 100)
    assert [fresh(s) for s in range(101)] == list(range(101))
    assert [resumed(s) for s in range(101)] == list(range(101))


def test_clock_resumed_with_more_steps_continues_without_a_jump_and_ends_at_the_schedule_end() -> None:
    clock = ScheduleClock(100).resumed(40, 250)
    assert [clock(s) for s in range(41)] == list(range(41))  # the steps already done keep their values
    assert clock(250) == 100 and clock(145) == pytest.approx(70)  # the rest, 60 schedule steps over 210 steps
    lr = [cosine(clock(s), 1.0, 0.0, 100, warmup_steps=10) for s in range(251)]
    jumps = np.abs(np.diff(lr))
    assert jumps[40:].max() <= jumps[:40].max()  # no step after the resume moves more than a normal step
    assert np.all(np.diff(lr[40:]) <= 0) and lr[-1] == pytest.approx(0.0)


def test_clock_survives_two_resumes_and_its_dict() -> None:
    clock = ScheduleClock(100).resumed(40, 250).resumed(145, 400)
    again = ScheduleClock.from_dict(clock.to_dict())
    assert [again(s) for s in range(0, 401, 7)] == [clock(s) for s in range(0, 401, 7)]
    assert clock(145) == pytest.approx(70) and clock(400) == 100 and clock(100) == pytest.approx(100 - 60 * 150 / 210)


def test_resuming_twice_with_the_same_end_keeps_every_value_bit_identical_and_adds_no_knot() -> None:
    stretched = ScheduleClock(100).resumed(40, 250)
    again = stretched.resumed(97, 250).resumed(163, 250)
    assert again.knots == stretched.knots
    assert [again(s) for s in range(251)] == [stretched(s) for s in range(251)]  # exact floats, not approx


def test_a_part_frozen_for_the_whole_run_is_warned_about_and_swav_freezes_a_share_of_the_run_by_default(caplog):
    """SwAV froze its prototypes for a fixed 100 steps: a run of 100 steps or fewer (the recipes' small try: half of
    it) never trained them, without a word. Now null (the default): 10 % of the run; an explicit freeze as long as
    the run is warned about, for DINO's last layer too."""
    from geomed_ssl.methods.base import MethodContext
    from geomed_ssl.methods.dino import DINOSettings
    from geomed_ssl.methods.swav import SwAV, SwAVSettings
    from geomed_ssl.models.encoder import EncoderConfig

    cfg = EncoderConfig(in_chans=3, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=1, num_heads=2)
    settings = {"proj_hidden_dim": 16, "proj_dim": 8, "n_prototypes": 4}
    assert SwAV(cfg, settings, max_steps=200).freeze_prototypes_steps == 20
    assert SwAV(cfg, {**settings, "freeze_prototypes_steps": 7}, max_steps=200).freeze_prototypes_steps == 7
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        SwAVSettings(freeze_prototypes_steps=100).check("recipe.yaml", MethodContext(max_steps=100))
        DINOSettings(freeze_last_layer_steps=50).check("dino.yaml", MethodContext(max_steps=3))
        SwAVSettings(freeze_prototypes_steps=10).check("ok.yaml", MethodContext(max_steps=100))
        SwAVSettings(freeze_prototypes_steps=100).check("method", MethodContext(max_steps=100))  # the method's own
        # check of the same settings: said once
    said = " ".join(caplog.text.split())
    assert "recipe.yaml: method.freeze_prototypes_steps 100 >= train.max_steps 100: that part stays frozen" in said
    assert "dino.yaml: method.freeze_last_layer_steps 50 >= train.max_steps 3" in said and "ok.yaml" not in said
    assert said.count("method.freeze_prototypes_steps 100 >=") == 1
    from geomed_ssl.once import command_scope

    caplog.clear()
    with command_scope(), caplog.at_level("WARNING", logger="geomed_ssl"):  # a new command: said again
        SwAVSettings(freeze_prototypes_steps=100).check("runB.yaml", MethodContext(max_steps=100))
        with command_scope():  # a command inside it (compare's fine-tunes): not said again
            SwAVSettings(freeze_prototypes_steps=100).check("runC.yaml", MethodContext(max_steps=100))
    assert "runB.yaml: method.freeze_prototypes_steps 100 >=" in caplog.text and "runC.yaml" not in caplog.text
