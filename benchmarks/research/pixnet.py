"""Research models for dense few-label hyperspectral classification: a small ViT over pixel windows, window
extraction, spectral-spatial augmentation and the self-supervised objectives (MAE on pixels and band groups,
VICReg on neighbouring windows).

Shapes: a scene is (C, H, W) float32, standardised per band; windows are (B, C, S, S) with S odd when a centre
pixel is classified; tokens are (B, N, D) with N = (S / p)^2 for patch size p.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from geomed_ssl.models.pos_embed import sincos_pos_embed


# -- windows ------------------------------------------------------------------------------------------------------
class Windows:
    """Windows of a scene around given pixels; outside the scene (and outside ``allowed``) reads as 0 = band mean."""

    def __init__(self, cube: torch.Tensor, pad: int, allowed: torch.Tensor | None = None) -> None:
        c, h, w = cube.shape
        self.h, self.w, self.pad = h, w, pad
        src = cube if allowed is None else cube * allowed[None].to(cube.dtype)
        self.padded = F.pad(src, (pad, pad, pad, pad))  # (C, H+2p, W+2p)

    def get(self, flat: torch.Tensor, size: int, offset: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, size, size) windows whose centre (size odd) or centre-left-up pixel is ``flat`` (+ ``offset``
        (B, 2) pixels: the window moves, the pixel stays)."""
        y, x = flat // self.w, flat % self.w
        r = size // 2
        y0 = y - r + self.pad
        x0 = x - r + self.pad
        if offset is not None:
            y0, x0 = y0 + offset[:, 0], x0 + offset[:, 1]
        ar = torch.arange(size)
        yy = (y0[:, None] + ar[None]).clamp(0, self.padded.shape[1] - 1)  # (B, S)
        xx = (x0[:, None] + ar[None]).clamp(0, self.padded.shape[2] - 1)
        out = self.padded[:, yy[:, :, None], xx[:, None, :]]  # (C, B, S, S)
        return out.permute(1, 0, 2, 3).contiguous()


# -- augmentation -------------------------------------------------------------------------------------------------
def spectral_aug(x: torch.Tensor, g: torch.Generator, scale: float = 0.1, noise: float = 0.05,
                 band_drop: float = 0.0, shift: float = 0.0) -> torch.Tensor:
    """Label-preserving spectral changes of (B, C, S, S) standardised windows: per-sample brightness scale
    (1 +- scale), per-sample offset (+- shift), Gaussian noise (sigma ``noise``), a random contiguous band group
    zeroed with probability ``band_drop`` (at most 1/4 of the bands)."""
    b, c = x.shape[:2]
    s = 1 + scale * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1)
    x = x * s
    if shift:
        x = x + shift * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1)
    if noise:
        x = x + noise * torch.randn(x.shape, generator=g)
    if band_drop:
        width = max(1, c // 4)
        start = torch.randint(0, c - width + 1, (b,), generator=g)
        on = torch.rand(b, generator=g) < band_drop
        idx = torch.arange(c)[None]
        drop = on[:, None] & (idx >= start[:, None]) & (idx < start[:, None] + width)
        x = x * (~drop)[:, :, None, None]
    return x


def dihedral(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The same random flip + rotation by k*90 degrees for the whole batch (cheap; centre pixel stays)."""
    if torch.rand(1, generator=g).item() < 0.5:
        x = x.flip(-1)
    return torch.rot90(x, int(torch.randint(4, (1,), generator=g)), (-2, -1))


# -- the encoder --------------------------------------------------------------------------------------------------
class PixViT(nn.Module):
    """Plain ViT over (B, C, S, S) windows: p x p x C patches -> D, fixed sin-cos positions, no CLS token."""

    def __init__(self, in_chans: int, patch: int = 1, dim: int = 96, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 2.0, spectral_groups: int = 0) -> None:
        super().__init__()
        self.patch, self.dim, self.depth = patch, dim, depth
        self.embed = nn.Conv2d(in_chans, dim, patch, patch)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init)

    def pos(self, grid: int) -> torch.Tensor:
        return sincos_pos_embed((grid, grid), self.dim)  # (N, D)

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        t = self.embed(x)  # (B, D, g, g)
        g = t.shape[-1]
        return t.flatten(2).transpose(1, 2) + self.pos(g)[None], g

    def forward(self, x: torch.Tensor, taps: tuple[int, ...] = (-1,), keep: torch.Tensor | None = None,
                ) -> list[torch.Tensor]:
        """Token features (B, N, D) of the blocks in ``taps`` (the last one normalised); with ``keep`` (B, K)
        token indices only those tokens are encoded (MAE)."""
        t, _ = self.tokens(x)
        if keep is not None:
            t = torch.gather(t, 1, keep[:, :, None].expand(-1, -1, t.shape[-1]))
        want = {i % self.depth for i in taps}
        out = []
        for i, blk in enumerate(self.blocks):
            t = blk(t)
            if i in want:
                out.append(self.norm(t) if i == self.depth - 1 else t)
        return out


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        w = m.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(m.bias)


def centre_index(size: int, patch: int) -> int:
    g = size // patch
    return (g // 2) * g + g // 2


# -- MAE on pixels and band groups --------------------------------------------------------------------------------
class PixMAE(nn.Module):
    """MAE for PixViT: mask a fraction of the tokens (spatial positions) and, on the visible ones, zero a random
    band group of the input; reconstruct every band of the masked positions (per-token normalised targets) and the
    dropped bands of the visible ones."""

    def __init__(self, enc: PixViT, in_chans: int, dec_dim: int = 64, dec_depth: int = 1, mask_ratio: float = 0.6,
                 band_mask: float = 0.0) -> None:
        super().__init__()
        self.enc, self.mask_ratio, self.band_mask = enc, mask_ratio, band_mask
        self.c = in_chans
        p = enc.patch
        self.dec_in = nn.Linear(enc.dim, dec_dim)
        self.dec_mask = nn.Parameter(torch.zeros(1, 1, dec_dim))
        nn.init.normal_(self.dec_mask, std=0.02)
        self.dec = nn.ModuleList(Block(dec_dim, 4, 2.0, qkv_bias=True) for _ in range(dec_depth))
        self.dec_norm = nn.LayerNorm(dec_dim)
        self.out = nn.Linear(dec_dim, p * p * in_chans)
        self.dec_dim = dec_dim
        for m in (self.dec_in, self.dec, self.dec_norm, self.out):
            m.apply(_init)

    def loss(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, c, s, _ = x.shape
        p = self.enc.patch
        gr = s // p
        n = gr * gr
        target = x.reshape(b, c, gr, p, gr, p).permute(0, 2, 4, 3, 5, 1).reshape(b, n, p * p * c)
        inp = x
        if self.band_mask:
            width = max(1, int(round(c * self.band_mask)))
            start = torch.randint(0, c - width + 1, (b,), generator=g)
            idx = torch.arange(c)[None]
            drop = (idx >= start[:, None]) & (idx < start[:, None] + width)  # (B, C)
            inp = x * (~drop)[:, :, None, None]
        n_keep = max(1, int(round(n * (1 - self.mask_ratio))))
        order = torch.argsort(torch.rand(b, n, generator=g), 1)
        keep, masked = order[:, :n_keep], order[:, n_keep:]
        lat = self.enc(inp, keep=keep)[-1]  # (B, K, D)
        z = self.dec_in(lat)
        full = self.dec_mask.expand(b, n, -1).clone()
        full.scatter_(1, keep[:, :, None].expand(-1, -1, self.dec_dim), z)
        full = full + sincos_pos_embed((gr, gr), self.dec_dim)[None]
        for blk in self.dec:
            full = blk(full)
        pred = self.out(self.dec_norm(full))  # (B, N, p*p*C)
        mu, sd = target.mean(-1, keepdim=True), target.std(-1, keepdim=True) + 1e-4
        err = ((pred - (target - mu) / sd) ** 2)  # (B, N, p*p*C)
        tok_mask = torch.zeros(b, n, dtype=torch.bool)
        tok_mask.scatter_(1, masked, True)
        loss = err[tok_mask].mean()
        if self.band_mask:
            band_w = drop[:, None, None, :].expand(b, n, p * p, c).reshape(b, n, p * p * c) & ~tok_mask[:, :, None]
            if band_w.any():
                loss = loss + err[band_w].mean()
        return loss


# -- VICReg on neighbouring windows -------------------------------------------------------------------------------
def vicreg(z1: torch.Tensor, z2: torch.Tensor, sim: float = 25.0, var: float = 25.0, cov: float = 1.0
           ) -> torch.Tensor:
    """VICReg loss of two (B, E) embeddings."""
    inv = F.mse_loss(z1, z2)
    def vc(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = z - z.mean(0)
        std = torch.sqrt(z.var(0) + 1e-4)
        c = (z.T @ z) / (z.shape[0] - 1)
        off = c - torch.diag(torch.diag(c))
        return F.relu(1 - std).mean(), (off ** 2).sum() / z.shape[1]
    v1, c1 = vc(z1)
    v2, c2 = vc(z2)
    return sim * inv + var * (v1 + v2) / 2 + cov * (c1 + c2)


def projector(dim: int, hidden: int = 512, out: int = 512) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out))


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
