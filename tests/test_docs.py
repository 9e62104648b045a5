"""docs/cli.md stays true: every command and subcommand has a section, and that section names each of its options."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from geomed_ssl.cli import app

CLI_MD = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def commands() -> dict[str, Any]:
    """Every runnable command of the app (click commands, as Typer builds them) by its full name ("pretrain",
    "finetune segment", ...)."""
    found: dict[str, Any] = {}

    def walk(cmd: Any, prefix: str) -> None:
        if hasattr(cmd, "commands"):  # a group (Typer may vendor click, so no isinstance on click's classes)
            for name, sub in cmd.commands.items():
                walk(sub, f"{prefix} {name}".strip())
        else:
            found[prefix] = cmd

    walk(typer.main.get_command(app), "")
    return found


def sections() -> dict[str, str]:
    """docs/cli.md's ``## `geomed-ssl NAME ...` `` sections by command name, each up to the next heading."""
    text = CLI_MD.read_text()
    names = set(commands())
    out: dict[str, str] = {}
    parts = re.split(r"^## ", text, flags=re.M)
    for part in parts[1:]:
        head = re.match(r"`geomed-ssl ((?:[a-z]+)(?: [a-z]+)?)", part)
        if head is None:
            continue
        words = head.group(1)
        name = words if words in names else words.split()[0]
        out[name] = part
    return out


def long_options(cmd: Any) -> list[str]:
    """The command's ``--long`` option names, ``--no-x`` forms of flags included."""
    return [opt for p in cmd.params if p.param_type_name == "option"
            for opt in [*p.opts, *p.secondary_opts] if opt.startswith("--")]


def mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


COMMANDS = sorted(commands())


def test_every_command_has_a_section_in_the_cli_reference() -> None:
    assert sorted(set(COMMANDS) - set(sections())) == []


@pytest.mark.parametrize("name", COMMANDS)
def test_cli_reference_section_names_every_option_of_the_command(name: str) -> None:
    section = sections().get(name, "")
    missing = [opt for opt in long_options(commands()[name]) if not mentions(section, opt)]
    assert missing == [], f"docs/cli.md's section for `geomed-ssl {name}` does not mention {missing}"


def test_cli_reference_names_the_global_options() -> None:
    intro = re.split(r"^## ", CLI_MD.read_text(), flags=re.M)[0]
    group = typer.main.get_command(app)
    assert [opt for opt in long_options(group) if not mentions(intro, opt)] == []
