"""Recipe loading: plain dict, YAML file and ``--set section.key=value`` overrides into a validated ``Recipe``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from geomed_ssl.config.sections import SECTIONS, Recipe
from geomed_ssl.config.validation import validate
from geomed_ssl.errors import ConfigError


def _build_section(name: str, values: dict[str, Any], source: str) -> Any:
    cls = SECTIONS[name]
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in valid]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{name}.{unknown[0]}'. Valid keys in '{name}': {', '.join(valid)}."
        )
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    values = {k: _coerce_number(v, types[k], f"{name}.{k}", source) for k, v in values.items()}
    return cls(**values)


def _coerce_number(value: Any, annotation: str, key: str, source: str) -> Any:
    """YAML 1.1 reads ``2e-3`` (no dot) as a string; a float key takes it as the number it means."""
    if isinstance(value, str) and "float" in annotation:
        try:
            return float(value)
        except ValueError:
            if annotation.startswith("float"):
                raise ConfigError(f"{source}: '{key}' must be a number, got '{value}'.") from None
    return value


def recipe_from_dict(raw: dict[str, Any] | None, source: str = "recipe") -> Recipe:
    """Build and validate a ``Recipe`` from a plain dict (missing sections and keys take their defaults)."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe is a mapping of sections ({', '.join(SECTIONS)}), got {type(raw).__name__}.")
    unknown = [k for k in raw if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{source}: unknown section '{unknown[0]}'. Valid sections: {', '.join(SECTIONS)}.")
    sections = {}
    for name in SECTIONS:
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{name}' must be a mapping of key: value.")
        sections[name] = _build_section(name, values, source)
    recipe = Recipe(**sections)
    validate(recipe, source)
    return recipe


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split ``section.key=value``; the value is parsed as YAML (numbers, lists, null, booleans)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set '{text}': expected section.key=value, e.g. --set train.max_steps=200.")
    dotted, value = text.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError as err:
        inner = value.strip()
        if inner.startswith("[") and inner.endswith("]"):  # a list of globs: YAML reads a leading * as an alias
            parsed = [item.strip().strip("'\"") for item in inner[1:-1].split(",") if item.strip()]
        else:
            raise ConfigError(f"--set '{text}': the value is not valid YAML ({err}).") from None
    return section.strip(), key.strip(), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``--set section.key=value`` strings to a raw recipe dict (a new dict is returned)."""
    raw = {k: dict(v or {}) for k, v in (raw or {}).items()}
    for text in overrides or []:
        section, key, value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(f"--set '{text}': unknown section '{section}'. Valid sections: {', '.join(SECTIONS)}.")
        raw.setdefault(section, {})[key] = value
    return raw


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe (``None``: all defaults), apply overrides, validate."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"recipe '{path}' not found. Pass a YAML file, e.g. recipes/mae_sentinel2.yaml.")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"recipe '{path}' is not valid YAML: {err}") from None
    return recipe_from_dict(apply_overrides(raw, overrides), source)
