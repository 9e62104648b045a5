"""Recipe loading: plain dict, YAML file and ``--set section.key=value`` overrides into a validated ``Recipe``."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from geomed_ssl.config.fields import build_checked, did_you_mean, show
from geomed_ssl.config.sections import CLS_HEADS, SECTIONS, SEG_HEADS, MethodConfig, Recipe
from geomed_ssl.config.validation import method_section, validate
from geomed_ssl.errors import ConfigError
from geomed_ssl.once import said_set

log = logging.getLogger("geomed_ssl")


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key written twice in one mapping (plain YAML keeps the last one, so a
    recipe with two ``train:`` sections would silently lose the first)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"'{key}' is written twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# YAML 1.1's implicit int and float forms without the base-60 ones (YAML 1.2 has none): with them ``{2:1}``, a
# mapping written without the space after its colon, reads as the number 121.
_NUMBERS = {
    "tag:yaml.org,2002:int": re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)"
                                        r"|[-+]?0x[0-9a-fA-F_]+)$"),
    "tag:yaml.org,2002:float": re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?"
                                          r"|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
                                          r"|\.(?:nan|NaN|NAN))$"),
}


class RecipeLoader(UniqueKeyLoader):
    """The loader of recipe files and ``--set`` values: safe, a key written twice refused, no base-60 numbers."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, _NUMBERS.get(tag, regexp)) for tag, regexp in pairs]
    for first, pairs in yaml.SafeLoader.yaml_implicit_resolvers.items()}


MAX_VALUES = 100_000  # values a recipe may hold once YAML aliases are expanded (a real one holds a few hundred)


def expanded_size(value: Any, memo: dict[int, int] | None = None) -> int:
    """How many values ``value`` holds with its shared parts (YAML aliases) counted at every place they appear,
    computed once per shared part: a "billion laughs" recipe of 444 bytes is 10^9 values."""
    memo = {} if memo is None else memo
    if id(value) in memo:
        return memo[id(value)]
    memo[id(value)] = 1  # a cycle (a recursive alias) counts once
    if isinstance(value, dict):
        size = 1 + sum(expanded_size(k, memo) + expanded_size(v, memo) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        size = 1 + sum(expanded_size(v, memo) for v in value)
    else:
        size = 1
    memo[id(value)] = size
    return size


def _check_expansion(raw: Any, source: str) -> Any:
    """``raw``, or a ConfigError when its aliases expand it past ``MAX_VALUES`` (every later walk of the recipe,
    validation and its messages included, would expand them)."""
    if isinstance(raw, (dict, list)) and expanded_size(raw) > MAX_VALUES:
        raise ConfigError(f"{source} holds more than {MAX_VALUES:,} values once its YAML aliases (*name) are "
                          "expanded; write the recipe without nested aliases.")
    return raw


def _sections(raw: Any, source: str) -> dict[str, dict[str, Any]]:
    """A copy of ``raw`` after checking its shape: a mapping of known sections, each a mapping (or empty)."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe is a mapping of sections ({', '.join(SECTIONS)}), got "
                          f"{type(raw).__name__} {show(raw, 60)}.")
    unknown = [k for k in raw if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{source}: unknown section '{unknown[0]}'.{did_you_mean(unknown[0], SECTIONS)} Valid "
                          f"sections: {', '.join(SECTIONS)}.")
    out = {}
    for name, values in raw.items():
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{name}' must be a mapping of key: value, got {show(values)}.")
        out[name] = dict(values or {})
    return out


def _build_section(name: str, values: dict[str, Any], source: str) -> Any:
    if SECTIONS[name] is MethodConfig:
        return method_section(values, source)
    return build_checked(SECTIONS[name], values, name, source)


def recipe_from_dict(raw: dict[str, Any] | None, source: str = "recipe") -> Recipe:
    """Build and validate a ``Recipe`` from a plain dict (missing sections and keys take their defaults).

    The ``method`` section's own settings are checked by the named method (``geomed_ssl.methods``
    ``resolve_method_settings``), which every command that pretrains calls before it creates anything."""
    raw = _sections(raw, source)
    recipe = Recipe(**{name: _build_section(name, raw.get(name, {}), source) for name in SECTIONS})
    validate(recipe, source)
    return recipe


def sets_key(overrides: list[str] | None, key: str) -> bool:
    """A ``--set key=...`` is among ``overrides``."""
    return any(o.split("=", 1)[0].strip() == key for o in overrides or [])


# train settings a fine-tune does not read, with the finetune setting that does the same job (None: it has none)
PRETRAIN_ONLY = {"batch_size": "finetune.batch_size", "max_steps": "finetune.max_steps", "base_lr": "finetune.base_lr",
                 "warmup_steps": "finetune.warmup_steps", "weight_decay": "finetune.weight_decay", "min_lr": None,
                 "betas": None, "accumulate_grad_batches": None, "checkpoint_every": None, "keep_checkpoints": None,
                 "checkpoint_minutes": None, "preview_every": None}


def warn_pretrain_only(overrides: Sequence[str] | None, command: str) -> None:
    """One warning naming the ``--set train.K=...`` of ``overrides`` that ``command`` (a fine-tune or compare) does
    not read, each with the ``finetune`` setting that does the job, where one does: without it a user's
    ``--set train.max_steps=2000`` would be dropped without a word."""
    said = []
    for text in override_list(overrides):
        key, _, value = text.partition("=")
        section, _, name = key.strip().partition(".")
        if section == "train" and name in PRETRAIN_ONLY:
            own = PRETRAIN_ONLY[name]
            said.append(f"{text.strip()} (use --set {own}={value.strip()})" if own else f"{text.strip()} (no "
                        "fine-tune setting does this)")
    if said:
        log.warning(f"{command} does not read pretraining's schedule settings; ignored: {'; '.join(said)}.")


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split ``section.key=value``; the value is parsed as YAML (numbers, lists, null, booleans)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set '{text}': expected section.key=value, e.g. --set train.max_steps=200.")
    dotted, value = text.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        parsed = _check_expansion(yaml.load(value, Loader=RecipeLoader), f"--set '{dotted}'") if value != "" else None
    except yaml.YAMLError as err:
        if "written twice" in str(getattr(err, "problem", "")):
            problem = re.sub(r" \(lines .*\)$", "", str(err.problem))  # one line: no line numbers to give
            raise ConfigError(f"--set '{text}': {problem}; give each key once.") from None
        inner = value.strip()
        if inner.startswith("[") and inner.endswith("]"):  # a list of globs: YAML reads a leading * as an alias
            parsed = [item.strip().strip("'\"") for item in inner[1:-1].split(",") if item.strip()]
        else:
            raise ConfigError(f"--set '{text}': the value is not valid YAML ({' '.join(str(err).split())}); "
                              "quote it, e.g. --set 'data.exclude=[\"*mask*\"]'.") from None
    return section.strip(), key.strip(), parsed


def string_list(values: Sequence[str] | None, name: str, what: str) -> list[str]:
    """``values`` (``name``: a list of ``what``) as a list; one string (from Python) is refused, which would be read
    letter by letter."""
    if isinstance(values, (str, bytes)):
        raise ConfigError(f"{name} is a list of {what}, e.g. [{str(values)!r}]; got {values!r}.")
    return list(values or [])


def whole_number(value: Any, name: str) -> int:
    """``value`` (``name``, as the message names it) as an int: an int or numpy integer; a string (from Python), a
    float or a bool is refused."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}.")
    return int(value)


def override_list(overrides: Sequence[str] | None) -> list[str]:
    """``--set`` strings as a list (:func:`string_list`)."""
    return string_list(overrides, "overrides", "'section.key=value' strings")


def apply_overrides(raw: dict[str, Any] | None, overrides: list[str] | None,
                    source: str = "recipe") -> dict[str, Any]:
    """Apply ``--set section.key=value`` strings to a raw recipe dict (a new dict is returned).

    When ``--set method.name`` names another method than the recipe's, the recipe's settings of its method are
    dropped (they belong to that method) with a one-line note; settings given with ``--set`` are kept."""
    overrides = override_list(overrides)
    raw = _sections(raw, source)
    written = dict(raw.get("method", {}))
    set_keys: set[tuple[str, str]] = set()
    for text in overrides or []:
        section, key, value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(f"--set '{text}': unknown section '{section}'.{did_you_mean(section, SECTIONS)} "
                              f"Valid sections: {', '.join(SECTIONS)}.")
        raw.setdefault(section, {})[key] = value
        set_keys.add((section, key))
    if ("method", "name") in set_keys:
        _drop_previous_method(raw["method"], written, set_keys)
    return raw


def _drop_previous_method(method: dict[str, Any], written: dict[str, Any], set_keys: set[tuple[str, str]]) -> None:
    old, new = written.get("name", MethodConfig().name), method["name"]
    dropped = [k for k in written if k != "name" and ("method", k) not in set_keys]
    if old == new or not dropped:
        return
    for key in dropped:
        del method[key]
    log.warning(f"note: --set method.name={new} replaces the recipe's method '{old}'; its settings "
                f"{', '.join(dropped)} are dropped ('{new}' starts from its defaults and your --set values).")


BUNDLED_RECIPES = Path(__file__).resolve().parents[1] / "recipes"  # the repository's recipes/, in every install


_BUNDLED_SAID: set[tuple[str, str]] = said_set()  # (recipe as given, here): the bundled-recipe note said


def bundled_recipes() -> list[str]:
    """Names of the recipes that come with the package (``mae_sentinel2``, ...)."""
    return sorted(p.stem for p in BUNDLED_RECIPES.glob("*.yaml"))


def find_recipe(path: str | Path) -> Path:
    """``path`` when it is a file; else, for a bare name or ``recipes/NAME`` (``.yaml`` optional), the bundled
    recipe of that name (what the docs' ``recipes/...`` commands mean wherever the package was installed)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    bundled = BUNDLED_RECIPES / name
    if path.parent in (Path("."), Path("recipes")) and bundled.is_file():
        here = "is a folder here" if path.is_dir() else "is not here"  # a run folder named after its recipe
        if (str(path), here) not in _BUNDLED_SAID:  # compare reads the recipe twice: said once a command
            _BUNDLED_SAID.add((str(path), here))
            log.info(f"recipe '{path}' {here}: using the bundled {bundled.stem} ({bundled}); copy it to change it.")
        return bundled
    what = "is a folder" if path.is_dir() else "not found"
    raise ConfigError(f"recipe '{path}' {what}. Pass a YAML file, or a bundled recipe by name: "
                      f"{', '.join(bundled_recipes()) or 'none found (reinstall geomed-ssl)'}.")


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe (a file, or a bundled recipe's name: :func:`find_recipe`; ``None``: all defaults),
    apply overrides, validate."""
    raw: Any = {}
    source = "defaults"
    if path is not None:
        path = find_recipe(path)
        source = str(path)
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise ConfigError(f"recipe '{path}' is not a text (YAML) file; pass a recipe such as "
                              "recipes/mae_sentinel2.yaml.") from None
        if not text.strip():
            raise ConfigError(f"recipe '{path}' is empty; copy one of recipes/*.yaml, or leave the recipe out "
                              "where a command allows it.")
        try:
            raw = _check_expansion(yaml.load(text, Loader=RecipeLoader), f"recipe '{path}'") or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"recipe '{path}' is not valid YAML: {' '.join(str(err).split())}") from None
    return recipe_with_overrides(raw, overrides, source)


def as_recipe(recipe: Recipe | str | Path | None, overrides: list[str] | None = None,
              task: str | None = None) -> Recipe:
    """The recipe a Python caller passes, as a checked ``Recipe``: a ``Recipe`` (copied, never changed), a YAML
    path or None (defaults), with ``overrides`` (``--set`` strings) applied to it either way. ``task`` sets
    ``finetune.task``; a ``Recipe``'s head of the other task's default (``unetr``, what null resolves to for
    segmentation) goes back to null, so the task's own default is taken."""
    extra = [*override_list(overrides), *([f"finetune.task={task}"] if task else [])]
    if not isinstance(recipe, Recipe):
        return load_recipe(recipe, extra)
    raw = recipe.to_dict()
    own = raw["finetune"]
    if task and own["task"] != task:
        default = (SEG_HEADS if own["task"] == "segment" else CLS_HEADS)[0]
        if own["head"] == default and default not in (SEG_HEADS if task == "segment" else CLS_HEADS):
            own["head"] = None
    return recipe_with_overrides(raw, extra, "recipe")


def recipe_with_overrides(raw: dict[str, Any] | None, overrides: list[str] | None, source: str) -> Recipe:
    """:func:`apply_overrides`, then :func:`recipe_from_dict`; its errors name the ``--set`` values beside
    ``source`` when any were given (a bad value may come from either)."""
    raw = apply_overrides(raw, overrides, source)
    return recipe_from_dict(raw, f"{source} with its --set values" if overrides else source)
