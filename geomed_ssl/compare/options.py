"""What ``geomed-ssl compare`` is asked to run: the encoders, label budgets, seeds, protocols and baselines, parsed
from the command line's comma-separated lists and checked before anything is read or written."""

from __future__ import annotations

import math
import operator
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from geomed_ssl.errors import ConfigError
from geomed_ssl.windows.splits import SPLITS

PROTOCOLS = ("linear", "knn", "propagate", "finetune")
BASELINES = ("rf", "random_conv", "band_stats")
SEGMENT_BASELINES = ("rf", "random_conv")  # band_stats describes whole images: classification only
DEFAULT_PER_CLASS = "1,2,5,10,20"
NONE = "none"


def fraction_text(x: float) -> str:
    """A label fraction as results.csv and file names write it: ``:g`` (0.01, 1, 1e-05, as always), or the exact
    ``repr`` where ``:g`` would round it (0.1234561), so two budgets never share a text."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


@dataclass(frozen=True)
class Budget:
    """One label budget: ``per_class`` labels of each class, or a ``fraction`` of every class's labels."""

    per_class: int | None = None
    fraction: float | None = None

    @property
    def x(self) -> float:
        """The budget as a number (the curve's x axis)."""
        return float(self.per_class if self.per_class is not None else self.fraction)  # type: ignore[arg-type]

    @property
    def slug(self) -> str:
        return f"k{self.per_class}" if self.per_class is not None else f"f{fraction_text(self.fraction)}"

    @property
    def cells(self) -> tuple[str, str]:
        """(labels_per_class, label_fraction) as results.csv writes them (blank where not used)."""
        return (str(self.per_class) if self.per_class is not None else "",
                fraction_text(self.fraction) if self.fraction is not None else "")


@dataclass
class CompareOptions:
    """What ``compare`` runs (everything but the recipe and the data), checked when made, so Python callers of
    ``run_compare`` meet the command line's checks: ``none`` is added to the encoders when missing (random
    initialisation is the reference every encoder is compared with), budgets are sorted and deduplicated, seeds
    deduplicated in the order given, and an unknown protocol, baseline or split is a ConfigError before anything is
    read or written."""

    encoders: list[str]
    budgets: list[Budget]
    seeds: list[int]
    split: str = "random"
    protocols: list[str] = field(default_factory=lambda: ["linear", "finetune"])
    baselines: list[str] | None = None  # None: every baseline that applies to the task

    def __post_init__(self) -> None:
        self.encoders = check_encoders([str(e) for e in listed(self.encoders, "encoders", "['runs/a', 'none']")])
        self.budgets = check_budgets(listed(self.budgets, "budgets", "[Budget(per_class=5)]"))
        self.seeds = check_seeds(listed(self.seeds, "seeds", "[0, 1, 2]"))
        if self.split not in SPLITS:
            raise ConfigError(f"split (--split) '{self.split}': choose {', '.join(SPLITS[:-1])} or {SPLITS[-1]}.")
        self.protocols = check_names(self.protocols, "protocols (--protocol)", PROTOCOLS)
        if self.baselines is not None:
            self.baselines = check_names(self.baselines, "baselines (--baselines)", BASELINES, allow_empty=True)

    @property
    def pretrained(self) -> list[str]:
        """The encoders that are not ``none``, as given."""
        return [e for e in self.encoders if e.lower() != NONE]


def listed(value: object, name: str, example: str) -> list:
    """``value`` as a list when it holds several (a list, tuple, array...; not a string, nor for the encoders, whose
    first names the recipe's bands, an unordered set); else a ConfigError showing the form, so a Python caller's
    ``encoders="runs/a"`` is not read letter by letter."""
    unordered = name == "encoders" and isinstance(value, (set, frozenset)) and len(value) > 1
    scalar = isinstance(value, (str, bytes, Path)) or not isinstance(value, Iterable) or \
        getattr(value, "ndim", None) == 0
    if scalar or unordered:  # (a 0-d array or tensor is iterable by type, not in fact)
        raise ConfigError(f"CompareOptions {name} is a list, e.g. {example}; got {value!r}.")
    return list(value)


def check_encoders(encoders: Sequence[str]) -> list[str]:
    """The encoders as rows name them (paths normalised, ``none`` lower-case and added when missing); an encoder
    given twice, named like a baseline, or not a folder is a ConfigError."""
    if not encoders:
        raise ConfigError("give at least one encoder: a RUN_DIR, an exported encoder folder, or none.")
    names: list[str] = []
    for enc in encoders:
        key = NONE if enc.lower() == NONE else os.path.normpath(enc)  # runA/ and ./runA are runA's rows
        if enc.lower() != NONE and key.lower() == NONE:  # ./none: a folder, which its rows would not tell apart
            raise ConfigError(f"encoder '{enc}' has the name of the random-initialisation reference `none`; give "
                              f"its absolute path ({Path(enc).absolute()}) or rename the folder.")
        if key in names:
            raise ConfigError(f"encoder '{enc}' is given twice; give each encoder once.")
        names.append(key)
    if NONE not in names:
        names.append(NONE)
    for enc in names:
        if enc != NONE and enc.lower() in BASELINES:
            raise ConfigError(f"encoder '{enc}' has the name of a baseline, which names the baseline's rows; "
                              f"give its absolute path ({Path(enc).absolute()}) or rename the folder.")
        if enc != NONE and not Path(enc).is_dir():
            what = "is a file, not a folder" if Path(enc).exists() else "does not exist"
            raise ConfigError(f"encoder '{enc}' {what}; give a RUN_DIR (from `geomed-ssl pretrain`), an exported "
                              "encoder folder, or none.")
    return names


def check_budgets(budgets: Sequence[Budget]) -> list[Budget]:
    """Distinct budgets of one kind, each ``per_class`` a whole number >= 1 or ``fraction`` in (0, 1], sorted."""
    if not budgets:
        raise ConfigError("give at least one label budget (--labels-per-class or --label-fraction).")
    out = []
    for b in budgets:
        if not isinstance(b, Budget):
            raise ConfigError(f"label budget {b!r}: give each as Budget(per_class=K) or Budget(fraction=F) "
                              "(geomed_ssl.compare.options).")
        per_class, fraction = whole(b.per_class), b.fraction
        per_class_ok = fraction is None and per_class is not None and per_class >= 1
        try:
            fraction = None if isinstance(fraction, bool) or fraction is None else float(fraction)
        except (TypeError, ValueError):
            fraction = math.nan
        fraction_ok = b.per_class is None and fraction is not None and math.isfinite(fraction) and 0 < fraction <= 1
        if not (per_class_ok or fraction_ok):
            raise ConfigError(f"label budget {b}: give per_class, a whole number >= 1, or fraction, a number in "
                              "(0, 1], not both.")
        out.append(Budget(per_class=per_class) if per_class_ok else Budget(fraction=fraction))
    if len({b.per_class is None for b in out}) > 1:
        raise ConfigError("give budgets of one kind, Budget(per_class=K) (--labels-per-class) or Budget(fraction=F) "
                          "(--label-fraction), not both: one curve has one kind of budget.")
    return sorted(set(out), key=lambda b: b.x)


def whole(value: object) -> int | None:
    """``value`` as a Python int when it is a whole number (numpy's too), else None; booleans are not numbers."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """Distinct whole numbers in [0, 2**32 - 1], in the order given."""
    if not seeds:
        raise ConfigError("give at least one seed (seeds, --seeds).")
    out: list[int] = []
    for given in seeds:
        seed = whole(given)
        if seed is None or not 0 <= seed <= 2**32 - 1:
            raise ConfigError(f"seeds (--seeds): each entry must be a whole number in [0, 4294967295], got {given!r}.")
        if seed not in out:
            out.append(seed)
    return out


def check_names(names: Sequence[str], option: str, allowed: Sequence[str], allow_empty: bool = False) -> list[str]:
    """Names from ``allowed`` (any case; duplicates dropped); an unknown one is a ConfigError listing them."""
    if isinstance(names, str):
        names = [names]
    if not names and not allow_empty:
        raise ConfigError(f"{option}: give at least one of {', '.join(allowed)}.")
    out: list[str] = []
    for item in names:
        name = str(item).strip().lower()
        if name not in allowed:
            raise ConfigError(f"{option}: unknown name '{item}'; choose from {', '.join(allowed)}.")
        if name not in out:
            out.append(name)
    return out


def split_list(text: str, option: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; an empty list or entry is a ConfigError naming the option."""
    items = [t.strip() for t in str(text).split(",")]
    if not items or any(not t for t in items):
        raise ConfigError(f"{option} '{text}': give a comma-separated list without empty entries, e.g. "
                          f"{option} {'1,5,10' if 'label' in option or 'seed' in option else 'linear,finetune'}.")
    return items


def parse_budgets(per_class: str | None, fraction: str | None) -> list[Budget]:
    """The label budgets of ``--labels-per-class`` (whole numbers >= 1) or ``--label-fraction`` (in (0, 1]); the
    per-class default when neither is given."""
    if per_class is not None and fraction is not None:
        raise ConfigError("give --labels-per-class or --label-fraction, not both (one curve has one kind of budget).")
    if fraction is not None:
        out = []
        for item in split_list(fraction, "--label-fraction"):
            try:
                value = float(item)
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and 0 < value <= 1):
                raise ConfigError(f"--label-fraction '{fraction}': each entry must be a number in (0, 1], got "
                                  f"'{item}'.")
            out.append(Budget(fraction=value))
    else:
        out = []
        text = DEFAULT_PER_CLASS if per_class is None else per_class
        for item in split_list(text, "--labels-per-class"):
            if not (item.isascii() and item.isdigit()) or int(item) < 1:
                raise ConfigError(f"--labels-per-class '{text}': each entry must be a whole number >= 1, got "
                                  f"'{item}'.")
            out.append(Budget(per_class=int(item)))
    return sorted(set(out), key=lambda b: b.x)


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: distinct whole numbers in [0, 2**32 - 1], in the order given."""
    out: list[int] = []
    for item in split_list(text, "--seeds"):
        if not (item.isascii() and item.isdigit()) or int(item) > 2**32 - 1:
            raise ConfigError(f"--seeds '{text}': each entry must be a whole number in [0, 4294967295], got "
                              f"'{item}'.")
        out.append(int(item))
    return check_seeds(out)


def parse_names(text: str, option: str, allowed: Sequence[str]) -> list[str]:
    """A list of names from ``allowed`` (duplicates dropped); an unknown name is a ConfigError listing them."""
    return check_names(split_list(text, option), option, allowed)


def parse_options(encoders: Sequence[str], per_class: str | None, fraction: str | None, seeds: str, split: str,
                  protocols: str, baselines: str | None, no_baselines: bool) -> CompareOptions:
    """Every option of ``compare`` checked, in the order the command line reads (:class:`CompareOptions` checks the
    parsed values)."""
    if not encoders:
        raise ConfigError("give at least one encoder: a RUN_DIR, an exported encoder folder, or none.")
    if split not in SPLITS:
        raise ConfigError(f"--split '{split}': choose {', '.join(SPLITS[:-1])} or {SPLITS[-1]}.")
    if baselines is not None and no_baselines:
        raise ConfigError("give --baselines or --no-baselines, not both.")
    names = check_encoders(encoders)
    chosen = [] if no_baselines else (None if baselines is None else parse_names(baselines, "--baselines",
                                                                                  BASELINES))
    return CompareOptions(names, parse_budgets(per_class, fraction), parse_seeds(seeds), split,
                          parse_names(protocols, "--protocol", PROTOCOLS), chosen)
