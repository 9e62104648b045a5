"""What ``geomed-ssl compare`` is asked to run: the encoders, label budgets, seeds, protocols and baselines, parsed
from the command line's comma-separated lists and checked before anything is read or written."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from geomed_ssl.errors import ConfigError
from geomed_ssl.finetune.splits import SPLITS

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
    """The parsed command line of ``compare`` (everything but the recipe and the data)."""

    encoders: list[str]
    budgets: list[Budget]
    seeds: list[int]
    split: str = "random"
    protocols: list[str] = field(default_factory=lambda: ["linear", "finetune"])
    baselines: list[str] | None = None  # None: every baseline that applies to the task

    @property
    def pretrained(self) -> list[str]:
        """The encoders that are not ``none``, as given."""
        return [e for e in self.encoders if e.lower() != NONE]


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
        if int(item) not in out:
            out.append(int(item))
    return out


def parse_names(text: str, option: str, allowed: Sequence[str]) -> list[str]:
    """A list of names from ``allowed`` (duplicates dropped); an unknown name is a ConfigError listing them."""
    out: list[str] = []
    for item in split_list(text, option):
        name = item.lower()
        if name not in allowed:
            raise ConfigError(f"{option}: unknown name '{item}'; choose from {', '.join(allowed)}.")
        if name not in out:
            out.append(name)
    return out


def parse_options(encoders: Sequence[str], per_class: str | None, fraction: str | None, seeds: str, split: str,
                  protocols: str, baselines: str | None, no_baselines: bool) -> CompareOptions:
    """Every option of ``compare`` checked, in the order the command line reads; ``none`` is added to the encoders
    when missing (random initialisation is the reference every encoder is compared with)."""
    if not encoders:
        raise ConfigError("give at least one encoder: a RUN_DIR, an exported encoder folder, or none.")
    if split not in SPLITS:
        raise ConfigError(f"--split '{split}': choose random, blocks or images.")
    if baselines is not None and no_baselines:
        raise ConfigError("give --baselines or --no-baselines, not both.")
    names: list[str] = []
    for enc in encoders:
        key = NONE if enc.lower() == NONE else os.path.normpath(enc)  # runA/ and ./runA are runA's rows
        if key in names:
            raise ConfigError(f"encoder '{enc}' is given twice; give each encoder once.")
        names.append(key)
    if NONE not in names:
        names.append(NONE)
    for enc in names:
        if enc != NONE and enc.lower() in BASELINES:
            raise ConfigError(f"encoder '{enc}' has the name of a baseline; give it as ./{enc}.")
        if enc != NONE and not Path(enc).is_dir():
            what = "is a file, not a folder" if Path(enc).exists() else "does not exist"
            raise ConfigError(f"encoder '{enc}' {what}; give a RUN_DIR (from `geomed-ssl pretrain`), an exported "
                              "encoder folder, or none.")
    chosen = [] if no_baselines else (None if baselines is None else parse_names(baselines, "--baselines",
                                                                                  BASELINES))
    return CompareOptions(names, parse_budgets(per_class, fraction), parse_seeds(seeds), split,
                          parse_names(protocols, "--protocol", PROTOCOLS), chosen)
