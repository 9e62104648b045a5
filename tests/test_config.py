"""Recipes: YAML load, overrides, validation messages."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from geomed_ssl.config import (SECTIONS, MethodConfig, Recipe, TrainConfig, as_tuple, describe_settings, load_recipe,
                               parse_override, recipe_from_dict, validate)
from geomed_ssl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(ROOT.joinpath("recipes").glob("*.yaml"))


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
    with pytest.raises(ConfigError, match=r"unknown key 'train\.max_step'. Did you mean 'train\.max_steps'\?"):
        load_recipe(None, ["train.max_step=5"])
    with pytest.raises(ConfigError, match=r"unknown key 'train\.zzz'. Valid keys"):  # no near miss: no guess
        load_recipe(None, ["train.zzz=5"])


def test_unknown_section_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown section 'trian'. Did you mean 'train'"):
        load_recipe(None, ["trian.max_steps=5"])


def test_malformed_override_says_the_expected_form() -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("max_steps")
    with pytest.raises(ConfigError, match=r"overrides is a list .* e.g. \['train.max_steps=5'\]"):
        load_recipe(None, "train.max_steps=5")  # from Python: one string, not read letter by letter
    from geomed_ssl.config import as_recipe
    with pytest.raises(ConfigError, match="overrides is a list"):
        as_recipe(None, "train.max_steps=5", task="segment")  # pretrain's and finetune's way in


def test_a_bad_value_given_with_set_is_blamed_on_the_set_values_not_the_recipe_alone() -> None:
    # 2:1 without the space after the colon is a string key with no value, not a pair
    with pytest.raises(ConfigError, match=r"recipes/mae_mri.yaml with its --set values: labels.remap"):
        load_recipe("recipes/mae_mri.yaml", ["labels.remap={2:1}"])
    # the same for a saved run's config.yaml read back with --set values (pretrain --resume)
    from geomed_ssl.config import recipe_with_overrides

    with pytest.raises(ConfigError, match=r"run/config.yaml with its --set values: labels.remap"):
        recipe_with_overrides({"train": {"max_steps": 5}}, ["labels.remap={2:1}"], "run/config.yaml")
    with pytest.raises(ConfigError, match=r"^run/config.yaml: labels.remap"):
        recipe_with_overrides({"labels": {"remap": {121: None}}}, None, "run/config.yaml")


def test_numbers_are_never_read_in_base_60_and_an_unspaced_mapping_gets_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"got \{'2:1': null, '3:1': null\}\. YAML needs a space after each "
                                          r"colon of a mapping: write \{2: 1\}, not \{2:1\}"):
        load_recipe("recipes/mae_mri.yaml", ["labels.remap={2:1, 3:1}"])  # YAML 1.1 would read {121: null, ...}
    assert load_recipe(None, ["labels.remap={2: 1, 3: 1}"]).labels.remap == {2: 1, 3: 1}
    path = tmp_path / "r.yaml"
    path.write_text("labels:\n  remap: {2:1}\n")
    with pytest.raises(ConfigError, match=r"r.yaml: labels.remap .* write \{2: 1\}, not \{2:1\}"):
        load_recipe(path)
    assert load_recipe(None, ["train.base_lr=1.5e-3", "train.max_steps=0x10"]).train.max_steps == 16
    with pytest.raises(ConfigError, match=r"\[1, '2:1'\]\.$"):  # a list: no mapping hint
        load_recipe(None, ["finetune.class_weights=[1, 2:1]"])
    with pytest.raises(ConfigError, match=r"^--set 'labels.remap=\{2: 1, 2: 3\}': '2' is written twice; give each "
                                          r"key once\.$"):
        load_recipe(None, ["labels.remap={2: 1, 2: 3}"])


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
    with pytest.raises(ConfigError, match=r"train\.base_lr must be a number >= 0, got 'fast'"):
        load_recipe(None, ["train.base_lr=fast"])


def test_glob_lists_parse_without_quotes() -> None:
    r = load_recipe(None, ["data.exclude=[*aseg*, *mask*]", "data.channels=[*Flair*,*T1c*]"])
    assert r.data.exclude == ["*aseg*", "*mask*"] and r.data.channels == ["*Flair*", "*T1c*"]


# ---- declared types and ranges ---------------------------------------------------------------------------------
def test_every_recipe_key_declares_a_meaning() -> None:
    for name, cls in SECTIONS.items():
        if cls is MethodConfig:
            continue
        for info in describe_settings(cls):
            assert info.meaning and info.type, f"{name}.{info.key} has no declared meaning or type"


def test_boolean_is_not_taken_for_an_integer() -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size must be an integer in \[1, 1048576\], got true\.$"):
        load_recipe(None, ["train.batch_size=true"])


def test_integral_numbers_are_integers_and_integers_are_floats_for_float_keys() -> None:
    r = load_recipe(None, ["train.max_steps=1e3", "train.batch_size=16.0", "train.base_lr=1"])
    assert r.train.max_steps == 1000 and isinstance(r.train.max_steps, int)
    assert r.train.batch_size == 16 and isinstance(r.train.batch_size, int)
    assert r.train.base_lr == 1.0 and isinstance(r.train.base_lr, float)


def test_message_names_the_source_key_value_and_allowed_range(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("train:\n  batch_size: 2.5\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}: train.batch_size must be an integer in [1, 1048576], got 2.5."


def test_lists_are_checked_item_by_item_and_by_length() -> None:
    with pytest.raises(ConfigError, match=r"data\.patch_size must be an integer or a list of integers, each >= 1, "
                                          r"got \[32, 0\]"):
        load_recipe(None, ["data.patch_size=[32, 0]"])
    with pytest.raises(ConfigError, match=r"train\.betas must be a list of 2 numbers, each in \[0, 1\), got \[0\.9\]"):
        load_recipe(None, ["train.betas=[0.9]"])


def test_not_a_number_is_refused_except_where_declared() -> None:
    with pytest.raises(ConfigError, match=r"train\.base_lr must be a number >= 0, got nan\."):
        load_recipe(None, ["train.base_lr=.nan"])
    assert math.isnan(load_recipe(None, ["data.nodata=.nan"]).data.nodata)


def test_section_built_in_python_is_checked_by_validate() -> None:
    with pytest.raises(ConfigError, match=r"recipe: train\.max_steps must be an integer in \[1, 1000000000\], got 0"):
        validate(Recipe(train=TrainConfig(max_steps=0)), "recipe")


def test_recipe_whose_top_level_is_a_list_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("- data\n- model\n")
    with pytest.raises(ConfigError, match="a recipe is a mapping of sections"):
        load_recipe(path, ["train.max_steps=2"])


def test_section_that_is_not_a_mapping_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("data: 5\n")
    with pytest.raises(ConfigError, match="section 'data' must be a mapping of key: value, got 5"):
        load_recipe(path, ["data.kind=raster"])


def test_window_of_too_many_tokens_is_refused() -> None:
    with pytest.raises(ConfigError, match="more than 65536"):
        load_recipe(None, ["data.patch_size=2048", "model.patch_size=4"])


def test_invalid_yaml_message_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {kind: raster\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(bad)
    assert "\n" not in str(err.value)


# ---- the method section: a name and the method's own settings, kept as written --------------------------------
def test_method_section_keeps_its_settings_for_the_method_to_check() -> None:
    r = load_recipe(ROOT / "recipes" / "dino_sentinel2.yaml")
    assert r.method.name == "dino" and r.method.settings["out_dim"] == 16384
    assert r.to_dict()["method"]["name"] == "dino" and r.to_dict()["method"]["out_dim"] == 16384


def test_method_section_round_trips_through_yaml(tmp_path: Path) -> None:
    r = load_recipe(ROOT / "recipes" / "dino_ct.yaml", ["method.ibot_mask_ratio=[0.2, 0.4]"])
    r.save(tmp_path / "r.yaml")
    assert load_recipe(tmp_path / "r.yaml") == r


def test_switching_method_by_set_drops_the_recipes_method_keys_with_a_note(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        r = load_recipe(ROOT / "recipes" / "mae_sentinel2.yaml", ["method.name=dino"])
    assert r.method == MethodConfig("dino")
    notes = [rec.getMessage() for rec in caplog.records if "method.name=dino" in rec.getMessage()]
    assert len(notes) == 1 and "mask_ratio" in notes[0] and "\n" not in notes[0]


def test_settings_given_with_set_survive_a_method_switch() -> None:
    r = load_recipe(ROOT / "recipes" / "mae_sentinel2.yaml", ["method.out_dim=64", "method.name=dino"])
    assert r.method == MethodConfig("dino", out_dim=64)


def test_pretraining_schedule_sets_given_to_a_fine_tune_are_named_with_the_setting_it_reads(
        caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from geomed_ssl.cli import app
    from geomed_ssl.config.loading import warn_pretrain_only

    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_pretrain_only(["train.max_steps=2000", "train.seed=3", "train.min_lr=0", "finetune.base_lr=1e-3"],
                           "finetune")
    said = [rec.getMessage() for rec in caplog.records]
    assert said == ["finetune does not read pretraining's schedule settings; ignored: train.max_steps=2000 (use --set "
                    "finetune.max_steps=2000); train.min_lr=0 (no fine-tune setting does this)."]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_pretrain_only(["train.seed=3", "train.precision=32", "finetune.max_steps=9"], "compare")
    assert not caplog.records  # settings a fine-tune reads
    (tmp_path / "images").mkdir()
    result = CliRunner().invoke(app, ["finetune", "segment", "recipes/mae_sentinel2.yaml", "--encoder", "none",
                                      "--images", str(tmp_path / "images"), "--out", str(tmp_path / "ft"),
                                      "--set", "train.batch_size=4", "--set", "finetune.max_steps=0"])
    assert result.exit_code == 2 and "train.batch_size=4 (use --set finetune.batch_size=4)" in result.output


def test_method_name_must_be_a_string() -> None:
    with pytest.raises(ConfigError, match=r"method\.name must be a string, got \[1\]"):
        load_recipe(None, ["method.name=[1]"])


def test_every_recipe_key_is_in_the_cli_reference() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text()
    missing = [f"{name}.{info.key}" for name, cls in SECTIONS.items() if cls is not MethodConfig
               for info in describe_settings(cls) if f"`{name}.{info.key}`" not in doc and f"`{info.key}`" not in doc]
    assert not missing, f"docs/cli.md does not list {missing}"


def test_a_recipe_whose_yaml_aliases_expand_past_a_limit_is_refused_at_once(tmp_path) -> None:
    """A 'billion laughs' recipe (nine levels of ten aliases, under 500 bytes) hung inspect / predict / evaluate
    (an FT_DIR's config.yaml is read by both) while its error message rendered 10^9 values; refused on loading.
    Aliases that stay small are fine."""
    import time

    from geomed_ssl.config import load_recipe
    from geomed_ssl.errors import ConfigError

    levels = ["&a0 [" + ", ".join(["lol"] * 10) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("data:\n  band_names: [" + ", ".join(levels) + "]\n")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="more than 100,000 values once its YAML aliases"):
        load_recipe(bomb)
    assert time.monotonic() - start < 5
    small = tmp_path / "small.yaml"
    small.write_text("data:\n  exclude: &ex ['*mask*']\n  include: ['**/*']\nlabels:\n  ignore_value: 0\n")
    assert load_recipe(small).data.exclude == ["*mask*"]


def test_wavelengths_in_nanometres_are_refused_with_the_micrometres_they_mean() -> None:
    with pytest.raises(ConfigError, match=r"data.wavelengths must be .* each in \(0, 20\].*look like nanometres: "
                                          r"give micrometres, e.g. 443 nm is 0.443"):
        recipe_from_dict({"data": {"wavelengths": [443, 490, 560]}})
    with pytest.raises(ConfigError) as err:
        recipe_from_dict({"data": {"wavelengths": [0.4, -1]}})
    assert "nanometres" not in str(err.value)
    with pytest.raises(ConfigError, match="e.g. 560 nm is 0.56"):
        recipe_from_dict({"data": {"wavelengths": [0.443, 0.49, 560]}})
    assert recipe_from_dict({"data": {"wavelengths": [0.443, 14.5]}}).data.wavelengths == [0.443, 14.5]


def test_an_unknown_sensor_and_a_window_of_the_wrong_rank_name_the_recipe() -> None:
    """Both named the key but not the recipe file it came from."""
    with pytest.raises(ConfigError, match=r"^recipes/mae_sentinel2.yaml.*data.sensor must be null or one of "
                                          r"sentinel2, .*got 'sentinel3000'"):
        load_recipe("recipes/mae_sentinel2.yaml", ["data.sensor=sentinel3000"])
    with pytest.raises(ConfigError, match=r"^recipes/mae_sentinel2.yaml.*'data.patch_size' must be an int or a list "
                                          r"of 2 ints"):
        load_recipe("recipes/mae_sentinel2.yaml", ["data.patch_size=[8,8,8]"])
