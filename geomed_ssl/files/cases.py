"""The samples ``data.channels`` stacks: the files of one folder, one per channel glob, or, where a folder holds
several cases (nnU-Net's ``imagesTr/case_000_0000.nii.gz``, ``case_000_0001.nii.gz``, ``case_001_0000.nii.gz``, ...;
``BraTS_001_flair.nii.gz`` beside ``BraTS_001_t1.nii.gz``), the files of one case. A file's case is what the
wildcards of its channel's glob match, without the file extension and the separators around it
(``case_000_0000.nii.gz`` under ``*_0000.nii.gz``: ``case_000``; the texts of several ``*`` joined by ``_``). A
folder whose files do not all name a case that way is one sample, as before."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from geomed_ssl.files.listing import EXTENSIONS, glob_match

_EXTENSIONS = tuple(e for exts in EXTENSIONS.values() for e in exts)


@lru_cache(maxsize=256)
def _pattern(glob: str) -> re.Pattern[str]:
    """The file-name glob as a case-insensitive regex with one group per ``*`` (per ``?`` / ``[...]`` too when it
    has no ``*``: ``*_[Ff]lair.nii.gz`` names its case by the ``*`` alone)."""
    group = "(" if "*" not in glob else "(?:"
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append("(.*)")
        elif c == "?":
            out.append(group + ".)")
        elif c == "[" and (end := glob.find("]", i + 2)) > 0:
            body = glob[i + 1:end]
            out.append(group + "[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\")
                       + "])")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def case_name(name: str, glob: str) -> str | None:
    """The case the file ``name`` is one channel of under ``glob`` (None: the glob does not match it): the texts
    its wildcards match, each without the separators ``._-`` around it (the last also without the file
    extension), joined by ``_``; empty when they match nothing else."""
    found = _pattern(glob.rsplit("/", 1)[-1]).fullmatch(name)
    if found is None:
        return None
    parts = list(found.groups())
    if parts:
        parts[-1] = next((parts[-1][: -len(e)] for e in _EXTENSIONS if parts[-1].lower().endswith(e)), parts[-1])
    return "_".join(t for t in (p.strip("._- ") for p in parts) if t)


def is_case_file(path: str | Path, channels: Sequence[str] | None) -> bool:
    """Whether ``path`` is a file that one of several ``data.channels`` globs picks: one channel of a stacked
    sample, which commands read with the other channels of its case."""
    path = Path(path)
    return len(channels or []) > 1 and path.is_file() and any(glob_match(path.name, g) for g in channels or [])


def group_cases(files: Sequence[str], channels: Sequence[str]
                ) -> tuple[dict[str, list[str]], list[tuple[str | None, str]]]:
    """The files of one folder that hold several cases, as ``{case: [its file of each channel, in glob order]}``,
    and ``(case, why)`` for each thing that keeps a case (None: the folder) from stacking: a file two globs pick, a
    case short of a channel, two files of one case for one channel. Nothing at all when a file names no case (its
    glob's wildcards match only separators or the extension): then the folder is one sample. Cases are told apart
    ignoring letter case, as the globs match."""
    claimed = {f: [g for g in channels if glob_match(Path(f).name, g)] for f in files}
    twice = [(Path(f).name, gs) for f, gs in claimed.items() if len(gs) > 1]
    if twice:
        name, gs = twice[0]
        return {}, [(None, f"{name} matches channel globs {' and '.join(repr(g) for g in gs)}; make each glob "
                           "specific to its channel (e.g. '*_t1.nii.gz' and '*_t1ce.nii.gz', not '*t1*')")]
    named = {f: case_name(Path(f).name, gs[0]) for f, gs in claimed.items() if gs}
    if not all(named.values()):
        return {}, []
    cases: dict[str, dict[str, list[str]]] = {}
    shown: dict[str, str] = {}  # a case's name as its first channel's file spells it
    for f, case in sorted(named.items(), key=lambda item: channels.index(claimed[item[0]][0])):
        shown.setdefault(case.lower(), case)
        cases.setdefault(case.lower(), {}).setdefault(claimed[f][0], []).append(f)
    stacks, problems = {}, []
    for case, by_glob in sorted((shown[k], v) for k, v in cases.items()):
        missing = [g for g in channels if g not in by_glob]
        many = [(g, by_glob[g]) for g in channels if len(by_glob.get(g, [])) > 1]
        if missing:
            have = ", ".join(Path(f).name for g in channels for f in by_glob.get(g, []))
            problems.append((case, f"case {case!r} has no file of channel {missing[0]!r} (its files: {have}); "
                                   f"each case needs one file per glob of data.channels {list(channels)}"))
        elif many:
            g, found = many[0]
            problems.append((case, f"case {case!r} has {len(found)} files of channel {g!r} "
                                   f"({', '.join(Path(f).name for f in found[:3])}); make the glob specific"))
        else:
            stacks[case] = [by_glob[g][0] for g in channels]
    return stacks, problems
