"""Typed recipe objects: YAML load, ``section.key=value`` overrides, validation with clear errors.

A recipe has five pretraining sections (``data``, ``model``, ``method``, ``augment``, ``train``) and two for fine-tuning
(``finetune``, ``labels``); every section is optional and missing keys take their defaults. Each key is declared
once, with its type, default, allowed values and meaning (``fields.setting``); a value that does not fit, and an
unknown key, is a one-line error naming the key, the value and what is allowed.

The ``method`` section is a method ``name`` plus that method's own settings, which each method declares and checks
in its own file (``geomed_ssl.methods``); this package does not import the methods.

Where things live: ``fields`` (declaring and checking settings), ``sections`` (the dataclasses, ``Recipe``,
``as_tuple``, ``spatial_dims``, size limits), ``loading`` (dict / YAML / overrides into a ``Recipe``),
``validation`` (types, ranges and cross-field checks). Import them from here.
"""

from geomed_ssl.config.fields import (SettingInfo, Spec, build_checked, check_instance, check_value, check_values,
                                      describe, describe_settings, setting, show, values_of)
from geomed_ssl.config.sections import (
    CHANNEL_EMBEDS,
    CLS_HEADS,
    EMBEDDINGS,
    MAX_CHANNELS,
    MAX_DEPTH,
    MAX_EMBED_DIM,
    MAX_HEADS,
    MAX_MLP_RATIO,
    MAX_PATCH,
    MAX_TOKENS,
    MAX_UNIT_TOKENS,
    POOLS,
    SECTIONS,
    SEG_HEADS,
    TASKS,
    AugmentConfig,
    DataConfig,
    FinetuneConfig,
    IntOrSeq,
    LabelsConfig,
    MethodConfig,
    ModelConfig,
    Recipe,
    TrainConfig,
    as_tuple,
    spatial_dims,
)
from geomed_ssl.config.validation import check_heads, check_whole_tokens, check_window, method_section, validate
from geomed_ssl.config.loading import (apply_overrides, as_recipe, load_recipe, parse_override, recipe_from_dict,
                                       recipe_with_overrides, sets_key)

__all__ = [
    "SECTIONS", "EMBEDDINGS", "CHANNEL_EMBEDS", "TASKS", "SEG_HEADS", "CLS_HEADS", "POOLS", "IntOrSeq",
    "MAX_EMBED_DIM", "MAX_DEPTH", "MAX_HEADS", "MAX_MLP_RATIO", "MAX_CHANNELS", "MAX_PATCH", "MAX_TOKENS",
    "MAX_UNIT_TOKENS", "AugmentConfig", "DataConfig", "ModelConfig", "MethodConfig", "TrainConfig", "FinetuneConfig", "LabelsConfig", "Recipe",
    "as_tuple", "spatial_dims",
    "setting", "Spec", "SettingInfo", "check_value", "check_values", "check_instance", "build_checked", "describe",
    "describe_settings", "show", "values_of",
    "recipe_from_dict", "recipe_with_overrides", "parse_override", "apply_overrides", "load_recipe", "as_recipe",
    "sets_key", "method_section",
    "validate", "check_heads", "check_whole_tokens", "check_window",
]
