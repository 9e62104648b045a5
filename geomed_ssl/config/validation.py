"""Cross-field recipe validation, with messages that say how to fix the recipe."""

from __future__ import annotations

from geomed_ssl.config.sections import (DataConfig, MethodConfig, ModelConfig, Recipe, TrainConfig, as_tuple,
                                        spatial_dims)
from geomed_ssl.errors import ConfigError

EMBEDDINGS = ("plain", "grouped", "spectral", "wavelength")


def _validate_embedding(m: ModelConfig, me: MethodConfig, source: str) -> None:
    """The patch-embedding keys (model.embedding, band_groups, spectral_chunk, channel_embed) and the methods'
    spectral keys (group_masking, channel_sampling)."""
    if m.embedding not in EMBEDDINGS:
        raise ConfigError(f"{source}: model.embedding must be one of {', '.join(EMBEDDINGS)}; got '{m.embedding}'.")
    if m.band_groups is not None:
        ok = isinstance(m.band_groups, list) and all(isinstance(g, list) and g for g in m.band_groups)
        if not ok:
            raise ConfigError(f"{source}: model.band_groups must be null or a list of non-empty lists of band names, "
                              "e.g. [[B02, B03, B04, B08], [B11, B12]].")
        flat = [str(n) for g in m.band_groups for n in g]
        if len(set(flat)) != len(flat):
            dup = sorted({n for n in flat if flat.count(n) > 1})
            raise ConfigError(f"{source}: model.band_groups lists {dup} in more than one group.")
        if m.embedding != "grouped":
            raise ConfigError(f"{source}: model.band_groups is only read by model.embedding=grouped "
                              f"(embedding is '{m.embedding}'); remove it or set the embedding.")
    if not isinstance(m.spectral_chunk, int) or m.spectral_chunk < 1:
        raise ConfigError(f"{source}: model.spectral_chunk must be a positive integer, got {m.spectral_chunk!r}.")
    if m.channel_embed not in ("learned", "wavelength"):
        raise ConfigError(f"{source}: model.channel_embed must be learned or wavelength; got '{m.channel_embed}'.")
    if me.group_masking not in ("independent", "consistent"):
        raise ConfigError(f"{source}: method.group_masking must be independent or consistent; got '{me.group_masking}'.")
    if me.channel_sampling and m.embedding not in ("spectral", "wavelength"):
        raise ConfigError(f"{source}: method.channel_sampling needs model.embedding=spectral or wavelength "
                          f"(a '{m.embedding}' embedding reads a fixed band set).")
    if not isinstance(me.channel_sampling_min, int) or me.channel_sampling_min < 1:
        raise ConfigError(f"{source}: method.channel_sampling_min must be a positive integer, "
                          f"got {me.channel_sampling_min!r}.")


CENTERINGS = ("ema", "sinkhorn", "none")


def _validate_dino(d: DataConfig, m: ModelConfig, me: MethodConfig, t: TrainConfig, source: str) -> None:
    """The multi-crop and k-NN monitor keys (data) and DINO's own choices (method)."""
    nd = spatial_dims(d)
    patch = as_tuple(m.patch_size, nd, "model.patch_size")
    for key in ("global_crop_size", "local_crop_size"):
        value = getattr(d, key)
        if value is None:
            continue
        size = as_tuple(value, nd, f"data.{key}")
        if any(s % p for s, p in zip(size, patch)):
            raise ConfigError(f"{source}: data.{key} {list(size)} is not a multiple of model.patch_size "
                              f"{list(patch)}; pick a crop size that the token patch divides.")
    if int(d.n_local_crops) < 0 or int(d.knn_every) < 0:
        raise ConfigError(f"{source}: data.n_local_crops and data.knn_every must be >= 0.")
    if d.knn_every and not d.val_labels:
        raise ConfigError(f"{source}: data.knn_every needs data.val_labels, a folder with one subfolder of images "
                          "per class (or set data.knn_every=0).")
    if d.knn_every and int(t.log_every) > 0 and d.knn_every % t.log_every:
        raise ConfigError(f"{source}: data.knn_every ({d.knn_every}) must be a multiple of train.log_every "
                          f"({t.log_every}) so metrics.csv has a row at each k-NN evaluation.")
    if me.centering not in CENTERINGS:
        raise ConfigError(f"{source}: method.centering must be one of {', '.join(CENTERINGS)}; got '{me.centering}'.")


def validate(recipe: Recipe, source: str = "recipe") -> None:
    """Cross-field checks with messages that say how to fix the recipe."""
    d, m, me, t = recipe.data, recipe.model, recipe.method, recipe.train
    if d.kind not in ("raster", "volume"):
        raise ConfigError(f"{source}: data.kind must be 'raster' or 'volume', got '{d.kind}'.")
    nd = spatial_dims(d)
    window = as_tuple(d.patch_size, nd, "data.patch_size")
    patch = as_tuple(m.patch_size, nd, "model.patch_size")
    for w, p in zip(window, patch):
        if w % p:
            raise ConfigError(
                f"{source}: data.patch_size {list(window)} is not a multiple of model.patch_size {list(patch)}; "
                "pick a window that the token patch divides."
            )
    if m.embed_dim % m.num_heads:
        raise ConfigError(f"{source}: model.embed_dim ({m.embed_dim}) must be divisible by model.num_heads ({m.num_heads}).")
    if me.decoder_embed_dim % me.decoder_num_heads:
        raise ConfigError(
            f"{source}: method.decoder_embed_dim ({me.decoder_embed_dim}) must be divisible by "
            f"method.decoder_num_heads ({me.decoder_num_heads})."
        )
    if not 0.0 <= me.mask_ratio < 1.0:
        raise ConfigError(f"{source}: method.mask_ratio must be in [0, 1), got {me.mask_ratio}.")
    _validate_embedding(m, me, source)
    _validate_dino(d, m, me, t, source)
    if not 0.0 <= d.min_valid_fraction <= 1.0:
        raise ConfigError(f"{source}: data.min_valid_fraction must be in [0, 1], got {d.min_valid_fraction}.")
    if d.intensity not in ("auto", "ct", "mr", "none"):
        raise ConfigError(f"{source}: data.intensity must be one of auto, ct, mr, none; got '{d.intensity}'.")
    for name in ("batch_size", "max_steps", "checkpoint_every", "accumulate_grad_batches", "log_every"):
        if int(getattr(t, name)) <= 0:
            raise ConfigError(f"{source}: train.{name} must be a positive integer, got {getattr(t, name)}.")
    if not float(t.checkpoint_minutes) >= 0:
        raise ConfigError(f"{source}: train.checkpoint_minutes must be >= 0 (0: off), got {t.checkpoint_minutes}.")
    if t.warmup_steps < 0 or t.preview_every < 0:
        raise ConfigError(f"{source}: train.warmup_steps and train.preview_every must be >= 0.")
    if d.band_names is not None and d.wavelengths is not None and len(d.band_names) != len(d.wavelengths):
        raise ConfigError(f"{source}: data.band_names and data.wavelengths must have the same length.")
    f, lab = recipe.finetune, recipe.labels
    if f.task not in ("segment", "classify"):
        raise ConfigError(f"{source}: finetune.task must be 'segment' or 'classify', got '{f.task}'.")
    valid_heads = ("unetr", "linear") if f.task == "segment" else ("linear", "mlp")
    if f.head not in valid_heads:
        raise ConfigError(f"{source}: finetune.head for task '{f.task}' must be one of {', '.join(valid_heads)}; got '{f.head}'.")
    if f.loss not in ("ce", "dice", "ce+dice"):
        raise ConfigError(f"{source}: finetune.loss must be ce, dice or ce+dice; got '{f.loss}'.")
    if f.pool not in ("cls", "mean"):
        raise ConfigError(f"{source}: finetune.pool must be cls or mean; got '{f.pool}'.")
    if lab.split not in ("random", "blocks"):
        raise ConfigError(f"{source}: labels.split must be random or blocks; got '{lab.split}'.")
    if lab.per_class is not None and lab.fraction is not None:
        raise ConfigError(f"{source}: set labels.per_class or labels.fraction, not both.")
    if lab.fraction is not None and not 0 < lab.fraction <= 1:
        raise ConfigError(f"{source}: labels.fraction must be in (0, 1], got {lab.fraction}.")
    if lab.remap is not None and (not isinstance(lab.remap, dict) or not all(
            isinstance(k, int) and isinstance(v, int) for k, v in lab.remap.items())):
        raise ConfigError(f"{source}: labels.remap maps class ids to class ids, e.g. {{2: 1, 3: 1, 4: 1}}; got "
                          f"{lab.remap!r}.")
