"""A volume's sliding-window prediction streamed slab by slab along its first axis.

The windows, weights and sums are MONAI's ``sliding_window_inference`` (its scan, its importance map, its padding of
an axis shorter than the window, every voxel's sum taken in its order), but each plane's blended scores are handed on
as soon as no later window touches it. The scores held are one window deep (K x roi x Y x Z floats), where MONAI
holds the whole volume's (K x X x Y x Z): 9 GB for 16 classes on a 512x512x400 CT. The trilinear resampling back to
the file's grid is streamed the same way, plane by plane.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from geomed_ssl.windows.tiling import inside_starts

CHUNK = 8  # planes handed on at a time
Planes = Iterator[tuple[int, torch.Tensor]]  # (first plane, block (K, n, Y, Z)) in order, every plane once


def window_planes(x: torch.Tensor, roi: Sequence[int], overlap: float, blend: str, batch_size: int,
                  scores: Callable[[torch.Tensor], torch.Tensor], device: str | torch.device = "cpu") -> Planes:
    """The blended ``scores`` of the windows over ``x`` (C, X, Y, Z), plane by plane along X: what
    ``sliding_window_inference(x[None], roi, batch_size, scores, overlap, blend, sw_device=device,
    device="cpu")[0]`` returns, yielded as blocks of whole planes (float32 on the CPU) once final. ``scores`` maps
    (B, C, *roi) on ``device`` to (B, K, *roi).

    Batches are formed within each plane of windows (all windows starting at one X), where MONAI's run across
    them: a batch never spans two window depths of scores, and a model whose output for a window changes in the
    last bits with the batch it is in (a CPU convolution) gives MONAI's numbers within float rounding rather than to
    the bit."""
    from monai.data.utils import compute_importance_map

    roi = tuple(int(r) for r in roi)
    size = tuple(int(n) for n in x.shape[1:])
    pads = [max(r - n, 0) for r, n in zip(roi, size)]  # MONAI pads a short axis with zeros, half before it
    if any(pads):
        x = F.pad(x, [v for p in reversed(pads) for v in (p // 2, p - p // 2)])
    full = tuple(int(n) for n in x.shape[1:])
    starts = [inside_starts(n, r, max(int(r * (1 - overlap)), 1)) for n, r in zip(full, roi)]
    weight = compute_importance_map(roi, mode=blend, sigma_scale=0.125, device=device, dtype=torch.float32)
    weight_cpu = weight.cpu()
    keep = [slice(p // 2, p // 2 + n) for p, n in zip(pads[1:], size[1:])]
    rx = roi[0]
    acc = count = None
    lo = 0  # the plane acc[:, 0] holds
    group = [(sy, sz) for sy in starts[1] for sz in starts[2]]  # one plane of windows, MONAI's scan order: the last
    for sx in starts[0]:  # axis fastest
        if acc is not None and sx > lo:  # planes before this group's first are final
            yield from _final(acc, count, lo, sx, keep, pads[0] // 2, size[0])
            acc, count = _shifted(acc, sx - lo), _shifted(count, sx - lo)
            lo = sx
        if count is None:
            count = torch.zeros((1, rx, full[1], full[2]))
        for sy, sz in group:
            count[:, sx - lo:sx - lo + rx, sy:sy + roi[1], sz:sz + roi[2]] += weight_cpu
        for b in range(0, len(group), batch_size):
            wins = group[b:b + batch_size]
            batch = torch.stack([x[:, sx:sx + rx, sy:sy + roi[1], sz:sz + roi[2]] for sy, sz in wins])
            out = scores(batch.to(device))
            out *= weight
            out = out.cpu()
            if acc is None:
                acc = torch.zeros((out.shape[1], rx, full[1], full[2]))
            for (sy, sz), o in zip(wins, out):
                acc[:, sx - lo:sx - lo + rx, sy:sy + roi[1], sz:sz + roi[2]] += o
    yield from _final(acc, count, lo, lo + rx, keep, pads[0] // 2, size[0])


def _final(acc: torch.Tensor, count: torch.Tensor, lo: int, hi: int, keep: list[slice], front: int,
           n: int) -> Planes:
    """Planes [lo, hi) of the padded volume, blended (sum / weight) and cropped to the unpadded one, a few at a
    time."""
    a, b = max(lo, front), min(hi, front + n)
    for c in range(a, b, CHUNK):
        d = min(c + CHUNK, b)
        yield c - front, acc[:, c - lo:d - lo, keep[0], keep[1]] / count[:, c - lo:d - lo, keep[0], keep[1]]


def _shifted(buf: torch.Tensor, d: int) -> torch.Tensor:
    """``buf`` moved ``d`` planes towards its start along axis 1, the planes freed at its end zeroed (in place)."""
    rest = buf.shape[1] - d
    if rest > 0:
        buf[:, :rest] = buf[:, d:].clone()
        buf[:, rest:] = 0
    else:
        buf.zero_()
    return buf


def resampled_planes(planes: Planes, size: int, out_size: Sequence[int]) -> Planes:
    """Trilinear resampling (``align_corners=True``: the same first and last voxel centres) of a volume of ``size``
    planes streamed as ``planes`` (blocks (K, n, Y, Z)) to ``out_size`` (X', Y', Z'), streamed one plane at a time:
    each output plane mixes the two input planes either side of it, resized across (Y, Z), with the weights of
    ``F.interpolate(..., mode="trilinear", align_corners=True)``. Only the planes still to be mixed are held."""
    nx, across = int(out_size[0]), tuple(int(s) for s in out_size[1:])
    scale = np.float32(size - 1) / np.float32(nx - 1) if nx > 1 else np.float32(0)  # in float32, as torch's
    src = np.arange(nx, dtype=np.float32) * scale  # kernel computes them, so its rounding is matched too
    below = np.minimum(np.floor(src).astype(np.int64), size - 1)
    frac = (src - below).tolist()
    above, below = np.minimum(below + 1, size - 1).tolist(), below.tolist()
    held: dict[int, torch.Tensor] = {}  # input planes (K, Y, Z) received and still needed
    resized: dict[int, torch.Tensor] = {}

    def plane(p: int) -> torch.Tensor:
        if p not in resized:
            resized[p] = F.interpolate(held[p][None], size=across, mode="bilinear", align_corners=True)[0]
        return resized[p]

    c = 0
    for a, block in planes:
        held.update((a + j, block[:, j]) for j in range(block.shape[1]))
        while c < nx and above[c] < a + block.shape[1]:
            yield c, (plane(below[c]) * (1 - frac[c]) + plane(above[c]) * frac[c])[:, None]
            c += 1
        for p in [p for p in held if p < (below[c] if c < nx else size)]:
            del held[p]
            resized.pop(p, None)
