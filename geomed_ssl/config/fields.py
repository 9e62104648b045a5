"""Declared settings: each key of a recipe section (and of a method's settings, and of an exported encoder's config)
is a dataclass field whose Python type is its annotation and whose default, one-line meaning and allowed values
sit beside it::

    batch_size: int = setting(64, "windows per optimiser step on each device", bounds=">= 1")

``check_values`` checks a mapping of raw values (YAML, JSON, ``--set``) against such a class and converts what
YAML and JSON write loosely (``2e-3`` read as a string, ``1`` for a float key, ``64.0`` for an integer key); a
value that does not fit is a ``ConfigError`` of one line naming the key, the value and what is allowed::

    recipe.yaml: train.batch_size must be an integer >= 1, got 2.5.

Understood annotations: ``int``, ``float``, ``bool`` (never taken for an integer), ``str``, ``Any``, ``X | None``,
unions, ``list[X]``, ``tuple[X, ...]``, ``dict[K, V]``. ``bounds`` apply to every number in the value (``">= 1"``,
``"> 0"``, ``"<= 8192"``, ``"[0, 1)"``, ``"(0, 1]"``, ``"[1, 128]"``); ``choices`` to every string; ``length``
to a list itself. Floats must be finite unless ``finite=False``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator, Union

from geomed_ssl.errors import ConfigError

SPEC = "geomed_ssl.spec"  # the metadata key holding a field's Spec


@dataclass(frozen=True)
class Bounds:
    """An interval; ``None`` ends are open to infinity."""

    lo: float | None = None
    hi: float | None = None
    lo_closed: bool = True
    hi_closed: bool = True

    def __contains__(self, x: float) -> bool:
        if self.lo is not None and (x < self.lo or (x == self.lo and not self.lo_closed)):
            return False
        return not (self.hi is not None and (x > self.hi or (x == self.hi and not self.hi_closed)))

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            left, right = "[" if self.lo_closed else "(", "]" if self.hi_closed else ")"
            return f"in {left}{_num(self.lo)}, {_num(self.hi)}{right}"
        if self.lo is not None:
            return f"{'>=' if self.lo_closed else '>'} {_num(self.lo)}"
        return f"{'<=' if self.hi_closed else '<'} {_num(self.hi)}"


_INTERVAL = re.compile(r"^([\[(])\s*(-?[\d.e+-]+)\s*,\s*(-?[\d.e+-]+)\s*([\])])$")
_HALF = re.compile(r"^(>=|>|<=|<)\s*(-?[\d.e+-]+)$")


def parse_bounds(text: str) -> Bounds:
    """``"[0, 1)"``, ``">= 1"``, ``"> 0"``, ``"<= 8192"`` ... as :class:`Bounds`."""
    text = text.strip()
    if m := _INTERVAL.match(text):
        return Bounds(float(m[2]), float(m[3]), m[1] == "[", m[4] == "]")
    if m := _HALF.match(text):
        op, x = m[1], float(m[2])
        return Bounds(lo=x, lo_closed=op == ">=") if op[0] == ">" else Bounds(hi=x, hi_closed=op == "<=")
    raise ValueError(f"bounds {text!r}: expected e.g. '>= 1', '> 0', '[0, 1)'")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


@dataclass(frozen=True)
class Spec:
    """What a setting means and which values it allows (beyond its annotated type)."""

    meaning: str = ""
    bounds: Bounds | None = None
    choices: tuple[str, ...] | None = None
    length: int | None = None
    finite: bool = True


def setting(default: Any, meaning: str, *, bounds: str | None = None, choices: typing.Sequence[str] | None = None,
            length: int | None = None, finite: bool = True) -> Any:
    """A dataclass field with its default (lists and dicts are copied per instance; ``dataclasses.MISSING``: none,
    the field is required), one-line meaning and allowed values. See the module docstring."""
    spec = Spec(meaning, parse_bounds(bounds) if bounds else None, tuple(choices) if choices else None, length, finite)
    meta = {SPEC: spec}
    if default is dataclasses.MISSING:  # a required field
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def spec_of(f: dataclasses.Field) -> Spec:
    return f.metadata.get(SPEC) or Spec()


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_types(cls: type) -> dict[str, tuple[Any, Spec]]:
    """``{name: (annotation, spec)}`` for every field of a settings dataclass, in declaration order."""
    hints = _hints(cls)
    return {f.name: (hints[f.name], spec_of(f)) for f in dataclasses.fields(cls)}


# ---- checking and converting one value -----------------------------------------------------------------------
class _Mismatch(Exception):
    """The value does not fit the type (the caller words the message)."""


def _args(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _convert(value: Any, tp: Any, spec: Spec) -> Any:
    if tp is Any:
        return value
    if _is_union(tp):
        if value is None and type(None) in _args(tp):
            return None
        for option in _args(tp):
            if option is type(None):
                continue
            try:
                return _convert(value, option, spec)
            except _Mismatch:
                continue
        raise _Mismatch
    if value is None:
        raise _Mismatch
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        item = _args(tp)[0] if _args(tp) else Any
        out = [_convert(v, item, spec) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        k_tp, v_tp = _args(tp) or (Any, Any)
        return {_convert(k, k_tp, Spec()): _convert(v, v_tp, spec) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        return _check_number(_to_int(value), spec)
    if tp is float:
        return _check_number(_to_float(value, spec.finite), spec)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _Mismatch
        value = str(value)  # band names and the like written as numbers
        if spec.choices and value not in spec.choices:
            raise _Mismatch
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _Mismatch


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Mismatch  # bool is an int in Python: `batch_size: true` must not read as 1
    if isinstance(value, int):
        return value
    number = _to_float(value, True) if isinstance(value, (float, str)) else None
    if number is None or not number.is_integer():
        raise _Mismatch
    return int(number)  # 64.0, and 1e3 (a string to YAML 1.1)


def _to_float(value: Any, finite: bool) -> float:
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):  # YAML 1.1 reads 2e-3 (no dot) as a string
        try:
            out = float(value)
        except ValueError:
            raise _Mismatch from None
    else:
        raise _Mismatch
    if finite and not math.isfinite(out):
        raise _Mismatch
    return out


def _check_number(x: int | float, spec: Spec) -> int | float:
    if spec.bounds is not None and x not in spec.bounds:
        raise _Mismatch
    return x


def check_value(value: Any, tp: Any, spec: Spec, key: str, source: str) -> Any:
    """``value`` converted to ``tp`` (see the module docstring), or a one-line ``ConfigError`` naming ``key`` (after
    ``source``, the file, when given)."""
    try:
        out = _convert(value, tp, spec)
    except _Mismatch:
        out = _Mismatch
    if out is not _Mismatch and spec.length is not None and isinstance(out, (list, tuple)) and len(out) != spec.length:
        out = _Mismatch
    if out is _Mismatch:
        prefix = f"{source}: " if source else ""
        wanted = describe(tp, spec)
        hint = (" YAML needs a space after each colon of a mapping: write {2: 1}, not {2:1}."
                if "mapping" in wanted and _unspaced_pair(value) else _nanometre_hint(key, value))
        raise ConfigError(f"{prefix}{key} must be {wanted}, got {show(value)}.{hint}")
    return out


def _nanometre_hint(key: str, value: Any) -> str:
    """A hint for wavelengths given in nanometres where micrometres are asked for (443 for 0.443)."""
    numbers = [v for v in value if isinstance(v, (int, float))] if isinstance(value, (list, tuple)) else []
    nm = next((v for v in numbers if 20 < v <= 20_000), None) if key.endswith("wavelengths") else None
    return "" if nm is None else f" They look like nanometres: give micrometres, e.g. {nm:g} nm is {nm / 1000:g}."


def _unspaced_pair(value: Any) -> bool:
    """``value`` holds a string such as ``2:1``: a mapping entry written without the space YAML needs."""
    if isinstance(value, str):
        return re.fullmatch(r"[-+]?\d+:[-+]?\d+", value.strip()) is not None
    if isinstance(value, dict):
        return any(_unspaced_pair(k) or _unspaced_pair(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_unspaced_pair(v) for v in value)
    return False


# ---- words -----------------------------------------------------------------------------------------------------
_SINGULAR = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURAL = {int: "integers", float: "numbers", bool: "true/false values", str: "strings"}


def _type_words(tp: Any, spec: Spec, plural: bool = False, top: bool = True) -> str:
    if tp is Any:
        return "values" if plural else "any value"
    if _is_union(tp):
        parts = ["null"] if type(None) in _args(tp) and not plural else []
        parts += [_type_words(a, spec, plural, top) for a in _args(tp) if a is not type(None)]
        return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} or {parts[-1]}"
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        item = _args(tp)[0] if _args(tp) else Any
        n = f"{spec.length} " if top and spec.length is not None else ""
        return f"{'lists' if plural else 'a list'} of {n}{_type_words(item, spec, True, False)}"
    if origin is dict:
        k_tp, v_tp = _args(tp) or (Any, Any)
        return (f"{'mappings' if plural else 'a mapping'} of {_type_words(k_tp, Spec(), True, False)} to "
                f"{_type_words(v_tp, spec, True, False)}")
    if tp is str and spec.choices:
        if len(spec.choices) == 1:
            return spec.choices[0]
        return ("one of " if not plural else "strings among ") + ", ".join(spec.choices)
    table = _PLURAL if plural else _SINGULAR
    return table.get(tp, getattr(tp, "__name__", str(tp)))


def _scalar_number(tp: Any) -> bool:
    options = [a for a in _args(tp) if a is not type(None)] if _is_union(tp) else [tp]
    return len(options) == 1 and options[0] in (int, float)


def describe(tp: Any, spec: Spec) -> str:
    """What a value of ``tp`` under ``spec`` may be, in words: ``an integer >= 1``, ``null or a number in [0, 1)``,
    ``an integer or a list of integers, each >= 1``, ``one of raster, volume``."""
    words = _type_words(tp, spec)
    if spec.bounds is None:
        return words
    return f"{words} {spec.bounds}" if _scalar_number(tp) else f"{words}, each {spec.bounds}"


def show(value: Any, limit: int = 80) -> str:
    """A value as the user wrote it (YAML spelling for booleans and null), cut to ``limit`` characters."""
    text = _show(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_show(k)}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def did_you_mean(name: Any, choices: Any, prefix: str = "") -> str:
    """`` Did you mean 'PREFIX<closest>'?`` for a near miss of ``choices`` (a typo), else ""."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.75)
    return f" Did you mean '{prefix}{close[0]}'?" if close else ""


# ---- whole sections --------------------------------------------------------------------------------------------
def check_values(cls: type, values: dict[str, Any], section: str, source: str, *,
                 owner: str | None = None) -> dict[str, Any]:
    """``values`` checked against the fields of dataclass ``cls`` and converted; unknown keys name the valid ones.
    ``section`` prefixes the key in messages (``train.batch_size``); ``owner`` says whose keys they are
    (``for method 'dino'``)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section '{section}' must be a mapping of key: value, got {show(values)}.")
    fields = field_types(cls)
    for key in values:
        if key not in fields:
            whose = f" {owner}" if owner else f" in '{section}'"
            raise ConfigError(f"{source}: unknown key '{section}.{key}'.{did_you_mean(key, fields, section + '.')} "
                              f"Valid keys{whose}: {', '.join(fields)}.")
    return {k: check_value(v, fields[k][0], fields[k][1], f"{section}.{k}", source) for k, v in values.items()}


def build_checked(cls: type, values: dict[str, Any], section: str, source: str, *, owner: str | None = None) -> Any:
    """An instance of ``cls`` from checked ``values`` (missing keys take their defaults)."""
    return cls(**check_values(cls, values, section, source, owner=owner))


def check_instance(obj: Any, section: str, source: str) -> None:
    """Check every field of an already built settings object (e.g. made in Python), converting in place."""
    for name, (tp, spec) in field_types(type(obj)).items():
        value = getattr(obj, name)
        converted = check_value(value, tp, spec, f"{section}.{name}", source)
        if type(converted) is not type(value) or converted != value:
            object.__setattr__(obj, name, converted)


def values_of(obj: Any) -> dict[str, Any]:
    """A settings object's fields as plain data (deep-copied), in declaration order."""
    return {f.name: copy.deepcopy(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


@dataclass(frozen=True)
class SettingInfo:
    """One setting, for listings and generated docs."""

    key: str
    type: str  # what values are allowed, in words
    default: Any
    meaning: str


def describe_settings(cls: type) -> Iterator[SettingInfo]:
    """Each field of a settings dataclass with its allowed values, default and meaning (for ``--help`` tables and
    generated docs)."""
    for f in dataclasses.fields(cls):
        tp, spec = field_types(cls)[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        yield SettingInfo(f.name, describe(tp, spec), default, spec.meaning)
