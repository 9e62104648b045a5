"""Check whole-tumour predictions of the BraTS subset's test patients for the artefacts of issue 12.

    python benchmarks/brats_prediction_check.py PRED_DIR [--data ../shared/data/brats_subset/test] [--png OUT_DIR]

PRED_DIR holds ``<patient>_pred.nii.gz`` from ``geomed-ssl predict`` (label 1 = tumour). Per patient: Dice against
OTMultiClass > 0, predicted tumour voxels outside ``brainmask.nii.gz`` (in the air; of them, those on the volume's
outermost layer, which only windows' edges reached before volumes were padded), and the false positives'
share on even / odd indices of each file axis (1.00 / 1.00 = no period-2 stripes; a checkerboard shows as e.g.
0.70 / 1.30). ``--png`` writes the three middle slices with the reference outline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats_subset" / "test"


def check(pred: np.ndarray, truth: np.ndarray, brain: np.ndarray) -> dict:
    """Dice, tumour voxels in the air (and of them, on the volume's outermost layer: where only windows' edges reach)
    and the false positives' parity shares per axis of one patient."""
    t = pred == 1
    face = np.ones(pred.shape, bool)
    face[1:-1, 1:-1, 1:-1] = False
    fp = t & ~truth
    parity = []
    total = int(fp.sum())
    for ax in range(3):
        odd = np.arange(pred.shape[ax]) % 2 == 1
        n_odd = fp.compress(odd, axis=ax).sum()
        parity.append(None if total == 0 else  # no false positive: no stripe to measure
                      (round(float(2 * (total - n_odd) / total), 2), round(float(2 * n_odd / total), 2)))
    return {"dice": round(float(2 * (t & truth).sum() / max(t.sum() + truth.sum(), 1)), 4), "predicted": int(t.sum()),
            "reference": int(truth.sum()), "in_air": int((t & ~brain).sum()),
            "on_faces": int((t & ~brain & face).sum()), "fp_even_odd_per_axis": parity}


def save_png(path: Path, image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 3, figsize=(13, 4.5))
    for ax in range(3):
        take = lambda a: np.take(a, a.shape[ax] // 2, axis=ax).T  # noqa: E731
        axs[ax].imshow(take(image), cmap="gray", origin="lower")
        axs[ax].imshow(np.ma.masked_where(~take(pred == 1), take(pred == 1)), cmap="autumn", alpha=0.6, origin="lower")
        axs[ax].contour(take(truth), [0.5], colors="lime", linewidths=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pred_dir", type=Path, help="folder of <patient>_pred.nii.gz from geomed-ssl predict")
    ap.add_argument("--data", type=Path, default=DATA, help="the test patients' folders (default: the shared subset)")
    ap.add_argument("--png", type=Path, default=None, help="write the three middle slices per patient here")
    args = ap.parse_args()
    cases = sorted(p for p in args.data.iterdir() if p.is_dir()) if args.data.is_dir() else []
    if not cases:
        raise SystemExit(f"no patient folders under {args.data} (the shared BraTS subset's test folder?)")
    missing = [c.name for c in cases if not (args.pred_dir / f"{c.name}_pred.nii.gz").is_file()]
    if missing:
        raise SystemExit(f"{args.pred_dir} lacks {', '.join(f'{m}_pred.nii.gz' for m in missing)}: predict those "
                         "patients first (geomed-ssl predict FT_DIR PATIENT_DIR --out PRED_DIR)")
    print("| patient | Dice | predicted | reference | in the air | of them on the faces | false positives even / odd "
          "per axis |")
    print("|---|---|---|---|---|---|---|")
    for case in cases:
        pred = np.asarray(nib.load(args.pred_dir / f"{case.name}_pred.nii.gz").dataobj)
        truth = np.asarray(nib.load(case / "OTMultiClass.nii.gz").dataobj) > 0
        brain = np.asarray(nib.load(case / "brainmask.nii.gz").dataobj) > 0.5
        r = check(pred, truth, brain)
        parity = " ".join("-" if p is None else f"{p[0]:.2f}/{p[1]:.2f}" for p in r["fp_even_odd_per_axis"])
        print(f"| {case.name} | {r['dice']:.4f} | {r['predicted']} | {r['reference']} | {r['in_air']} | "
              f"{r['on_faces']} | {parity} |")
        if args.png is not None:
            args.png.mkdir(parents=True, exist_ok=True)
            flair = np.asarray(nib.load(next(case.glob("*Flair*"))).dataobj)
            save_png(args.png / f"{case.name}.png", flair, pred, truth)


if __name__ == "__main__":
    main()
