"""BEiT's visual tokenizer, learned from the user's own data: a k-means codebook over patch vectors.

No pretrained dVAE fits arbitrary band sets, so the discrete tokens BEiT predicts come from k-means on the data's
patches (``patchify`` vectors of the reader's normalised windows, or any per-token features). Fitted once before
pretraining, deterministically from a seed, and kept as a ``codebook`` buffer of the method, so it is saved in every
checkpoint (safetensors) and a resumed or exported run tokenises exactly as it trained.

The fit is our own torch k-means (k-means++ seeding, then Lloyd iterations with chunked distances) rather than
scikit-learn's MiniBatchKMeans: it runs on the training device, draws only from the passed generator, and is about as
fast: on the shared 2-core machine (heavily loaded), 20 000 random vectors into 256 codes took 29 s at 208 values
per vector (MiniBatchKMeans 22 s) and 32 s at 768 values (MiniBatchKMeans 64 s). Fit it on a sample of patches
(``max_samples``) once per run, not per step.

``normalize`` chooses what the codes see: ``"none"`` (default) the vectors as given: the reader has already
standardised every band, and a patch's mean spectrum is what tells water from vegetation, so it is kept;
``"patch"`` subtracts each vector's mean and divides by its std (MAE's ``norm_pix``: texture only); ``"l2"`` scales
each vector to unit length (cosine k-means: spectral shape, not brightness).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from geomed_ssl.errors import ConfigError

NORMALIZE = ("none", "patch", "l2")
AUTO_MAX_CODES = 1024  # auto codebook ceiling
AUTO_PATCHES_PER_CODE = 32  # auto: at least this many patches per code, so every code is a real cluster
MIN_CODES = 2


def resolve_codebook_size(requested: int | str, num_patches: int) -> int:
    """``auto`` -> ``min(1024, num_patches // 32)`` (at least 2); an explicit size must be in [2, num_patches]."""
    if num_patches < MIN_CODES:
        raise ConfigError(f"the BEiT tokenizer needs at least {MIN_CODES} patches to fit, got {num_patches}.")
    if requested == "auto":
        return max(MIN_CODES, min(AUTO_MAX_CODES, num_patches // AUTO_PATCHES_PER_CODE))
    size = int(requested)
    if size > num_patches:
        raise ConfigError(f"method.codebook_size={size} is larger than the {num_patches} patches the tokenizer is "
                          f"fitted on; use at most {num_patches} or 'auto'.")
    if size < MIN_CODES:
        raise ConfigError(f"method.codebook_size={size} must be at least {MIN_CODES} (or 'auto').")
    return size


def normalize_vectors(v: torch.Tensor, method: str, eps: float = 1e-6) -> torch.Tensor:
    """(M, V) -> (M, V) float32 by ``method`` (see the module docstring)."""
    v = v.float()
    if method == "none":
        return v
    if method == "patch":
        return (v - v.mean(dim=-1, keepdim=True)) / (v.var(dim=-1, keepdim=True) + eps).sqrt()
    if method == "l2":
        return v / v.norm(dim=-1, keepdim=True).clamp_min(eps)
    raise ConfigError(f"tokenizer normalize '{method}' is unknown; use one of {', '.join(NORMALIZE)}.")


def nearest(v: torch.Tensor, codebook: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code of each vector by squared Euclidean distance (ties to the lowest id): (M, V), (K, V) ->
    ids (M,) long, squared distances (M,)."""
    c2 = (codebook**2).sum(dim=1)  # (K,)
    ids, dists = [], []
    for part in v.split(chunk):
        d = (part**2).sum(dim=1, keepdim=True) - 2 * part @ codebook.T + c2  # (m, K)
        best, idx = d.min(dim=1)
        ids.append(idx)
        dists.append(best.clamp_min(0))
    return torch.cat(ids), torch.cat(dists)


def kmeans_pp(v: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: (M, V) -> (k, V); each new centre drawn with probability proportional to its squared
    distance to the nearest chosen centre (uniformly when every point is already a centre)."""
    m = v.shape[0]
    draw = torch.rand(k, generator=generator, device=generator.device).to(v.device)  # one uniform per centre
    sq = (v**2).sum(dim=1)  # (M,)
    closest = torch.full_like(sq, float("inf"))
    centres = []
    for i in range(k):
        total = closest.sum() if i else torch.zeros(())
        if i == 0 or not total > 0:
            idx = int((draw[i] * m).long().clamp_max(m - 1))
        else:
            cdf = closest.cumsum(0)
            idx = int(torch.searchsorted(cdf, (draw[i] * cdf[-1]).reshape(1)).clamp_max(m - 1))
        centres.append(v[idx])
        dist = (sq - 2 * (v @ v[idx]) + sq[idx]).clamp_min(0)  # (M,) squared distance to the new centre
        closest = torch.minimum(closest, dist)
    return torch.stack(centres)


def kmeans(v: torch.Tensor, k: int, generator: torch.Generator, iters: int = 30, tol: float = 1e-4
           ) -> torch.Tensor:
    """Lloyd's k-means from :func:`kmeans_pp` seeds: (M, V) -> codebook (k, V). An empty cluster keeps its centre;
    stops early when no centre moves more than ``tol`` times the data's RMS norm."""
    centres = kmeans_pp(v, k, generator)
    scale = v.pow(2).sum(dim=1).mean().sqrt().clamp_min(1e-12)
    for _ in range(iters):
        ids, _ = nearest(v, centres)
        sums = torch.zeros_like(centres).index_add_(0, ids, v)  # (k, V)
        counts = torch.bincount(ids, minlength=k).to(v.dtype)[:, None]  # (k, 1)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        shift = (new - centres).norm(dim=1).max()
        centres = new
        if shift <= tol * scale:
            break
    return centres


class PatchTokenizer(nn.Module):
    """A fitted k-means codebook that turns patch vectors into token ids.

    Build it with the final size and dim (so a checkpoint's ``codebook`` buffer loads into it), :meth:`fit` it
    once, then :meth:`encode`. Buffers: ``codebook`` (K, V) float32, ``fitted`` () bool.
    """

    def __init__(self, size: int, dim: int, normalize: str = "none") -> None:
        super().__init__()
        if normalize not in NORMALIZE:
            raise ConfigError(f"tokenizer normalize '{normalize}' is unknown; use one of {', '.join(NORMALIZE)}.")
        self.normalize = normalize
        self.register_buffer("codebook", torch.zeros(size, dim))
        self.register_buffer("fitted", torch.tensor(False))

    @property
    def size(self) -> int:
        return self.codebook.shape[0]

    def config(self) -> dict[str, int | str]:
        """JSON-friendly settings that, with the ``codebook`` buffer, rebuild this tokenizer."""
        return {"size": self.size, "dim": self.codebook.shape[1], "normalize": self.normalize}

    @torch.no_grad()
    def fit(self, vectors: torch.Tensor, generator: torch.Generator, max_samples: int = 65536,
            iters: int = 30) -> PatchTokenizer:
        """Fit the codebook on (M, V) vectors (a random subset of ``max_samples`` if M is larger); deterministic for
        a given generator state. Refuses a codebook larger than the vectors it is fitted on."""
        v = vectors.reshape(-1, vectors.shape[-1])
        if v.shape[1] != self.codebook.shape[1]:
            raise ConfigError(f"tokenizer built for {self.codebook.shape[1]}-value patches got {v.shape[1]}-value "
                              "vectors; build it with the patch size x bands of the data.")
        resolve_codebook_size(self.size, v.shape[0])
        if v.shape[0] > max_samples:
            pick = torch.randperm(v.shape[0], generator=generator, device=generator.device)[:max_samples]
            v = v[pick.to(v.device)]
        v = normalize_vectors(v.to(self.codebook.device), self.normalize)
        self.codebook.copy_(kmeans(v, self.size, generator, iters=iters))
        self.fitted.fill_(True)
        return self

    @torch.no_grad()
    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        """Token ids of patch vectors: (..., V) -> (...) long in [0, K)."""
        if not bool(self.fitted):
            raise RuntimeError("PatchTokenizer.encode called before fit (or before loading a fitted codebook).")
        v = normalize_vectors(patches.reshape(-1, patches.shape[-1]), self.normalize).to(self.codebook)
        ids, _ = nearest(v, self.codebook)
        return ids.reshape(patches.shape[:-1])

    def perplexity(self, ids: torch.Tensor) -> float:
        """exp(entropy) of the id histogram: how many codes are effectively used (1 .. K)."""
        p = torch.bincount(ids.flatten(), minlength=self.size).float()
        p = p[p > 0] / p.sum()
        return math.exp(float(-(p * p.log()).sum()))
