"""Recipes: YAML load, overrides, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from geomed_ssl.config import Recipe, as_tuple, load_recipe, parse_override
from geomed_ssl.errors import ConfigError

RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path: Path) -> None:
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert path.read_text().startswith("#"), "each recipe opens with a comment saying when to use it"


def test_overrides_are_parsed_as_yaml_values() -> None:
    r = load_recipe(None, ["train.max_steps=200", "data.exclude=['*mask*', '*seg*']", "data.sensor=null",
                           "model.patch_size=[4, 8]", "data.patch_size=[32, 64]"])
    assert r.train.max_steps == 200 and r.data.exclude == ["*mask*", "*seg*"] and r.data.sensor is None
    assert r.model.patch_size == [4, 8]


def test_unknown_key_names_the_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'train\.max_step'.*max_steps"):
        load_recipe(None, ["train.max_step=5"])


def test_unknown_section_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown section 'trian'"):
        load_recipe(None, ["trian.max_steps=5"])


def test_malformed_override_says_the_expected_form() -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("max_steps")


def test_window_must_be_a_multiple_of_the_token_patch() -> None:
    with pytest.raises(ConfigError, match="not a multiple"):
        load_recipe(None, ["data.patch_size=30", "model.patch_size=8"])


def test_missing_recipe_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_invalid_yaml_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {kind: raster\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)


def test_recipe_round_trips_through_yaml(tmp_path: Path) -> None:
    r = load_recipe(None, ["data.kind=volume", "data.patch_size=[32, 32, 16]", "model.patch_size=[8, 8, 4]"])
    r.save(tmp_path / "r.yaml")
    assert load_recipe(tmp_path / "r.yaml") == r


def test_as_tuple_rejects_wrong_lengths() -> None:
    assert as_tuple(8, 3, "x") == (8, 8, 8)
    with pytest.raises(ConfigError, match="list of 2 ints"):
        as_tuple([8, 8, 8], 2, "model.patch_size")


def test_exponent_without_dot_is_a_number() -> None:
    r = load_recipe(None, ["train.base_lr=2e-3", "finetune.base_lr=1e-4"])
    assert r.train.base_lr == 0.002 and r.finetune.base_lr == 0.0001


def test_non_number_for_a_float_key_is_named() -> None:
    with pytest.raises(ConfigError, match="'train.base_lr' must be a number"):
        load_recipe(None, ["train.base_lr=fast"])


def test_glob_lists_parse_without_quotes() -> None:
    r = load_recipe(None, ["data.exclude=[*aseg*, *mask*]", "data.channels=[*Flair*,*T1c*]"])
    assert r.data.exclude == ["*aseg*", "*mask*"] and r.data.channels == ["*Flair*", "*T1c*"]
