"""`geomed-ssl methods` and docs/methods.md come from the methods' own declarations and cannot drift."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from geomed_ssl.cli import app
from geomed_ssl.methods import METHODS
from geomed_ssl.methods.catalog import methods_markdown, shipped

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_committed_methods_md_equals_the_generated_text() -> None:
    assert (ROOT / "docs" / "methods.md").read_text() == methods_markdown(), (
        "docs/methods.md is stale: regenerate it with `geomed-ssl methods --markdown > docs/methods.md`")


def test_methods_command_lists_every_method_with_its_views_and_settings() -> None:
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0, result.output
    for name, cls in METHODS.items():
        assert f"{name}  (" in result.output
        assert cls.views.describe() in result.output
        section = result.output.split(f"{name}  (", 1)[1]
        for info in shipped().get(name, {"settings": []})["settings"]:
            assert f"    {info.key} = " in section, (name, info.key)


def test_methods_markdown_option_prints_the_docs_table() -> None:
    result = runner.invoke(app, ["methods", "--markdown"])
    assert result.exit_code == 0 and result.output == methods_markdown()
    named = runner.invoke(app, ["methods", "--markdown", "mae"])  # the names would be ignored: refused
    assert named.exit_code == 2 and "give method names without it" in named.output


def test_unknown_method_name_is_one_line_naming_the_available_ones() -> None:
    result = runner.invoke(app, ["methods", "simclrr"])
    from geomed_ssl.methods.registry import METHODS

    available = ", ".join(sorted(METHODS))  # with any test module's own method (toy) registered before
    assert result.exit_code == 2 and f"method 'simclrr' is unknown; available: {available}." in result.output


def test_every_recipe_a_method_names_ships_and_every_recipe_is_named_by_its_method() -> None:
    import yaml

    missing = [r for d in shipped().values() for r in d["card"].recipes if not (ROOT / r).is_file()]
    assert missing == []
    cards = shipped()
    unlisted = [f"recipes/{p.name}" for p in sorted((ROOT / "recipes").glob("*.yaml"))
                if f"recipes/{p.name}" not in cards[yaml.safe_load(p.read_text())["method"]["name"]]["card"].recipes]
    assert unlisted == []  # `geomed-ssl methods NAME` lists them all
