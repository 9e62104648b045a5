"""BraTS whole tumour with the six patients rotated: is the benchmark's test pair typical?

For each rotation (fit on one folder's two patients, score another's), the MAE of ``bench_fewlabel.py --brats``
is pretrained on the four patients outside the scored pair, then the same CE fine-tune (150 steps, 1 % of the fit
pair's voxels) runs from it and from random initialisation, and the random forest on the same training voxels;
whole-tumour Dice per label seed.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/research/brats_rotations.py --out /tmp/rot \\
        [--rotations train:test test:validation validation:train] [--seeds 0 1] [--pretrain-steps 2000]

Measured 2026-12-03 (docs/label_efficiency.md, BraTS): fit 5,6 / scored 1,2 (the benchmark's split) pretrained
0.499 vs random init 0.676 vs random forest 0.739; fit 1,2 / scored 3,4 0.790 vs 0.789 vs 0.767; fit 3,4 / scored
5,6 0.641 vs 0.623 vs 0.429 (seeds 0 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_fewlabel import BRATS, brats_finetune, brats_pretrain, brats_rf  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rotations", nargs="+", default=["train:test", "test:validation", "validation:train"],
                    help="FIT:SCORED folder pairs of the BraTS subset")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--pretrain-steps", type=int, default=2000)
    args = ap.parse_args()
    for rotation in args.rotations:
        fit, scored = rotation.split(":")
        encoder = brats_pretrain(args.out / f"pre_{scored}", args.pretrain_steps, held_out=scored)
        for seed in args.seeds:
            row = {"fit": fit, "scored": scored, "seed": seed}
            for name, enc in (("pretrained", encoder), ("random init", None)):
                ft_dir = args.out / f"ft_{fit}_{scored}_{name.split()[0]}_{seed}"
                row[name] = brats_finetune(enc, fit, scored, ft_dir, seed)["Dice (tumour)"]
            row["random forest"] = brats_rf(ft_dir, BRATS / fit, BRATS / scored)["Dice (tumour)"]
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
