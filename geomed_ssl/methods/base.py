"""The contract every self-supervised method follows; the trainer knows nothing method-specific.

A method is one file: an :class:`SSLMethod` subclass registered with ``@register_method``
(:mod:`geomed_ssl.methods.registry`) and its settings, a :class:`MethodSettings` dataclass whose fields are the
keys of the recipe's ``method:`` section, each declared once with ``setting(default, meaning, bounds=...,
choices=...)``; the views it needs, a :class:`~geomed_ssl.views.builder.ViewSpec` that the one view builder reads; and
a :class:`MethodCard` for ``geomed-ssl methods`` and docs/methods.md::

    @dataclass
    class ToySettings(MethodSettings):
        temperature: float = setting(0.2, "softmax temperature", bounds="> 0")

    @register_method
    class Toy(SSLMethod):
        name = "toy"
        Settings = ToySettings
        views = ViewSpec(crops=2)  # two augmented global crops: batch["views"]["global"] == [x1, x2]
        card = MethodCard(learns="...", cost="...", failure_modes="...")

        def __init__(self, encoder_cfg, settings=None, max_steps=1000):
            super().__init__(encoder_cfg, settings, max_steps)
            self.encoder = ViTEncoder(encoder_cfg)  # every module attribute is the method's: heads included

        def training_loss(self, batch, step, generator) -> MethodOutput: ...

Hooks. Everything the trainer calls is declared on :class:`SSLMethod` with a default, and nothing else is called:
``fit_to_data`` (once, before a new run's first step), ``training_loss`` (every micro-batch), ``before_optimizer_step`` (gradients ready, before the update),
``weight_decay`` (the decaying groups' weight decay at a step, or None), ``after_step`` (after the update; by
default the EMA of the declared ``momentum_pairs`` at ``momentum(step)``), ``export_encoder``, ``no_weight_decay``,
``reconstruct`` (previews; methods without it get attention-map previews); before the data is read, ``pretrain``
builds the views of ``views_for(settings)`` (``views``, unless a setting changes them) to refuse what cannot be cut
from the recipe's windows. The optimiser trains every parameter of
the method that requires grad: encoders, heads, prototypes and tokens are attributes of the method; momentum
targets are made with :func:`~geomed_ssl.methods.momentum.momentum_copy` (frozen) and declared as pairs, never
looped over by hand.

Randomness. ``training_loss(batch, step, generator)`` gets the step's ``generator``, seeded from (train.seed,
optimiser step) and the same on every rank and every micro-batch of the step: draws that concern the whole global
batch (e.g. the band subset of ``method.channel_sampling``) come from it. Draws that concern one sample (MAE masking
noise, iBOT masks, anything per image) come from :class:`PerSample`, which gives sample ``i`` a generator seeded by
(one draw of ``generator``, the sample's global index ``batch["index"][i]``). The dataset derives a sample's window
and augmentations from (seed, index) too, so a sample is the same whichever rank, micro-batch or batch position it
lands on: N processes with batch B train exactly as one process with batch N*B (up to float rounding), and a resumed
run replays exactly. Stochastic depth (``model.drop_path`` > 0) draws per sample too (``train.module.per_sample_draws``)
when the encoder's rows are whole views of the batch. One thing is per rank and breaks that equality: the global
torch RNG, which ``train.module`` reseeds each micro-step from (seed, micro-step, rank) (drop path on a forward of
any other row count draws from it). Batch terms (negatives, BatchNorm, KoLeo's neighbours) see the global batch.

Gradient accumulation (``train.accumulate_grad_batches`` A) averages the gradients of A micro-batches, so a loss that
is a mean over samples with a fixed denominator (MAE's masked tokens without nodata) trains as one batch A times
larger. A method whose loss compares the samples of a batch (negatives, BatchNorm, batch statistics:
:attr:`SSLMethod.compares_batch`) compares each micro-batch on its own, and a loss normalised by a varying count
divides by each micro-batch's count.

Losses under DDP. Gradients are averaged over ranks, so a loss that is a mean over the local batch with the same
denominator on every rank is already the global mean. A loss normalised by a count that varies (valid pixels,
masked tokens) must divide by :func:`mean_over_ranks` of that count, so the average of the per-rank losses is the
global batch's loss. Collectives (``mean_over_ranks``, ``all_ranks``) run only in ``training_loss`` (every rank
calls it once per micro-batch), never in eval-time code such as previews, which runs on rank 0 alone. The ``logs``
of a step must have the same keys on every rank (the trainer averages them over ranks for metrics.csv).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from geomed_ssl.config import MethodConfig, Recipe, as_tuple, build_checked, check_instance, spatial_dims, values_of
from geomed_ssl.views.builder import ViewSpec
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.momentum import MomentumPair, check_momentum_pairs, ema_update_
from geomed_ssl.methods.schedules import ScheduleClock
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
from geomed_ssl.models.tokens import token_grid

_MASK64 = (1 << 64) - 1


def mix_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (splitmix64 over them in turn): different keys give unrelated streams."""
    z = 0x9E3779B97F4A7C15
    for k in keys:
        z = (z ^ (int(k) & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
        z ^= z >> 31
    return z >> 1


class PerSample:
    """Random streams of the samples of one batch: sample ``i`` draws from a CPU generator seeded by
    ``(base, stream, indices[i])``, where ``base`` is one draw of the step's generator (the same on every rank)
    and ``indices[i]`` the sample's global index, so its draws do not depend on rank or batch position.

    Example: MAE masking noise is ``PerSample.from_batch(batch, generator).rand(num_tokens)`` -> (B, N).
    """

    def __init__(self, generator: torch.Generator | None, indices: Sequence[int]) -> None:
        draw = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device if generator else "cpu")
        self.base = int(draw)
        self.indices = [int(i) for i in indices]

    @classmethod
    def from_batch(cls, batch: dict[str, Any], generator: torch.Generator | None, size: int | None = None) -> PerSample:
        """From ``batch["index"]`` (B,) global sample indices; a batch without them counts as samples 0..B-1
        (``size``: B, else the length of ``batch["image"]``)."""
        index = batch.get("index")
        if index is None:
            n = size if size is not None else len(batch["image"])
            return cls(generator, range(n))
        return cls(generator, index.tolist() if torch.is_tensor(index) else list(index))

    def __len__(self) -> int:
        return len(self.indices)

    def generator(self, i: int, stream: int = 0) -> torch.Generator:
        """The generator of batch position ``i`` for purpose ``stream`` (e.g. the crop number)."""
        return torch.Generator().manual_seed(mix_seed(self.base, stream, self.indices[i]))

    def uniform(self, stream: int) -> torch.Tensor:
        """One uniform [0, 1) draw per sample (B,) float32 for purpose ``stream``, from a counter-based hash of
        (base, stream, global index) instead of a generator per sample: microseconds per call, for draws made many
        times a step (stochastic depth's, every layer and view)."""
        z = np.asarray(self.indices, np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(mix_seed(self.base, stream))
        for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            z = (z ^ (z >> np.uint64(shift))) * np.uint64(mult)  # splitmix64's finaliser, wrapping mod 2^64
        z ^= z >> np.uint64(31)
        return torch.from_numpy(((z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)))

    def rand(self, *shape: int, stream: int = 0) -> torch.Tensor:
        """Uniform [0, 1) draws, (B, *shape) float32 on the CPU; row ``i`` from sample ``i``'s generator."""
        if not self.indices:
            return torch.empty(0, *shape)
        return torch.stack([torch.rand(shape, generator=self.generator(i, stream)) for i in range(len(self))])


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """``value`` (detached) averaged over the ranks of an initialised process group, else itself: the denominator
    of a loss whose per-rank values DDP averages, so that they add up to the global batch's loss."""
    value = value.detach()
    if _world() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / _world()


def all_ranks(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True when ``flag`` holds on every rank (a collective under DDP), so that every rank takes the same branch."""
    if _world() == 1:
        return bool(flag)
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() == 0)


@dataclass(frozen=True)
class MethodContext:
    """What a method's settings are checked against besides themselves; ``None``: not known at that point (a
    method built in Python, or before the data is scanned)."""

    embedding: str | None = None  # model.embedding
    spatial_dims: int | None = None  # 2 (rasters) or 3 (volumes)
    tokens: int | None = None  # tokens per training window (the encoder's grid)
    max_steps: int | None = None
    batch_size: int | None = None  # per device
    samples: int | None = None  # distinct (non-overlapping) training windows in the data, once it is scanned
    window: tuple[int, ...] | None = None  # the training window per spatial axis (data.patch_size)
    patch: tuple[int, ...] | None = None  # the token patch per spatial axis (model.patch_size)
    bands: int | None = None  # input bands, once the data is scanned
    tokens_per_position: int | None = None  # grouped / spectral with model.tokens_per_position: units pooled to this
    crop: tuple[int, ...] | None = None  # the global crops per spatial axis (data.global_crop_size; null: the window)
    world: int = 1  # processes training together (DDP): a step's global batch is world x batch_size

    @classmethod
    def from_recipe(cls, recipe: Recipe, samples: int | None = None, world: int = 1) -> MethodContext:
        nd = spatial_dims(recipe.data)
        window = as_tuple(recipe.data.patch_size, nd, "data.patch_size")
        patch = as_tuple(recipe.model.patch_size, nd, "model.patch_size")
        pooled = recipe.model.tokens_per_position if recipe.model.embedding in ("grouped", "spectral") else None
        crop = recipe.data.global_crop_size
        crop = tuple(window) if crop is None else tuple(as_tuple(crop, nd, "data.global_crop_size"))
        return cls(recipe.model.embedding, nd, math.prod(token_grid(window, patch)),
                   recipe.train.max_steps, recipe.train.batch_size, samples, tuple(window), tuple(patch),
                   tokens_per_position=pooled, crop=crop, world=world)

    @classmethod
    def from_encoder(cls, cfg: EncoderConfig, max_steps: int | None = None) -> MethodContext:
        return cls(cfg.embedding, cfg.spatial_dims, cfg.num_patches, max_steps, window=tuple(cfg.img_size),
                   patch=tuple(cfg.patch_size), bands=cfg.in_chans,
                   tokens_per_position=cfg.tokens_per_position if cfg.pooled else None)

    @property
    def crop_grid(self) -> tuple[int, ...] | None:
        """The token grid of a global crop (the window when ``crop`` is unknown; None: neither known); whether the
        patch divides the crop is the views' check."""
        crop = self.crop or self.window
        if crop is None or self.patch is None:
            return None
        return tuple(max(1, c // p) for c, p in zip(crop, self.patch))


@dataclass
class MethodSettings:
    """Base of every method's settings (the ``method:`` section less its ``name``). Subclasses declare fields with
    ``setting`` and override :meth:`check` for rules that span several settings or the rest of the recipe."""

    def check(self, source: str, context: MethodContext) -> None:
        """Raise a one-line ``ConfigError`` (prefixed with ``source``) when the settings cannot work together or
        with ``context``. Types and ranges of single settings are checked before this. Default: nothing."""

    def resolve_auto(self, context: MethodContext) -> list[str]:
        """Replace data-dependent ``auto`` values (a queue length, a number of prototypes) by sizes that
        ``context.samples`` supports, in place, and return one note per value set (logged by the caller); called
        once the data is scanned, after :meth:`check`. Default: nothing to resolve."""
        return []

    @classmethod
    def from_section(cls, section: MethodConfig | Mapping[str, Any], source: str = "recipe",
                     context: MethodContext | None = None, *, owner: str | None = None) -> MethodSettings:
        """Settings from the recipe's ``method:`` section (its ``name`` ignored): unknown keys name this method's
        valid ones, each value is checked against its declaration, then :meth:`check` runs."""
        values = dict(section.settings if isinstance(section, MethodConfig) else section)
        values.pop("name", None)
        settings = build_checked(cls, values, "method", source, owner=owner)
        settings.check(source, context or MethodContext())
        return settings

    def validated(self, source: str = "method", context: MethodContext | None = None) -> MethodSettings:
        """These settings after the same checks as :meth:`from_section` (for settings built in Python)."""
        check_instance(self, "method", source)
        self.check(source, context or MethodContext())
        return self

    def to_section(self, name: str) -> MethodConfig:
        """The complete ``method:`` section (every setting with its value) for method ``name``."""
        return MethodConfig(name, **values_of(self))


@dataclass(frozen=True)
class MethodCard:
    """What ``geomed-ssl methods`` and docs/methods.md say about a method besides its settings and views."""

    learns: str = ""  # what the encoder learns, one line
    cost: str = ""  # memory / compute per step relative to the encoder's forward-backward on one view
    failure_modes: str = ""  # the known ways it fails, and what to watch
    recipes: tuple[str, ...] = ()  # shipped recipes that use it (paths from the repository root)
    dims: str = "2D, 3D"


@dataclass
class MethodOutput:
    """A training step's loss (scalar, with grad) and detached scalars to log."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class SSLMethod(nn.Module):
    """Base of all methods: owns its encoder(s), heads and loss; every hook the trainer calls is declared here.

    Subclasses set ``name``, ``Settings`` (their :class:`MethodSettings`), ``views`` (a :class:`ViewSpec`; the
    default is one crop, geometry only, as masked-image methods want) and ``card``, and implement
    ``training_loss``; all randomness of a step comes from the ``generator`` passed in (per sample through
    :class:`PerSample`), so a resumed run replays exactly and the split of the global batch over ranks does not
    matter. Schedules read ``self.clock`` (a :class:`ScheduleClock` over ``max_steps``; the trainer replaces it
    when a run is resumed with another length) so they continue without a jump.
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    views: ClassVar[ViewSpec] = ViewSpec(intensity=False, scale=(0.2, 1.0))
    card: ClassVar[MethodCard] = MethodCard()
    # The pooling that reads what the loss trains, for ``embed --pool auto``: ``cls`` where the loss reads the CLS
    # token (two-view, self-distillation, CLS pretext tasks), ``mean`` of the tokens otherwise.
    embedding_pool: ClassVar[str] = "mean"
    # The loss compares the samples of a batch (negatives, BatchNorm, batch statistics, centring), so gradient
    # accumulation does not enlarge the batch it sees; the trainer says so when accumulation is asked for.
    compares_batch: ClassVar[bool] = False

    def __init__(self, encoder_cfg: EncoderConfig,
                 settings: MethodSettings | MethodConfig | Mapping[str, Any] | None = None,
                 max_steps: int = 1000) -> None:
        """``settings``: this method's ``Settings``, a ``method:`` section or mapping of them, or ``None`` for the
        defaults; checked against the encoder whichever it is."""
        super().__init__()
        self.encoder_cfg = encoder_cfg
        self.max_steps = max_steps
        context = MethodContext.from_encoder(encoder_cfg, max_steps)
        if isinstance(settings, self.Settings):
            self.settings = settings.validated("method", context)
        elif settings is None or isinstance(settings, (MethodConfig, Mapping)):
            if isinstance(settings, MethodConfig) and settings.name != self.name:
                raise ConfigError(f"method.name is '{settings.name}' but this is the '{self.name}' method.")
            self.settings = self.Settings.from_section(settings or {}, "method", context,
                                                       owner=f"for method '{self.name}'")
        else:
            raise TypeError(f"{type(self).__name__} takes {self.Settings.__name__}, a MethodConfig or a mapping, "
                            f"not {type(settings).__name__}")
        self.clock = ScheduleClock(max_steps)
        self.views = type(self).views_for(self.settings)

    @classmethod
    def views_for(cls, settings: MethodSettings) -> ViewSpec:
        """The views a method with these settings needs (default: :attr:`views`); a method whose views follow a
        setting overrides it, and ``pretrain`` builds them from the recipe alone, before the data is scanned."""
        return cls.views

    # ---- what the trainer calls ------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        """The loss of one micro-batch (scalar, with grad) and detached scalars to log (the same keys on every
        rank; ``collapse`` also goes to the progress bar). ``batch`` holds what :attr:`views` asks for (see
        :class:`ViewSpec`), ``index`` (B,) global sample indices and ``meta``; ``step`` is the optimiser step."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_loss().")

    def fit_to_data(self, dataset: Sequence[dict[str, Any]], seed: int,
                    device: torch.device | str = "cpu") -> list[str]:
        """Before the first step of a new run (not when resumed: the checkpoint restores what it fitted), learn
        what the method needs from the data itself, e.g. BEiT's visual-token codebook. ``dataset[i]`` is training
        sample ``i`` as the views build it (``image`` (C, *S) normalised); every draw from ``seed``, so all ranks
        fit the same; computed on ``device`` (this rank's, or the CPU where CUDA must not start before a fork),
        the result kept on the CPU. Returns one note per thing fitted (logged). Default: nothing."""
        return []

    def before_optimizer_step(self, step: int) -> None:
        """After the backward pass(es) of optimiser step ``step``, before the update: change gradients (drop those
        of layers frozen for a while, e.g. DINO's prototypes). Default: nothing."""

    def weight_decay(self, step: int) -> float | None:
        """The weight decay of the decaying parameter groups at ``step`` (a schedule), or ``None`` to keep
        ``train.weight_decay``. Default: ``None``."""
        return None

    def momentum_pairs(self) -> list[MomentumPair]:
        """``(online, target)`` module pairs whose targets follow their online twins by EMA after every step
        (teachers, key encoders, target networks); targets made with ``momentum_copy``. Default: none."""
        return []

    def momentum(self, step: int) -> float:
        """The EMA momentum at ``step`` (read ``self.clock(step)``); methods with momentum pairs override it."""
        raise NotImplementedError(f"{type(self).__name__} declares momentum pairs but no momentum(step).")

    def after_step(self, step: int) -> None:
        """After the update of optimiser step ``step``: state that follows the weights. Default: every target of
        :meth:`momentum_pairs` <- ``momentum(step)`` * target + (1 - momentum) * online (one EMA helper for every
        method). Overrides that add their own state call ``super().after_step(step)``."""
        pairs = self.momentum_pairs()
        if pairs:
            ema_update_(pairs, self.momentum(step))

    def export_encoder(self) -> ViTEncoder:
        """The encoder to keep for downstream use (default: the ``encoder`` attribute)."""
        encoder = getattr(self, "encoder", None)
        if not isinstance(encoder, ViTEncoder):
            raise NotImplementedError(f"{type(self).__name__} must implement export_encoder().")
        return encoder

    def no_weight_decay(self) -> set[str]:
        """Full names of parameters trained without weight decay besides norms and biases: the tokens and position
        embeddings of every submodule that lists them (``module.no_weight_decay()``)."""
        names: set[str] = set()
        for prefix, module in self.named_modules():
            if module is not self and callable(getattr(module, "no_weight_decay", None)):
                names |= {f"{prefix}.{n}" for n in module.no_weight_decay()}
        return names

    def reconstruct(self, image: torch.Tensor, valid: torch.Tensor | None = None,
                    noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """For methods that reconstruct their input, previews: ``image`` (B, C, *S) -> ``pred_image`` (B, C, *S),
        ``mask_image`` (B, *S) bool, ``loss``; in eval mode, collectives off. Default: not available (previews show
        the exported encoder's attention maps instead)."""
        raise NotImplementedError(f"{type(self).__name__} does not reconstruct its input.")

    @classmethod
    def reconstructs(cls) -> bool:
        """True when the method implements :meth:`reconstruct`."""
        return cls.reconstruct is not SSLMethod.reconstruct

    def check_contract(self) -> None:
        """Raise ``TypeError`` when the method breaks the contract in ways the trainer cannot see: a momentum pair
        whose twins differ, or a target that would be trained by the optimiser."""
        pairs = self.momentum_pairs()
        check_momentum_pairs(pairs)
        trained = [n for _, target in pairs for n, p in target.named_parameters() if p.requires_grad]
        if trained:
            raise TypeError(f"{type(self).__name__}: momentum targets must not require grad (make them with "
                            f"momentum_copy); {trained[0]} does.")
