"""The method registry and each method's own settings: declared in the method's file, checked when a recipe's
``method:`` section is resolved, with unknown keys naming that method's valid ones."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from geomed_ssl.config import MethodConfig, load_recipe, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods import (METHODS, DINOSettings, MAESettings, MethodSettings, SSLMethod, build_method,
                                describe_methods, method_settings, register_method, resolve_method_settings,
                                with_method_settings)
from geomed_ssl.models.encoder import EncoderConfig

RECIPES = sorted(Path(__file__).resolve().parents[2].joinpath("recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_has_valid_method_settings(path: Path) -> None:
    settings = resolve_method_settings(load_recipe(path), str(path))
    assert type(settings) is METHODS[load_recipe(path).method.name].Settings


def test_unknown_key_names_the_methods_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'method\.temperature'\. Valid keys for method 'dino': out_dim, "
                                          r"head_hidden_dim, .*koleo_loss_weight\.$"):
        method_settings(MethodConfig("dino", temperature=0.2), "recipe.yaml")


def test_wrong_type_names_the_key_value_and_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"^recipe\.yaml: method\.centering must be one of ema, sinkhorn, none, "
                                          r"got 'mean'\.$"):
        method_settings(MethodConfig("dino", centering="mean"), "recipe.yaml")


def test_defaults_are_the_methods_own() -> None:
    assert method_settings(MethodConfig("mae")) == MAESettings()
    assert MAESettings().mask_ratio == 0.75 and DINOSettings().out_dim == 65536


def test_resolved_recipe_lists_every_setting_of_its_method_only() -> None:
    recipe = with_method_settings(load_recipe(None, ["method.name=dino", "method.out_dim=64"]))
    section = recipe.method.to_dict()
    assert section["name"] == "dino" and section["out_dim"] == 64
    assert set(section) == {"name"} | {f.name for f in dataclasses.fields(DINOSettings)}


def test_method_switch_by_set_resolves_to_the_new_methods_defaults() -> None:
    recipe = load_recipe(RECIPES[0].parent / "dino_sentinel2.yaml", ["method.name=mae"])
    assert resolve_method_settings(recipe) == MAESettings()


def test_cross_setting_rule_is_checked_on_resolve() -> None:
    recipe = load_recipe(None, ["method.decoder_embed_dim=30", "method.decoder_num_heads=4"])
    with pytest.raises(ConfigError, match="must be divisible by method.decoder_num_heads"):
        resolve_method_settings(recipe)


def test_rule_against_the_recipe_model_section_is_checked_on_resolve() -> None:
    recipe = load_recipe(None, ["method.channel_sampling=true"])
    with pytest.raises(ConfigError, match="method.channel_sampling needs model.embedding=spectral or wavelength"):
        resolve_method_settings(recipe)


def test_saved_config_of_an_earlier_version_leaves_out_other_methods_keys() -> None:
    flat = MethodConfig("mae", mask_ratio=0.6, out_dim=65536, centering="ema")  # earlier versions saved every key
    with pytest.raises(ConfigError, match="unknown key 'method.out_dim'"):
        method_settings(flat)
    assert method_settings(flat, saved=True) == MAESettings(mask_ratio=0.6)


def test_build_method_takes_a_section_or_typed_settings() -> None:
    enc = EncoderConfig(in_chans=3, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=1, num_heads=2)
    small = dict(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    a = build_method(MethodConfig("mae", **small), enc, 10)
    b = build_method(MAESettings(**small), enc, 10)
    assert type(a) is type(b) and a.settings == b.settings


def test_method_built_in_python_checks_typed_settings_too() -> None:
    enc = EncoderConfig(in_chans=3, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(ConfigError, match=r"method\.mask_ratio must be a number in \(0, 1\), got 0"):
        build_method(MAESettings(mask_ratio=0, decoder_embed_dim=32, decoder_num_heads=2), enc, 10)


@dataclasses.dataclass
class ToySettings(MethodSettings):
    temperature: float = setting(0.2, "softmax temperature", bounds="> 0")


def test_a_method_in_one_file_registers_with_its_settings() -> None:
    @register_method
    class Toy(SSLMethod):
        name = "toy_registry_test"
        Settings = ToySettings

    try:
        assert METHODS["toy_registry_test"] is Toy
        recipe = load_recipe(None, ["method.name=toy_registry_test", "method.temperature=0.5"])
        assert resolve_method_settings(recipe) == ToySettings(temperature=0.5)
        info = describe_methods()["toy_registry_test"]["settings"][0]
        assert (info.key, info.type, info.default, info.meaning) == ("temperature", "a number > 0", 0.2,
                                                                     "softmax temperature")
        with pytest.raises(ConfigError, match=r"method\.temperature must be a number > 0, got 0"):
            resolve_method_settings(load_recipe(None, ["method.name=toy_registry_test", "method.temperature=0"]))
    finally:
        METHODS.pop("toy_registry_test", None)


def test_settings_may_not_declare_name() -> None:
    @dataclasses.dataclass
    class Named(MethodSettings):
        name: str = setting("x", "clashes with method.name")

    class Bad(SSLMethod):
        name = "bad_registry_test"
        Settings = Named

    with pytest.raises(TypeError, match="must not declare 'name'"):
        register_method(Bad)


def test_every_method_setting_is_in_the_cli_reference() -> None:
    doc = Path(__file__).resolve().parents[2].joinpath("docs", "cli.md").read_text()
    missing = [f"{name}: {info.key}" for name, d in describe_methods().items() for info in d["settings"]
               if f"`method.{info.key}`" not in doc and f"`{info.key}`" not in doc]
    assert not missing, f"docs/cli.md does not list {missing}"
