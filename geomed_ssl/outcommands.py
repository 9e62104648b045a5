"""What each command writes in its output folder, and how to recognise a folder an earlier version made.

:data:`COMMANDS` holds, for every command that writes an output folder, the top-level names and per-input patterns
it writes there, the flags its CLI offers to use an existing folder, what it writes inside its subfolders and a test
that recognises its folders from before manifests existed (``CommandSpec.legacy``). The rule that uses them (who
made a folder, what ``--overwrite`` may delete): :mod:`geomed_ssl.outdirs`. Add a new command here.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


def name_hash(text: str) -> str:
    """6 hex digits of ``text``'s SHA-1 (a path): added to an output's name where two inputs would give one name."""
    return hashlib.sha1(text.encode()).hexdigest()[:6]


# a file name may hold 255 bytes; an output named after its input keeps room for a temporary prefix
# (outfiles: ".partial-<pid>.<host>-") and the longest suffix added to it ("_pred_proba.nii.gz")
MAX_STEM_BYTES = 180


def fitted_stem(stem: str, identity: str) -> str:
    """``stem`` (an output named after an input) as it is when short enough, else cut to ``MAX_STEM_BYTES`` (whole
    characters) and followed by ``-`` and :func:`name_hash` of ``identity`` (its path), so a long input name never
    makes an output name the filesystem refuses."""
    raw = stem.encode()
    if len(raw) <= MAX_STEM_BYTES:
        return stem
    return f"{raw[:MAX_STEM_BYTES - 7].decode(errors='ignore')}-{name_hash(identity)}"


def distinct_names(items: Sequence[tuple[str, str]], taken: Sequence[str] = ()) -> list[str]:
    """Output names for ``(name, identity)`` pairs, in order: each name, followed by ``-`` and :func:`name_hash` of
    its identity (a path) where another pair's name or one of ``taken`` is the same name ignoring case (on a
    case-insensitive filesystem they would be one file)."""
    counts = Counter(name.lower() for name, _ in items)
    reserved = {t.lower() for t in taken}
    return [name if counts[name.lower()] == 1 and name.lower() not in reserved else f"{name}-{name_hash(identity)}"
            for name, identity in items]


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # nested beyond any manifest: damaged
        return None
    return data if isinstance(data, dict) else None


RUN_SECTIONS = ("data", "model", "method", "train")  # what every version's config.yaml holds (Recipe.save)


def _our_recipe(path: Path) -> bool:
    """``path`` is a recipe as geomed-ssl saves it: a mapping holding at least our four core sections, each a
    mapping, and no top-level key that is not a section of ours (another tool's config.yaml has ``trainer``,
    ``seed_everything``, ...)."""
    import yaml

    from geomed_ssl.config import SECTIONS

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return (isinstance(raw, dict) and set(RUN_SECTIONS) <= set(raw) and set(raw) <= set(SECTIONS)
            and all(isinstance(v, dict) for v in raw.values()))


def _our_checkpoint(folder: Path) -> bool:
    """A checkpoint in ``folder`` holds our ``geomed_ssl`` section."""
    return any(_our_checkpoint_file(path) for path in (sorted(folder.glob("*.ckpt")) if folder.is_dir() else []))


def _our_checkpoint_file(path: Path) -> bool:
    """``path`` is a checkpoint holding our ``geomed_ssl`` section (read with weights_only and mmap, so nothing is
    unpickled and the tensors are not read); unreadable, pickled or not a torch file: not one of ours."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001
        return False
    return isinstance(ckpt, dict) and isinstance(ckpt.get("geomed_ssl"), dict)


def _our_selection(path: Path) -> bool:
    """``path``, in a ``compare`` folder's ``selections/``, is a selection it saved: an npz (read without pickle)
    of training and test rows with our JSON ``meta`` (``LabelSelection.save_npz`` or ``save_selection``)."""
    import json

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"])) if "meta" in z.files else None
            return isinstance(meta, dict) and "version" in meta and {"train_index", "test_index"} <= set(z.files)
    except Exception:  # noqa: BLE001  (not an npz, or not ours)
        return False


def _legacy_run(folder: Path) -> bool:
    """An earlier version's pretraining run: ``config.yaml`` beside a checkpoint of ours in ``checkpoints/``, or
    beside our encoder export, a recipe of ours and ``metrics.csv`` (a user's recipe copied beside an exported
    encoder is not a run); a fine-tune folder (``model/``) is not one."""
    if (folder / "model").exists() or not (folder / "config.yaml").is_file():
        return False
    if _our_checkpoint(folder / "checkpoints"):
        return True
    our_encoder = (read_json_object(folder / "encoder" / "config.json") or {}).get("format") == "geomed-ssl-encoder"
    return our_encoder and (folder / "metrics.csv").is_file() and _our_recipe(folder / "config.yaml")


def _legacy_finetune(folder: Path) -> bool:
    return (read_json_object(folder / "model" / "config.json") or {}).get("format") == "geomed-ssl-model"


def _legacy_embed(folder: Path) -> bool:
    return (read_json_object(folder / "manifest.json") or {}).get("format") == "geomed-ssl-embeddings"


def _legacy_cluster(folder: Path) -> bool:
    summary = read_json_object(folder / "summary.json") or {}
    return summary.get("method") in ("kmeans", "hdbscan") and "emb_dir" in summary


def _legacy_evaluate(folder: Path) -> bool:
    """``metrics.json`` as ``evaluate`` writes it (``classes``, and a ``test`` section with its confusion matrix)
    beside that matrix's ``confusion.png``."""
    metrics = read_json_object(folder / "metrics.json") or {}
    test = metrics.get("test")
    return ("classes" in metrics and isinstance(test, dict) and "confusion" in test
            and (folder / "confusion.png").is_file() and not (folder / "model").exists())


def _legacy_similar(folder: Path) -> bool:
    try:
        with (folder / "similar.csv").open() as fh:
            return fh.readline().startswith("rank,score,id,file")
    except OSError:
        return False


@dataclass(frozen=True)
class CommandSpec:
    """What one command writes at the top level of its output folder."""

    entries: tuple[str, ...] = ()  # exact names
    patterns: tuple[str, ...] = ()  # fnmatch patterns of outputs named per input (temporary names: outfiles)
    flags: tuple[str, ...] = ("--overwrite",)  # the options its CLI offers to use an existing folder
    legacy: Callable[[Path], bool] | None = None  # recognises a folder an earlier version made (no manifest)
    # what it writes inside its subfolders: {subfolder name or pattern: fnmatch patterns of paths relative to it}; a
    # subfolder with a manifest of its own (the demo's pretrain/, FT_DIR/eval, EMB_DIR/search/<query>) follows the
    # same rule instead
    inside: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # where another command's output folder belongs inside its own: {relative path pattern: those commands}; any
    # other nested output (a fine-tune written to RUN/previews) is the user's result, never deleted with this folder
    nests: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # the patterns (of ``patterns``) that name folders: a file, or a link, of such a name is the user's
    folders: tuple[str, ...] = ()
    # a reuse writes the command's outputs over those there (evaluate, similar): a folder recognised only by an
    # earlier version's files (``legacy``) that also holds the user's is refused, not taken over
    reuse_replaces: bool = False
    # one process at a time writes its folder (geomed_ssl.outlocks); False: several jobs may add to one folder
    # (predict, evaluate, similar), which hold its lock shared and take turns at the files they share
    exclusive: bool = True
    # a file named by ``patterns`` is this command's to delete (with a folder it nests in) only when this says so
    # (predict: the map records its input); None: the name alone
    vouch: Callable[[Path], bool] | None = None
    # the same for a file that ``inside`` names in a subfolder: {subfolder name: the test} (embed's and cluster's maps)
    vouch_inside: Mapping[str, Callable[[Path], bool]] = field(default_factory=dict)


# checkpoints by the names ours and Lightning's callbacks give them (a copied-in best.ckpt is the user's)
_STEPS = tuple("step-" + "[0-9]" * n for n in range(6, 11))  # step-{step:06d}, up to train.max_steps' 10^9
RESUMED_FILES = (("catalog-resumed", "json"), ("config-until", "yaml"))  # a resumed run's records of what changed
_VERSIONS = tuple("-v" + "[0-9]" * n for n in range(1, 5))  # Lightning's last-v1.ckpt when a name is taken
CKPT_FILES = ("last.ckpt", *(f"last{v}.ckpt" for v in _VERSIONS), *(f"{s}.ckpt" for s in _STEPS),
              *(f"{s}{v}.ckpt" for s in _STEPS for v in _VERSIONS))
EXPORT_FILES = ("config.json", "model.safetensors")  # an encoder / model export
_NONE_SEEDS = tuple("encoder_none_seed" + "[0-9]" * n for n in range(1, 11))  # compare's none per seed (< 2^32)
COMMANDS: dict[str, CommandSpec] = {
    # (log.txt is pretrain's where its manifest lists it: train.run_log records it as the file is made)
    "pretrain": CommandSpec(("config.yaml", "catalog.json", "stats.json", "metrics.csv", "checkpoints", "encoder",
                             "previews", "tensorboard"),
                            tuple(f"{kind}-{s}.{ext}" for kind, ext in RESUMED_FILES for s in _STEPS),
                            ("--resume", "--overwrite"),
                            _legacy_run, {"checkpoints": CKPT_FILES, "encoder": EXPORT_FILES,
                                          "previews": tuple(f"{s}.png" for s in _STEPS),
                                          "tensorboard": ("events.out.tfevents.*", "hparams.yaml",
                                                          "*/events.out.tfevents.*", "*/hparams.yaml")},
                            # a checkpoint is ours by its contents (a manifest copied into a folder of the user's
                            # made a plain-text checkpoints/last.ckpt ours by its name)
                            vouch_inside={"checkpoints": _our_checkpoint_file}),
    "finetune": CommandSpec(("config.yaml", "labels_used.npz", "metrics_train.csv", "checkpoints", "model",
                             "metrics.json", "confusion.png", "images.csv", "eval"),
                            legacy=_legacy_finetune,
                            inside={"checkpoints": CKPT_FILES, "model": EXPORT_FILES,
                                    "eval": ("metrics.json", "confusion.png", "images.csv")},
                            nests={"eval": ("evaluate",), "eval/*": ("evaluate",)}),
    "embed": CommandSpec(("manifest.json", "parts", "embeddings.parquet", "vectors.npy", "pca.npz", "maps",
                          "search"), legacy=_legacy_embed,
                         inside={"parts": ("part-*/chunk-*.parquet", "part-*/files.json"),
                                 "maps": ("*_embedding.tif", "*_embedding.nii.gz", "*.aux.xml"),
                                 "search": ("*/similar.csv", "*/similar.png")},
                         nests={"search": ("similar",), "search/*": ("similar",)},
                         vouch_inside={"maps": lambda path: made_map(path, "manifest.json")}),
    "cluster": CommandSpec(("clusters.parquet", "clusters.csv", "summary.json", "scatter.png", "maps"),
                           legacy=_legacy_cluster,
                           inside={"maps": ("*_clusters.tif", "*_clusters.nii.gz", "*_clusters.png", "*.aux.xml")},
                           vouch_inside={"maps": lambda path: made_map(path, "summary.json")}),
    "predict": CommandSpec(("predictions.csv",), ("*_pred.tif", "*_pred.nii.gz", "*_pred_proba.tif",
                                                  "*_pred_proba.nii.gz", "*_pred.tif.aux.xml",
                                                  "*_pred_proba.tif.aux.xml"), (), exclusive=False,
                           vouch=lambda path: _predicted(path)),
    # (no legacy rule for predict: without a manifest a folder of *_pred.tif maps may be another tool's: refused)
    "evaluate": CommandSpec(("metrics.json", "confusion.png", "images.csv"), (), (), _legacy_evaluate,
                            nests={"*": ("evaluate",)},  # FT_DIR/eval/<other evaluation>, allowed as FT_DIR/eval
                            reuse_replaces=True, exclusive=False),
    "similar": CommandSpec(("similar.csv", "similar.png"), (), (), _legacy_similar, reuse_replaces=True,
                           exclusive=False),
    "attention": CommandSpec((), ("*.png",), ()),
    "export": CommandSpec(("model.safetensors", "config.json", "geomed_ssl.json", "README.txt"), (),
                          ("--overwrite",),
                          lambda folder: (read_json_object(folder / "geomed_ssl.json") or {}).get("format")
                          == "geomed-ssl-timm"),
    "compare": CommandSpec(("results.csv", "summary.md", "curve.png", "config.yaml", "compare.json", "encoders.json",
                            "selections", "encoder_none"),  # encoder_none: one for every seed, before 2026-12-04
                           _NONE_SEEDS,  # kept fine-tunes (finetuned_*) are ours by their own manifest: nests
                           inside={"selections": ("k*_seed*.npz", "f*_seed*.npz"), "encoder_none": EXPORT_FILES,
                                   **{name: EXPORT_FILES for name in _NONE_SEEDS}},
                           nests={"finetuned_*": ("finetune",)}, folders=_NONE_SEEDS,
                           vouch_inside={"selections": _our_selection}),
    "demo": CommandSpec(("pretrain", "compare", "probe", "finetune_pretrained", "finetune_random", "prediction",
                         ".geomed-ssl-demo"),
                        (), (), lambda folder: (folder / ".geomed-ssl-demo").is_file(),
                        nests={"pretrain": ("pretrain",), "compare": ("compare",), "probe": ("finetune",),
                               "finetune_*": ("finetune",), "prediction": ("predict",)}),
}


def matches(name: str, patterns: Sequence[str]) -> bool:
    """``name`` (a ``/``-separated relative path) matches one of the fnmatch ``patterns`` (case-sensitive) folder by
    folder: a ``*`` never spans a ``/``, so ``previews/step-*.png`` is no pattern for ``previews/my/step-1.png``."""
    depth = name.count("/")
    return any(p.count("/") == depth and fnmatch.fnmatchcase(name, p) for p in patterns)


INPUT_TAG = "GEOMED_SSL_INPUT"  # an output's record of the input it was made from (GeoTIFF tag, NIfTI comment)
RUN_TAG = "GEOMED_SSL_RUN"  # a prediction's digest of its model, settings and input (predict --resume keeps its match)


def provenance_tags(source: str | None = None, **made_by: str | None) -> dict[str, str]:
    """The metadata an output file carries: the toolkit's version, what made it (``model=`` the fine-tune folder,
    ``encoder=``: GEOMED_SSL_MODEL, GEOMED_SSL_ENCODER, when known) and the input it was made from (``INPUT_TAG``)."""
    from geomed_ssl._version import __version__

    tags = {"GEOMED_SSL_VERSION": __version__}
    tags.update({f"GEOMED_SSL_{key.upper()}": str(value) for key, value in made_by.items() if value})
    return {**tags, **({INPUT_TAG: str(source)} if source is not None else {})}


SIDECAR = ".aux.xml"  # GDAL's sidecar of a raster (its PAM dataset): X.tif -> X.tif.aux.xml


def sidecar_path(path: Path) -> Path:
    """GDAL's sidecar of the raster at ``path`` (``X.tif.aux.xml``)."""
    return path.with_name(path.name + SIDECAR)


def sidecar_target(path: Path) -> Path | None:
    """The raster whose GDAL sidecar ``path`` is (``X.tif`` for ``X.tif.aux.xml``); None for any other file."""
    return path.with_name(path.name[: -len(SIDECAR)]) if path.name.endswith(SIDECAR) else None


def _predicted(path: Path) -> bool:
    """``path`` is a map ``predict`` wrote (it records its input), or GDAL's sidecar of one (``X_pred.tif.aux.xml``:
    the class names predict writes, statistics a viewer cached), which goes with its map."""
    return recorded_input(sidecar_target(path) or path) is not None


def recorded_input(path: str | Path, tag: str = INPUT_TAG) -> str | None:
    """The input an earlier prediction at ``path`` says it was made from (``tag``: another of its records, e.g.
    ``RUN_TAG``; None: it says none, or cannot be read)."""
    try:
        if str(path).lower().endswith((".tif", ".tiff")):
            import rasterio

            with rasterio.open(path) as ds:
                return ds.tags().get(tag)
        import nibabel as nib

        for ext in nib.load(str(path)).header.extensions:
            if ext.get_code() == 6 and INPUT_TAG.encode() in ext.get_content():
                return json.loads(ext.get_content()).get(tag)
    except Exception:  # noqa: BLE001 - a file that cannot say is not known to be another input's
        return None
    return None


MAP_DESCRIP = "geomed-ssl map of "  # the NIfTI ``descrip`` of embed's and cluster's maps (which carry no extension)


MAPS_TAGGED = "maps_tagged"  # an embed / cluster record's mark: its maps say they are ours (no name alone does)


@functools.lru_cache(maxsize=8)
def _listed_maps(record: str, stamp: int) -> tuple[frozenset[str], bool]:
    """The file names of the ``maps`` a folder's record (``manifest.json``, ``summary.json``) lists, and whether
    the record says its maps carry their tags (:data:`MAPS_TAGGED`), read once per version of it (``stamp``: its
    modification time)."""
    data = read_json_object(Path(record)) or {}
    maps = data.get("maps")
    names = frozenset(Path(str(p)).name for p in maps) if isinstance(maps, list) else frozenset()
    return names, data.get(MAPS_TAGGED) is True


def _listed(path: Path, listing: str, untagged: bool = False) -> bool:
    """``path``'s name is among the ``maps`` its folder's record (``listing``, beside ``maps/``) lists
    (``untagged``: and the record is an earlier version's, whose maps carried no tags)."""
    record = path.parent.parent / listing
    try:
        stamp = record.stat().st_mtime_ns
    except OSError:
        return False
    names, tagged = _listed_maps(str(record), stamp)
    return path.name in names and not (untagged and tagged)


def made_map(path: Path, listing: str) -> bool:
    """``path``, in an ``embed`` or ``cluster`` folder's ``maps/``, is a map the toolkit wrote, as its contents say
    (a GeoTIFF's input tag, a NIfTI's ``descrip``) or, for maps of earlier versions without them, as the folder's
    ``listing`` (``manifest.json``, ``summary.json``, written before maps were tagged) lists it among its ``maps``
    and it reads as a raster / volume; a PNG or GDAL's ``.aux.xml`` goes with its map, a sidecar whose map is gone
    with the folder. A file at a listed name that says nothing, in a folder whose maps are tagged, is the user's."""
    name = path.name
    target = sidecar_target(path)
    if target is not None:  # GDAL's sidecar: with its map, or where the folder lists that map
        return made_map(target, listing) if target.exists() else _listed(target, listing)
    if name.endswith(".png"):  # with its map, present or listed
        maps = [path.with_name(name[:-4] + ext) for ext in (".tif", ".nii.gz")]
        return any(made_map(m, listing) if m.exists() else _listed(m, listing) for m in maps)
    if not path.is_file():
        return False
    if name.endswith(".tif"):
        return recorded_input(path) is not None or (_listed(path, listing, untagged=True) and _reads(path))
    try:
        import nibabel as nib

        descrip = bytes(nib.load(str(path)).header["descrip"]).decode("ascii", "replace")
    except Exception:  # noqa: BLE001 - not a NIfTI, so not a map this toolkit wrote
        return False
    return descrip.startswith(MAP_DESCRIP) or _listed(path, listing, untagged=True)


def _reads(path: Path) -> bool:
    """``path`` opens as a raster (an earlier version's untagged map does; a text file at its name does not)."""
    try:
        import rasterio

        with rasterio.open(path):
            return True
    except Exception:  # noqa: BLE001 - unreadable: not a map
        return False
