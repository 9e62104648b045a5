"""The registry of self-supervised methods by name, and the recipe's ``method:`` section resolved into the named
method's typed, checked settings.

``resolve_method_settings(recipe)`` is what every command that pretrains calls before it creates anything: the
config package below cannot check a method's settings, since each method declares them in its own file.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from geomed_ssl.config import MethodConfig, Recipe, describe_settings
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodContext, MethodSettings, SSLMethod
from geomed_ssl.models.encoder import EncoderConfig

log = logging.getLogger("geomed_ssl")
METHODS: dict[str, type[SSLMethod]] = {}


def register_method(cls: type[SSLMethod]) -> type[SSLMethod]:
    """Class decorator: add a method to ``METHODS`` under its ``name``. Its ``Settings`` must be a
    :class:`MethodSettings` dataclass (the keys its recipe section accepts besides ``name``)."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a name to be registered")
    settings = cls.Settings
    if not (isinstance(settings, type) and issubclass(settings, MethodSettings)
            and dataclasses.is_dataclass(settings)):
        raise TypeError(f"{cls.__name__}.Settings must be a MethodSettings dataclass")
    if "name" in {f.name for f in dataclasses.fields(settings)}:
        raise TypeError(f"{settings.__name__} must not declare 'name' (the method's name is the registry key)")
    other = METHODS.get(cls.name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise TypeError(f"method name '{cls.name}' is taken by {other.__module__}.{other.__qualname__}")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str, source: str = "recipe", what: str = "method.name") -> type[SSLMethod]:
    """The registered method called ``name``, or a ConfigError listing the available ones (``what``: how the
    message names the value)."""
    cls = METHODS.get(name)
    if cls is None:
        raise ConfigError(f"{source}: {what} '{name}' is unknown; available: {', '.join(sorted(METHODS))}.")
    return cls


def method_settings(section: MethodConfig, source: str = "recipe",
                    context: MethodContext | None = None, *, saved: bool = False) -> MethodSettings:
    """The ``method:`` section as its method's typed settings, checked. ``saved``: the section comes from a run's
    config.yaml written by an earlier version, which listed every method's settings; those of other methods are
    left out instead of refused."""
    cls = method_class(section.name, source)
    values = dict(section.settings)
    if saved:
        own = {f.name for f in dataclasses.fields(cls.Settings)}
        others = {f.name for m in METHODS.values() for f in dataclasses.fields(m.Settings)} - own
        values = {k: v for k, v in values.items() if k not in others}
    return cls.Settings.from_section(values, source, context, owner=f"for method '{section.name}'")


def resolve_method_settings(recipe: Recipe, source: str = "recipe", *, saved: bool = False,
                            samples: int | None = None) -> MethodSettings:
    """The recipe's method settings, checked by the named method (unknown keys, types, ranges, and rules across
    settings and the recipe's data / model / train sections; with ``samples``, the distinct windows of the scanned
    data, also the sizes the data must support)."""
    return method_settings(recipe.method, source, MethodContext.from_recipe(recipe, samples), saved=saved)


def with_method_settings(recipe: Recipe, source: str = "recipe", *, saved: bool = False,
                         samples: int | None = None, world: int = 1) -> Recipe:
    """A copy of ``recipe`` whose ``method:`` section lists every setting of its method (defaults filled in, as
    a run's config.yaml records them), after :func:`resolve_method_settings`. With ``samples`` (the data is
    scanned), ``auto`` sizes are replaced by the values the data supports for a step of ``world`` processes, each
    logged in one line."""
    settings = resolve_method_settings(recipe, source, saved=saved, samples=samples)
    if samples is not None:
        for note in settings.resolve_auto(MethodContext.from_recipe(recipe, samples, world)):
            log.info(note)
    return dataclasses.replace(recipe, method=settings.to_section(recipe.method.name))


def build_method(method: MethodConfig | MethodSettings, encoder_cfg: EncoderConfig, max_steps: int) -> SSLMethod:
    """Instantiate a method from a ``method:`` section (by its name) or from a method's own settings object."""
    if isinstance(method, MethodConfig):
        built = method_class(method.name, "method")(encoder_cfg, method, max_steps)
    else:
        cls = next((c for c in METHODS.values() if type(method) is c.Settings), None)
        if cls is None:
            raise ConfigError(f"no registered method takes {type(method).__name__}; available: "
                              f"{', '.join(sorted(METHODS))}.")
        built = cls(encoder_cfg, method, max_steps)
    built.check_contract()
    return built


def describe_methods() -> dict[str, Any]:
    """Every registered method by name: its settings (key, allowed values, default, meaning), the views it needs
    (``views``: the ViewSpec, ``views_text``: in words) and its card (what it learns, cost, failure modes,
    recipes, 2D/3D)."""
    return {name: {"views": cls.views, "views_text": cls.views.describe(), "card": cls.card,
                   "settings": list(describe_settings(cls.Settings))}
            for name, cls in sorted(METHODS.items())}
