"""Export another branch or step of a pretraining run as a run folder that ``compare`` scores like the run itself.

``PYTHONPATH=$PWD python benchmarks/research/export_branch.py RUN OUT [--branch momentum_encoder]
[--ckpt last.ckpt]``: OUT gets RUN's config.yaml, stats.json and catalog.json and an ``encoder/`` export whose
weights are ``method.<branch>`` of ``RUN/checkpoints/<ckpt>`` (loaded with ``weights_only=True``). Used to ask whether
MoCo v3's momentum encoder (an EMA of the exported base encoder) or an earlier checkpoint probes better on EuroSAT.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from geomed_ssl.checkpoint import load_encoder, save_encoder


def export_branch(run: Path, out: Path, branch: str, ckpt: str) -> Path:
    """Write OUT as a copy of RUN's metadata with ``method.<branch>`` of checkpoint ``ckpt`` as its encoder."""
    state = torch.load(run / "checkpoints" / ckpt, map_location="cpu", weights_only=True)
    prefix = f"method.{branch}."
    weights = {k[len(prefix):]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    if not weights:
        raise SystemExit(f"{run / 'checkpoints' / ckpt} holds no '{prefix}*' tensors")
    encoder = load_encoder(run)
    encoder.load_state_dict(weights)
    out.mkdir(parents=True, exist_ok=False)
    for name in ("config.yaml", "stats.json", "catalog.json"):
        if (run / name).is_file():
            shutil.copy2(run / name, out / name)
    meta = json.loads((run / "encoder" / "config.json").read_text())
    extra = {k: v for k, v in meta.items() if k not in ("format", "format_version", "encoder", "versions")}
    extra.update(step=int(state["global_step"]), branch=branch, source_checkpoint=str(run / "checkpoints" / ckpt))
    return save_encoder(encoder, out / "encoder", extra)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--branch", default="momentum_encoder")
    ap.add_argument("--ckpt", default="last.ckpt")
    args = ap.parse_args()
    print(export_branch(args.run_dir, args.out, args.branch, args.ckpt))


if __name__ == "__main__":
    main()
