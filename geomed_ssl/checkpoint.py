"""Save and load self-describing encoders: ``model.safetensors`` + ``config.json``; nothing is unpickled."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file

from geomed_ssl.data.stats import check_bands
from geomed_ssl.errors import GeomedError
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

FORMAT = "geomed-ssl-encoder"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """Library versions recorded in every export."""
    import timm

    from geomed_ssl import __version__

    return {"geomed_ssl": __version__, "torch": torch.__version__, "timm": timm.__version__}


def atomic_write_dir(target: Path, write: Any) -> None:
    """Call ``write(tmp_dir)`` then swap ``tmp_dir`` into ``target``, so a kill never leaves a half-written export."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_encoder(encoder: ViTEncoder, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.json`` (architecture, bands, wavelengths, stats)."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "encoder": encoder.config.to_dict(),
            "versions": versions(), **(extra or {})}
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))

    atomic_write_dir(Path(out_dir), write)
    return Path(out_dir)


def find_encoder_dir(path: str | Path) -> Path:
    """Resolve a RUN_DIR, RUN_DIR/encoder or a fine-tune dir to the folder holding the encoder export."""
    path = Path(path)
    for candidate in (path, path / "encoder", path / "model" / "encoder"):
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    raise GeomedError(
        f"no encoder found at '{path}': expected a run folder with encoder/config.json and "
        "encoder/model.safetensors (written by `geomed-ssl pretrain`), or that encoder folder itself."
    )


def read_encoder_config(path: str | Path) -> tuple[EncoderConfig, dict[str, Any]]:
    """The encoder config and the whole ``config.json`` of an export, without loading weights."""
    folder = find_encoder_dir(path)
    try:
        meta = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise GeomedError(f"{folder / 'config.json'} is not valid JSON ({err}); re-export the encoder.") from None
    if meta.get("format") != FORMAT:
        raise GeomedError(f"{folder / 'config.json'} is not a geomed-ssl encoder export (format={meta.get('format')!r}).")
    return EncoderConfig.from_dict(meta["encoder"]), meta


def load_encoder(path: str | Path, bands: Sequence[str] | None = None,
                 map_location: str | torch.device = "cpu") -> ViTEncoder:
    """Load an encoder export (RUN_DIR, RUN_DIR/encoder, or a fine-tune dir) as an ``nn.Module`` in eval mode.

    ``enc.config`` holds band names, wavelengths, normalisation statistics and patch size. With ``bands`` (the band
    names of the data it will meet), a mismatch is refused with a message naming the missing and extra bands.
    """
    cfg, _ = read_encoder_config(path)
    if bands is not None:
        check_bands(cfg.band_names, list(bands), f"data for encoder {path}")
    folder = find_encoder_dir(path)
    encoder = ViTEncoder(cfg)
    state = load_file(str(folder / "model.safetensors"), device=str(map_location))
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise GeomedError(
            f"{folder / 'model.safetensors'} does not match its config.json (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); the export is damaged or from another version."
        )
    return encoder.eval()
