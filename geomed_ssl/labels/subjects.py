"""One subject's images in a class-folder dataset of volumes (a volume per sequence, in a folder per subject or named
by case side by side): :func:`subject_units` gives them one unit, so a split trains or tests them together
(:func:`geomed_ssl.labels.sampling.split_images`); split apart, the model would be scored on subjects it trained on."""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections import Counter
from typing import Any, Sequence

import numpy as np

from geomed_ssl.once import said_set
from geomed_ssl.windows.splits import bids_subject

log = logging.getLogger("geomed_ssl")

_SESSION = re.compile(r"(?:.*_)?(ses|session|visit|tp|timepoint|time|mr|fu|followup)[-_]?\d+(\..*)?")  # casefolded
SUBJECT_FILES = 16  # the most images one folder may hold to count as one subject's sequences
_SAID_SUBJECTS = said_set()


def subject_units(paths: Sequence[str], labels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Per image, the unit a class-folder split draws (an image index): each image its own, except one subject's
    images, which share one. Split apart they would test the model on subjects it trained on. A subject is
    - a subject folder (not a class folder: not named as a class of ``names``) of 2-16 images of one class, each of
      another kind (its sequences: names that differ in more than a number once the subject's name or number is taken
      out; T1 / T2 count as names; nnU-Net's channels ``_0000``, ``_0001``), where another folder holds images of the
      same kinds (``p1/Flair.nii.gz``, ``p1/T1c.nii.gz``, ``p2/Flair.nii.gz``, ...; ``BraTS20_001/BraTS20_001_t1``);
    - or, in another folder, the files whose names share a case before their last ``_`` (else ``-``) and are such a
      set of kinds after it, as another case's are (``case1_t1``, ``case1_t2``, ``case2_t1``, ...);
    - and, joining the above, the images of one BIDS subject of one class: under one ``sub-<label>`` folder (its
      sessions, ``sub-01/ses-1/anat/...``) or named ``sub-<label>_...`` in one folder.
    Warns once, with the ``data.channels`` that stacks each subject into one image."""
    labels = np.asarray(labels)
    units = np.arange(len(paths))
    folders: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        folders.setdefault(os.path.dirname(os.path.abspath(p)), []).append(i)
    classes = {unicodedata.normalize("NFC", n).casefold() for n in names}
    kinds = {}
    for folder, idx in folders.items():
        kind = tuple(sorted(k.casefold() for k in _kinds(folder, idx, paths)))
        named = all("#" in k for k in kind)  # the subject's name or number in every file's
        if (_sequences(kind, labels[idx], numbered=named)
                and unicodedata.normalize("NFC", os.path.basename(folder)).casefold() not in classes):
            kinds[folder] = kind
    subjects = {folder: folders[folder] for folder in _recurring(kinds)}
    by_case = {(folder, case): idx for folder, members in folders.items() if folder not in subjects
               for case, idx in _by_case(members, paths).items()  # a case named as its class is no subject
               if case not in classes and case != unicodedata.normalize("NFC", os.path.basename(folder)).casefold()}
    case_kinds = {key: _case_kinds(idx, paths) for key, idx in by_case.items()}
    alike = Counter((folder, _numberless(case)) for folder, case in by_case)  # case_000, case_001: numbered alike
    cases = [by_case[key] for key in _recurring({key: kind for key, kind in case_kinds.items() if _sequences(
        kind, labels[by_case[key]], numbered=alike[(key[0], _numberless(key[1]))] >= 2)})]
    for members in [*subjects.values(), *cases]:
        units[members] = members[0]
    sessions = _join_bids_subjects(paths, labels, units, classes)
    if subjects and tuple(subjects) not in _SAID_SUBJECTS:
        _SAID_SUBJECTS.add(tuple(subjects))
        first = next(iter(subjects))
        globs = [k.replace("#", "*") for k in _kinds(first, folders[first], paths)]
        _warn_subjects(f"{len(subjects)} folders hold one subject's images each (e.g. '{first}'",
                       [paths[i] for i in folders[first]], globs)
    if cases and tuple(c[0] for c in cases) not in _SAID_SUBJECTS:
        _SAID_SUBJECTS.add(tuple(c[0] for c in cases))
        files = [os.path.basename(paths[i]) for i in cases[0]]
        case = _case_and_kind(_bare(files[0]))[0]
        _warn_subjects(f"{len(cases)} subjects' images lie side by side in their folders, named by case (e.g. "
                       f"'{os.path.dirname(paths[cases[0][0]])}'", files, ["*" + f[len(case):] for f in files])
    if sessions and tuple(sessions) not in _SAID_SUBJECTS:  # (a subject's sessions named otherwise stay apart)
        _SAID_SUBJECTS.add(tuple(sessions))
        first = next(iter(sessions))
        log.warning(f"warning: {len(sessions)} BIDS subjects have images in several folders or sessions (e.g. "
                    f"'{first}': {', '.join(os.path.relpath(p, os.path.dirname(first)) for p in sessions[first][:4])}"
                    f"{', ...' if len(sessions[first]) > 4 else ''}): a subject's images train or test together, and "
                    "labels.per_class, labels.fraction and labels.test_fraction count subjects.")
    return units


def _join_bids_subjects(paths: Sequence[str], labels: np.ndarray, units: np.ndarray,
                        classes: set[str]) -> dict[str, list[str]]:
    """Gives the units of one BIDS subject's images of one class one unit (in place; a ``sub-<label>`` that names a
    class of ``classes``, casefolded, is the class's, not a subject's); returns, per subject whose images were in more
    than one unit, its images."""
    by_subject: dict[tuple[str, int], list[int]] = {}
    for i, p in enumerate(paths):
        subject = bids_subject(p)
        if subject is not None and unicodedata.normalize("NFC", os.path.basename(subject)).casefold() not in classes:
            by_subject.setdefault((subject, int(labels[i])), []).append(i)
    joined = {}
    for (subject, _), members in by_subject.items():
        apart = np.unique(units[members])
        if apart.size > 1:
            units[np.isin(units, apart)] = apart[0]
            joined[subject] = [paths[i] for i in members]
    return joined


def grouped(units: np.ndarray | None) -> bool:
    """Whether some unit of :func:`subject_units` holds several images (budgets then count subjects)."""
    return units is not None and np.unique(units).size < len(units)


def _warn_subjects(found: str, files: Sequence[str], globs: Sequence[str]) -> None:
    log.warning(f"warning: {found}: {', '.join(os.path.basename(f) for f in files)}): each image is classified on "
                "its own, and a subject's images train or test together, so labels.per_class, labels.fraction and "
                "labels.test_fraction count subjects. To classify each subject from all its images at once, stack "
                f'them: --set "data.channels=[{",".join(sorted(globs, key=str.casefold))}]".')


def _sequences(kind: tuple[str, ...], labels: np.ndarray, numbered: bool = False) -> bool:
    """Whether files of these (casefolded, sorted) kinds and labels can be one subject's images: 2-16 of one class,
    each of another kind, not only numbers (``T1w``, ``FLAIR``; not ``001``, ``case_2``), unless ``numbered`` (the
    caller saw the files name their subject: ``p1/p1_MR1``, or cases numbered alike side by side) and the kinds are
    numbered sessions (``MR1``, ``ses-2``, ``visit3``) or nnU-Net's channels ``0000``, ``0001``, ..."""
    numbers = [m.group(1) for m in map(re.compile(r"(?:.*_)?(\d{4})(?:\..*)?").fullmatch, kind) if m]
    return (2 <= len(kind) <= SUBJECT_FILES and len(set(kind)) == len(kind) and np.unique(labels).size == 1
            and (len({_numberless(k) for k in kind}) > 1
                 or numbered and (all(_SESSION.fullmatch(k) for k in kind)
                                  or sorted(numbers) == [f"{c:04d}" for c in range(len(kind))])))


def _recurring(kinds: dict[Any, tuple[str, ...]]) -> list[Any]:
    """The keys whose set of kinds another key has too, or that has some or more of such a set (a subject missing one,
    or with one more: a further session)."""
    shared = {kind for kind, n in Counter(kinds.values()).items() if n >= 2}
    return [key for key, kind in kinds.items()
            if kind in shared or any(set(kind) < set(full) or set(full) < set(kind) for full in shared)]


def _bare(name: str) -> str:
    """A file name without its extension (``.nii.gz`` whole)."""
    return re.sub(r"(\.nii)?\.gz$|\.[^.]*$", "", name, flags=re.IGNORECASE) or name


def _case_and_kind(bare: str) -> tuple[str, str]:
    """``case1_t1`` -> (``case1``, ``t1``): split at the last ``_``, else at the last ``-``; ("", "") if neither."""
    for sep in "_-":
        case, found, kind = bare.rpartition(sep)
        if found and case and kind:
            return case, kind
    return "", ""


def _by_case(members: Sequence[int], paths: Sequence[str]) -> dict[str, list[int]]:
    """One folder's files by the case their names start with (``case1_t1``, ``case1_t2``: ``case1``), in any case."""
    by_case: dict[str, list[int]] = {}
    for i in members:
        case, _ = _case_and_kind(_bare(os.path.basename(paths[i])))
        if case:
            by_case.setdefault(unicodedata.normalize("NFC", case).casefold(), []).append(i)
    return by_case


def _case_kinds(members: Sequence[int], paths: Sequence[str]) -> tuple[str, ...]:
    """The kinds of one case's files (what follows the case in their names), casefolded and sorted."""
    return tuple(sorted(_case_and_kind(_bare(os.path.basename(paths[i])))[1].casefold() for i in members))


def _numberless(kind: str) -> str:
    """A kind with its numbers as ``#``, except a weighting's (``T1w``, ``_t2``: a T that starts a word)."""
    return re.sub(r"\d+", lambda m: m.group() if m.start() and kind[m.start() - 1] in "Tt"
                  and not kind[max(m.start() - 2, 0):m.start() - 1].isalpha() else "#", kind)


def _kinds(folder: str, members: Sequence[int], paths: Sequence[str]) -> list[str]:
    """What kind of image each file of a subject folder is, alike across subjects: its name with the subject's name
    (the folder's or its parent's, as in ``sub-01/anat/sub-01_T1w``) as ``#``, then with the runs of digits that
    every name of the folder still holds (the subject's number) as ``#``."""
    names = [os.path.basename(paths[i]) for i in members]
    for subject in (os.path.basename(folder), os.path.basename(os.path.dirname(folder))):
        if len(subject) >= 2 and all(subject in n for n in names):
            names = [n.replace(subject, "#") for n in names]
    common = set.intersection(*(set(re.findall(r"\d+", n)) for n in names))
    return ["".join("#" if p in common else p for p in re.split(r"(\d+)", n)) for n in names]
