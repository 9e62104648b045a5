"""The typed recipe sections (one dataclass per YAML section), the ``Recipe`` that holds them, and the helpers
that read their size values (``as_tuple``, ``spatial_dims``)."""

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
    checkpoint_every: int = 100  # steps between kept checkpoints (step-NNNNNN.ckpt) and encoder exports
    checkpoint_minutes: float = 5.0  # minutes of wall time between refreshes of last.ckpt (0: off)
    preview_every: int = 200
    log_every: int = 10


@dataclass
class FinetuneConfig:
    """Supervised training of a head (and optionally the encoder) with few labels."""

    task: str = "segment"  # segment | classify
    head: str | None = None  # segment: unetr | linear; classify: linear | mlp; null: unetr / linear by task
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
    label_name: str | None = None  # the label is this file beside each image (a folder per case, e.g. BraTS)
    remap: dict[int, int] | None = None  # merge / renumber classes on reading, e.g. {2: 1, 3: 1, 4: 1}


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
