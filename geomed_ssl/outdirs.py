"""Output folders and files: one rule for every command that writes them.

The rule
--------
1. ``--out`` may not be an input, contain one or lie inside one (data folder, images, labels, encoder or run
   folder, embedding folder, query file, ...), symlinks resolved; only the place a command reserves inside its
   input for its own outputs (``FT_DIR/eval``, ``EMB_DIR/search``) is allowed (``allow_inside``).
2. A folder that does not exist, or is empty, is created (with its parents). One holding only our manifest, lock
   and temporary names counts as empty, unless a command still running holds its lock (:mod:`geomed_ssl.outlocks`:
   one that made it and has not yet written a file under its final name); jobs of a command that shares its folder
   (predict, evaluate, similar) go on beside others of the same command.
3. Every folder the toolkit creates holds ``.geomed-ssl.json`` (:mod:`geomed_ssl.outowners`): tool, version,
   command, creation time and the top-level entries the command writes there (:func:`record_entries` adds more).
   A folder without it counts as ours when an earlier version's files say so (``COMMANDS[...].legacy`` in
   :mod:`geomed_ssl.outcommands`: a run's ``config.yaml`` beside a checkpoint of ours, or beside our encoder
   export, recipe and ``metrics.csv``; a fine-tune ``model/``, an embedding ``manifest.json``, a cluster
   ``summary.json``, the demo's ``.geomed-ssl-demo``, ...).
4. An existing, non-empty folder is used only when it is ours and was made by the same command:
   ``resume`` continues it as it is (pretrain ``--resume``; embed, predict, evaluate and similar always continue or
   add to their own folder); ``overwrite`` deletes what it lists (the manifest's entries plus the names the
   command is known to write, and their temporary names: :mod:`geomed_ssl.outfiles`) and starts again, and is
   refused, before anything is deleted, when the folder also holds a file the toolkit did not write, at any depth
   (:func:`foreign_inside`: its subfolders are checked against what the command writes there,
   ``CommandSpec.inside``, or by their own manifest), or when it holds another command's output where that
   command's folder does not belong (``CommandSpec.nests``). Otherwise the command is refused, with one line
   naming the way out (``--resume``, ``--overwrite``, another ``--out``).
5. Commands check ``--out`` first (:func:`check_out_dir`, no side effects), then validate their inputs and
   settings, and only then create the folder (:func:`prepare_out_dir`), so a refused or failed command leaves
   nothing behind and the next try needs no ``--overwrite``.

Files appear under their final name only when complete: see :mod:`geomed_ssl.outfiles`.

API (other commands call these)::

    check_out_dir(out, *, command, inputs=None, overwrite=False, resume=False, allow_inside=()) -> str
    prepare_out_dir(out, *, command, inputs=None, overwrite=False, resume=False, allow_inside=()) -> Path
    check_out_file(path, *, inputs=None, suffixes=(".png",)) -> None  # refuses a file it did not record
    prepare_out_file(path, *, command, inputs=None, suffixes=(".png",)) -> Path
    record_entries(folder, names) -> None
    owner(folder) -> Owner | None

``command`` is a key of :data:`geomed_ssl.outcommands.COMMANDS` (add one there for a new command: the names it
writes, its temporary names, the flags its CLI offers and how to recognise its folders from an earlier version).
``inputs`` maps a role ("data folder", "encoder", ...) to a path, a list of paths or None.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from geomed_ssl.errors import ConfigError, OutputError
from geomed_ssl.outcommands import COMMANDS, CommandSpec, matches
from geomed_ssl.outfiles import is_temp_name, remove_stale_partials
from geomed_ssl.outlocks import LOCK, in_use, lock_folder, lock_holder
from geomed_ssl.outowners import (BOOKKEEPING, MANIFEST, TOOL, Owner, PathLike, entry_names,  # noqa: F401
                                  foreign_inside, links_inside, owner, read_manifest, record_entries, write_manifest)
Inputs = Mapping[str, PathLike | Sequence[PathLike] | None]


# -- inputs -----------------------------------------------------------------------------------------------------
def _resolved(path: PathLike) -> Path:
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as err:  # a loop of symbolic links (RuntimeError before Python 3.13)
        raise OutputError(f"'{path}' cannot be resolved ({err}): a loop of symbolic links? Point at a real folder."
                          ) from None


def _inputs(inputs: Inputs | None) -> Iterator[tuple[str, Path]]:
    """(role, path) of every input given (None: not given; a command maps its own keywords, such as the encoder
    ``none`` of ``finetune``, to None before calling), and, for an input that is a part of a run or fine-tune
    folder rather than a whole one (``RUN/encoder``, ``FT_DIR/model``, ``RUN/config.yaml``), that folder: an output
    inside it would be a foreign file there. A whole folder of ours given as the input (a run inside the demo's
    folder) protects only itself, and a compare folder's own ``encoder_none_seed<seed>`` does not protect the compare
    folder (its kept fine-tunes go there)."""
    ours: dict[Path, bool] = {}  # each folder looked at once (predict may be given thousands of files of one folder)
    told: set[Path] = set()
    for role, value in (inputs or {}).items():
        if value is None:
            continue
        for item in ([value] if isinstance(value, (str, os.PathLike)) else value):
            if item is not None:
                yield role, Path(item)
                resolved = _resolved(item)
                parent = resolved.parent
                if parent == resolved or parent in told:
                    continue
                if parent not in ours:
                    made = owner(parent)
                    ours[parent] = made is not None and made.command in ("pretrain", "finetune")
                if ours[parent] and owner(item) is None:  # a file, or a part such as RUN/encoder
                    told.add(parent)
                    yield f"folder holding the {role}", parent


def _stat_id(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of ``path`` when it exists (symlinks followed)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _ancestor_ids(path: Path) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of every existing strict ancestor of ``path``."""
    return {i for p in path.parents if (i := _stat_id(p)) is not None}


def _same(a: Path, b: Path) -> bool:
    """``a`` and ``b`` (resolved) name the same file or folder: by path, or by device and inode when both exist (a
    case-insensitive filesystem or a bind mount spells one folder two ways)."""
    ida = _stat_id(a)
    return a == b or (ida is not None and ida == _stat_id(b))


def same_place(a: PathLike, b: PathLike) -> bool:
    """``a`` and ``b`` are one file or folder (symlinks resolved; by device and inode where both exist)."""
    return _same(_resolved(a), _resolved(b))


def _inside(child: Path, parent: Path) -> bool:
    """``child`` (resolved; it may not exist yet) lies inside ``parent``: by path, or because ``parent`` is one of
    the existing folders above ``child`` by device and inode."""
    pid = _stat_id(parent)
    return parent in child.parents or (pid is not None and pid in _ancestor_ids(child))


def check_inputs(out: PathLike, inputs: Inputs | None, allow_inside: Sequence[PathLike] = ()) -> None:
    """Refuse an ``out`` that is, contains or lies inside an input (symlinks resolved; the same folder spelt two
    ways, through a bind mount or a case-insensitive filesystem, found by device and inode), except inside one of
    ``allow_inside`` (the place a command reserves inside its input for its outputs)."""
    target = _resolved(out)
    allowed = [_resolved(a) for a in allow_inside]
    for role, path in _inputs(inputs):
        p = _resolved(path)
        if _same(target, p):
            raise OutputError(f"--out '{out}' is the {role} '{path}'; choose an --out outside the {role}.")
        if _inside(p, target):
            raise OutputError(f"--out '{out}' contains the {role} '{path}'; choose an --out that does not hold "
                              f"the {role}.")
        if _inside(target, p) and not any(_same(target, a) or _inside(target, a) for a in allowed):
            hint = "".join(f" (or inside '{a}')" for a in allow_inside if _same(_resolved(a).parent, p))
            raise OutputError(f"--out '{out}' lies inside the {role} '{path}'; choose an --out outside the "
                              f"{role}{hint}.")


# -- the rule -----------------------------------------------------------------------------------------------------
def _ways_out(command: str) -> str:
    flags = COMMANDS[command].flags
    verbs = {"--resume": "--resume (resume=True from Python) to continue it",
             "--overwrite": "--overwrite (overwrite=True) to replace it"}
    return ", ".join(f"pass {verbs[f]}" for f in flags) + (", or " if flags else "") + "choose another --out"


def existing_place(out: PathLike) -> Path:
    """``out`` (absolute), or the nearest folder above it that exists: where a folder yet to be made will be."""
    place = Path(out).absolute()
    while not place.exists() and place.parent != place:
        place = place.parent
    return place


def free_bytes(out: PathLike) -> int | None:
    """Free space on the disk ``out`` is (or will be) on; None when it cannot be told."""
    try:
        return shutil.disk_usage(existing_place(out)).free
    except OSError:
        return None


def size_text(n_bytes: float) -> str:
    """A byte count in words, in decimal units: "3.2 GB", "48 MB", "512 kB" (never "0.0 GB" for a nearly full
    disk)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale * 0.9995:  # 999.96 MB reads 1.0 GB, not 1000 MB
            value = n_bytes / scale
            return f"{value:.1f} {unit}" if round(value, 1) < 10 else f"{value:.0f} {unit}"
    return f"{int(n_bytes)} bytes"


def check_writable(out: PathLike) -> None:
    """An OutputError when ``out``, or the nearest folder above it that exists, cannot be written (a read-only
    mount, another user's folder): said before a command computes for hours, not when it saves."""
    place = existing_place(out)
    if place != Path(out).absolute() and not place.is_dir():
        raise OutputError(f"--out '{out}' lies under '{place}', which is a file, not a folder, so nothing can be "
                          "made there; choose another --out.")
    if place.is_dir() and not os.access(place, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in '{place}' (read-only or not yours); choose a folder you can write to "
                          "(--out), or change its permissions.")


def check_out_dir(out: PathLike, *, command: str, inputs: Inputs | None = None, overwrite: bool = False,
                  resume: bool = False, allow_inside: Sequence[PathLike] = ()) -> str:
    """Check ``out`` against the rule (see the module docstring) without touching anything; returns what
    :func:`prepare_out_dir` will do: ``create`` (absent or empty), ``replace`` (``overwrite``: ours, same command,
    nothing foreign; it wins over ``resume``) or ``reuse`` (``resume``: ours, same command). Raises
    :class:`OutputError` otherwise."""
    out = Path(out)
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; add it to geomed_ssl.outcommands.COMMANDS")
    check_inputs(out, inputs, allow_inside)
    check_writable(out)
    if not out.exists():
        if out.is_symlink():
            raise OutputError(f"--out '{out}' is a broken symbolic link; choose another --out.")
        return "create"
    if not out.is_dir():
        raise OutputError(f"--out '{out}' is a file, not a folder; choose another --out.")
    if all(p.name in BOOKKEEPING or is_temp_name(p.name) for p in out.iterdir()):
        # empty but for our manifest, or what a killed in-place export left (atomic_write_dir), unless a command
        # still running made it and has written nothing under a final name yet: its lock says so (jobs that share
        # a folder with their own command, predict beside predict, go on)
        made_by = (read_manifest(out) or {}).get("command")
        holder = lock_holder(out, shared_ok=not COMMANDS[command].exclusive and made_by in (None, command))
        if holder is not None:
            raise in_use(out, holder)
        return "create"
    found = owner(out)
    if found is None:
        example = sorted(p.name for p in out.iterdir())[0]
        flags = COMMANDS[command].flags
        refused = (f"; {' and '.join(flags)} never use{'s' if len(flags) == 1 else ''} such a folder" if flags
                   else "")
        raise OutputError(f"output folder '{out}' was not made by geomed-ssl, as far as its files tell (it holds "
                          f"'{example}'){refused}; choose another --out, or empty it first.")
    if found.command != command:
        raise OutputError(f"output folder '{out}' holds the output of `geomed-ssl {found.command}`, not of "
                          f"`geomed-ssl {command}`; choose another --out.")
    if overwrite:
        foreign = foreign_inside(out, found)
        nested = [f for f in foreign if f.endswith("/")]
        if nested:
            other = owner(out / nested[0])
            raise OutputError(f"output folder '{out}' also holds '{nested[0].rstrip('/')}', the output of "
                              f"`geomed-ssl {other.command if other else '?'}` saved inside it; --overwrite would "
                              "delete it, so move that folder away or choose another --out.")
        if foreign:
            how = "--overwrite" if "--overwrite" in COMMANDS[command].flags else f"a new `{command}` run"
            raise OutputError(f"output folder '{out}' also holds '{foreign[0]}', which geomed-ssl did not "
                              f"write; {how} deletes only what geomed-ssl wrote, so move it away or "
                              "choose another --out.")
        return "replace"
    if resume:
        links = found.links or links_inside(out, found)
        if links:
            raise OutputError(f"output folder '{out}' also holds '{links[0]}', which geomed-ssl did not write: a "
                              f"link (the toolkit makes none) where `geomed-ssl {command}` reads or writes; going on "
                              "would read or write through it, so remove the link or choose another --out.")
        if found.manifest is None and found.foreign and COMMANDS[command].reuse_replaces:  # beside the user's
            raise OutputError(f"output folder '{out}' holds files like those `geomed-ssl {command}` writes but was "
                              f"not made by it as far as geomed-ssl can tell (no {MANIFEST}; it also holds "
                              f"'{found.foreign[0]}'), so its files are not replaced; choose another --out.")
        return "reuse"
    raise OutputError(f"output folder '{out}' already exists and is not empty; {_ways_out(command)}.")


def prepare_out_dir(out: PathLike, *, command: str, inputs: Inputs | None = None, overwrite: bool = False,
                    resume: bool = False, allow_inside: Sequence[PathLike] = ()) -> Path:
    """Apply the rule (see the module docstring) and leave ``out`` ready: created (or emptied of what the toolkit
    wrote, with ``overwrite``) with a fresh manifest, or kept as it is (``resume``; what killed writers left at its
    top level is deleted). Returns ``out`` as a Path."""
    out = Path(out)
    action = check_out_dir(out, command=command, inputs=inputs, overwrite=overwrite, resume=resume,
                           allow_inside=allow_inside)
    exclusive = COMMANDS[command].exclusive
    if action in ("reuse", "replace"):  # before anything there is touched: another run may be live
        lock_folder(out, command, shared=not exclusive)
    if action == "reuse":
        if read_manifest(out) is None:  # an earlier version's folder: it gets a manifest of its own entries
            record_entries(out, [])
        remove_stale_partials(out)  # what a killed run of any command left at the top level
        return out
    if action == "replace":
        for name in owner(out).ours:  # type: ignore[union-attr]  (check_out_dir found it ours)
            if name == LOCK:  # held: a new file would let a second writer lock it
                continue
            entry = out / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    lock_folder(out, command, shared=not exclusive)  # two new runs into one new folder: the second stops here
    remove_stale_partials(out)  # a folder a killed first run made holds only its manifest and such names
    write_manifest(out, command)
    return out


def _recorded(path: Path) -> bool:
    """``path`` is an output file the toolkit recorded in the manifest of its folder (``attention``'s PNGs): not
    one of the names the folder's own command writes, which only that command replaces."""
    manifest = read_manifest(path.parent)
    if manifest is None or path.name not in entry_names(manifest):
        return False
    spec = COMMANDS.get(str(manifest["command"]), CommandSpec())
    return manifest["command"] == "attention" or not (path.name in spec.entries or matches(path.name, spec.patterns))


def check_out_file(path: PathLike, *, inputs: Inputs | None = None, suffixes: Sequence[str] = (".png",)) -> None:
    """An output file (``attention --out PNG``) must end in one of ``suffixes``; it may not be an input or lie
    inside one (a file directly in an input folder the toolkit made, e.g. ``RUN/attention.png``, is recorded there
    instead), nor be a folder or an existing file the toolkit did not record. Nothing is touched."""
    path = Path(path)
    target = _resolved(path)
    for role, p in _inputs(inputs):
        source = _resolved(p)
        if _same(target, source):
            raise OutputError(f"--out '{path}' is the {role} '{p}'; choose another --out.")
        if _inside(target, source) and not (_same(target.parent, source) and owner(source) is not None):
            raise OutputError(f"--out '{path}' lies inside the {role} '{p}', whose files the toolkit replaces; "
                              f"choose an --out outside the {role}.")
    if path.is_dir():
        raise OutputError(f"--out '{path}' is a folder; name the file to write, e.g. --out {path / 'attention.png'}.")
    if read_manifest(path.parent) is None:  # RUN/encoder/a.png: inside a folder the toolkit made, where it records
        for folder in list(Path(os.path.abspath(path)).parents)[1:]:  # nothing, so a later --overwrite would refuse
            found = read_manifest(folder)
            if found is not None:
                raise OutputError(f"--out '{path}' lies in '{path.parent.name}/' inside the folder "
                                  f"`{found['command']}` made ('{folder}'), whose contents only that command writes; "
                                  f"write it beside them (e.g. --out {folder / path.name}) or choose another --out.")
    if not path.name.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise ConfigError(f"--out '{path}' must name a {' or '.join(suffixes)} file, e.g. --out attention.png.")
    if (path.exists() or path.is_symlink()) and not _recorded(path):
        manifest = read_manifest(path.parent)
        if manifest is not None and path.name in entry_names(manifest):  # e.g. a cluster folder's scatter.png
            raise OutputError(f"--out '{path}' is a file `{manifest['command']}` wrote, which only that command "
                              "replaces; choose another --out.")
        for folder in list(path.parents)[1:]:  # e.g. a cluster folder's maps/*_clusters.png
            found = read_manifest(folder)
            if found is not None:
                raise OutputError(f"--out '{path}' already exists inside the folder `{found['command']}` made "
                                  f"('{folder}'), whose files only that command replaces; choose another --out.")
        raise OutputError(f"--out '{path}' already exists, and outside a folder geomed-ssl made no file is replaced "
                          "(nothing tells it from one of yours, even one an earlier run wrote); move it away or choose "
                          "another --out.")


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
        remove_stale_partials(path.parent, only=path.name)  # a killed write of this very file
    return path
