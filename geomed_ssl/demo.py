"""``geomed-ssl demo``: the main job on the bundled Indian Pines sample, with no arguments, in a few CPU minutes."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from geomed_ssl.config import recipe_from_dict
from geomed_ssl.errors import GeomedError
from geomed_ssl.sample import SAMPLE_DIR

log = logging.getLogger("geomed_ssl")
MARKER = ".geomed-ssl-demo"

DEMO_RECIPE = {
    "data": {"kind": "raster", "patch_size": 32, "include": ["indian_pines.tif"], "num_workers": 0,
             "windows_per_read": 8, "stats_windows": 128},
    "model": {"embedding": "plain", "patch_size": 4, "embed_dim": 128, "depth": 6, "num_heads": 4},
    "method": {"name": "mae", "mask_ratio": 0.75, "norm_pix_loss": True, "decoder_embed_dim": 64,
               "decoder_depth": 2, "decoder_num_heads": 4},
    "train": {"batch_size": 32, "max_steps": 150, "base_lr": 1.5e-3, "warmup_steps": 15, "checkpoint_every": 50,
              "preview_every": 50, "log_every": 5, "seed": 0},
}


def prepare_demo_dir(out: Path) -> None:
    """The demo owns ``out``: replace it when it is ours (has the marker) or empty; refuse anything else."""
    if out.exists():
        if not (out / MARKER).exists() and any(out.iterdir()):
            raise GeomedError(f"'{out}' exists and was not made by `geomed-ssl demo`; pass another --out.")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by geomed-ssl demo; replaced on each run\n")


def run_demo(out: Path = Path("geomed-ssl-demo"), steps: int = 150) -> Path:
    """Pretrain a small MAE (depth 6, width 128) on Indian Pines and report where the outputs are."""
    from geomed_ssl.train.pretrain import pretrain

    out = Path(out)
    prepare_demo_dir(out)
    raw = {k: dict(v) for k, v in DEMO_RECIPE.items()}
    raw["train"]["max_steps"] = steps
    recipe = recipe_from_dict(raw, "demo recipe")
    log.info("geomed-ssl demo: MAE pretraining on the bundled Indian Pines scene (AVIRIS, 145x145, 200 bands; "
             "CC BY 3.0, Purdue). See geomed_ssl/sample/ATTRIBUTION.txt.")
    start = time.time()
    result = pretrain(recipe, SAMPLE_DIR, out / "pretrain", overwrite=True)
    minutes = (time.time() - start) / 60
    print(f"\nDemo done in {minutes:.1f} min ({result.steps} steps).")
    print(f"  encoder:   {result.encoder_dir}   (from geomed_ssl import load_encoder)")
    print(f"  metrics:   {result.run_dir / 'metrics.csv'}")
    print(f"  previews:  {result.run_dir / 'previews'}  (input / masked / reconstruction PNGs)")
    return out
