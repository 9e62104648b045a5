"""The ``finetune`` protocol inside ``compare``: each run a ``finetune segment`` / ``classify`` on the split's
samples, its folder name when kept, and its logs kept quiet (each warning once in the whole compare)."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from geomed_ssl.compare.options import NONE, Budget
from geomed_ssl.compare.probes import scores_from_metrics
from geomed_ssl.compare.sources import EncoderSource
from geomed_ssl.compare.task import Split, Task, labels_config
from geomed_ssl.config import Recipe
from geomed_ssl.data.catalog import problems_reported
from geomed_ssl.finetune.metrics import background_index
from geomed_ssl.labels.sampling import BUDGET_NOTE
from geomed_ssl.outcommands import distinct_names
from geomed_ssl.outfiles import scratch_dir

log = logging.getLogger("geomed_ssl")


_SAID: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("compare_said", default=None)


def _once(record: logging.LogRecord, said: set[str]) -> bool:
    """A logging filter: a warning whose text was said already in this compare is dropped (decided once per record,
    however many such filters it meets); lines below warnings pass."""
    fresh = getattr(record, "compare_fresh", None)
    if getattr(record, BUDGET_NOTE, False):  # a fine-tune's budget shortfall: compare says each once (warn_notes)
        fresh = False
    if fresh is None:
        text = record.getMessage()
        fresh = record.levelno < logging.WARNING or text not in said
        said.add(text)
        record.compare_fresh = fresh
    return fresh


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The fine-tune's own progress lines are noise inside compare's (its warnings still show, once in the whole
    compare (``_SAID``), but not the problem files compare named already: each of 30 fine-tunes said the same
    value-range warning twice)."""
    level, said = log.level, _SAID.get()
    said = set() if said is None else said
    once = functools.partial(_once, said=said)
    log.setLevel(logging.WARNING)
    log.addFilter(once)
    try:
        with problems_reported():
            yield
    finally:
        log.setLevel(level)
        log.removeFilter(once)


def kept_labels(names: Sequence[str]) -> dict[str, str]:
    """Each encoder's part of its kept fine-tunes' folder names: its folder's name (``none`` for none), followed by
    a short hash of its path when another encoder's folder has that name too (``runs/a/encoder``,
    ``runs/b/encoder``, also differing only in case) or it is ``none``, so no kept fine-tune replaces another's."""
    others = [n for n in names if n != NONE]
    labels = distinct_names([(Path(n).name, str(Path(n).resolve())) for n in others], taken=[NONE])
    return {**dict(zip(others, labels)), **({NONE: NONE} if NONE in names else {})}


def kept_name(label: str, budget: Budget, seed: int) -> str:
    """The folder name of a kept fine-tune: ``finetuned_<label>_<budget>_seed<seed>`` (label: :func:`kept_labels`)."""
    return f"finetuned_{label}_{budget.slug}_seed{seed}"


def finetune_scores(source: EncoderSource, task: Task, split: Split, recipe: Recipe, inputs: dict[str, Any],
                    strict: bool, keep_as: Path | None = None) -> dict[str, float | None]:
    """The ``finetune`` protocol: ``finetune segment`` / ``classify`` (encoder trained too) with this split's
    budget and seed, in a temporary folder (kept as ``keep_as`` when it is given, e.g. for
    ``predict``); it draws the same samples, which is checked."""
    from geomed_ssl.finetune.classify import finetune_classify
    from geomed_ssl.finetune.segment import finetune_segment

    tuned = dataclasses.replace(recipe, labels=labels_config(recipe, split.budget, split.seed, inputs["split"]),
                                finetune=dataclasses.replace(recipe.finetune, task=task.kind, freeze_encoder=False,
                                                             unfreeze_after_steps=0))
    with scratch_dir("compare") as tmp, _quiet():  # a killed compare's fine-tune checkpoints go with the next one
        out = keep_as if keep_as is not None else tmp / "ft"
        if task.kind == "segment":
            result = finetune_segment(tuned, source.path, inputs["images"], inputs["labels"], out, progress=False,
                                      strict=strict, overwrite=keep_as is not None)  # a kept one of a killed run
            same = all(np.array_equal(task.rows(result.selection, part), getattr(split, part))
                       for part in ("train", "test"))
        else:
            result = finetune_classify(tuned, source.path, inputs["data"], out, progress=False, strict=strict,
                                       overwrite=keep_as is not None)
            with np.load(out / "labels_used.npz", allow_pickle=False) as z:
                same = all(np.array_equal(np.sort(z[f"{part}_index"]), getattr(split, part))
                           for part in ("train", "test"))
    if not same:  # the finetune protocol must train and test on the samples every other protocol used
        raise RuntimeError(f"the fine-tune of {source.name} drew other training or test samples than compare's "
                           "selection")
    values = [c["value"] for c in result.metrics["classes"]]  # the fine-tune's own class order
    return scores_from_metrics(result.metrics["test"], task.kind == "segment",
                               background_index(values, task.spatial_dims))


@contextlib.contextmanager
def run_logs(bar: Any) -> Iterator[None]:
    """While the runs go: log lines printed above ``bar`` when it is shown (else they are glued to its frame:
    "...2.91it/s]r" "un 1/7 ..."), and each warning the fine-tunes say kept to once in the whole compare (``_SAID``)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    token = _SAID.set(set()) if _SAID.get() is None else None  # (inside said_once: its set)
    try:
        with contextlib.nullcontext() if bar.disable else logging_redirect_tqdm():
            yield
    finally:
        if token is not None:
            _SAID.reset(token)


@contextlib.contextmanager
def said_once() -> Iterator[None]:
    """A whole compare: each warning said once, those of its preparation included (the range and scale / offset
    warnings for the frozen features named the same files again in the first fine-tune)."""
    said: set[str] = set()
    token = _SAID.set(said)
    once = functools.partial(_once, said=said)
    log.addFilter(once)
    try:
        yield
    finally:
        log.removeFilter(once)
        _SAID.reset(token)
