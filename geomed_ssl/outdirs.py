"""Output folders and files: one rule for every command that writes them.

The rule
--------
1. ``--out`` may not be an input, contain one or lie inside one (data folder, images, labels, encoder or run
   folder, embedding folder, query file, ...), symlinks resolved; only the place a command reserves inside its
   input for its own outputs (``FT_DIR/eval``, ``EMB_DIR/search``) is allowed (``allow_inside``).
2. A folder that does not exist, or is empty, is created (with its parents).
3. Every folder the toolkit creates holds ``.geomed-ssl.json``: tool, version, command, creation time and the
   top-level entries the command writes there (:func:`record_entries` adds more later). A folder without it counts
   as ours when an earlier version's files say so (``COMMANDS[...].legacy``: a run's ``config.yaml`` plus
   ``checkpoints/`` or an encoder export, a fine-tune ``model/``, an embedding ``manifest.json``, a cluster
   ``summary.json``, the demo's ``.geomed-ssl-demo``, ...).
4. An existing, non-empty folder is used only when it is ours and was made by the same command:
   ``resume`` continues it as it is (pretrain ``--resume``; embed, predict, evaluate and similar always continue or
   add to their own folder); ``overwrite`` deletes what it lists (the manifest's entries plus the names and
   temporary-file patterns the command is known to write) and starts again, and is refused, before anything is
   deleted, when the folder also holds a file the toolkit did not write. Otherwise the command is refused, with
   one line naming the way out (``--resume``, ``--overwrite``, another ``--out``).
5. Commands check ``--out`` first (:func:`check_out_dir`, no side effects), then validate their inputs and
   settings, and only then create the folder (:func:`prepare_out_dir`), so a refused or failed command leaves
   nothing behind and the next try needs no ``--overwrite``.

Files appear under their final name only when complete: see :mod:`geomed_ssl.outfiles`.

API (other commands call these)::

    check_out_dir(out, *, command, inputs=None, overwrite=False, resume=False, allow_inside=()) -> str
    prepare_out_dir(out, *, command, inputs=None, overwrite=False, resume=False, allow_inside=()) -> Path
    check_out_file(path, *, inputs=None, suffixes=(".png",)) -> None
    prepare_out_file(path, *, command, inputs=None, suffixes=(".png",)) -> Path
    record_entries(folder, names) -> None
    owner(folder) -> Owner | None

``command`` is a key of :data:`COMMANDS` (add one there for a new command: the names it writes, its temporary
names, the flags its CLI offers and how to recognise its folders from an earlier version). ``inputs`` maps a role
("data folder", "encoder", ...) to a path, a list of paths or None.
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from geomed_ssl.errors import ConfigError, OutputError
from geomed_ssl.outfiles import atomic_write_text

MANIFEST = ".geomed-ssl.json"
TOOL = "geomed-ssl"
PathLike = str | os.PathLike
Inputs = Mapping[str, PathLike | Sequence[PathLike] | None]


# -- what each command writes ----------------------------------------------------------------------------------
def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _legacy_run(folder: Path) -> bool:
    encoder = _json(folder / "encoder" / "config.json") or {}
    return (folder / "config.yaml").is_file() and ((folder / "checkpoints").is_dir()
                                                    or encoder.get("format") == "geomed-ssl-encoder")


def _legacy_finetune(folder: Path) -> bool:
    return (_json(folder / "model" / "config.json") or {}).get("format") == "geomed-ssl-model"


def _legacy_embed(folder: Path) -> bool:
    return (_json(folder / "manifest.json") or {}).get("format") == "geomed-ssl-embeddings"


def _legacy_cluster(folder: Path) -> bool:
    summary = _json(folder / "summary.json") or {}
    return summary.get("method") in ("kmeans", "hdbscan") and "emb_dir" in summary


def _legacy_evaluate(folder: Path) -> bool:
    metrics = _json(folder / "metrics.json") or {}
    return "classes" in metrics and "test" in metrics and not (folder / "model").exists()


def _legacy_similar(folder: Path) -> bool:
    try:
        with (folder / "similar.csv").open() as fh:
            return fh.readline().startswith("rank,score,id,file")
    except OSError:
        return False


def _legacy_predict(folder: Path) -> bool:
    names = [p.name for p in folder.iterdir()]
    return bool(names) and all(_matches(n, COMMANDS["predict"].patterns + COMMON_PATTERNS) or n == "predictions.csv"
                               for n in names)


@dataclass(frozen=True)
class CommandSpec:
    """What one command writes at the top level of its output folder."""

    entries: tuple[str, ...] = ()  # exact names
    patterns: tuple[str, ...] = ()  # fnmatch patterns: temporary files of its writers, outputs named per input
    flags: tuple[str, ...] = ("--overwrite",)  # the options its CLI offers to use an existing folder
    legacy: Callable[[Path], bool] | None = None  # recognises a folder an earlier version made (no manifest)


COMMON_PATTERNS = (".partial-*",)  # atomic_path's temporary files
COMMANDS: dict[str, CommandSpec] = {
    "pretrain": CommandSpec(("config.yaml", "catalog.json", "stats.json", "metrics.csv", "checkpoints", "encoder",
                             "previews", "tensorboard"), ("metrics.csv.tmp", ".encoder.*"), ("--resume", "--overwrite"),
                            _legacy_run),
    "finetune": CommandSpec(("config.yaml", "labels_used.npz", "metrics_train.csv", "checkpoints", "model",
                             "metrics.json", "confusion.png", "eval"),
                            ("metrics_train.csv.tmp", "labels_used.npz.tmp", ".model.*"), legacy=_legacy_finetune),
    "embed": CommandSpec(("manifest.json", "parts", "embeddings.parquet", "vectors.npy", "pca.npz", "maps",
                          "search"), (".manifest.json.*.tmp", ".embeddings.parquet.tmp", ".vectors.npy.tmp.npy"),
                         legacy=_legacy_embed),
    "cluster": CommandSpec(("clusters.parquet", "clusters.csv", "summary.json", "scatter.png", "maps"),
                           legacy=_legacy_cluster),
    "predict": CommandSpec(("predictions.csv",), ("*_pred.tif", "*_pred.nii.gz", "*_pred_proba.tif",
                                                  "*_pred_proba.nii.gz"), (), _legacy_predict),
    "evaluate": CommandSpec(("metrics.json", "confusion.png"), (), (), _legacy_evaluate),
    "similar": CommandSpec(("similar.csv", "similar.png"), (), (), _legacy_similar),
    "attention": CommandSpec((), ("*.png",), ()),
    "export": CommandSpec(("model.safetensors", "config.json", "geomed_ssl.json", "README.txt"), (),
                          ("--overwrite",), lambda folder: (_json(folder / "geomed_ssl.json") or {}).get("format")
                          == "geomed-ssl-timm"),
    "compare": CommandSpec(("results.csv", "summary.md", "curve.png", "config.yaml", "compare.json", "selections",
                            "encoder_none"), (".encoder_none.*",)),
    "demo": CommandSpec(("pretrain", "finetune_pretrained", "finetune_random", "prediction", ".geomed-ssl-demo"),
                        (), (), lambda folder: (folder / ".geomed-ssl-demo").is_file()),
}


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


# -- who made a folder ------------------------------------------------------------------------------------------
@dataclass
class Owner:
    """A folder the toolkit made: by which command, its manifest (None: an earlier version's folder), which of its
    top-level entries are ours and which are not."""

    command: str
    manifest: dict[str, Any] | None
    ours: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)


def read_manifest(folder: PathLike) -> dict[str, Any] | None:
    """The folder's ``.geomed-ssl.json`` (None when absent or not ours)."""
    data = _json(Path(folder) / MANIFEST)
    return data if data is not None and data.get("tool") == TOOL and "command" in data else None


def owner(folder: PathLike) -> Owner | None:
    """Which command made ``folder`` (from its manifest, else from an earlier version's files) and which of its
    entries that command wrote; None when the toolkit did not make it."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    manifest = read_manifest(folder)
    if manifest is not None:
        command = str(manifest["command"])
    else:
        command = next((c for c, s in COMMANDS.items() if s.legacy is not None and s.legacy(folder)), None)
        if command is None:
            return None
    spec = COMMANDS.get(command, CommandSpec())
    names = set(spec.entries) | set((manifest or {}).get("entries", [])) | {MANIFEST}
    patterns = spec.patterns + COMMON_PATTERNS
    result = Owner(command, manifest)
    for entry in sorted(folder.iterdir()):
        (result.ours if entry.name in names or _matches(entry.name, patterns) else result.foreign).append(entry.name)
    return result


def _manifest_text(command: str, entries: Sequence[str], created: str | None = None) -> str:
    from geomed_ssl._version import __version__

    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return json.dumps({"tool": TOOL, "version": __version__, "command": command, "created": created or now,
                       "entries": sorted(set(entries))}, indent=1) + "\n"


def write_manifest(folder: PathLike, command: str, entries: Sequence[str] | None = None) -> Path:
    """Mark ``folder`` as made by ``command`` (entries: the command's known names unless given)."""
    spec = COMMANDS.get(command, CommandSpec())
    return atomic_write_text(Path(folder) / MANIFEST, _manifest_text(command, spec.entries if entries is None
                                                                      else entries))


def record_entries(folder: PathLike, names: Sequence[str]) -> None:
    """Add top-level ``names`` to the manifest of ``folder`` when the toolkit made it (an earlier version's folder
    gets a manifest listing its own entries too); a folder the toolkit did not make is left alone."""
    folder = Path(folder)
    found = owner(folder)
    if found is None:
        return
    old = found.manifest or {}
    entries = list(old.get("entries", [])) + (found.ours if found.manifest is None else []) + list(names)
    entries = [e for e in entries if e != MANIFEST]
    atomic_write_text(folder / MANIFEST, _manifest_text(found.command, entries, old.get("created")))


# -- inputs -----------------------------------------------------------------------------------------------------
def _resolved(path: PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _inputs(inputs: Inputs | None) -> Iterator[tuple[str, Path]]:
    for role, value in (inputs or {}).items():
        if value is None:
            continue
        for item in ([value] if isinstance(value, (str, os.PathLike)) else value):
            if item is not None and str(item).lower() != "none":
                yield role, Path(item)


def check_inputs(out: PathLike, inputs: Inputs | None, allow_inside: Sequence[PathLike] = ()) -> None:
    """Refuse an ``out`` that is, contains or lies inside an input (symlinks resolved), except inside one of
    ``allow_inside`` (the place a command reserves inside its input for its outputs)."""
    target = _resolved(out)
    allowed = [_resolved(a) for a in allow_inside]
    for role, path in _inputs(inputs):
        p = _resolved(path)
        if target == p:
            raise OutputError(f"--out '{out}' is the {role} '{path}'; choose an --out outside the {role}.")
        if target in p.parents:
            raise OutputError(f"--out '{out}' contains the {role} '{path}'; choose an --out that does not hold "
                              f"the {role}.")
        if p in target.parents and not any(target == a or a in target.parents for a in allowed):
            hint = "".join(f" (or inside '{a}')" for a in allow_inside if _resolved(a).parent == p)
            raise OutputError(f"--out '{out}' lies inside the {role} '{path}'; choose an --out outside the "
                              f"{role}{hint}.")


# -- the rule -----------------------------------------------------------------------------------------------------
def _ways_out(command: str) -> str:
    flags = COMMANDS[command].flags
    verbs = {"--resume": "--resume to continue it", "--overwrite": "--overwrite to replace it"}
    return ", ".join(f"pass {verbs[f]}" for f in flags) + (", or " if flags else "") + "choose another --out"


def check_out_dir(out: PathLike, *, command: str, inputs: Inputs | None = None, overwrite: bool = False,
                  resume: bool = False, allow_inside: Sequence[PathLike] = ()) -> str:
    """Check ``out`` against the rule (see the module docstring) without touching anything; returns what
    :func:`prepare_out_dir` will do: ``create`` (absent or empty), ``replace`` (``overwrite``: ours, same command,
    nothing foreign; it wins over ``resume``) or ``reuse`` (``resume``: ours, same command). Raises
    :class:`OutputError` otherwise."""
    out = Path(out)
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; add it to geomed_ssl.outdirs.COMMANDS")
    check_inputs(out, inputs, allow_inside)
    if not out.exists():
        if out.is_symlink():
            raise OutputError(f"--out '{out}' is a broken symbolic link; choose another --out.")
        return "create"
    if not out.is_dir():
        raise OutputError(f"--out '{out}' is a file, not a folder; choose another --out.")
    if all(p.name == MANIFEST for p in out.iterdir()):
        return "create"
    found = owner(out)
    if found is None:
        example = sorted(p.name for p in out.iterdir())[0]
        flags = COMMANDS[command].flags
        refused = (f"; {' and '.join(flags)} never use{'s' if len(flags) == 1 else ''} such a folder" if flags
                   else "")
        raise OutputError(f"output folder '{out}' was not made by geomed-ssl (it holds '{example}'){refused}; "
                          "choose another --out, or empty it first.")
    if found.command != command:
        raise OutputError(f"output folder '{out}' holds the output of `geomed-ssl {found.command}`, not of "
                          f"`geomed-ssl {command}`; choose another --out.")
    if overwrite:
        if found.foreign:
            raise OutputError(f"output folder '{out}' also holds '{found.foreign[0]}', which geomed-ssl did not "
                              "write; --overwrite deletes only what geomed-ssl wrote, so move that file away or "
                              "choose another --out.")
        return "replace"
    if resume:
        return "reuse"
    raise OutputError(f"output folder '{out}' already exists and is not empty; {_ways_out(command)}.")


def prepare_out_dir(out: PathLike, *, command: str, inputs: Inputs | None = None, overwrite: bool = False,
                    resume: bool = False, allow_inside: Sequence[PathLike] = ()) -> Path:
    """Apply the rule (see the module docstring) and leave ``out`` ready: created (or emptied of what the toolkit
    wrote, with ``overwrite``) with a fresh manifest, or kept as it is (``resume``). Returns ``out`` as a Path."""
    out = Path(out)
    action = check_out_dir(out, command=command, inputs=inputs, overwrite=overwrite, resume=resume,
                           allow_inside=allow_inside)
    if action == "reuse":
        if read_manifest(out) is None:  # an earlier version's folder: it gets a manifest of its own entries
            record_entries(out, [])
        return out
    if action == "replace":
        for name in owner(out).ours:  # type: ignore[union-attr]  (check_out_dir found it ours)
            entry = out / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, command)
    return out


def check_out_file(path: PathLike, *, inputs: Inputs | None = None, suffixes: Sequence[str] = (".png",)) -> None:
    """An output file (``attention --out PNG``) must end in one of ``suffixes`` and may not be an input or a
    folder; nothing is touched. An existing file of that name is replaced when written."""
    path = Path(path)
    target = _resolved(path)
    for role, p in _inputs(inputs):
        if target == _resolved(p):
            raise OutputError(f"--out '{path}' is the {role} '{p}'; choose another --out.")
    if path.is_dir():
        raise OutputError(f"--out '{path}' is a folder; name the file to write, e.g. --out {path / 'attention.png'}.")
    if not path.name.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise ConfigError(f"--out '{path}' must name a {' or '.join(suffixes)} file, e.g. --out attention.png.")


def prepare_out_file(path: PathLike, *, command: str, inputs: Inputs | None = None,
                     suffixes: Sequence[str] = (".png",)) -> Path:
    """:func:`check_out_file`, then its folder is created (with a manifest) when missing, or, when the toolkit made
    it, records the file among its entries (so that folder's ``--overwrite`` deletes it too)."""
    path = Path(path)
    check_out_file(path, inputs=inputs, suffixes=suffixes)
    if not path.parent.exists():
        path.parent.mkdir(parents=True)
        write_manifest(path.parent, command, [path.name])
    else:
        record_entries(path.parent, [path.name])
    return path
