"""Histograms of oriented gradients in torch: MaskFeat's per-token regression targets, 2D and 3D, any band count.

**2D** follows ``skimage.feature.hog`` exactly (the tests compare the two on one band): gradients by central
differences ``x[i+1] - x[i-1]`` (zero on the first and last row / column), unsigned orientation
``atan2(g_row, g_col)`` in [0, 180) degrees hard-assigned to ``orientations`` equal bins, each pixel voting its
gradient magnitude into its cell's bin, the vote averaged over the cell's pixels, cells that do not fit whole
dropped, then blocks of cells normalised (``L1``, ``L1-sqrt``, ``L2``, ``L2-Hys``; eps 1e-5 as skimage). Parameter
mapping: ``orientations``, ``pixels_per_cell``, ``cells_per_block`` and ``block_norm`` mean what they mean in skimage;
skimage's ``transform_sqrt`` is not offered (our inputs are standardised, so they are negative).

**3D** uses 3D gradient-orientation histograms, not per-slice HOG: per-slice HOG is blind to edges across slices
(an organ boundary parallel to the slice plane has no in-plane gradient) and its target grows with the slices in a
token, whereas a 3D histogram of a (8, 8, 8) cell is as compact as a 2D one. The unsigned orientation space is
split into the 10 axes through the 20 face centres of a regular icosahedron (the most uniform partition of
directions with few bins, as HOG3D of Klaser et al.); each voxel votes its gradient magnitude to the axis most
parallel to its gradient. ``spacing`` (voxel size per axis) turns voxel differences into physical gradients, so
anisotropic CT/MRI is binned by true direction.

**Bands.** HOG is computed per band by default (``band_groups=None``): skimage's multichannel mode keeps only the
band with the strongest gradient at each pixel, so its target cannot say in which band an edge lies, which is what
multispectral pretraining should learn (a water / vegetation edge seen in NIR and SWIR only); MaskFeat likewise
concatenates per-channel HOG of RGB. The target grows as bands x bins x cells per token, so for hyperspectral data
pass ``band_groups`` (e.g. :func:`contiguous_band_groups`): HOG of each group's mean band, neighbouring bands
being near-duplicates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.masking import patchify
from geomed_ssl.models.tokens import token_grid

BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys", "none")
HOG_EPS = 1e-5  # skimage's eps in _hog_normalize_block
BINS_3D = 10
_PHI = (1 + 5**0.5) / 2


def icosahedral_axes() -> torch.Tensor:
    """The 10 unsigned unit axes through the face centres of a regular icosahedron (dodecahedron vertices),
    in (d, h, w) coordinates: (10, 3) float64."""
    a, b = 1 / _PHI, _PHI
    axes = [(1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1),
            (0, a, b), (0, -a, b), (a, b, 0), (-a, b, 0), (b, 0, a), (b, 0, -a)]
    t = torch.tensor(axes, dtype=torch.float64)
    return t / t.norm(dim=1, keepdim=True)


def central_gradients(x: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """(B, C, *S) -> (B, C, nd, *S): ``x[i+1] - x[i-1]`` along each spatial axis, 0 on that axis' first and last
    index (skimage's convention), divided by ``spacing[axis]`` when given."""
    nd = x.ndim - 2
    grads = torch.zeros(x.shape[0], x.shape[1], nd, *x.shape[2:], dtype=x.dtype, device=x.device)
    for axis in range(nd):
        dim, n = 2 + axis, x.shape[2 + axis]
        if n >= 3:
            diff = x.narrow(dim, 2, n - 2) - x.narrow(dim, 0, n - 2)
            grads[:, :, axis].narrow(dim, 1, n - 2).copy_(diff)
        if spacing is not None:
            grads[:, :, axis] /= float(spacing[axis])
    return grads


def gradient_valid(valid: torch.Tensor) -> torch.Tensor:
    """(B, *S) bool -> (B, *S) bool: the pixels whose central differences read valid pixels only (the pixel and
    its two neighbours along every axis), so the edge between data and the zero fill of nodata is no gradient."""
    ok = valid.clone()
    for axis in range(valid.ndim - 1):
        dim, n = 1 + axis, valid.shape[1 + axis]
        if n >= 3:
            ok.narrow(dim, 1, n - 2).logical_and_(valid.narrow(dim, 2, n - 2) & valid.narrow(dim, 0, n - 2))
    return ok


def _orientation_bins(grads: torch.Tensor, orientations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, nd, *S) gradients -> magnitude (B, C, *S) and bin index (B, C, *S) long."""
    if grads.shape[2] == 2:
        g_row, g_col = grads[:, :, 0], grads[:, :, 1]
        magnitude = torch.hypot(g_row, g_col)
        angle = torch.rad2deg(torch.atan2(g_row, g_col))  # [-180, 180]
        angle = torch.where(angle < 0, angle + 180, angle)  # unsigned, as numpy's ``% 180`` (faster than torch's)
        edges = torch.tensor([180.0 / orientations * (i + 1) for i in range(orientations - 1)],
                             dtype=angle.dtype, device=angle.device)
        # bin i holds [180/n * i, 180/n * (i + 1)), as skimage's comparisons; exactly 180 wraps to bin 0
        index = torch.bucketize(angle, edges, right=True)
        return magnitude, torch.where(angle >= 180, 0, index)
    magnitude = grads.norm(dim=2)
    axes = icosahedral_axes().to(grads)  # (10, 3)
    cos = (grads.movedim(2, -1) @ axes.T).abs()  # (B, C, *S, 10); twice as fast as a loop over the axes
    return magnitude, cos.argmax(dim=-1)


def resolve_orientations(spatial_dims: int, orientations: int | None) -> int:
    """Bins per cell: ``orientations`` (default 9) in 2D; always :data:`BINS_3D` in 3D."""
    if spatial_dims == 2:
        n = 9 if orientations is None else int(orientations)
        if n < 1:
            raise ConfigError(f"HOG orientations must be >= 1, got {n}.")
        return n
    if spatial_dims == 3:
        if orientations not in (None, BINS_3D):
            raise ConfigError(f"3D HOG uses the {BINS_3D} icosahedral axes; orientations={orientations} is only for "
                              f"2D: leave it unset or set {BINS_3D}.")
        return BINS_3D
    raise ConfigError(f"HOG is defined on 2D images and 3D volumes, not {spatial_dims}D data.")


def cell_histograms(x: torch.Tensor, cell: Sequence[int], orientations: int | None = None,
                    spacing: Sequence[float] | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-band orientation histograms of whole cells: (B, C, *S) -> (B, C, *cell_grid, bins), float32 (float64
    for float64 input, which matches skimage to ~1e-8).

    ``cell_grid[i] = S[i] // cell[i]`` (pixels past the last whole cell are dropped, as skimage); each bin holds the
    summed gradient magnitude of its pixels divided by the cell's pixel count. Bins: ``orientations`` (default 9)
    over [0, 180) degrees in 2D, the 10 :func:`icosahedral_axes` in 3D. With ``valid`` (B, *S) bool, pixels whose
    gradient reads nodata (:func:`gradient_valid`) vote nothing.
    """
    b, c, *spatial = x.shape
    nd = len(spatial)
    bins = resolve_orientations(nd, orientations)
    cell = tuple(int(v) for v in cell)
    grid = tuple(s // k for s, k in zip(spatial, cell))
    if len(cell) != nd or min(grid, default=0) < 1:
        raise ConfigError(f"HOG cell {cell} does not fit a {nd}D window {tuple(spatial)}: use a cell no larger than "
                          "the window, one size per spatial axis.")
    x = x if x.dtype == torch.float64 else x.float()
    magnitude, index = _orientation_bins(central_gradients(x, spacing), bins)
    if valid is not None:
        magnitude = magnitude * gradient_valid(valid.to(x.device).bool())[:, None]
    crop = tuple(slice(0, g * k) for g, k in zip(grid, cell))
    magnitude, index = magnitude[(..., *crop)], index[(..., *crop)]  # (B, C, *grid*cell)
    # flat cell id of every pixel, row-major over the cell grid: (*grid*cell,)
    coords = torch.meshgrid(*(torch.arange(g * k, device=x.device) // k for g, k in zip(grid, cell)), indexing="ij")
    cell_id = torch.zeros_like(coords[0])
    for axis in range(nd):
        cell_id = cell_id * grid[axis] + coords[axis]
    flat = (cell_id * bins + index).reshape(b * c, -1)  # (B*C, pixels)
    hist = torch.zeros(b * c, math.prod(grid) * bins, dtype=x.dtype, device=x.device)
    hist.scatter_add_(1, flat, magnitude.reshape(b * c, -1))
    return hist.reshape(b, c, *grid, bins) / math.prod(cell)


def normalize_blocks(v: torch.Tensor, method: str, eps: float = HOG_EPS) -> torch.Tensor:
    """Normalise each vector along the last dim of (..., V) as skimage's ``_hog_normalize_block``."""
    if method == "none":
        return v
    if method in ("L1", "L1-sqrt"):
        out = v / (v.abs().sum(dim=-1, keepdim=True) + eps)
        return out.sqrt() if method == "L1-sqrt" else out
    if method in ("L2", "L2-Hys"):
        out = v / torch.sqrt((v**2).sum(dim=-1, keepdim=True) + eps**2)
        if method == "L2":
            return out
        out = out.clamp_max(0.2)
        return out / torch.sqrt((out**2).sum(dim=-1, keepdim=True) + eps**2)
    raise ConfigError(f"HOG block norm '{method}' is unknown; use one of {', '.join(BLOCK_NORMS)}.")


def hog(x: torch.Tensor, orientations: int = 9, pixels_per_cell: Sequence[int] = (8, 8),
        cells_per_block: Sequence[int] = (3, 3), block_norm: str = "L2-Hys") -> torch.Tensor:
    """skimage's HOG descriptor of every band of a 2D batch, in skimage's ``feature_vector=False`` layout:
    (B, C, H, W) -> (B, C, n_blocks_row, n_blocks_col, cells_row, cells_col, orientations), float32 (float64 for
    float64 input).

    Blocks of ``cells_per_block`` cells slide by one cell; each is normalised with ``block_norm``.
    """
    if x.ndim != 4:
        raise ConfigError(f"hog() is the 2D skimage-compatible descriptor; got a {x.ndim - 2}D batch "
                          "(use hog_targets for volumes).")
    br, bc = (int(v) for v in cells_per_block)
    h = cell_histograms(x, pixels_per_cell, orientations)  # (B, C, ncr, ncc, bins)
    if h.shape[2] < br or h.shape[3] < bc:
        raise ConfigError(f"a {tuple(x.shape[2:])} window holds {tuple(h.shape[2:4])} cells, fewer than one "
                          f"{br}x{bc} block: use smaller cells or blocks.")
    blocks = h.unfold(2, br, 1).unfold(3, bc, 1)  # (B, C, nbr, nbc, bins, br, bc)
    blocks = blocks.permute(0, 1, 2, 3, 5, 6, 4)  # (B, C, nbr, nbc, br, bc, bins)
    shape = blocks.shape
    return normalize_blocks(blocks.reshape(*shape[:4], -1), block_norm).reshape(shape)


def default_cell(patch: Sequence[int]) -> tuple[int, ...]:
    """MaskFeat's 2 cells per token side (8 px cells in 16 px tokens) where the token side is even and >= 4,
    else one cell per token side."""
    return tuple(p // 2 if p % 2 == 0 and p >= 4 else p for p in patch)


def hog_target_dim(patch: Sequence[int], cell: Sequence[int] | None, num_groups: int,
                   orientations: int | None = None) -> int:
    """Length of one token's HOG target: groups x cells per token x bins."""
    cell = default_cell(patch) if cell is None else cell
    per_token = math.prod(p // k for p, k in zip(patch, cell))
    return num_groups * per_token * resolve_orientations(len(patch), orientations)


def contiguous_band_groups(num_bands: int, max_groups: int) -> list[list[int]]:
    """Bands split in order into ``min(num_bands, max_groups)`` contiguous groups of near-equal size."""
    g = max(1, min(num_bands, max_groups))
    bounds = [round(i * num_bands / g) for i in range(g + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(g)]


def group_means(x: torch.Tensor, band_groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, C, *S) -> (B, G, *S), the mean band of each group; refuses empty groups and out-of-range bands."""
    c = x.shape[1]
    for i, group in enumerate(band_groups):
        if not group or any(not 0 <= int(k) < c for k in group):
            raise ConfigError(f"HOG band group {i} = {list(group)} must be a non-empty list of band indices in "
                              f"[0, {c - 1}] for {c}-band data.")
    return torch.stack([x[:, list(g)].mean(dim=1) for g in band_groups], dim=1)


def hog_targets(x: torch.Tensor, patch: Sequence[int], cell: Sequence[int] | None = None,
                orientations: int | None = None, band_groups: Sequence[Sequence[int]] | None = None,
                block_norm: str = "L2", spacing: Sequence[float] | None = None,
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """MaskFeat targets, one per token: (B, C, *S) -> (B, N, G * cells_per_token * bins), float32 (float64 for
    float64 input).

    Tokens are in :func:`patchify`'s row-major order over ``S // patch``; inside a token the layout is
    (group, cell_0, cell_1[, cell_2], bin). Each group's histogram of a token (its cells x bins) is one block,
    normalised with ``block_norm`` (L2 over the token), so for one band and ``cells_per_block`` equal to the cells per
    token this is skimage's block descriptor at token-aligned blocks (the official MaskFeat code L2-normalises each
    cell's histogram on its own instead). ``G`` is the band count, or the number of ``band_groups`` (HOG of each
    group's mean band). ``cell`` defaults to :func:`default_cell`. ``valid`` (B, *S) bool: gradients that read
    nodata vote nothing (:func:`cell_histograms`), so a token beside nodata is not given the fill's edge.
    """
    patch = tuple(int(p) for p in patch)
    cell = default_cell(patch) if cell is None else tuple(int(k) for k in cell)
    if len(cell) != len(patch) or any(k < 1 or p % k for p, k in zip(patch, cell)):
        raise ConfigError(f"HOG cell {cell} must divide the token patch {patch} on every axis (e.g. "
                          f"{default_cell(patch)}).")
    token_grid(x.shape[2:], patch)  # a DataError unless the window is whole tokens
    bands = x if band_groups is None else group_means(x, band_groups)  # (B, G, *S)
    b, g = bands.shape[:2]
    hist = cell_histograms(bands, cell, orientations, spacing, valid)  # (B, G, *cells, bins)
    bins, nd = hist.shape[-1], len(patch)
    cells_map = hist.movedim(-1, 2).reshape(b, g * bins, *hist.shape[2:2 + nd])  # (B, G*bins, *cells)
    per_token = patchify(cells_map, tuple(p // k for p, k in zip(patch, cell)))  # (B, N, cpt * G * bins)
    n, cpt = per_token.shape[1], math.prod(p // k for p, k in zip(patch, cell))
    per_token = per_token.reshape(b, n, cpt, g, bins).permute(0, 1, 3, 2, 4).reshape(b, n, g, cpt * bins)
    return normalize_blocks(per_token, block_norm).reshape(b, n, -1)
