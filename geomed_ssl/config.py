"""Typed recipe objects: YAML load, ``section.key=value`` overrides, validation with clear errors.

A recipe has four pretraining sections (``data``, ``model``, ``method``, ``train``) and two for fine-tuning
(``finetune``, ``labels``); every section is optional and missing keys take their defaults. Each is a dataclass; unknown keys are errors that name the key and the valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from geomed_ssl.errors import ConfigError

IntOrSeq = int | list[int]


@dataclass
class DataConfig:
    """Where samples come from and how they are read."""

    kind: str = "raster"  # raster (2D GeoTIFF) | volume (3D NIfTI)
    patch_size: IntOrSeq = 64  # sampled window in pixels / voxels, int or per-axis list
    sensor: str | None = None  # sensor profile for band names and wavelengths (sentinel2, landsat8, ...)
    band_names: list[str] | None = None
    wavelengths: list[float] | None = None  # centre wavelengths in micrometres, one per band
    include: list[str] = field(default_factory=lambda: ["**/*"])
    exclude: list[str] = field(default_factory=list)
    channels: list[str] | None = None  # one glob per channel: stack single-channel files of one folder
    nodata: float | None = None  # overrides the files' nodata value
    num_workers: int = 2
    min_valid_fraction: float = 0.5  # windows with less valid area are rejected
    windows_per_read: int = 8  # windows cut from each block-aligned read (rasters)
    stats_windows: int = 256  # windows sampled to compute the band statistics
    # volumes only
    spacing: list[float] | None = None  # resample to this voxel spacing (mm) before sampling
    intensity: str = "auto"  # auto | ct | mr | none
    ct_window: list[float] = field(default_factory=lambda: [-1000.0, 1000.0])
    cache_volumes: int = 4  # decoded volumes kept per worker
    # DINO multi-crop (method.name=dino); sizes are int or per-axis lists, multiples of model.patch_size
    global_crop_size: IntOrSeq | None = None  # null: data.patch_size
    local_crop_size: IntOrSeq | None = None  # null: half the global crop, rounded down to the token patch
    n_local_crops: int = 6
    global_crop_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])  # area / volume fraction of the window
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    # k-NN monitor during pretraining: a folder with one subfolder of images per class (a few per class suffice)
    val_labels: str | None = None
    knn_every: int = 0  # steps between k-NN accuracy evaluations (0: off)


@dataclass
class ModelConfig:
    """The ViT encoder."""

    embedding: str = "plain"  # plain | grouped | spectral | wavelength (see docs/concepts.md#patch-embeddings)
    patch_size: IntOrSeq = 8
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.0
    # grouped: band NAMES per group, e.g. [[B02, B03, B04, B08], [B05, B06, B07, B8A], [B11, B12]]; bands in no
    # group are not read; null: one group per ~4 adjacent bands
    band_groups: list[list[str]] | None = None
    spectral_chunk: int = 1  # spectral: adjacent bands sharing one token (200-band cubes: 4-10 keeps T affordable)
    channel_embed: str = "learned"  # spectral: learned (per band) | wavelength (sin-cos of the centre wavelength)


@dataclass
class MethodConfig:
    """The self-supervised method and its own hyperparameters."""

    name: str = "mae"
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    decoder_embed_dim: int = 128
    decoder_depth: int = 4
    decoder_num_heads: int = 4
    group_masking: str = "independent"  # grouped/spectral MAE: independent (per token) | consistent (per position)
    channel_sampling: bool = False  # spectral/wavelength: random band subsets per step (hierarchical sampling)
    channel_sampling_min: int = 1  # fewest bands kept by channel_sampling
    # --- dino (read by methods/dino.py; defaults are the official DINO / iBOT / DINOv2 values) ---
    out_dim: int = 65536  # prototypes K; small data (< ~100k windows): 4096-16384
    head_hidden_dim: int = 2048  # projection head MLP width
    head_bottleneck_dim: int = 256  # L2-normalised bottleneck before the prototype layer
    head_nlayers: int = 3
    norm_last_layer: bool = True  # weight-normalised prototypes with fixed norm (stabler; false: better, riskier)
    freeze_last_layer_steps: int | None = None  # prototypes frozen this long; null: 1 % of max_steps
    momentum_teacher: float = 0.996  # teacher EMA momentum, cosine to 1 at max_steps
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04  # teacher temperature warms up linearly from this ...
    teacher_temp: float = 0.07  # ... to this (lower it if the teacher entropy stays near log K)
    teacher_temp_warmup_steps: int | None = None  # null: 30 % of max_steps
    centering: str = "ema"  # ema (DINO) | sinkhorn (Sinkhorn-Knopp, DINOv2) | none (collapses; for tests)
    center_momentum: float = 0.9  # ema centering
    sinkhorn_iters: int = 3
    weight_decay_start: float = 0.04  # weight decay, cosine from start to end over max_steps (replaces
    weight_decay_end: float = 0.4  # train.weight_decay for dino)
    ibot_loss_weight: float = 0.0  # > 0: iBOT masked-patch loss on the student's masked global crops
    ibot_mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])  # masked token fraction, per image
    ibot_mask_prob: float = 0.5  # fraction of global crops that are masked at all
    ibot_separate_head: bool = False  # a separate projection head for the patch tokens
    ibot_out_dim: int | None = None  # its prototypes; null: out_dim
    koleo_loss_weight: float = 0.0  # > 0: KoLeo spreading regulariser on the student's CLS (DINOv2: 0.1)


@dataclass
class TrainConfig:
    """Optimisation and the Lightning Trainer."""

    batch_size: int = 64
    max_steps: int = 1000
    base_lr: float = 1.5e-4  # lr = base_lr * effective_batch / 256
    min_lr: float = 0.0
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float | None = 1.0
    accumulate_grad_batches: int = 1
    precision: str = "auto"  # auto: 32 on CPU, bf16-mixed on GPU
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    seed: int = 0
    checkpoint_every: int = 500
    preview_every: int = 200
    log_every: int = 10


@dataclass
class FinetuneConfig:
    """Supervised training of a head (and optionally the encoder) with few labels."""

    task: str = "segment"  # segment | classify
    head: str | None = None  # segment: unetr; classify: linear | mlp; null: unetr / linear by task
    layers: list[int] | None = None  # 0-based encoder blocks tapped by the decoder; null: 4 evenly spaced, last included
    freeze_encoder: bool = False
    unfreeze_after_steps: int = 0  # with freeze_encoder: train the encoder too after this many steps (0: never)
    layer_decay: float = 0.75  # lr of block i = base_lr * layer_decay ** (depth - i)
    max_steps: int = 500
    batch_size: int = 16
    base_lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    loss: str = "ce+dice"  # ce | dice | ce+dice
    class_weights: Any = None  # null | balanced | list of one weight per class
    feature_size: int = 16  # UNETR decoder width
    pool: str = "cls"  # classify: cls | mean
    window: IntOrSeq | None = None  # training / prediction window; null: data.patch_size
    eval_every: int = 0  # steps between evaluations on the test split during training (0: only at the end)

    def __post_init__(self) -> None:
        if self.head is None:
            self.head = "unetr" if self.task == "segment" else "linear"


@dataclass
class LabelsConfig:
    """Which labelled pixels / voxels / images are used for training, and which for testing."""

    per_class: int | None = None  # k labels per class (rare classes: at most half of their labels)
    fraction: float | None = None  # or a fraction of all labels
    ignore_value: int | None = 0  # label value meaning "unlabelled"
    split: str = "random"  # random | blocks (whole blocks held out: no test pixel shares a block with training)
    block_size: int = 16
    test_fraction: float | None = None  # subsample the test set (speed); null: every remaining label
    seed: int = 0


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "method": MethodConfig,
    "train": TrainConfig,
    "finetune": FinetuneConfig,
    "labels": LabelsConfig,
}


@dataclass
class Recipe:
    """A whole recipe: one typed object per section."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _build_section(name: str, values: dict[str, Any], source: str) -> Any:
    cls = SECTIONS[name]
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in valid]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{name}.{unknown[0]}'. Valid keys in '{name}': {', '.join(valid)}."
        )
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    values = {k: _coerce_number(v, types[k], f"{name}.{k}", source) for k, v in values.items()}
    return cls(**values)


def _coerce_number(value: Any, annotation: str, key: str, source: str) -> Any:
    """YAML 1.1 reads ``2e-3`` (no dot) as a string; a float key takes it as the number it means."""
    if isinstance(value, str) and "float" in annotation:
        try:
            return float(value)
        except ValueError:
            if annotation.startswith("float"):
                raise ConfigError(f"{source}: '{key}' must be a number, got '{value}'.") from None
    return value


def recipe_from_dict(raw: dict[str, Any] | None, source: str = "recipe") -> Recipe:
    """Build and validate a ``Recipe`` from a plain dict (missing sections and keys take their defaults)."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe is a mapping of sections ({', '.join(SECTIONS)}), got {type(raw).__name__}.")
    unknown = [k for k in raw if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{source}: unknown section '{unknown[0]}'. Valid sections: {', '.join(SECTIONS)}.")
    sections = {}
    for name in SECTIONS:
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{name}' must be a mapping of key: value.")
        sections[name] = _build_section(name, values, source)
    recipe = Recipe(**sections)
    validate(recipe, source)
    return recipe


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split ``section.key=value``; the value is parsed as YAML (numbers, lists, null, booleans)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set '{text}': expected section.key=value, e.g. --set train.max_steps=200.")
    dotted, value = text.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError as err:
        inner = value.strip()
        if inner.startswith("[") and inner.endswith("]"):  # a list of globs: YAML reads a leading * as an alias
            parsed = [item.strip().strip("'\"") for item in inner[1:-1].split(",") if item.strip()]
        else:
            raise ConfigError(f"--set '{text}': the value is not valid YAML ({err}).") from None
    return section.strip(), key.strip(), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``--set section.key=value`` strings to a raw recipe dict (a new dict is returned)."""
    raw = {k: dict(v or {}) for k, v in (raw or {}).items()}
    for text in overrides or []:
        section, key, value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(f"--set '{text}': unknown section '{section}'. Valid sections: {', '.join(SECTIONS)}.")
        raw.setdefault(section, {})[key] = value
    return raw


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe (``None``: all defaults), apply overrides, validate."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"recipe '{path}' not found. Pass a YAML file, e.g. recipes/mae_sentinel2.yaml.")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"recipe '{path}' is not valid YAML: {err}") from None
    return recipe_from_dict(apply_overrides(raw, overrides), source)


def as_tuple(value: IntOrSeq, ndim: int, name: str) -> tuple[int, ...]:
    """An int or per-axis list as a tuple of ``ndim`` positive ints."""
    if isinstance(value, int):
        out = (value,) * ndim
    elif isinstance(value, (list, tuple)) and len(value) == ndim and all(isinstance(v, int) for v in value):
        out = tuple(value)
    else:
        raise ConfigError(f"'{name}' must be an int or a list of {ndim} ints, got {value!r}.")
    if any(v <= 0 for v in out):
        raise ConfigError(f"'{name}' must be positive, got {value!r}.")
    return out


def spatial_dims(data: DataConfig) -> int:
    return 2 if data.kind == "raster" else 3


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
    if t.warmup_steps < 0 or t.preview_every < 0:
        raise ConfigError(f"{source}: train.warmup_steps and train.preview_every must be >= 0.")
    if d.band_names is not None and d.wavelengths is not None and len(d.band_names) != len(d.wavelengths):
        raise ConfigError(f"{source}: data.band_names and data.wavelengths must have the same length.")
    f, lab = recipe.finetune, recipe.labels
    if f.task not in ("segment", "classify"):
        raise ConfigError(f"{source}: finetune.task must be 'segment' or 'classify', got '{f.task}'.")
    valid_heads = ("unetr",) if f.task == "segment" else ("linear", "mlp")
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
