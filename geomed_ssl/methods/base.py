"""The contract every self-supervised method follows; the trainer knows nothing method-specific.

A method is one file: an :class:`SSLMethod` subclass registered with ``@register_method``
(:mod:`geomed_ssl.methods.registry`) and its settings, a :class:`MethodSettings` dataclass whose fields are the
keys of the recipe's ``method:`` section, each declared once with ``setting(default, meaning, bounds=...,
choices=...)``::

    @dataclass
    class ToySettings(MethodSettings):
        temperature: float = setting(0.2, "softmax temperature", bounds="> 0")

    @register_method
    class Toy(SSLMethod):
        name = "toy"
        Settings = ToySettings
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from geomed_ssl.config import MethodConfig, Recipe, as_tuple, build_checked, check_instance, spatial_dims, values_of
from geomed_ssl.errors import ConfigError
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder


@dataclass(frozen=True)
class MethodContext:
    """What a method's settings are checked against besides themselves; ``None``: not known at that point (a
    method built in Python, or before the data is scanned)."""

    embedding: str | None = None  # model.embedding
    spatial_dims: int | None = None  # 2 (rasters) or 3 (volumes)
    tokens: int | None = None  # tokens per training window (the encoder's grid)
    max_steps: int | None = None
    batch_size: int | None = None  # per device

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> MethodContext:
        nd = spatial_dims(recipe.data)
        window = as_tuple(recipe.data.patch_size, nd, "data.patch_size")
        patch = as_tuple(recipe.model.patch_size, nd, "model.patch_size")
        return cls(recipe.model.embedding, nd, math.prod(w // p for w, p in zip(window, patch)),
                   recipe.train.max_steps, recipe.train.batch_size)

    @classmethod
    def from_encoder(cls, cfg: EncoderConfig, max_steps: int | None = None) -> MethodContext:
        return cls(cfg.embedding, cfg.spatial_dims, cfg.num_patches, max_steps)


@dataclass
class MethodSettings:
    """Base of every method's settings (the ``method:`` section less its ``name``). Subclasses declare fields with
    ``setting`` and override :meth:`check` for rules that span several settings or the rest of the recipe."""

    def check(self, source: str, context: MethodContext) -> None:
        """Raise a one-line ``ConfigError`` (prefixed with ``source``) when the settings cannot work together or
        with ``context``. Types and ranges of single settings are checked before this. Default: nothing."""

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


@dataclass
class MethodOutput:
    """A training step's loss (scalar, with grad) and detached scalars to log."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class SSLMethod(nn.Module):
    """Base of all methods: owns its encoder(s), heads and loss.

    Subclasses set ``name``, ``Settings`` (their :class:`MethodSettings`) and ``view_kind`` ("mae" | "dino") and
    implement ``training_loss``; all randomness of a step comes from the ``generator`` passed in, so a resumed run
    replays exactly.
    """

    name: ClassVar[str] = ""
    view_kind: ClassVar[str] = "mae"
    Settings: ClassVar[type[MethodSettings]] = MethodSettings

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

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Update state after the optimiser step (EMA teachers, centres, schedules). Default: nothing."""

    def export_encoder(self) -> ViTEncoder:
        """The encoder to keep for downstream use."""
        encoder = getattr(self, "encoder", None)
        if not isinstance(encoder, ViTEncoder):
            raise NotImplementedError(f"{type(self).__name__} must implement export_encoder().")
        return encoder

    def no_weight_decay(self) -> set[str]:
        """Full names of the tokens and position embeddings in every submodule that lists them."""
        names: set[str] = set()
        for prefix, module in self.named_modules():
            if module is not self and callable(getattr(module, "no_weight_decay", None)):
                names |= {f"{prefix}.{n}" for n in module.no_weight_decay()}
        return names
