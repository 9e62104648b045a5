"""Output folders: commands never overwrite a non-empty folder unless told to."""

from __future__ import annotations

import shutil
from pathlib import Path

from geomed_ssl.errors import GeomedError


def prepare_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Create an output folder; an existing non-empty one is an error unless ``overwrite`` (then it is replaced)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise GeomedError(f"output folder '{out}' already exists and is not empty; pass --overwrite to replace it "
                              "or choose another --out.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out
