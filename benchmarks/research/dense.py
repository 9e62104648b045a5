"""Dense (tile) machinery for pixel-level ViTs: reading tiles, whole-scene features computed once per tile,
dense self-supervision (VICReg on matched pixels of two overlapping views; MAE on masked pixels).

A tile is T x T pixels, patch 1 (one token per pixel) or p (tokens upsampled back to pixels). Whole-scene
inference: tiles at stride T/2, each tile computed once, and only its central (T/2)^2 pixels kept, so every pixel
sees at least T/4 pixels of context on each side and is computed by exactly one tile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixnet import PixViT, vicreg


class Scene:
    """A standardised cube (C, H, W), or N same-size images (N, C, H, W), padded by T on each side with zeros
    (= band mean); optional ``allowed`` mask (H, W): pixels outside it read as 0 too (test blocks of a blocks
    split)."""

    def __init__(self, cube: torch.Tensor, tile: int, allowed: torch.Tensor | None = None) -> None:
        if cube.ndim == 3:
            cube = cube[None]
        self.n, self.c, self.h, self.w = cube.shape
        self.t = tile
        src = cube if allowed is None else cube * allowed[None, None].to(cube.dtype)
        self.padded = F.pad(src, (tile, tile, tile, tile))  # (N, C, H + 2T, W + 2T)

    def tiles(self, ys: torch.Tensor, xs: torch.Tensor, size: int | None = None,
              img: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, T, T) tiles whose top-left pixel is (ys, xs) (may be negative / past the edge) of image ``img``
        (default 0)."""
        t = size or self.t
        ar = torch.arange(t)
        yy = (ys[:, None] + ar[None] + self.t).clamp(0, self.padded.shape[2] - 1)
        xx = (xs[:, None] + ar[None] + self.t).clamp(0, self.padded.shape[3] - 1)
        img = torch.zeros(len(ys), dtype=torch.long) if img is None else img
        return self.padded[img[:, None, None], :, yy[:, :, None], xx[:, None, :]].permute(0, 3, 1, 2).contiguous()


def token_map(enc: PixViT, x: torch.Tensor, taps: tuple[int, ...]) -> torch.Tensor:
    """(B, D * taps, T, T) per-pixel features of the tapped blocks (tokens upsampled to pixels when patch > 1)."""
    b, _, t, _ = x.shape
    g = t // enc.patch
    feats = enc(x, taps=taps)
    m = torch.cat(feats, -1).transpose(1, 2).reshape(b, -1, g, g)
    if enc.patch > 1:
        m = F.interpolate(m, size=(t, t), mode="bilinear", align_corners=False)
    return m


@torch.no_grad()
def scene_features(enc: PixViT, scene: Scene, taps: tuple[int, ...], batch: int = 16,
                   head: nn.Module | None = None) -> torch.Tensor:
    """(D', H, W) features (or head outputs) of every pixel, each tile computed once, central half kept."""
    enc.eval()
    t, s = scene.t, scene.t // 2
    q = t // 4
    starts = [(y, x) for y in range(-q, scene.h - q, s) for x in range(-q, scene.w - q, s)]
    out = None
    for i in range(0, len(starts), batch):
        ys = torch.tensor([p[0] for p in starts[i:i + batch]])
        xs = torch.tensor([p[1] for p in starts[i:i + batch]])
        m = token_map(enc, scene.tiles(ys, xs), taps)
        if head is not None:
            m = head(m)
        if out is None:
            out = torch.zeros(m.shape[1], scene.h + t, scene.w + t)
        for j in range(m.shape[0]):
            y, x = int(ys[j]) + q, int(xs[j]) + q
            out[:, y:y + s, x:x + s] = m[j, :, q:q + s, q:q + s]
    return out[:, : scene.h, : scene.w]


def spectral_neighbours(cube: torch.Tensor, k: int = 10, smooth: int = 3, n_pca: int = 30, min_dist: int = 8,
                        chunk: int = 2048) -> torch.Tensor:
    """(H*W, k) indices of each pixel's k nearest pixels in spectrum (PCA of the ``smooth``-averaged cube, Euclidean),
    ignoring pixels closer than ``min_dist`` in space, so pairs link separate fields."""
    c, h, w = cube.shape
    x = F.avg_pool2d(cube[None], smooth, 1, smooth // 2, count_include_pad=False)[0].reshape(c, -1).T  # (N, C)
    x = x - x.mean(0)
    _, _, v = torch.pca_lowrank(x, q=n_pca, center=False)
    z = x @ v  # (N, n_pca)
    sq = (z ** 2).sum(1)
    yy, xx = torch.arange(h * w) // w, torch.arange(h * w) % w
    out = []
    for i in range(0, h * w, chunk):
        d = sq[i:i + chunk, None] + sq[None] - 2 * z[i:i + chunk] @ z.T  # (chunk, N)
        near = ((yy[i:i + chunk, None] - yy[None]).abs() < min_dist) & ((xx[i:i + chunk, None] - xx[None]).abs()
                                                                         < min_dist)
        d[near] = float("inf")
        out.append(d.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)


def dihedral_pair(k: int, flip: bool):
    """Forward and inverse of one of the 8 dihedral transforms of the last two axes."""
    def fwd(x: torch.Tensor) -> torch.Tensor:
        return torch.rot90(x.flip(-1) if flip else x, k, (-2, -1))

    def inv(x: torch.Tensor) -> torch.Tensor:
        x = torch.rot90(x, -k, (-2, -1))
        return x.flip(-1) if flip else x
    return fwd, inv


class DenseVICReg(nn.Module):
    """Two views of the scene: tiles shifted by up to ``shift`` px, each with its own spectral augmentation and
    dihedral transform; the per-pixel features of ``m`` random pixels of the overlap are matched (pixel q of view 1
    with pixel q + j of view 2, |j| <= ``neigh``) and pulled together by VICReg after a projector."""

    def __init__(self, enc: PixViT, taps: tuple[int, ...], proj: int = 256, shift: int = 4, neigh: int = 0,
                 m: int = 32, glob: float = 0.0, spec_nn: torch.Tensor | None = None, spec_frac: float = 0.0,
                 spec_r: int = 2) -> None:
        super().__init__()
        self.enc, self.taps, self.shift, self.neigh, self.m, self.glob = enc, taps, shift, neigh, m, glob
        self.spec_nn, self.spec_frac, self.spec_r = spec_nn, spec_frac, spec_r
        d = enc.dim * len(taps)
        self.proj = nn.Sequential(nn.Linear(d, proj), nn.BatchNorm1d(proj), nn.ReLU(), nn.Linear(proj, proj),
                                  nn.BatchNorm1d(proj), nn.ReLU(), nn.Linear(proj, proj))

    def loss(self, scene: Scene, batch: int, g: torch.Generator, aug) -> torch.Tensor:
        n_spec = int(round(batch * self.spec_frac)) if self.spec_nn is not None else 0
        f1, f2 = self._spatial_pairs(scene, batch - n_spec, g, aug)
        if n_spec:
            s1, s2 = self._spectral_pairs(scene, n_spec, g, aug)
            f1, f2 = torch.cat([f1, s1]), torch.cat([f2, s2])
        return vicreg(self.proj(f1), self.proj(f2))

    def _views(self, scene: Scene, pos: list[tuple[torch.Tensor, torch.Tensor]], g: torch.Generator, aug
               ) -> list[torch.Tensor]:
        maps = []
        for ys, xs in pos:
            fwd, inv = dihedral_pair(int(torch.randint(4, (1,), generator=g)), bool(torch.rand(1, generator=g) < .5))
            maps.append(inv(token_map(self.enc, fwd(aug(scene.tiles(ys, xs), g)), self.taps)))
        return maps

    def _spectral_pairs(self, scene: Scene, batch: int, g: torch.Generator, aug
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs of far-apart pixels whose (locally averaged) spectra are nearest neighbours: view 1 holds pixel p,
        view 2 pixel nn(p), each somewhere in its tile's central half; the (2r+1)^2 pixels around them are matched
        (field interiors)."""
        t, q, r = scene.t, scene.t // 4, self.spec_r
        p1 = torch.randint(0, scene.h * scene.w, (batch,), generator=g)
        k = self.spec_nn.shape[1]
        p2 = self.spec_nn[p1, torch.randint(0, k, (batch,), generator=g)]
        pos, at = [], []
        for p in (p1, p2):
            a = q + torch.randint(0, t - 2 * q, (batch, 2), generator=g)  # where p sits in its tile
            pos.append((p // scene.w - a[:, 0], p % scene.w - a[:, 1]))
            at.append(a)
        maps = self._views(scene, pos, g, aug)
        d = torch.arange(-r, r + 1)
        dy, dx = [v.reshape(-1) for v in torch.meshgrid(d, d, indexing="ij")]
        bi = torch.arange(batch)[:, None].expand(-1, dy.numel())
        feats = []
        for m, a in zip(maps, at):
            yy = (a[:, :1] + dy[None]).clamp(0, t - 1)
            xx = (a[:, 1:] + dx[None]).clamp(0, t - 1)
            f = m.permute(0, 2, 3, 1)[bi, yy, xx]  # (B, (2r+1)^2, D')
            feats.append(f.reshape(-1, f.shape[-1]))
        return feats[0], feats[1]

    def _spatial_pairs(self, scene: Scene, batch: int, g: torch.Generator, aug) -> tuple[torch.Tensor, torch.Tensor]:
        t, sh, nb = scene.t, self.shift, self.neigh
        y1 = torch.randint(-t // 4, scene.h - 3 * t // 4 + 1, (batch,), generator=g)
        x1 = torch.randint(-t // 4, scene.w - 3 * t // 4 + 1, (batch,), generator=g)
        dy = torch.randint(-sh, sh + 1, (batch,), generator=g)
        dx = torch.randint(-sh, sh + 1, (batch,), generator=g)
        img = torch.randint(0, scene.n, (batch,), generator=g)
        maps = []
        for ys, xs in ((y1, x1), (y1 + dy, x1 + dx)):
            fwd, inv = dihedral_pair(int(torch.randint(4, (1,), generator=g)), bool(torch.rand(1, generator=g) < .5))
            maps.append(inv(token_map(self.enc, fwd(aug(scene.tiles(ys, xs, img=img), g)), self.taps)))
        # pixel (a, b) of view 1 is pixel (a - dy, b - dx) of view 2; pick m pixels of the overlap per pair
        lo_y, hi_y = (dy + nb).clamp(min=0), (t + dy - nb).clamp(max=t)  # rows of view 1 whose partner exists
        lo_x, hi_x = (dx + nb).clamp(min=0), (t + dx - nb).clamp(max=t)
        r = torch.rand(batch, self.m, 2, generator=g)
        a = (lo_y[:, None] + (r[..., 0] * (hi_y - lo_y)[:, None]).long()).clamp(max=t - 1)
        b = (lo_x[:, None] + (r[..., 1] * (hi_x - lo_x)[:, None]).long()).clamp(max=t - 1)
        j = torch.randint(-nb, nb + 1, (batch, self.m, 2), generator=g) if nb else torch.zeros(batch, self.m, 2,
                                                                                               dtype=torch.long)
        a2 = (a - dy[:, None] + j[..., 0]).clamp(0, t - 1)
        b2 = (b - dx[:, None] + j[..., 1]).clamp(0, t - 1)
        bi = torch.arange(batch)[:, None].expand(-1, self.m)
        f1 = maps[0].permute(0, 2, 3, 1)[bi, a, b]  # (B, m, D')
        f2 = maps[1].permute(0, 2, 3, 1)[bi, a2, b2]
        return f1.reshape(-1, f1.shape[-1]), f2.reshape(-1, f2.shape[-1])
