"""The typed recipe sections (one dataclass per YAML section), the ``Recipe`` that holds them, and the helpers
that read their size values (``as_tuple``, ``spatial_dims``)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from geomed_ssl.config.fields import setting
from geomed_ssl.errors import ConfigError

IntOrSeq = int | list[int]

# Upper bounds for model sizes, shared by the recipe's ``model`` section and an exported encoder's config.json
# (geomed_ssl.models.encoder_config.EncoderConfig). Generous for real models (ViT-g/14: 1536 wide, 40 deep; the largest
# published ViTs: 6144-8192 wide, 48 deep; hyperspectral sensors: ~200-450 bands) while a typo or a forged export
# (embed_dim 131072 asks for ~200 GB, depth 1e8 never ends building) is refused before anything is allocated.
MAX_EMBED_DIM = 8192
MAX_DEPTH = 128
MAX_HEADS = 256
MAX_MLP_RATIO = 16.0
MAX_CHANNELS = 4096
MAX_UNIT_TOKENS = 256  # model.tokens_per_position
GROUP_WIDTH = 4  # model.group_width's default: adjacent bands per default band group
MAX_PATCH = 4096  # token patch side in pixels / voxels (embed's window level uses one token per window)
MAX_TOKENS = 65536  # tokens per window (grid): attention is quadratic in them; 65536 is ~17 GB per score matrix
# Step counts, batches and seeds: far above any real run, but small enough that step x micro-batch x batch index
# arithmetic (samplers' lengths) stays inside 64 bits, and seeds are what numpy / Lightning accept.
MAX_STEPS = 10**9
MAX_BATCH = 2**20
MAX_ACCUMULATE = 4096
MAX_SEED = 2**32 - 1
STEPS = f"[1, {MAX_STEPS}]"
STEPS0 = f"[0, {MAX_STEPS}]"
BATCH = f"[1, {MAX_BATCH}]"
SEED = f"[0, {MAX_SEED}]"
CROP_SCALE = "(0, 1]"
# Option lists, each declared once here and read by the settings below, by validation and by the code (models,
# checkpoints) that acts on them.
EMBEDDINGS = ("plain", "grouped", "spectral", "wavelength")
CHANNEL_EMBEDS = ("learned", "wavelength")  # spectral embedding's channel embedding
TASKS = ("segment", "classify")
SEG_HEADS = ("unetr", "linear", "probe")
CLS_HEADS = ("linear", "mlp")
POOLS = ("cls", "mean")  # classification token pooling
# Lightning's, plus our auto; not its "true" half / double precisions (16-true, bf16-true, 64-true), which cast the
# model itself: previews, class weights and methods' float32 tensors would then meet weights of another dtype
PRECISIONS = ("auto", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "transformer-engine",
              "transformer-engine-float16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")  # Lightning >= 2.6 has no built-in "hpu"


SENSORS = ("sentinel2", "landsat8", "landsat7", "aviris", "aviris_92av3c", "indian_pines")  # bands.names


@dataclass
class DataConfig:
    """Where samples come from and how they are read."""

    kind: str = setting("raster", "raster (2D GeoTIFF) or volume (3D NIfTI)", choices=("raster", "volume"))
    patch_size: IntOrSeq = setting(64, "sampled window in pixels / voxels, int or per-axis list", bounds=">= 1")
    sensor: str | None = setting(None, "sensor profile for band names and wavelengths (sentinel2, landsat8, ...)",
                                 choices=SENSORS)
    band_names: list[str] | None = setting(None, "band names in the files' order (files without descriptions)")
    wavelengths: list[float] | None = setting(None, "centre wavelengths in micrometres (not nanometres), one per band",
                                              bounds="(0, 20]")
    include: list[str] = setting(["**/*"], "globs of files to read, relative to the data folder")
    exclude: list[str] = setting([], "globs of files to skip")
    channels: list[str] | None = setting(None,
                                         "one glob per channel: stack single-channel files of one folder (or case)")
    nodata: float | None = setting(None, "nodata value (overrides the files'); may be nan", finite=False)
    num_workers: int = setting(2, "DataLoader worker processes (0: in the main process; at most the CPUs the "
                                     "process may use)", bounds=">= 0")
    min_valid_fraction: float = setting(0.5, "windows with less valid area are redrawn", bounds="[0, 1]")
    windows_per_read: int = setting(8, "windows cut from each block-aligned read (volumes: consecutive samples from "
                                    "one volume)", bounds=">= 1")
    stats_windows: int = setting(256, "windows sampled to compute the band statistics", bounds=">= 1")
    date_pairs: bool = setting(False, "two-view methods (vicreg_dense, simclr, byol, dino...): cut every second crop "
                               "from another file on the same grid (another date of the same ground) when there is "
                               "one")
    # volumes only
    spacing: list[float] | None = setting(None, "volumes: resample to this voxel spacing (mm) before sampling",
                                          bounds="> 0")
    min_foreground_fraction: float = setting(0.25, "volumes: windows with less foreground (voxels above the volume's "
                                             "background: air, the zeros around a skull-stripped brain) are "
                                             "redrawn; 0: anywhere", bounds="[0, 1]")
    intensity: str = setting("auto", "volumes: auto | ct (clip to ct_window) | mr (percentile scaling) | none",
                             choices=("auto", "ct", "mr", "none"))
    ct_window: list[float] = setting([-1000.0, 1000.0], "volumes: CT clip range in HU, [low, high]", length=2)
    cache_volumes: int = setting(4, "volumes: decoded volumes kept per worker", bounds=">= 1")
    # the crops a method's views are cut from (see geomed_ssl.views.builder.ViewSpec); sizes are int or per-axis
    # lists, multiples of model.patch_size, no larger than the window
    global_crop_size: IntOrSeq | None = setting(None, "size of the global crops (every method's main views); null: "
                                                "data.patch_size", bounds=">= 1")
    local_crop_size: IntOrSeq | None = setting(None, "multi-crop local crop size; null: half the global crop",
                                               bounds=">= 1")
    n_local_crops: int = setting(6, "multi-crop local crops per window (dino, swav, deepcluster, msn)",
                                 bounds=">= 0")
    global_crop_scale: list[float] = setting([0.4, 1.0], "area / volume fraction of the window a global crop covers, "
                                             "[min, max]", bounds=CROP_SCALE, length=2)
    local_crop_scale: list[float] = setting([0.05, 0.4], "area / volume fraction of the window a local crop covers, "
                                            "[min, max]", bounds=CROP_SCALE, length=2)
    # k-NN monitor during pretraining: a folder with one subfolder of images per class (a few per class suffice)
    val_labels: str | None = setting(None, "k-NN monitor: a folder with one subfolder of images per class")
    knn_every: int = setting(0, "steps between k-NN accuracy evaluations (0: off)", bounds=STEPS0)


@dataclass
class AugmentConfig:
    """Band-safe augmentations of the views (any band count, 2D and 3D; geomed_ssl.views.augment): geometry for every
    method's crops, intensity ops for the methods whose views ask for them (contrastive, siamese, DINO)."""

    flip: bool = setting(True, "flip each spatial axis with probability 0.5")
    rot90: bool = setting(True, "square 2D crops: 0-3 random quarter turns")
    crop_ratio: list[float] = setting([0.75, 1.3333333333333333], "aspect range of the random resized crops, "
                                      "[min, max], log-uniform (3D: each axis jittered within it)", bounds="> 0",
                                      length=2)
    jitter_p: float = setting(0.8, "probability of brightness / contrast jitter", bounds="[0, 1]")
    brightness: float = setting(0.4, "brightness offset drawn in [-b, b], in band standard deviations",
                                bounds=">= 0")
    contrast: float = setting(0.4, "contrast gain drawn in [1 - c, 1 + c] about the band mean", bounds="[0, 1]")
    per_band: bool = setting(True, "jitter and gamma draw each band's own factors (false: one for every band)")
    gamma_p: float = setting(0.3, "probability of a gamma curve", bounds="[0, 1]")
    gamma: list[float] = setting([0.7, 1.5], "gamma range, [min, max], log-uniform", bounds="> 0", length=2)
    blur_p: float = setting(0.5, "probability of Gaussian blur (asymmetric views: 1.0 and 0.1 for the two global "
                            "crops)", bounds="[0, 1]")
    blur_sigma: list[float] = setting([0.1, 1.5], "blur sigma range in pixels / voxels, [min, max]", bounds=">= 0",
                                      length=2)
    noise_p: float = setting(0.2, "probability of additive Gaussian noise", bounds="[0, 1]")
    noise_std: list[float] = setting([0.0, 0.1], "noise standard deviation range in band standard deviations",
                                     bounds=">= 0", length=2)
    solarize_p: float = setting(0.2, "probability of solarising the second global crop of asymmetric views (BYOL, "
                                "MoCo v3, DINO)", bounds="[0, 1]")
    band_dropout_p: float = setting(0.2, "probability that a crop loses bands (set to 0, the band mean)",
                                    bounds="[0, 1]")
    band_dropout_rate: float = setting(0.2, "share of bands dropped when it does (one band always survives)",
                                       bounds="[0, 1]")
    spectral_shift_p: float = setting(0.0, "probability of a spectral shift: each pixel's spectrum read at shifted "
                                      "band centres (needs every band's wavelength)", bounds="[0, 1]")
    spectral_shift: float = setting(0.01, "largest spectral shift in micrometres", bounds=">= 0")


@dataclass
class ModelConfig:
    """The ViT encoder."""

    embedding: str = setting("plain", "patch embedding (see docs/concepts.md#patch-embeddings)", choices=EMBEDDINGS)
    patch_size: IntOrSeq = setting(8, "token patch in pixels / voxels, int or per-axis list",
                                   bounds=f"[1, {MAX_PATCH}]")
    embed_dim: int = setting(192, "token width", bounds=f"[1, {MAX_EMBED_DIM}]")
    depth: int = setting(12, "transformer blocks", bounds=f"[1, {MAX_DEPTH}]")
    num_heads: int = setting(3, "attention heads (divide embed_dim)", bounds=f"[1, {MAX_HEADS}]")
    mlp_ratio: float = setting(4.0, "MLP width / embed_dim", bounds=f"(0, {MAX_MLP_RATIO:g}]")
    qkv_bias: bool = setting(True, "bias in the attention projections")
    drop_path: float = setting(0.0, "stochastic depth rate", bounds="[0, 1)")
    band_groups: list[list[str]] | None = setting(
        None, "grouped: band names per group, e.g. [[B02, B03, B04, B08], [B11, B12]]; bands in no group are not "
        "read; null: one group per ~4 adjacent bands")
    spectral_chunk: int = setting(1, "spectral: adjacent bands sharing one token (200-band cubes: 4-10)",
                                  bounds=f"[1, {MAX_CHANNELS}]")
    channel_embed: str = setting("learned", "spectral: learned (per band) or wavelength (sin-cos of the centre "
                                 "wavelength)", choices=CHANNEL_EMBEDS)
    group_width: int = setting(GROUP_WIDTH, "grouped: adjacent bands per default group (unread when band_groups "
                               "lists them)",
                               bounds=f"[1, {MAX_CHANNELS}]")
    tokens_per_position: int | None = setting(
        None, "grouped / spectral: the band-group / chunk tokens of each position pooled into this many by attention "
        "(1: plain's token count and cost); null: one token per group / chunk", bounds=f"[1, {MAX_UNIT_TOKENS}]")


class MethodConfig:
    """The ``method:`` section as written: the method's ``name`` and its own settings, a raw mapping.

    Each method declares, types and checks its own settings in its own file (``geomed_ssl.methods``:
    ``resolve_method_settings``); this package cannot, as it sits below the methods. ``MethodConfig(name="dino",
    out_dim=4096)`` is the section ``{name: dino, out_dim: 4096}``.
    """

    def __init__(self, name: str = "mae", **settings: Any) -> None:
        self.name = name
        self.settings: dict[str, Any] = settings

    def to_dict(self) -> dict[str, Any]:
        """The section as YAML writes it: ``name`` first, then the settings."""
        return {"name": self.name, **copy.deepcopy(self.settings)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MethodConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"MethodConfig({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"


@dataclass
class TrainConfig:
    """Optimisation and the Lightning Trainer."""

    batch_size: int = setting(64, "windows per step on each device", bounds=BATCH)
    max_steps: int = setting(1000, "optimiser steps", bounds=STEPS)
    base_lr: float = setting(1.5e-4, "lr = base_lr * effective_batch / 256", bounds=">= 0")
    min_lr: float = setting(0.0, "the cosine schedule's final lr", bounds=">= 0")
    warmup_steps: int = setting(100, "linear lr warmup steps", bounds=STEPS0)
    weight_decay: float = setting(0.05, "AdamW weight decay (not on norms, biases, tokens)", bounds=">= 0")
    betas: list[float] = setting([0.9, 0.95], "AdamW betas", bounds="[0, 1)", length=2)
    grad_clip: float | None = setting(1.0, "gradient norm clip: the norm over all parameters together (null: off)",
                                      bounds=">= 0")
    accumulate_grad_batches: int = setting(1, "micro-batches per optimiser step", bounds=f"[1, {MAX_ACCUMULATE}]")
    precision: str = setting("auto", "auto (32 on CPU, bf16-mixed on GPU) or a Lightning precision",
                             choices=PRECISIONS)
    accelerator: str = setting("auto", "Lightning accelerator", choices=ACCELERATORS)
    devices: int | str | list[int] = setting(1, "devices per node: a count, a list of device ids, -1 or auto (all)")
    strategy: str = setting("auto", "Lightning strategy: auto or a DDP one (ddp, ddp_spawn, ddp_fork, ...)")
    num_nodes: int = setting(1, "machines (multi-node DDP)", bounds=">= 1")
    seed: int = setting(0, "pretraining's sampling, masking and init seed (a fine-tune's only with --encoder none: "
                              "its head, views and batches follow labels.seed)", bounds=SEED)
    checkpoint_every: int = setting(100, "steps between kept checkpoints (step-NNNNNN.ckpt) and encoder exports",
                                    bounds=STEPS)
    keep_checkpoints: int | None = setting(3, "step-NNNNNN.ckpt files kept, the newest (older ones are deleted once "
                                                 "a newer one is written); null keeps every one", bounds=">= 1")
    checkpoint_minutes: float = setting(5.0, "minutes of wall time between refreshes of last.ckpt (0: off)",
                                        bounds=">= 0")
    preview_every: int = setting(200, "steps between previews (0: off)", bounds=STEPS0)
    log_every: int = setting(10, "steps between rows of metrics.csv", bounds=STEPS)


@dataclass
class FinetuneConfig:
    """Supervised training of a head (and optionally the encoder) with few labels."""

    task: str = setting("segment", "segment or classify", choices=TASKS)
    head: str | None = setting(None, "segment: unetr | linear | probe (frozen encoder, fitted finetune.probe); "
                               "classify: linear | mlp; null: unetr / linear by task",
                               choices=tuple(dict.fromkeys(SEG_HEADS + CLS_HEADS)))
    layers: list[int] | None = setting(None, "0-based encoder blocks the decoder taps; null: three at 1/4, 1/2, 3/4 "
                                       "of the depth (probe: and the last)", bounds=">= 0")
    probe: str = setting("linear", "head=probe: linear (logistic regression), knn (k = 5, cosine) or propagate "
                         "(labels spread over a k-NN graph of the images' pixels, then linear on all of them) on the "
                         "concatenated tokens of finetune.layers, per pixel", choices=("linear", "knn", "propagate"))
    probe_nodes: int = setting(25000, "probe=propagate: unlabelled pixels in the graph (all when the images hold "
                               "fewer; else a random sample)", bounds=">= 0")
    freeze_encoder: bool = setting(False, "train the head only")
    unfreeze_after_steps: int = setting(0, "with freeze_encoder: train the encoder too after this many steps "
                                        "(0: never)", bounds=STEPS0)
    layer_decay: float = setting(0.75, "lr of block i = base_lr * layer_decay ** (depth - i); 1 for an encoder at "
                                 "random initialisation", bounds="(0, 1]")
    max_steps: int = setting(500, "optimiser steps", bounds=STEPS)
    batch_size: int = setting(16, "windows or images per step", bounds=BATCH)
    base_lr: float = setting(1e-3, "peak learning rate", bounds=">= 0")
    weight_decay: float = setting(0.05, "AdamW weight decay", bounds=">= 0")
    warmup_steps: int = setting(50, "linear lr warmup steps", bounds=STEPS0)
    loss: str = setting("ce+dice", "loss on the labelled pixels", choices=("ce", "dice", "ce+dice"))
    class_weights: str | list[float] | None = setting(None, "the fine-tune's loss and the frozen probes' logistic "
                                                      "regression: null (each sample alike), balanced, or one "
                                                      "weight per class",
                                                      bounds=">= 0", choices=("balanced",))
    feature_size: int = setting(16, "UNETR decoder width", bounds="[1, 1024]")
    pool: str = setting("cls", "classify: token pooling", choices=POOLS)
    window: IntOrSeq | None = setting(None, "training / prediction window; null: the encoder's window", bounds=">= 1")
    eval_every: int = setting(0, "not read yet (evaluation runs once, at the end); kept so saved configs load",
                              bounds=STEPS0)

    def __post_init__(self) -> None:
        if self.head is None:
            self.head = SEG_HEADS[0] if self.task == "segment" else CLS_HEADS[0]


@dataclass
class LabelsConfig:
    """Which labelled pixels / voxels / images are used for training, and which for testing."""

    per_class: int | None = setting(None, "k labels per class (rare classes: at most half of their labels)",
                                    bounds=">= 1")
    fraction: float | None = setting(None, "or a fraction of all labels", bounds="(0, 1]")
    ignore_value: int | None = setting(0, "label value meaning unlabelled")
    use_nodata: bool = setting(True, "a label raster's nodata tag marks unlabelled pixels too; false: the tagged "
                               "value is a class like the others (a 0 / 1 mask saved with nodata 0)")
    split: str = setting("random", "random, blocks (whole blocks held out: no test pixel shares a block with "
                         "training) or images (whole images / subjects held out; the dates of one label file stay "
                         "together)", choices=("random", "blocks", "images"))
    block_size: int = setting(16, "block side for the block split", bounds=">= 1")
    test_fraction: float | None = setting(None, "subsample the test set (speed); null: every remaining label",
                                          bounds="(0, 1]")
    seed: int = setting(0, "label sampling seed; also a fine-tune's new head, augmentations and batch order",
                        bounds=SEED)
    label_name: str | None = setting(None, "the label is this file beside each image (a folder per case, e.g. BraTS)")
    remap: dict[int, int] | None = setting(None, "merge / renumber classes on reading, e.g. {2: 1, 3: 1, 4: 1}")
    class_names: dict[int, str] | None = setting(None, "names of the class values (after remap), e.g. {1: Corn, 2: "
                                                 "Woods}: in metrics, confusion matrices and the model; null: values")


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "method": MethodConfig,
    "augment": AugmentConfig,
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
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain data, one mapping per section (what ``save`` writes and ``recipe_from_dict`` reads back)."""
        return {name: section_dict(getattr(self, name)) for name in SECTIONS}

    def save(self, path: str | Path) -> None:
        """Write the recipe as YAML, atomically (the file is the old one or the complete new one)."""
        from geomed_ssl.outfiles import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def section_dict(section: Any) -> dict[str, Any]:
    """One section as plain data."""
    return section.to_dict() if isinstance(section, MethodConfig) else dataclasses.asdict(section)


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
