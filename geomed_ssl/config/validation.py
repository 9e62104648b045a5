"""Recipe validation: every key's type and range (declared once, on the section dataclasses), then the checks that
involve several keys, with messages that say how to fix the recipe.

The checks that other layers repeat on their own objects (heads dividing a width, windows of whole tokens) are
functions here that they call, so each rule and its message exist once.

The ``method`` section is checked here only for its shape (a ``name`` and a mapping of settings); the named
method checks its own settings (``geomed_ssl.methods.resolve_method_settings``).
"""

from __future__ import annotations

from typing import Any, Sequence

from geomed_ssl.config.fields import Spec, check_instance, check_value, show
from geomed_ssl.config.sections import (CLS_HEADS, EMBEDDINGS, MAX_TOKENS, SECTIONS, SEG_HEADS,
                                        AugmentConfig, DataConfig, MethodConfig, ModelConfig, Recipe, TrainConfig,
                                        as_tuple, spatial_dims)
from geomed_ssl.errors import ConfigError

__all__ = ["EMBEDDINGS", "check_heads", "check_whole_tokens", "check_window", "method_section", "validate"]


def _prefix(source: str | None) -> str:
    return f"{source}: " if source else ""


def check_heads(dim: int, heads: int, dim_key: str, heads_key: str, source: str | None = None) -> None:
    """A ConfigError unless a transformer's width ``dim`` splits evenly over its ``heads`` attention heads (the
    encoder's ``model.embed_dim`` / ``num_heads``, MAE's decoder's)."""
    if dim % heads:
        raise ConfigError(f"{_prefix(source)}{dim_key} ({dim}) must be divisible by {heads_key} ({heads}).")


def check_whole_tokens(size: Sequence[int], patch: Sequence[int], key: str, source: str | None = None,
                       patch_key: str = "model.patch_size") -> None:
    """A ConfigError unless every side of ``size`` (a window or crop, key ``key``) is a multiple of the token
    patch."""
    if any(s % p for s, p in zip(size, patch)):
        raise ConfigError(f"{_prefix(source)}{key} {list(size)} is not a multiple of {patch_key} {list(patch)}; pick "
                          "a size that the token patch divides.")


def check_window(window: Sequence[int], patch: Sequence[int], source: str | None = None,
                 key: str = "data.patch_size", patch_key: str = "model.patch_size") -> int:
    """The tokens per window; a ConfigError unless the window is whole tokens and at most ``MAX_TOKENS`` of them
    (the recipe's ``data.patch_size``, an encoder config's ``img_size``)."""
    check_whole_tokens(window, patch, key, source, patch_key)
    tokens = 1
    for w, p in zip(window, patch):
        tokens *= w // p
    if tokens > MAX_TOKENS:
        raise ConfigError(f"{_prefix(source)}{key} {list(window)} over {patch_key} {list(patch)} gives {tokens} "
                          f"tokens, more than {MAX_TOKENS} per window; use a smaller window or a larger token patch.")
    return tokens


def method_section(values: Any, source: str) -> MethodConfig:
    """The raw ``method:`` mapping as a :class:`MethodConfig`: a method name (default ``mae``) and settings keyed
    by name; their values are the method's to check."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section 'method' must be a mapping of key: value, got {show(values)}.")
    bad = [k for k in values if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{source}: method keys are names, got {show(bad[0])}.")
    settings = dict(values)
    name = check_value(settings.pop("name", MethodConfig().name), str, Spec(), "method.name", source)
    if not name:
        raise ConfigError(f"{source}: method.name must name a method, e.g. mae or dino.")
    return MethodConfig(name, **settings)


def _check_types(recipe: Recipe, source: str) -> None:
    """Each section's values against their declared types and ranges (also for sections built in Python)."""
    for name in SECTIONS:
        section = getattr(recipe, name)
        if isinstance(section, MethodConfig):
            method_section(section.to_dict(), source)
        else:
            check_instance(section, name, source)


def _validate_embedding(m: ModelConfig, source: str) -> None:
    """The patch-embedding keys that depend on each other (model.embedding, band_groups)."""
    if m.band_groups is not None:
        if not all(m.band_groups):
            raise ConfigError(f"{source}: model.band_groups must be null or a list of non-empty lists of band names, "
                              "e.g. [[B02, B03, B04, B08], [B11, B12]].")
        flat = [n for g in m.band_groups for n in g]
        if len(set(flat)) != len(flat):
            dup = sorted({n for n in flat if flat.count(n) > 1})
            raise ConfigError(f"{source}: model.band_groups lists {dup} in more than one group.")
        if m.embedding != "grouped":
            raise ConfigError(f"{source}: model.band_groups is only read by model.embedding=grouped "
                              f"(embedding is '{m.embedding}'); remove it or set the embedding.")
    k = m.tokens_per_position
    if k is not None and k > 1 and m.embedding not in ("grouped", "spectral"):
        raise ConfigError(f"{source}: model.tokens_per_position {k} needs model.embedding=grouped or spectral "
                          f"('{m.embedding}' gives one token per position); set it to 1 or null.")


def _validate_crops(d: DataConfig, m: ModelConfig, t: TrainConfig, source: str) -> None:
    """The multi-crop and k-NN monitor keys (data)."""
    nd = spatial_dims(d)
    patch = as_tuple(m.patch_size, nd, "model.patch_size")
    for key in ("global_crop_size", "local_crop_size"):
        value = getattr(d, key)
        if value is None:
            continue
        check_whole_tokens(as_tuple(value, nd, f"data.{key}"), patch, f"data.{key}", source)
    for key in ("global_crop_scale", "local_crop_scale"):
        lo, hi = getattr(d, key)
        if lo > hi:
            raise ConfigError(f"{source}: data.{key} must be [min, max] with min <= max, got {show([lo, hi])}.")
    if d.knn_every and not d.val_labels:
        raise ConfigError(f"{source}: data.knn_every needs data.val_labels, a folder with one subfolder of images "
                          "per class (or set data.knn_every=0).")
    if d.knn_every and d.knn_every % t.log_every:
        raise ConfigError(f"{source}: data.knn_every ({d.knn_every}) must be a multiple of train.log_every "
                          f"({t.log_every}) so metrics.csv has a row at each k-NN evaluation.")


def _validate_augment(a: AugmentConfig, source: str) -> None:
    """The [min, max] ranges of the augment section."""
    for key in ("crop_ratio", "gamma", "blur_sigma", "noise_std"):
        lo, hi = getattr(a, key)
        if lo > hi:
            raise ConfigError(f"{source}: augment.{key} must be [min, max] with min <= max, got {show([lo, hi])}.")


def _validate_window(d: DataConfig, m: ModelConfig, source: str) -> None:
    """The sampled window against the token patch: a whole number of tokens, and not too many."""
    nd = spatial_dims(d)
    check_window(as_tuple(d.patch_size, nd, "data.patch_size"), as_tuple(m.patch_size, nd, "model.patch_size"),
                 source)


def validate(recipe: Recipe, source: str = "recipe") -> None:
    """Every key's type and range, then the cross-field checks, with messages that say how to fix the recipe."""
    _check_types(recipe, source)
    d, m, t = recipe.data, recipe.model, recipe.train
    try:  # (as_tuple names the key, not the recipe)
        _validate_window(d, m, source)
        check_heads(m.embed_dim, m.num_heads, "model.embed_dim", "model.num_heads", source)
        _validate_embedding(m, source)
        _validate_crops(d, m, t, source)
    except ConfigError as err:
        if str(err).startswith(f"{source}:"):
            raise
        raise ConfigError(f"{source}: {err}") from None
    _validate_augment(recipe.augment, source)
    if d.band_names is not None and d.wavelengths is not None and len(d.band_names) != len(d.wavelengths):
        raise ConfigError(f"{source}: data.band_names and data.wavelengths must have the same length.")
    if d.ct_window[0] >= d.ct_window[1]:
        raise ConfigError(f"{source}: data.ct_window must be [low, high] with low < high, got {show(d.ct_window)}.")
    f, lab = recipe.finetune, recipe.labels
    valid_heads = SEG_HEADS if f.task == "segment" else CLS_HEADS
    if f.head not in valid_heads:
        raise ConfigError(f"{source}: finetune.head for task '{f.task}' must be one of {', '.join(valid_heads)}; "
                          f"got '{f.head}'.")
    if lab.per_class is not None and lab.fraction is not None:
        raise ConfigError(f"{source}: set labels.per_class (--labels-per-class) or labels.fraction "
                          "(--label-fraction), not both.")
