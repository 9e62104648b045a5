"""Typed recipe objects: YAML load, ``section.key=value`` overrides, validation with clear errors.

A recipe has four pretraining sections (``data``, ``model``, ``method``, ``train``) and two for fine-tuning
(``finetune``, ``labels``); every section is optional and missing keys take their defaults. Each is a dataclass;
unknown keys are errors that name the key and the valid ones.

Where things live: ``sections`` (the dataclasses, ``Recipe``, ``as_tuple``, ``spatial_dims``), ``loading`` (dict /
YAML / overrides into a ``Recipe``), ``validation`` (cross-field checks). Import them from here.
"""

from geomed_ssl.config.sections import (
    SECTIONS,
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
from geomed_ssl.config.validation import CENTERINGS, EMBEDDINGS, validate
from geomed_ssl.config.loading import apply_overrides, load_recipe, parse_override, recipe_from_dict

__all__ = [
    "SECTIONS", "CENTERINGS", "EMBEDDINGS", "IntOrSeq",
    "DataConfig", "ModelConfig", "MethodConfig", "TrainConfig", "FinetuneConfig", "LabelsConfig", "Recipe",
    "as_tuple", "spatial_dims",
    "recipe_from_dict", "parse_override", "apply_overrides", "load_recipe",
    "validate",
]
