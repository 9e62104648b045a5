"""Pure helpers for masked image modelling, 2D and 3D: random token masking (MAE), blockwise masks (BEiT / iBOT),
patchify/unpatchify.

Patch values are laid out channel-last inside each patch (``n h w p q c`` in 2D, ``n d h w o p q c`` in 3D), the
ordering of HF ``ViTMAEForPreTraining.patchify``, for any number of bands.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from geomed_ssl.models.tokens import token_grid


def num_keep(num_tokens: int, mask_ratio: float) -> int:
    """Tokens kept visible: ``int(N * (1 - ratio))`` (truncation, as HF ViTMAE and the MAE paper), at least 1."""
    return max(1, int(num_tokens * (1 - mask_ratio)))


def random_masking(
    tokens: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None, keep: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise (low noise is kept).

    Args:
        tokens: (B, N, D).
        mask_ratio: fraction of tokens to drop.
        noise: optional (B, N) noise; the same noise gives the same mask. Drawn with ``torch.rand`` if None.
        keep: tokens kept, overriding ``num_keep(N, mask_ratio)`` (consistent masking keeps whole positions).

    Returns:
        kept (B, K, D) with K = ``num_keep(N, mask_ratio)``, in shuffle order;
        mask (B, N) float, 1 = masked, 0 = kept, in the original token order;
        ids_restore (B, N) long, the inverse permutation (to unshuffle the decoder's sequence).
    """
    b, n, d = tokens.shape
    stable = keep is not None  # tied noise (one value per position) keeps a position's tokens together
    keep = num_keep(n, mask_ratio) if keep is None else keep
    if noise is None:
        noise = torch.rand(b, n, device=tokens.device)
    noise = noise.to(tokens.device)
    # (B, N) ascending: small noise kept
    ids_shuffle = torch.argsort(noise, dim=1, stable=True) if stable else torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, N) rank of each token
    ids_keep = ids_shuffle[:, :keep]  # (B, K)
    kept = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, d))  # (B, K, D)
    mask = (ids_restore >= keep).to(tokens.dtype)  # (B, N)
    return kept, mask, ids_restore


def patchify(x: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """(B, C, *S) -> (B, N, prod(patch) * C), channel-last inside each patch, tokens in row-major grid order."""
    b, c, *spatial = x.shape
    nd = len(spatial)
    grid = token_grid(spatial, patch)
    split = [v for g, p in zip(grid, patch) for v in (g, p)]
    x = x.reshape(b, c, *split)  # (B, C, g0, p0, g1, p1, ...)
    perm = [0, *(2 + 2 * i for i in range(nd)), *(3 + 2 * i for i in range(nd)), 1]
    return x.permute(perm).reshape(b, math.prod(grid), math.prod(patch) * c)  # (B, N, P*C)


def unpatchify(
    patches: torch.Tensor, patch: tuple[int, ...], grid: tuple[int, ...], channels: int | None = None
) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, prod(patch) * C) -> (B, C, *(grid * patch))."""
    b, n, v = patches.shape
    nd = len(grid)
    if n != math.prod(grid):
        raise ValueError(f"{n} patches do not fill the grid {tuple(grid)}.")
    c = channels if channels is not None else v // math.prod(patch)
    if c * math.prod(patch) != v:
        raise ValueError(f"{v} values per patch do not split into patch {tuple(patch)} x {c} channels.")
    x = patches.reshape(b, *grid, *patch, c)  # (B, g0, g1, ..., p0, p1, ..., C)
    perm = [0, 1 + 2 * nd, *(j for i in range(nd) for j in (1 + i, 1 + nd + i))]
    return x.permute(perm).reshape(b, c, *(g * p for g, p in zip(grid, patch)))


def mask_to_image(mask: torch.Tensor, patch: tuple[int, ...], grid: tuple[int, ...]) -> torch.Tensor:
    """Token mask (B, N) -> spatial bool (B, *S), True where the token covering the pixel is masked."""
    values = mask.bool()[..., None].expand(-1, -1, math.prod(patch))  # (B, N, P)
    return unpatchify(values, patch, grid, 1)[:, 0]


def consistent_noise(noise: torch.Tensor, num_units: int, mask_ratio: float) -> tuple[torch.Tensor, int]:
    """Per-position noise (B, N) -> per-token noise (B, U*N) for unit-major tokens, and the tokens to keep
    (``U * num_keep(N)``), so every unit of a position is masked or kept together."""
    return noise.repeat(1, num_units), num_units * num_keep(noise.shape[1], mask_ratio)


def unit_patchify(x: torch.Tensor, patch: tuple[int, ...], units: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit patches for unit-major tokens: (B, C, *S) -> targets (B, U*N, prod(patch) * cmax), unit ``u``'s
    token at position ``n`` holding its own channels ``units[u]`` (channel-last, zero-padded to ``cmax``, the
    largest unit), and ``real`` (U*N, prod(patch) * cmax) bool, False on the padding."""
    b, c, *spatial = x.shape
    cmax = max(len(u) for u in units)
    idx = torch.tensor([u + [c] * (cmax - len(u)) for u in units], device=x.device)  # (U, cmax); c = zero channel
    xz = torch.cat([x, x.new_zeros(b, 1, *spatial)], dim=1)  # (B, C+1, *S)
    per_unit = xz[:, idx.flatten()].reshape(b * len(units), cmax, *spatial)  # (B*U, cmax, *S)
    target = patchify(per_unit, patch)  # (B*U, N, P*cmax)
    n = target.shape[1]
    target = target.reshape(b, len(units) * n, -1)  # (B, U*N, P*cmax)
    sizes = torch.tensor([len(u) for u in units], device=x.device)  # (U,)
    real = torch.arange(cmax, device=x.device)[None, :] < sizes[:, None]  # (U, cmax)
    real = real[:, None, None, :].expand(-1, n, math.prod(patch), -1).reshape(len(units) * n, -1)  # (U*N, P*cmax)
    return target, real


def unit_unpatchify(pred: torch.Tensor, patch: tuple[int, ...], grid: tuple[int, ...], units: list[list[int]],
                    channels: int) -> torch.Tensor:
    """Inverse of :func:`unit_patchify`: (B, U*N, prod(patch) * cmax) -> (B, channels, *S); channels read by no
    unit stay 0."""
    b = pred.shape[0]
    cmax = max(len(u) for u in units)
    per_unit = unpatchify(pred.reshape(b * len(units), math.prod(grid), -1), patch, grid, cmax)  # (B*U, cmax, *S)
    per_unit = per_unit.reshape(b, len(units), cmax, *per_unit.shape[2:])
    out = pred.new_zeros(b, channels, *per_unit.shape[3:])
    for u, chans in enumerate(units):
        out[:, chans] = per_unit[:, u, : len(chans)]
    return out


def token_patchify(x: torch.Tensor, patch: tuple[int, ...], units: list[list[int]] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pixels in MAE's token order: plain tokens (``units`` None) :func:`patchify` (B, N, prod(patch) * C) with every
    value real (None); unit-major tokens :func:`unit_patchify` (B, U*N, prod(patch) * cmax) and its ``real`` mask."""
    if units is None:
        return patchify(x, patch), None
    return unit_patchify(x, patch, units)


def token_unpatchify(pred: torch.Tensor, patch: tuple[int, ...], grid: tuple[int, ...],
                     units: list[list[int]] | None, channels: int) -> torch.Tensor:
    """Inverse of :func:`token_patchify`: (B, T, prod(patch) * c) -> (B, channels, *S)."""
    if units is None:
        return unpatchify(pred, patch, grid, channels)
    return unit_unpatchify(pred, patch, grid, units, channels)


def valid_values(valid: torch.Tensor, patch: tuple[int, ...], num_units: int, channels: int) -> torch.Tensor:
    """Pixel mask (B, *S) bool -> (B, U*N, prod(patch) * channels) bool in :func:`token_patchify`'s layout: True on
    every value of a token at a valid pixel (``num_units`` 1, ``channels`` C: plain tokens)."""
    pix = patchify(valid[:, None], patch)  # (B, N, P)
    b, n, p = pix.shape
    return pix[:, None, :, :, None].expand(-1, num_units, -1, -1, channels).reshape(b, num_units * n, p * channels)


def sample_units(num_units: int, min_units: int, generator: torch.Generator | None) -> torch.Tensor:
    """Hierarchical channel sampling (ChannelViT): a count ``m`` uniform in [min_units, num_units], then ``m``
    distinct units uniformly; returned sorted, as a CPU long tensor."""
    device = generator.device if generator is not None else torch.device("cpu")
    low = max(1, min(min_units, num_units))
    m = int(torch.randint(low, num_units + 1, (1,), generator=generator, device=device))
    return torch.randperm(num_units, generator=generator, device=device)[:m].sort().values.cpu()


def block_mask(grid: tuple[int, ...], n_target: int, generator: torch.Generator, min_block: int = 4,
               aspect: float = 0.3, max_attempts: int = 10) -> torch.Tensor:
    """Blockwise (BEiT/iBOT) mask over a 2D or 3D token grid: boxes of random volume and aspect are added until
    about ``n_target`` tokens are masked. Returns bool (*grid). BEiT's generator draws boxes of at least 16 tokens
    with a log-uniform aspect; here the smallest box is ``min_block`` tokens (the small token grids of remote-sensing
    and 3D windows) and each axis gets its own log-uniform stretch; the masked share is the same."""
    mask = torch.zeros(grid, dtype=torch.bool)
    nd, log_aspect = len(grid), math.log(1.0 / aspect)
    count = 0
    while count < n_target:
        remaining, grew = n_target - count, False
        for _ in range(max_attempts):
            u = torch.rand(1 + nd, generator=generator).tolist()
            lo = min(min_block, remaining)
            volume = lo + u[0] * (remaining - lo)
            logs = [(v - 0.5) * log_aspect for v in u[1:]]  # per-axis log stretch, centred below
            mean = sum(logs) / nd
            sides = [min(g, max(1, round(volume ** (1 / nd) * math.exp(lg - mean)))) for lg, g in zip(logs, grid)]
            start = [int(torch.randint(0, g - s + 1, (1,), generator=generator)) for s, g in zip(sides, grid)]
            box = tuple(slice(a, a + s) for a, s in zip(start, sides))
            new = int((~mask[box]).sum())
            if 0 < new <= remaining:
                mask[box] = True
                count, grew = count + new, True
                break
        if not grew:
            break
    return mask


def ibot_masks(n: int, grid: tuple[int, ...], ratio: tuple[float, float], prob: float,
               generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
    """Per image, with probability ``prob``, a block mask of a ratio drawn in ``ratio``; else none: (n, *grid).

    ``generator``: one for all images (drawn in turn), or one per image (each image's mask from its own)."""
    total = math.prod(grid)
    masks = torch.zeros((n, *grid), dtype=torch.bool)
    per_image = not isinstance(generator, torch.Generator)
    draws = None if per_image else torch.rand(n, 2, generator=generator)
    for i in range(n):
        g = generator[i] if per_image else generator
        d = torch.rand(2, generator=g) if per_image else draws[i]
        if d[0] < prob:
            r = ratio[0] + float(d[1]) * (ratio[1] - ratio[0])
            masks[i] = block_mask(grid, int(round(r * total)), g)
    return masks


def jepa_block_sides(grid: tuple[int, ...], scale: Sequence[float], aspect: Sequence[float],
                     u: float) -> tuple[int, ...]:
    """I-JEPA's block size for one uniform draw ``u`` in [0, 1): ``V = int(N * s)`` tokens, ``s`` and the aspect
    ratio ``r`` both interpolated by the same ``u`` (as the official collator), laid out as a box shaped like the
    grid, each side ``g * (V / N) ** (1 / d)``, with the last two axes stretched by ``sqrt(r)`` and ``1 / sqrt(r)``
    (a square 2D grid: the official ``round(sqrt(V r)) x round(sqrt(V / r))``), each side clipped to [1, g]."""
    s = scale[0] + u * (scale[1] - scale[0])
    r = aspect[0] + u * (aspect[1] - aspect[0])
    n = math.prod(grid)
    fraction = (max(1, int(n * s)) / n) ** (1.0 / len(grid))
    stretch = [1.0] * (len(grid) - 2) + [math.sqrt(r), 1.0 / math.sqrt(r)]
    return tuple(min(g, max(1, round(g * fraction * f))) for g, f in zip(grid, stretch))


def largest_jepa_block(grid: tuple[int, ...], scale: Sequence[float], aspect: Sequence[float]) -> int:
    """The most tokens a :func:`jepa_block_sides` block can hold on ``grid`` (over a fine sweep of ``u``)."""
    return max(math.prod(jepa_block_sides(grid, scale, aspect, i / 200)) for i in range(201))


def _box(grid: tuple[int, ...], sides: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A bool (*grid) box of ``sides`` at a uniform random position inside the grid."""
    box = torch.zeros(grid, dtype=torch.bool)
    start = [int(torch.randint(0, g - s + 1, (1,), generator=generator)) for g, s in zip(grid, sides)]
    box[tuple(slice(a, a + s) for a, s in zip(start, sides))] = True
    return box


def jepa_masks(grid: tuple[int, ...], target_sides: tuple[int, ...], num_targets: int,
               context_sides: tuple[int, ...], generators: Sequence[torch.Generator],
               tries: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """I-JEPA's multi-block masks, one image per generator: ``num_targets`` target boxes of ``target_sides`` at
    random positions (they may overlap each other), and a context box of ``context_sides`` less every target token,
    re-placed up to ``tries`` times until it keeps at least a tenth of the grid (else the context is every token
    outside the targets). Returns the targets' token indices (B, num_targets, M) long, row-major, and the context
    (B, N) bool."""
    n = math.prod(grid)
    min_keep = max(1, n // 10)
    targets, contexts = [], []
    for g in generators:
        boxes = [_box(grid, target_sides, g).flatten() for _ in range(num_targets)]
        hidden = torch.stack(boxes).any(dim=0)  # (N,)
        context = ~hidden
        for _ in range(tries):
            candidate = _box(grid, context_sides, g).flatten() & ~hidden
            if int(candidate.sum()) >= min(min_keep, int(context.sum())):
                context = candidate
                break
        targets.append(torch.stack([box.nonzero()[:, 0] for box in boxes]))  # (num_targets, M)
        contexts.append(context)
    return torch.stack(targets), torch.stack(contexts)
