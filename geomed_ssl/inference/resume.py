"""``predict --resume``: which class maps of an earlier prediction into the same folder can stay.

Each output records a digest of what made it (``outcommands.RUN_TAG``): the model (its config.json, and its
weights' size and modification time), the settings that change its values (overlap, blend, probabilities, band
names, nodata, the toolkit's version) and the input file(s) as they were (size and modification time). A map stays
only when its digest (and, with probabilities, its probability file's) is the one this run would write; anything
else is predicted again."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from geomed_ssl.inference.legend import sidecar_categories
from geomed_ssl.inference.writers import proba_path
from geomed_ssl.outcommands import RUN_TAG, recorded_input


def input_state(path: Path) -> list[list[Any]]:
    """Name, size and modification time (ns) of the input file, or of each file of a stacked folder."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [[p.name, (st := p.stat()).st_size, st.st_mtime_ns] for p in files]


# What a map records beyond its pixels, so --resume redoes maps that lack it: 2 = the classes' names, 3 = them in
# GDAL's sidecar too (2026-12-07)
RECORDS = 3


def run_keys(planned: dict[Path, Path], model_id: str, settings: dict[str, Any]) -> dict[Path, str]:
    """The digest each input's outputs record: the model, ``settings`` (JSON-serialisable) and the input's state."""
    from geomed_ssl._version import __version__

    common = {"model": model_id, "version": __version__, "records": RECORDS, **settings}
    keys = {}
    for p in planned:
        text = json.dumps({**common, "input": os.path.abspath(p), "state": input_state(Path(p))}, sort_keys=True)
        keys[p] = hashlib.sha256(text.encode()).hexdigest()[:32]
    return keys


def finished(planned: dict[Path, Path], keys: dict[Path, str], probabilities: bool,
             categories: list[str] | None = None) -> list[Path]:
    """The inputs whose class map (and, with ``probabilities``, probability file) in the output folder records
    this run's digest: complete (every output appears under its final name only once written whole) and what
    predicting again would give; a GeoTIFF class map also with GDAL's sidecar naming ``categories`` (a stop
    between the map's rename and its sidecar's left it without)."""
    done = []
    for p, out in planned.items():
        outputs = [out, proba_path(out)] if probabilities else [out]
        if all(o.is_file() and recorded_input(o, RUN_TAG) == keys[p] for o in outputs) and (
                categories is None or out.suffix.lower() != ".tif" or sidecar_categories(out) == categories):
            done.append(p)
    return done
