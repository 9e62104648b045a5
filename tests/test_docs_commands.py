"""What the docs tell a user to type works: every ``geomed-ssl`` command line in README.md, docs/*.md and the recipes'
comments parses (its options exist, required ones are there) and its recipe with its ``--set`` values loads and
validates; every ``section.key`` the docs name exists, and every ``section.key=value`` they give validates."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import pytest
import typer

from geomed_ssl.cli import app
from geomed_ssl.config import SECTIONS, MethodConfig, check_values, load_recipe, parse_override
from geomed_ssl.errors import GeomedError
from geomed_ssl.methods import resolve_method_settings
from geomed_ssl.methods.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("data", "model", "method", "augment", "train", "finetune", "labels")
KEY = re.compile(r"(?<![\w./\-$])(" + "|".join(NAMES) + r")\.([A-Za-z_]\w*)"
                 r"(?:=((?:\[(?:[^\[\]]|\[[^\]]*\])*\]|\{[^}]*\}|[^\s`,;)]+)))?")
FILE_SUFFIXES = {"safetensors", "json", "py", "csv", "yaml", "npz", "png", "tif", "nii", "npy", "parquet", "md", "txt"}
PLACEHOLDERS = {"N": "10", "S": "0", "K": "5"}  # --set train.max_steps=N -> 10
SUBSTITUTE = {"$D": "D", "$B": "B", "$SAMPLE": "SAMPLE", "$PWD": "."}


def doc_texts() -> Iterator[tuple[str, str]]:
    """(name, text) of README.md, each docs page, and each recipe's comments (a recipe's YAML is checked by
    test_recipes)."""
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        yield path.name, path.read_text()
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        yield path.name, "\n".join(line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line)


def command_lines(name: str, text: str) -> Iterator[tuple[str, bool]]:
    """Every ``geomed-ssl`` command and whether it is whole: the lines of shell blocks (continuations joined) and, in
    recipes, a command that ends its comment line are; inline code spans in prose (which may run over a line break)
    may name a command with some of its options only."""
    spans = [m.group(1) for m in re.finditer(r"`(geomed-ssl [^`]+)`", text.replace("\n", " "))]
    joined, whole = re.sub(r"\\\n\s*", " ", text), []
    if name.endswith(".yaml"):
        whole += re.findall(r"(?<!`)(geomed-ssl [^`\n]*)$", joined, flags=re.M)
    else:
        blocks = re.findall(r"^```[a-z]*\n(.*?)^```", joined, flags=re.S | re.M)
        blocks += re.findall(r"^    .*$", re.sub(r"^```.*?^```", "", joined, flags=re.S | re.M), flags=re.M)
        for block in blocks:
            whole += re.findall(r"^\s*(?:\w+=\S+\s+)*(geomed-ssl .*)$", block, flags=re.M)
    for line, complete in [(w, True) for w in whole] + [(s, False) for s in spans]:
        tokens = shlex.split(line.split(" # ", 1)[0].split("  #", 1)[0])
        synopsis = any(t in ("|", "...") or ("=" not in t and any(c in t for c in "[]|(<")) for t in tokens)
        if not synopsis:
            yield " ".join(shlex.quote(t) for t in tokens), complete


def parse(line: str) -> tuple[list[str], Any, list[str]]:
    """(subcommand path, click command, its arguments)."""
    for k, v in SUBSTITUTE.items():
        line = line.replace(k, v)
    argv = shlex.split(line)[1:]
    cmd, path = typer.main.get_command(app), []
    while hasattr(cmd, "commands"):
        while argv and argv[0].startswith("-"):  # global options: --quiet
            argv = argv[1:]
        assert argv and argv[0] in cmd.commands, f"unknown command in: {line}"
        path.append(argv[0])
        cmd, argv = cmd.commands[argv[0]], argv[1:]
    return path, cmd, argv


def recipe_and_sets(path: list[str], argv: list[str]) -> tuple[str | None, list[str]]:
    sets = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--set"]
    sets = [re.sub(r"=(N|S|K)$", lambda m: "=" + PLACEHOLDERS[m.group(1)], s) for s in sets if "..." not in s]
    first = next((a for a in argv if not a.startswith("-")), None)
    recipe = argv[argv.index("--recipe") + 1] if "--recipe" in argv else first if path[0] in ("pretrain", "finetune") \
        else None
    if path == ["finetune", "classify"]:
        sets.append("finetune.task=classify")
    return (recipe if recipe and recipe.startswith("recipes/") else None), sets


def all_commands() -> list[tuple[str, str, bool]]:
    return [(name, line, whole) for name, text in doc_texts() for line, whole in command_lines(name, text)]


@pytest.mark.parametrize("name,line,whole", all_commands(), ids=lambda v: v[:60] if isinstance(v, str) else "")
def test_every_command_line_in_the_docs_parses_and_validates(name: str, line: str, whole: bool, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the docs give recipe paths from the repository root
    path, cmd, argv = parse(line)
    options = {o for p in cmd.params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]}
    unknown = [a for a in argv if a.startswith("--") and a.split("=", 1)[0] not in options]
    assert not unknown, f"{name}: `{line}`: geomed-ssl {' '.join(path)} has no option {', '.join(unknown)}"
    if whole:
        try:
            cmd.make_context(" ".join(path), list(argv))
        except Exception as err:  # click's usage errors (Typer may vendor click: no isinstance)
            raise AssertionError(f"{name}: `{line}` does not parse: {err}") from None
    recipe, sets = recipe_and_sets(path, argv)
    if recipe is None and (not sets or any(s.startswith("method.") for s in sets)):
        return  # a run's own recipe (RUN_DIR, config.yaml): its method's settings cannot be checked here
    try:
        resolve_method_settings(load_recipe(recipe, sets), recipe or "defaults")
    except GeomedError as err:
        raise AssertionError(f"{name}: `{line}` does not validate: {err}") from None


def method_keys() -> dict[str, set[str]]:
    return {name: {f.name for f in dataclasses.fields(cls.Settings)} for name, cls in METHODS.items()}


def setting_problem(section: str, key: str, value: str | None) -> str | None:
    """Why ``section.key[=value]`` is not a valid setting, or None."""
    owners = [m for m, keys in method_keys().items() if key in keys] if section == "method" else [section]
    if section == "method" and key != "name" and not owners:
        return f"no method has a setting method.{key}"
    if section != "method" and key not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
        return f"section {section} has no key {key}"
    if value is None or value.rstrip(".") in PLACEHOLDERS or "..." in value or key == "name":
        return None
    if "|" in value and not value.startswith(("[", "{")):  # alternatives: finetune.probe=linear|knn
        return "; ".join(filter(None, (setting_problem(section, key, v) for v in value.split("|")))) or None
    _, _, parsed = parse_override(f"{section}.{key}={value.rstrip('.')}")
    errors = []
    for owner in owners:  # valid for one method that has the key is enough
        try:
            check_values(METHODS[owner].Settings if section == "method" else SECTIONS[section], {key: parsed},
                         section, "docs")
            return None
        except GeomedError as err:
            errors.append(str(err))
    return "; ".join(errors)


def test_every_setting_the_docs_name_exists_and_its_values_validate() -> None:
    assert MethodConfig not in [SECTIONS[n] for n in NAMES if n != "method"]
    problems = []
    for name, text in doc_texts():
        for lineno, line in enumerate(text.splitlines(), 1):
            for m in KEY.finditer(line):
                section, key, value = m.groups()
                if key not in FILE_SUFFIXES and (why := setting_problem(section, key, value)):
                    problems.append(f"{name}:{lineno}: {m.group(0)}: {why}")
    assert not problems, "\n".join(problems)


def test_the_docs_hold_command_lines_to_check() -> None:
    found = all_commands()
    assert sum(whole for *_, whole in found) > 50 and any("compare" in line for _, line, _ in found)
