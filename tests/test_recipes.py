"""Every shipped recipe learns at the budget its header states: warmup ends inside the run, the peak rate is one
AdamW can move weights with, and the header says what budget it is sized for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from geomed_ssl.config import load_recipe
from geomed_ssl.config.lr_check import MIN_PEAK_LR, schedule_problem

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(ROOT.joinpath("recipes").glob("*.yaml"))


def test_recipes_are_found() -> None:
    assert len(RECIPES) >= 6


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_warmup_ends_before_its_last_step(path: Path) -> None:
    t = load_recipe(path).train
    assert t.warmup_steps < t.max_steps


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_peak_rate_at_its_own_batch_can_move_adamw(path: Path) -> None:
    t = load_recipe(path).train
    peak = t.base_lr * t.batch_size * t.accumulate_grad_batches / 256
    assert peak >= MIN_PEAK_LR, peak
    assert schedule_problem(peak, t.warmup_steps, t.max_steps, "train") is None


def test_the_volume_recipes_train_background_as_a_class_and_the_raster_recipes_ignore_0() -> None:
    """Medical label maps mark background with 0, a class; land-cover annotations often leave 0 unlabelled."""
    for path in RECIPES:
        recipe = load_recipe(path)
        assert recipe.labels.ignore_value == (None if recipe.data.kind == "volume" else 0), path.name


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_header_states_the_budget_it_is_sized_for(path: Path) -> None:
    t = load_recipe(path).train
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    found = re.search(r"Budget: sized for train\.batch_size (\d+) x train\.max_steps (\d+)", header)
    assert found, "the header says which batch and steps the recipe is sized for"
    assert (int(found.group(1)), int(found.group(2))) == (t.batch_size, t.max_steps)


SMALL_TRIES = [(p, ln) for p in RECIPES for ln in p.read_text().splitlines() if ln.startswith("# Try it small first:")]


@pytest.mark.parametrize(("path", "line"), SMALL_TRIES, ids=[p.name for p, _ in SMALL_TRIES])
def test_the_headers_small_try_learns_too(path: Path, line: str) -> None:
    """The header's "Try it small first" command, with its --set values, passes the schedule check: three of them
    cut max_steps below the recipe's warmup, and the toolkit then warned that the run "will barely learn"."""
    t = load_recipe(path, overrides=re.findall(r"--set (\S+)", line)).train
    peak = t.base_lr * t.batch_size * t.accumulate_grad_batches / 256
    assert schedule_problem(peak, t.warmup_steps, t.max_steps, "train") is None, line


def test_the_package_carries_the_recipes_folder_and_the_wheel_takes_them() -> None:
    from geomed_ssl.config.loading import BUNDLED_RECIPES, bundled_recipes

    assert BUNDLED_RECIPES.resolve() == ROOT / "recipes"  # geomed_ssl/recipes links the top-level folder
    assert bundled_recipes() == [p.stem for p in RECIPES]
    assert '"recipes/*.yaml"' in (ROOT / "pyproject.toml").read_text()  # package data: in every wheel


def test_a_recipe_path_that_is_not_there_is_the_bundled_recipe_of_that_name(tmp_path, monkeypatch, caplog) -> None:
    import logging

    from geomed_ssl.config.loading import BUNDLED_RECIPES, find_recipe
    from geomed_ssl.errors import ConfigError

    monkeypatch.chdir(tmp_path)  # a folder with no recipes/ in it, as after `pip install geomed-ssl`
    with caplog.at_level(logging.INFO, logger="geomed_ssl"):
        for given in ("recipes/mae_sentinel2.yaml", "mae_sentinel2.yaml", "mae_sentinel2", "recipes/mae_sentinel2"):
            assert find_recipe(given) == BUNDLED_RECIPES / "mae_sentinel2.yaml"
    assert "using the bundled mae_sentinel2" in caplog.text
    from geomed_ssl.once import command_scope
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="geomed_ssl"):
        for _ in range(2):  # one command (compare) reading its recipe twice says it once; the next command again
            with command_scope():
                find_recipe("mae_sentinel2")
                find_recipe("mae_sentinel2")
    assert caplog.text.count("'mae_sentinel2' is not here: using the bundled") == 2
    assert load_recipe("mae_hyperspectral").to_dict() == load_recipe(ROOT / "recipes/mae_hyperspectral.yaml").to_dict()
    (tmp_path / "recipes").mkdir()
    own = tmp_path / "recipes" / "mae_sentinel2.yaml"
    own.write_text("method: {name: dino}\n")
    assert find_recipe("recipes/mae_sentinel2.yaml") == Path("recipes/mae_sentinel2.yaml")  # a file there wins
    assert load_recipe("recipes/mae_sentinel2.yaml").method.name == "dino"
    (tmp_path / "mae_hyperspectral").mkdir()  # a run folder named after its recipe
    assert find_recipe("mae_hyperspectral") == BUNDLED_RECIPES / "mae_hyperspectral.yaml"
    for missing in ("elsewhere/mae_sentinel2.yaml", "no_such_recipe.yaml", "recipes"):
        with pytest.raises(ConfigError, match="bundled recipe by name: .*mae_sentinel2"):
            find_recipe(missing)
