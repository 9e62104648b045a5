"""geomed-ssl: self-supervised ViT pretraining and few-label use for remote-sensing rasters and medical volumes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geomed_ssl._version import __version__

__all__ = ["__version__", "load_encoder", "pretrain", "load_recipe", "export_timm"]

if TYPE_CHECKING:
    from geomed_ssl.checkpoint import load_encoder
    from geomed_ssl.config import load_recipe
    from geomed_ssl.export import export_timm
    from geomed_ssl.train.pretrain import pretrain


def __getattr__(name: str) -> Any:
    # Lazy so that `import geomed_ssl` (and the CLI's --help) does not pay for torch and Lightning.
    if name == "load_encoder":
        from geomed_ssl.checkpoint import load_encoder

        return load_encoder
    if name == "pretrain":
        from geomed_ssl.train.pretrain import pretrain

        return pretrain
    if name == "load_recipe":
        from geomed_ssl.config import load_recipe

        return load_recipe
    if name == "export_timm":
        from geomed_ssl.export import export_timm

        return export_timm
    raise AttributeError(f"module 'geomed_ssl' has no attribute {name!r}")
