"""The files a pretraining run writes into its folder at its start (``config.yaml``, ``catalog.json``,
``stats.json``), and what a resumed run takes from its start rather than from the folders as they are now: the
statistics it trained with (its checkpoint's), and a warning naming the data files added, gone or changed since its
``catalog.json``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from geomed_ssl.bands.matching import brief
from geomed_ssl.config import Recipe
from geomed_ssl.data.catalog import Catalog
from geomed_ssl.data.stats import BandStats
from geomed_ssl.errors import DataError
from geomed_ssl.outfiles import atomic_path, atomic_write_text
from geomed_ssl.train.checkpointing import ResumePoint

log = logging.getLogger("geomed_ssl")


def resumed_stats(out: Path, point: ResumePoint | None, catalog: Catalog) -> BandStats | None:
    """The statistics the resumed run trained with, from its checkpoint (None when it has none): ``stats.json``
    edited or deleted since would otherwise normalise the rest of the run, and the export, otherwise than its start,
    or be computed again on whatever the data folder holds now. Data with other bands is refused here, in words."""
    saved = ((point.info.get("encoder") or {}).get("stats") if point is not None else None)
    if not saved:
        return None
    stats = BandStats.from_dict(saved, source=f"checkpoint '{point.path}'")
    if list(catalog.band_names) != list(stats.band_names):
        raise DataError(f"--resume: the data's bands ({len(catalog.band_names)}: {brief(catalog.band_names)}) are "
                        f"not those this run trained on ({len(stats.band_names)}: {brief(stats.band_names)}, its "
                        f"checkpoint '{point.path}'): resume on the data it started with, or start a new run with "
                        "another --out.")
    path = out / "stats.json"
    if not stats_file_holds(path, stats):
        log.warning(f"warning: '{path}' is {'missing' if not path.is_file() else 'not what this run trained with'}: "
                    "the run goes on with the statistics in its checkpoint, and stats.json is written again from "
                    "them.")
    return stats


def warn_data_changed(out: Path, catalog: Catalog, point: ResumePoint | None) -> None:
    """A warning naming the files added, gone or changed (shape, bands, data type, nodata, value range) since the
    run's ``catalog.json`` was written: the resumed run reads the data as it is now, so it no longer computes what
    an uninterrupted run would have."""
    step = point.step if point is not None else 0
    if (before := saved_catalog(out)) is None:
        log.warning(f"warning: '{out / 'catalog.json'}' is missing or unreadable, so the files this run started on "
                    "are unknown and cannot be compared with the data now; the catalog read now is kept as "
                    f"catalog-resumed-step-{step:06d}.json.")
        return
    added, gone, changed = catalog_changes(before, catalog)
    if not (added or gone or changed):
        return
    parts = [f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
             for what, names in (("added", added), ("gone", gone), ("changed", changed)) if names]
    log.warning(f"warning: the data changed since this run's catalog.json was written: {'; '.join(parts)} files. "
                "The run goes on with the statistics it started with and reads the files as they are now, so it no "
                "longer computes what an uninterrupted run would have; restore the files, or pretrain on the new "
                f"data with another --out. The catalog read now is kept as catalog-resumed-step-{step:06d}.json.")


def stats_file_holds(path: Path, stats: BandStats) -> bool:
    """Whether ``path`` is a readable ``stats.json`` holding ``stats``."""
    try:
        return path.is_file() and BandStats.load(path) == stats
    except DataError:
        return False


def saved_catalog(out: Path) -> dict[str, Any] | None:
    """The run's ``catalog.json`` as JSON (None when it is missing, unreadable or not a catalog)."""
    try:
        saved = json.loads((out / "catalog.json").read_text())
    except (OSError, ValueError):
        return None
    records = saved.get("records") if isinstance(saved, dict) else None
    ok = isinstance(records, list) and all(isinstance(r, dict) and "path" in r for r in records)
    return saved if ok else None


CHANGED_FIELDS = ("shape", "num_bands", "dtype", "band_names", "nodata", "value_range")


def catalog_changes(before: dict[str, Any], now: Catalog) -> tuple[list[str], list[str], list[str]]:
    """(added, gone, changed) files of ``now`` against a saved ``catalog.json`` (``before``), by their paths under
    each catalog's root; ``now`` is compared as that file would hold it (tuples as lists)."""
    def keyed(catalog: dict[str, Any]) -> dict[str, Any]:
        root = catalog.get("root") or ""
        return {os.path.relpath(r["path"], root) if root else r["path"]: r for r in catalog["records"]}

    old, new = keyed(before), keyed(json.loads(json.dumps(now.to_dict())))
    changed = [k for k in new if k in old and any(differs(f, new[k], old[k]) for f in CHANGED_FIELDS)]
    return [k for k in new if k not in old], [k for k in old if k not in new], changed


def differs(field: str, now: dict[str, Any], before: dict[str, Any]) -> bool:
    """Whether a record's ``field`` changed, but for a data.channels stack's ``nodata`` gone from its first file's
    tag (what catalogs held before each file's own tag was read alike, records.stack_nodata) to none."""
    if field == "nodata" and len(now.get("paths") or []) > 1 and now.get("nodata") is None:
        return False
    return now.get(field) != before.get(field)


def write_run_files(out: Path, recipe: Recipe, catalog: Catalog, stats: BandStats, step: int | None = None,
                    until: dict[str, Any] | None = None) -> None:
    """``config.yaml``, ``catalog.json`` (a resumed run's at step ``step``: kept, and the data as read now beside
    it when it changed) and ``stats.json`` (written again when it is not ``stats``), each complete or not at all
    (rank 0 only). ``until``: the recipe the steps before a resume that changes settings ran with, kept as
    ``config-until-step-NNNNNN.yaml`` (the first such resume from that step's)."""
    if until is not None and step is not None and not (out / f"config-until-step-{step:06d}.yaml").exists():
        import yaml  # the settings the steps before this resume ran with (its checkpoint's), kept before replaced

        atomic_write_text(out / f"config-until-step-{step:06d}.yaml", yaml.safe_dump(until, sort_keys=False))
    with atomic_path(out / "config.yaml") as tmp:
        recipe.save(tmp)
    text = json.dumps(catalog.to_dict(), indent=1)
    started = saved_catalog(out) if step is not None else None
    if step is None:
        atomic_write_text(out / "catalog.json", text)
    elif started is None or any(catalog_changes(started, catalog)):  # catalog.json stays what the run started on
        atomic_write_text(out / f"catalog-resumed-step-{step:06d}.json", text)
    if not stats_file_holds(out / "stats.json", stats):
        with atomic_path(out / "stats.json") as tmp:
            stats.save(tmp)
