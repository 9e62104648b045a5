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

from geomed_ssl.errors import GeomedError
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder, check_encoder_bands
from geomed_ssl.permissions import apply_umask

FORMAT = "geomed-ssl-encoder"
MODEL_FORMAT = "geomed-ssl-model"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """Library versions recorded in every export."""
    import timm

    from geomed_ssl import __version__

    return {"geomed_ssl": __version__, "torch": torch.__version__, "timm": timm.__version__}


def atomic_write_dir(target: Path, write: Any) -> None:
    """Call ``write(tmp_dir)`` then swap ``tmp_dir`` into ``target``, so a kill never leaves a half-written export.

    The result has the modes the user's umask gives new files and folders (not mkdtemp's private 0700/0600)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        apply_umask(tmp)
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
    """Resolve a RUN_DIR, RUN_DIR/encoder, a fine-tune dir or its model/ to the folder holding an export."""
    path = Path(path)
    for candidate in (path, path / "encoder", path / "model"):
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    raise GeomedError(
        f"no encoder found at '{path}': expected a run folder with encoder/config.json and "
        "encoder/model.safetensors (written by `geomed-ssl pretrain`), a fine-tune folder (model/), or that "
        "folder itself."
    )


def read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise GeomedError(f"{folder / 'config.json'} is not valid JSON ({err}); re-export the model.") from None
    if meta.get("format") not in (FORMAT, MODEL_FORMAT):
        raise GeomedError(f"{folder / 'config.json'} is not a geomed-ssl export (format={meta.get('format')!r}).")
    return meta


def read_encoder_config(path: str | Path) -> tuple[EncoderConfig, dict[str, Any]]:
    """The encoder config and the whole ``config.json`` of an export (encoder or fine-tuned model), no weights."""
    meta = read_meta(find_encoder_dir(path))
    return EncoderConfig.from_dict(meta["encoder"]), meta


def load_encoder(path: str | Path, bands: Sequence[str] | None = None,
                 map_location: str | torch.device = "cpu",
                 wavelengths: Sequence[float | None] | None = None,
                 bandwidths: Sequence[float | None] | None = None) -> ViTEncoder:
    """Load an encoder export (RUN_DIR, RUN_DIR/encoder, or a fine-tune dir) as an ``nn.Module`` in eval mode.

    ``enc.config`` holds band names, wavelengths, normalisation statistics and patch size;
    ``enc.preprocess(array, nodata=...)`` normalises raw file values with them, as training did. ``bands`` (with their
    centre ``wavelengths`` in µm, when known) are the bands of the data it will meet. A ``plain`` or ``grouped``
    encoder refuses other bands with a message naming the missing and extra ones. A ``spectral`` or
    ``wavelength`` encoder runs on them (with their widths, ``bandwidths``, when known): each is matched to an
    encoder band by name or wavelength (the mapping is
    logged) and the returned encoder is the one for those bands (``ViTEncoder.select_bands``), its
    ``config.stats`` the matched bands' statistics under the data's band names.
    """
    cfg, _ = read_encoder_config(path)
    if bands is not None:
        check_encoder_bands(cfg, list(bands), f"data for encoder {path}")
    folder = find_encoder_dir(path)
    encoder = ViTEncoder(cfg)
    state = load_file(str(folder / "model.safetensors"), device=str(map_location))
    if read_meta(folder)["format"] == MODEL_FORMAT:  # a fine-tuned model: its encoder weights are prefixed
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise GeomedError(
            f"{folder / 'model.safetensors'} does not match its config.json (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); the export is damaged or from another version."
        )
    encoder.data_settings = data_settings(read_meta(folder))
    if bands is not None:
        encoder = encoder.select_bands([str(b) for b in bands], None if wavelengths is None else list(wavelengths),
                                       None if bandwidths is None else list(bandwidths))
    return encoder.eval()


def data_settings(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The data settings ``ViTEncoder.preprocess`` follows (nodata; volumes: intensity, ct_window), from an
    export's config.json: a fine-tuned model's ``data``, a pretrained encoder's ``recipe.data``."""
    data = meta.get("data") or (meta.get("recipe") or {}).get("data")
    if not isinstance(data, dict):
        return None
    return {k: data[k] for k in ("nodata", "intensity", "ct_window") if k in data}


def save_model(model: torch.nn.Module, out_dir: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """A fine-tuned model: ``model.safetensors`` (encoder + head) and ``config.json`` (``meta`` plus the encoder
    config and versions), written atomically. Returns the full config.json content."""
    full = {"format": MODEL_FORMAT, "format_version": FORMAT_VERSION, "encoder": model.encoder.config.to_dict(),
            "versions": versions(), **meta}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(full, indent=2))

    atomic_write_dir(Path(out_dir), write)
    return full


def build_model(meta: dict[str, Any]) -> torch.nn.Module:
    """An untrained model of the architecture ``meta`` (a fine-tuned model's config.json) describes."""
    from geomed_ssl.models.cls_heads import ClassificationModel
    from geomed_ssl.models.seg_decoder import SegmentationModel

    encoder = ViTEncoder(EncoderConfig.from_dict(meta["encoder"]))
    head = meta["head"]
    num_classes = len(meta["classes"])
    if meta["task"] == "segment":
        return SegmentationModel(encoder, num_classes, head["layers"], feature_size=head["feature_size"],
                                 head=head.get("kind", "unetr"))
    return ClassificationModel(encoder, num_classes, head=head["kind"], pool=head["pool"])


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a fine-tuned model (FT_DIR or FT_DIR/model) and its config.json, in eval mode."""
    folder = find_encoder_dir(path)
    meta = read_meta(folder)
    if meta["format"] != MODEL_FORMAT:
        raise GeomedError(f"'{path}' holds a pretrained encoder, not a fine-tuned model; run `geomed-ssl finetune` "
                          "first and pass its output folder.")
    model = build_model(meta)
    model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(map_location)))
    return model.eval(), meta
