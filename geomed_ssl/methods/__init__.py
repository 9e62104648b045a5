"""Self-supervised methods and their registry: adding a method is one file plus one line in ``METHODS``."""

from __future__ import annotations

from geomed_ssl.config import MethodConfig
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodOutput, SSLMethod
from geomed_ssl.methods.dino import DINO
from geomed_ssl.methods.mae import MAE
from geomed_ssl.models.encoder import EncoderConfig

METHODS: dict[str, type[SSLMethod]] = {
    "mae": MAE,
    "dino": DINO,
}


def build_method(method_cfg: MethodConfig, encoder_cfg: EncoderConfig, max_steps: int) -> SSLMethod:
    """Instantiate the method named by ``method_cfg.name``."""
    cls = METHODS.get(method_cfg.name)
    if cls is None:
        raise ConfigError(f"method.name '{method_cfg.name}' is unknown; available: {', '.join(sorted(METHODS))}.")
    return cls(encoder_cfg, method_cfg, max_steps)


__all__ = ["METHODS", "MethodOutput", "SSLMethod", "MAE", "DINO", "build_method"]
