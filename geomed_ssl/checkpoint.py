"""Save and load self-describing encoders: ``model.safetensors`` + ``config.json``; nothing is unpickled."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from geomed_ssl.config import MAX_TOKENS, TASKS, Spec, check_value, show
from geomed_ssl.config.fields import parse_bounds
from geomed_ssl.errors import ConfigError, GeomedError
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder, check_encoder_bands
from geomed_ssl.models.model_data import export_data
from geomed_ssl.outfiles import atomic_write_dir

FORMAT = "geomed-ssl-encoder"
MODEL_FORMAT = "geomed-ssl-model"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """Library versions recorded in every export."""
    import timm

    from geomed_ssl._version import __version__

    return {"geomed_ssl": __version__, "torch": torch.__version__, "timm": timm.__version__}


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
    if (path / "labels_used.npz").is_file() and (path / "config.yaml").is_file():  # a fine-tune that saved no model
        raise GeomedError(f"'{path}' is a fine-tune folder without a model: the fine-tune stopped (or failed) before "
                          "saving it; run its finetune command again with --overwrite.")
    raise GeomedError(
        f"no encoder found at '{path}': expected a run folder with encoder/config.json and "
        "encoder/model.safetensors (written by `geomed-ssl pretrain`), a fine-tune folder (model/), or that "
        "folder itself."
    )


def fine_tune_of(path: str | Path | None) -> Path | None:
    """The fine-tune folder (FT_DIR: its ``labels_used.npz`` says what trained it) when ``path`` names one or its
    ``model/`` as an encoder, else None (a RUN_DIR, an encoder export, ``none``)."""
    if path is None or str(path).lower() == "none":
        return None
    try:
        folder = find_encoder_dir(path)
    except GeomedError:
        return None
    return folder.parent if folder.name == "model" and (folder.parent / "labels_used.npz").is_file() else None


def export_digest(path: str | Path) -> str:
    """SHA-256 of an export's config.json and model.safetensors (a RUN_DIR, FT_DIR or the export folder): the same
    for a copy anywhere, another for a re-export or other weights."""
    folder = find_encoder_dir(path)
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        with open(folder / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def export_fingerprint(path: str | Path) -> str:
    """Hash of an export's config.json plus its weights' size and modification time (cheap, unlike
    :func:`export_digest`): a re-export, or other weights, is another one; a copy may be too."""
    folder = find_encoder_dir(path)
    st = (folder / "model.safetensors").stat()
    text = (folder / "config.json").read_bytes() + f"{st.st_size}:{st.st_mtime_ns}".encode()
    return hashlib.sha1(text).hexdigest()[:16]


def read_meta(folder: Path) -> dict[str, Any]:
    """The export's config.json, checked to be a geomed-ssl export with an ``encoder`` mapping."""
    path = folder / "config.json"
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GeomedError(f"{path} is not valid JSON ({err}); re-export the model.") from None
    except RecursionError:  # nested beyond what a config holds: damaged or crafted
        raise GeomedError(f"{path} is nested too deeply to be a geomed-ssl export; re-export the model.") from None
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, MODEL_FORMAT):
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise GeomedError(f"{path} is not a geomed-ssl export (format={fmt!r}).")
    if not isinstance(meta.get("encoder"), dict):
        raise GeomedError(f"{path} has no 'encoder' mapping (the architecture); the export is damaged, re-export it.")
    return meta


def read_encoder_config(path: str | Path) -> tuple[EncoderConfig, dict[str, Any]]:
    """The encoder config and the whole ``config.json`` of an export (encoder or fine-tuned model), no weights.
    The config is checked (types, size limits, consistency) before anything is built from it."""
    folder = find_encoder_dir(path)
    meta = read_meta(folder)
    return EncoderConfig.from_dict(meta["encoder"], str(folder / "config.json")), meta


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of a safetensors file, read from its header (no tensor is loaded)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise GeomedError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0]}); re-export the "
                          "model (pickled checkpoints are never loaded).") from None


def expected_shapes(build: Callable[[], torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the state dict of the module ``build()`` makes, built on the meta device (nothing is
    allocated, however large the config)."""
    with torch.device("meta"):
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_tensor_shapes(path: Path, expected: dict[str, tuple[int, ...]],
                        found: dict[str, tuple[int, ...]]) -> None:
    """A GeomedError naming the first missing, unexpected or misshapen tensor of ``path`` against its config."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        raise GeomedError(f"{path} does not match its config.json (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}); the export is damaged or from another version.")
    wrong = [k for k in expected if found[k] != expected[k]]
    if wrong:
        k = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise GeomedError(f"{path} does not match its config.json: tensor '{k}' has shape {list(found[k])}, the "
                          f"config describes {list(expected[k])}{more}; the two files are not from one export.")


def load_tensors(path: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, refused (a GeomedError naming the file and the first bad tensor) when one
    holds NaN or infinite values: such weights turn every output into NaN, and each command would fail later and
    more obscurely (NaN embeddings, one predicted class, a fine-tune that diverges at once)."""
    from geomed_ssl.models.device import resolve_device

    device = resolve_device(map_location)  # a device torch does not know is named as such, not as a damaged file
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise GeomedError(f"{path} could not be read ({str(err).splitlines()[0]}); the export is damaged, "
                          "re-export it.") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise GeomedError(f"{path}: tensor '{name}' holds {bad} NaN or infinite value(s) of {tensor.numel()}; "
                              "these weights are unusable (the run that wrote them diverged, or the file was "
                              "altered). Use the export of a run that finished with a finite loss.")
    return state


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

    config.json is checked and the tensor shapes in model.safetensors are compared with it before the encoder is
    built; any mismatch is a GeomedError naming the file.
    """
    cfg, meta = read_encoder_config(path)
    if bands is not None:
        from geomed_ssl.config.loading import string_list

        check_encoder_bands(cfg, string_list(bands, "bands", "band names"), f"data for encoder {path}")
    folder = find_encoder_dir(path)
    weights = folder / "model.safetensors"
    found = tensor_shapes(weights)
    prefix = "encoder." if meta["format"] == MODEL_FORMAT else ""  # a fine-tuned model: encoder weights prefixed
    found = {k[len(prefix):]: v for k, v in found.items() if k.startswith(prefix)}
    check_tensor_shapes(weights, expected_shapes(lambda: ViTEncoder(cfg)), found)
    state = load_tensors(weights, map_location)
    with torch.random.fork_rng(devices=[]):  # the random init the weights replace leaves the caller's stream alone
        encoder = ViTEncoder(cfg)
    encoder.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    encoder.data_settings = data_settings(meta)
    if bands is not None:
        encoder = encoder.select_bands([str(b) for b in bands], None if wavelengths is None else list(wavelengths),
                                       None if bandwidths is None else list(bandwidths))
    return encoder.eval()


def data_settings(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The data settings ``ViTEncoder.preprocess`` follows (nodata; volumes: intensity, ct_window), from an
    export's config.json: a fine-tuned model's ``data``, a pretrained encoder's ``recipe.data``."""
    data = export_data(meta)
    if not data:
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


# A fine-tuned model's head, as config.json records it (checked before anything is built).
_MAX_CLASSES = 65536
_MAX_FEATURE_SIZE = 1024  # UNETR decoder width (finetune.feature_size)
_MAX_WINDOW = 65536  # pixels / voxels a side of the window a model predicts with


def check_model_meta(meta: dict[str, Any], source: str) -> None:
    """A fine-tuned model's ``task``, ``classes`` (their label values), ``window`` and ``head`` in config.json: types
    and bounds, one line each, before anything is built or allocated."""
    check_value(meta.get("task"), str, Spec(choices=TASKS), "task", source)
    classes = meta.get("classes")
    if not isinstance(classes, list) or not 1 <= len(classes) <= _MAX_CLASSES:
        raise GeomedError(f"{source}: 'classes' must be a list of 1 to {_MAX_CLASSES} classes, got "
                          f"{show(classes)}.")
    for i, c in enumerate(classes):  # the label values a class map stores (uint16, 65535 its nodata)
        if not isinstance(c, dict):
            raise GeomedError(f"{source}: classes[{i}] must be a mapping of value and name, got {show(c)}.")
        check_value(c.get("value"), int, Spec(bounds=parse_bounds("[0, 65534]")), f"classes[{i}].value", source)
        check_value(c.get("name", ""), str, Spec(), f"classes[{i}].name", source)
        if c.get("color") is not None and len(check_value(c["color"], list[int], Spec(bounds=parse_bounds("[0, 255]")),
                                                          f"classes[{i}].color", source)) != 3:
            raise GeomedError(f"{source}: classes[{i}].color must be [red, green, blue], got {show(c['color'])}.")
    encoder = meta.get("encoder") if isinstance(meta.get("encoder"), dict) else {}
    nd = int(encoder.get("spatial_dims", 2)) if isinstance(encoder.get("spatial_dims", 2), int) else 2
    window = check_value(meta.get("window"), list[int], Spec(bounds=parse_bounds(f"[1, {_MAX_WINDOW}]")), "window",
                         source)
    if len(window) != nd:
        raise GeomedError(f"{source}: 'window' must give {nd} sizes (the encoder is {nd}D), got {show(window)}.")
    patch = encoder.get("patch_size") if isinstance(encoder.get("patch_size"), list) else [1] * nd
    tokens = 1
    for w, p in zip(window, patch):
        tokens *= -(-w // max(int(p), 1)) if isinstance(p, int) else w
    if tokens > MAX_TOKENS:
        raise GeomedError(f"{source}: 'window' {window} holds {tokens} tokens of {patch} px, more than {MAX_TOKENS}; "
                          "the model's config.json is damaged or not a geomed-ssl model's.")
    head = meta.get("head")
    if not isinstance(head, dict):
        raise GeomedError(f"{source}: 'head' must be a mapping (the head's kind and size), got {show(head)}.")
    check_value(head.get("kind", "unetr"), str, Spec(), "head.kind", source)
    if meta["task"] == "segment":
        check_value(head.get("layers"), list[int], Spec(bounds=parse_bounds(">= 0")), "head.layers", source)
        check_value(head.get("feature_size"), int, Spec(bounds=parse_bounds(f"[1, {_MAX_FEATURE_SIZE}]")),
                    "head.feature_size", source)
        if head.get("kind") == "probe":
            from geomed_ssl.models.probe import PROBES

            check_value(head.get("probe"), str, Spec(choices=PROBES), "head.probe", source)
            check_value(head.get("memory", 0), int, Spec(bounds=parse_bounds(">= 0")), "head.memory", source)
    else:
        check_value(head.get("pool"), str, Spec(), "head.pool", source)


def build_model(meta: dict[str, Any], source: str = "model config") -> torch.nn.Module:
    """An untrained model of the architecture ``meta`` (a fine-tuned model's config.json) describes, after
    checking it (``source`` names the file in errors)."""
    from geomed_ssl.models.cls_heads import ClassificationModel
    from geomed_ssl.models.seg_decoder import SegmentationModel

    check_model_meta(meta, source)
    encoder_cfg = EncoderConfig.from_dict(meta["encoder"], source)
    head = meta["head"]
    num_classes = len(meta["classes"])
    try:
        encoder = ViTEncoder(encoder_cfg)
        if meta["task"] == "segment":
            return SegmentationModel(encoder, num_classes, head["layers"], feature_size=head["feature_size"],
                                     head=head.get("kind", "unetr"), probe=str(head.get("probe", "linear")),
                                     memory=int(head.get("memory", 0)))
        return ClassificationModel(encoder, num_classes, head=head["kind"], pool=head["pool"])
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a fine-tuned model (FT_DIR or FT_DIR/model) and its config.json, in eval mode. The config and the
    tensor shapes are checked before the model is built."""
    folder = find_encoder_dir(path)
    meta = read_meta(folder)
    if meta["format"] != MODEL_FORMAT:
        raise GeomedError(f"'{path}' holds a pretrained encoder, not a fine-tuned model; run `geomed-ssl finetune` "
                          "first and pass its output folder.")
    source = str(folder / "config.json")
    weights = folder / "model.safetensors"
    check_model_meta(meta, source)
    EncoderConfig.from_dict(meta["encoder"], source)
    check_tensor_shapes(weights, expected_shapes(lambda: build_model(meta, source)), tensor_shapes(weights))
    state = load_tensors(weights, map_location)
    with torch.random.fork_rng(devices=[]):  # the random init the weights replace leaves the caller's stream alone
        model = build_model(meta, source)
    model.load_state_dict(state)
    return model.eval(), meta
