"""Export a pretrained encoder for other libraries: ``timm`` (a ``VisionTransformer`` state dict and its arguments).

A ``plain`` 2D encoder is timm's ``VisionTransformer`` with the same parameter names (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``; LayerNorm eps
1e-6, timm's default), so the export is a plain state-dict copy. Our fixed sin-cos ``pos_embed`` (1, 1+N, D) with its
zero CLS row becomes timm's learned ``pos_embed`` of the same shape, which is exact at the training window
(``img_size``); for other sizes timm interpolates it (``dynamic_img_size=True``) where geomed-ssl recomputes the
sin-cos, so features there differ. timm normalises nothing: the band names and the statistics go beside the weights.

The export folder::

    model.safetensors   timm state dict (tensors named as in timm's VisionTransformer)
    config.json         timm's own config (architecture, model_args, pretrained_cfg): timm.create_model("local-dir:DIR")
                        (timm >= 1.0.16)
    geomed_ssl.json     format, the create_model name and arguments, band names, wavelengths, statistics, source
    README.txt          how to load and normalise
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from geomed_ssl.errors import GeomedError
from geomed_ssl.models.encoder import EncoderConfig
from geomed_ssl.process import keeps_process_state

TIMM_FORMAT = "geomed-ssl-timm"
TIMM_FORMAT_VERSION = 1
FORMATS = ("timm",)
TIMM_NORM_EPS = 1e-6  # timm's VisionTransformer LayerNorm eps; not settable from JSON arguments
# timm's standard ViT sizes (embed_dim, depth, num_heads) -> model name; any other size uses vit_base's entry point
# with every architecture argument given (the name only chooses timm's VisionTransformer family).
TIMM_NAMES = {(192, 12, 3): "vit_tiny_patch16_224", (384, 12, 6): "vit_small_patch16_224",
              (768, 12, 12): "vit_base_patch16_224", (1024, 24, 16): "vit_large_patch16_224"}


class ExportError(GeomedError):
    """The encoder cannot be exported in the asked format."""


def check_timm_exportable(cfg: EncoderConfig, source: str) -> None:
    """Raise an ExportError (one line) unless ``cfg`` is an encoder timm's VisionTransformer reproduces."""
    if cfg.spatial_dims != 2:
        raise ExportError(f"'{source}' is a 3D (volume) encoder; timm has no 3D VisionTransformer, so it has no timm "
                          "equivalent. Load it with geomed_ssl.load_encoder instead.")
    if cfg.embedding != "plain":
        raise ExportError(f"'{source}' has a '{cfg.embedding}' patch embedding, which has no timm equivalent (timm's "
                          "ViT has one conv over all bands: model.embedding=plain). Load it with "
                          "geomed_ssl.load_encoder instead.")
    if abs(cfg.norm_eps - TIMM_NORM_EPS) > 1e-12:
        raise ExportError(f"'{source}' uses LayerNorm eps {cfg.norm_eps}; timm's VisionTransformer uses "
                          f"{TIMM_NORM_EPS}, so it has no exact timm equivalent.")


def _side(values: tuple[int, ...]) -> int | list[int]:
    return values[0] if len(set(values)) == 1 else list(values)


def timm_model_args(cfg: EncoderConfig) -> tuple[str, dict[str, Any]]:
    """The ``timm.create_model(name, pretrained=False, **kwargs)`` name and kwargs of a plain 2D encoder: a
    feature extractor (``num_classes=0``) whose ``forward_features`` are our ``enc(x)`` tokens and whose pooled
    output (``global_pool="token"``) is the normed CLS token."""
    name = TIMM_NAMES.get((cfg.embed_dim, cfg.depth, cfg.num_heads), "vit_base_patch16_224")
    return name, {
        "in_chans": cfg.in_chans, "img_size": _side(cfg.img_size), "patch_size": _side(cfg.patch_size),
        "embed_dim": cfg.embed_dim, "depth": cfg.depth, "num_heads": cfg.num_heads, "mlp_ratio": cfg.mlp_ratio,
        "qkv_bias": cfg.qkv_bias, "class_token": True, "no_embed_class": False, "global_pool": "token",
        "num_classes": 0,
    }


def timm_hub_config(cfg: EncoderConfig) -> dict[str, Any]:
    """timm's ``config.json`` for a local folder (``timm.create_model("local-dir:DIR", pretrained=True)``).

    Its mean/std are the identity: inputs must already be normalised by geomed-ssl's rule (see README.txt)."""
    name, kwargs = timm_model_args(cfg)
    c = cfg.in_chans
    return {
        "architecture": name, "num_classes": 0, "num_features": cfg.embed_dim, "global_pool": "token",
        "model_args": kwargs,
        "pretrained_cfg": {"input_size": [c, *cfg.img_size], "fixed_input_size": True, "interpolation": "bicubic",
                           "crop_pct": 1.0, "crop_mode": "center", "mean": [0.0] * c, "std": [1.0] * c,
                           "num_classes": 0, "first_conv": "patch_embed.proj", "classifier": "head"},
    }


def readme_text(cfg: EncoderConfig, name: str, kwargs: dict[str, Any]) -> str:
    """How to load the export with timm and feed it correctly normalised input."""
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    bands = " ".join(cfg.band_names) or f"{cfg.in_chans} unnamed bands"
    return f"""A geomed-ssl encoder exported for timm (format {TIMM_FORMAT} v{TIMM_FORMAT_VERSION}).

Load (timm >= 1.0; with timm >= 1.0.16 the folder also loads with
timm.create_model("local-dir:THIS_FOLDER", pretrained=True)):

    import json, timm
    from safetensors.torch import load_file
    meta = json.load(open("geomed_ssl.json"))
    model = timm.create_model(meta["timm"]["model_name"], pretrained=False, **meta["timm"]["model_args"])
    model.load_state_dict(load_file("model.safetensors"))
    model.eval()
    tokens = model.forward_features(x)   # (B, 1+N, {cfg.embed_dim}): CLS first, as geomed-ssl's enc(x)
    cls = model(x)                       # (B, {cfg.embed_dim}): the normed CLS token

that is timm.create_model("{name}", pretrained=False, {args}).

Input: x is float32 (B, {cfg.in_chans}, {cfg.img_size[0]}, {cfg.img_size[1]}) with the bands in this order:
    {bands}
The features match geomed-ssl's exactly at this window size. timm refuses other sizes unless the model is created
with dynamic_img_size=True, which interpolates the position embedding where geomed-ssl recomputes its sin-cos
positions, so features at other sizes differ.

timm normalises nothing. Normalise each band as training did, with geomed_ssl.json's "stats" (per band mean, std,
p1, p99): clip to [p1, p99], subtract mean, divide by std, set to 0 each band's values equal to nodata, and set to 0
in every band the pixels that are NaN in any band or equal to nodata in every band. With geomed-ssl installed, geomed_ssl.load_encoder(ORIGINAL_RUN).preprocess(
array, nodata=...) does exactly this.
"""


@keeps_process_state
def export_timm(source: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a timm export of the encoder at ``source`` (RUN_DIR, RUN_DIR/encoder or a fine-tune folder) to
    ``out_dir``; returns ``out_dir``. Only ``plain`` 2D encoders have a timm equivalent (else an ExportError)."""
    from geomed_ssl.checkpoint import find_encoder_dir, load_encoder, read_encoder_config, versions
    from geomed_ssl.outdirs import check_out_dir, entry_names, read_manifest, write_manifest
    from geomed_ssl.outfiles import atomic_write_dir, remove_stale_partials

    folder = find_encoder_dir(source)
    cfg, enc_meta = read_encoder_config(folder)
    check_timm_exportable(cfg, str(source))
    out = Path(out_dir)
    remove_stale_partials(out.parent, only=out.name)  # a killed swap's folder back first: the checks judge it
    check_out_dir(out, command="export", inputs={"encoder": folder}, overwrite=overwrite)
    encoder = load_encoder(folder)
    name, kwargs = timm_model_args(cfg)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    meta = {
        "format": TIMM_FORMAT, "format_version": TIMM_FORMAT_VERSION, "source": str(folder.resolve()),
        "step": enc_meta.get("step"),
        "timm": {"model_name": name, "model_args": kwargs},
        "band_names": list(cfg.band_names), "wavelengths": cfg.wavelengths, "stats": cfg.stats,
        "normalization": "per band: clip to [p1, p99], subtract mean, divide by std; values equal to nodata -> 0; "
                         "then pixels NaN in any band or equal to nodata in every band -> 0 in every band",
        "encoder": cfg.to_dict(), "versions": versions(),
    }

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(timm_hub_config(cfg), indent=2))
        (tmp / "geomed_ssl.json").write_text(json.dumps(meta, indent=2))
        (tmp / "README.txt").write_text(readme_text(cfg, name, kwargs))
        write_manifest(tmp, "export")

    recorded = entry_names(read_manifest(out))  # what attention wrote into it: --overwrite deletes it too
    atomic_write_dir(out, write, recorded)  # swapped in complete (check_out_dir allowed replacing it)
    warn_unfinished(enc_meta, folder)
    return out


def warn_unfinished(meta: dict, folder: Path) -> None:
    """A warning when the export was taken from a pretraining run stopped before its last step (its periodic
    export: fine for a look, but not the encoder the recipe trains)."""
    import logging

    step = meta.get("step")
    total = (((meta.get("recipe") or {}).get("train") or {}).get("max_steps"))
    if isinstance(step, int) and isinstance(total, int) and step < total:
        logging.getLogger("geomed_ssl").warning(
            "warning: '%s' is the export of step %d of %d: the run stopped before its end (resume it with "
            "`geomed-ssl pretrain ... --resume` for the encoder the recipe trains); geomed_ssl.json records the step.",
            folder, step, total)


def export(source: str | Path, out_dir: str | Path, fmt: str = "timm", overwrite: bool = False) -> Path:
    """Export the encoder at ``source`` in format ``fmt`` (one of ``FORMATS``) to ``out_dir``."""
    if fmt != "timm":
        raise ExportError(f"--format '{fmt}' is unknown; available: {', '.join(FORMATS)}.")
    return export_timm(source, out_dir, overwrite=overwrite)
