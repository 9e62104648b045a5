"""Whole-volume prediction memory and time: a generated CT-like NIfTI volume predicted with ``predict_volume``
(MONAI's windows and weights, streamed plane by plane), printed as a table.

    python benchmarks/bench_predict_volume.py                           # 384x384x256, 16 classes, 96-voxel windows
    python benchmarks/bench_predict_volume.py --shape 512 512 400 --classes 16 --spacing 1.2
    python benchmarks/bench_predict_volume.py --probabilities uint8 --device cuda

The model is a small 3D conv net (untrained: memory and time only). ``--spacing`` makes the reader resample the
volume (0.8 x 0.8 x 1.0 mm voxels) to that spacing, so the probabilities are resampled back to the file's grid.
"peak RSS growth" is sampled from /proc/self/status every 5 ms during the prediction, over a baseline taken after
a warm-up prediction of a small volume (imports and the model's first forward outside it).

Measured 2026-12-07 on the 2-core CPU (one thread beside the sampler; `before` is the same script on the code of
2f7a7c8, where MONAI's ``sliding_window_inference`` held every class's scores for the whole padded volume, then
resampled them whole):

| volume | classes | spacing | probabilities | peak RSS growth, before | now | seconds, before | now |
|---|---|---|---|---|---|---|---|
| 384x384x256 | 16 | the file's | no | 4279 MiB | 1663 MiB | 29.8 | 31.7 |
| 384x384x256 | 16 | 1.2 mm | no | 3853 MiB | 1182 MiB | 22.6 | 19.6 |
| 384x384x256 | 32 | the file's | no | 8070 MiB | 2990 MiB | 70.8 | 50.1 |
| 384x384x256 | 16 | the file's | uint8 | 10494 MiB | 2132 MiB | 69.9 | 45.7 |
| 512x512x400 | 16 | the file's | no | 10101 MiB | 3502 MiB | 105.7 | 93.1 |

What is left: the input (read, normalised and padded: about 12 bytes a voxel for one channel), the window-deep slab of
scores (K x 4 bytes x window x the padded cross-section: 1.5 GB of the 3.5 GB at 512x512x400), one window batch's
forward pass, and two bytes a voxel (classes, validity); with probabilities, their array (one or four bytes a class
and voxel). The times are of one run each on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_predict import RssSampler, metric_table  # noqa: E402

from geomed_ssl.config import DataConfig  # noqa: E402
from geomed_ssl.data.stats import BandStats  # noqa: E402
from geomed_ssl.inference.predict import predict_volume  # noqa: E402

VOXEL_MM = (0.8, 0.8, 1.0)


def volume_path(data_dir: Path, shape: tuple[int, int, int]) -> Path:
    """Generate (once) a smooth CT-like float32 volume with a body in air; returns its path."""
    import nibabel as nib

    path = data_dir / f"volume_{'x'.join(map(str, shape))}.nii.gz"
    if path.exists():
        return path
    data_dir.mkdir(parents=True, exist_ok=True)
    i, j, k = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    body = (i[:, None, None] ** 2 + j[None, :, None] ** 2 < 0.8) & (np.abs(k)[None, None, :] < 2)
    vol = np.where(body, 40 + 300 * np.sin(6 * i)[:, None, None] * np.cos(5 * j)[None, :, None]
                   * np.cos(3 * k)[None, None, :], -1000).astype(np.float32)
    tmp = path.with_name(".partial-" + path.name)
    nib.save(nib.Nifti1Image(vol, np.diag([*VOXEL_MM, 1.0])), str(tmp))
    os.replace(tmp, path)
    return path


def small_model(classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv3d(8, classes, 1)).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[384, 384, 256])
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--window", type=int, default=96)
    ap.add_argument("--spacing", type=float, default=None, help="resample to this isotropic spacing (mm)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--probabilities", default="no", choices=["no", "float32", "uint8"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "geomed_bench_volume"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir)
    src = volume_path(data_dir, tuple(args.shape))
    stats = BandStats(["band_1"], [-400.0], [500.0], [-1000.0], [400.0], [1])
    cfg = DataConfig(kind="volume", intensity="none", spacing=[args.spacing] * 3 if args.spacing else None)
    model = small_model(args.classes)
    proba = False if args.probabilities == "no" else args.probabilities
    out = Path(tempfile.mkdtemp(prefix="bench_volume_")) / "pred.nii.gz"
    run = dict(data_cfg=cfg, roi_size=args.window, num_classes=args.classes, probabilities=proba,
               batch_size=args.batch_size, device=args.device)
    predict_volume(model, volume_path(data_dir, (48, 48, 48)), out, stats, **run)  # warm-up
    base = RssSampler.rss()
    with RssSampler() as sampler:
        summary = predict_volume(model, src, out, stats, **run)
    voxels = int(np.prod(args.shape))
    rows = [
        ("volume", f"{'x'.join(map(str, args.shape))} float32 ({voxels / 1e6:.1f} M voxels), "
                   f"{'resampled to ' + str(args.spacing) + ' mm' if args.spacing else 'not resampled'}"),
        ("model grid", "x".join(map(str, summary["model_grid"]))),
        ("classes / window / batch / device / threads",
         f"{args.classes} / {args.window} / {args.batch_size} / {args.device} / {torch.get_num_threads()}"),
        ("probabilities", args.probabilities),
        ("seconds", f"{summary['seconds']:.1f}"),
        ("peak RSS growth (MiB, sampled)", f"{(sampler.peak - base) / 2**20:.0f}"),
        ("K float32 volumes on the file's grid (MiB, for scale)", f"{voxels * args.classes * 4 / 2**20:.0f}"),
    ]
    metric_table(rows)
    for p in out.parent.iterdir():
        p.unlink()
    out.parent.rmdir()


if __name__ == "__main__":
    main()
