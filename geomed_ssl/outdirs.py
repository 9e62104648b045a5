"""Output folders and files: one rule for every command that writes them.

The rule
--------
1. ``--out`` may not be an input, contain one or lie inside one (data folder, images, labels, encoder or run
   folder, embedding folder, query file, ...), symlinks resolved; only the place a command reserves inside its
   input for its own outputs (``FT_DIR/eval``, ``EMB_DIR/search``) is allowed (``allow_inside``).
2. A folder that does not exist, or is empty, is created (with its parents).
3. Every folder the toolkit creates holds ``.geomed-ssl.json``: tool, version, command, creation time and the
   top-level entries the command writes there (:func:`record_entries` adds more later). A folder without it counts
   as ours when an earlier version's files say so (``COMMANDS[...].legacy`` in :mod:`geomed_ssl.outcommands`: a
   run's ``config.yaml`` beside a checkpoint of ours, or beside our encoder export, recipe and ``metrics.csv``; a
   fine-tune ``model/``, an embedding ``manifest.json``, a cluster ``summary.json``, the demo's
   ``.geomed-ssl-demo``, ...).
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

import datetime
import fnmatch
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from geomed_ssl.errors import ConfigError, OutputError
from geomed_ssl.outcommands import COMMANDS, CommandSpec, matches, read_json_object
from geomed_ssl.outfiles import atomic_write_text, is_temp_name, remove_stale_partials

MANIFEST = ".geomed-ssl.json"
TOOL = "geomed-ssl"
PathLike = str | os.PathLike
Inputs = Mapping[str, PathLike | Sequence[PathLike] | None]


# -- who made a folder ------------------------------------------------------------------------------------------
@dataclass
class Owner:
    """A folder the toolkit made: by which command, its manifest (None: an earlier version's folder), which of its
    top-level entries are ours and which are not."""

    command: str
    manifest: dict[str, Any] | None
    ours: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # foreign links named like what the command writes


def _plain_name(name: Any) -> bool:
    """A name of one entry of its folder: no path separator, not ``.`` / ``..``, not empty."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and os.sep not in name and "\0" not in name)


def read_manifest(folder: PathLike) -> dict[str, Any] | None:
    """The folder's ``.geomed-ssl.json`` (None when absent, not ours, or damaged: ``command`` not a string,
    ``entries`` not a list of plain names of this folder)."""
    data = read_json_object(Path(folder) / MANIFEST)
    if data is None or data.get("tool") != TOOL or not isinstance(data.get("command"), str):
        return None
    entries = data.get("entries", [])
    return data if isinstance(entries, list) and all(_plain_name(e) for e in entries) else None


def _entry_names(manifest: dict[str, Any] | None) -> list[str]:
    """The entries a manifest lists (none for an earlier version's folder)."""
    return list((manifest or {}).get("entries", []))


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
    names = set(spec.entries) | set(_entry_names(manifest)) | {MANIFEST}
    result = Owner(command, manifest)
    for entry in sorted(folder.iterdir()):
        named = matches(entry.name, spec.patterns) and (not matches(entry.name, spec.folders)
                                                        or (entry.is_dir() and not entry.is_symlink()))
        ours = entry.name in names or named or is_temp_name(entry.name) or _nested_here(spec, entry)
        if ours and entry.is_symlink() and entry.is_dir():  # the toolkit makes no links, and writes into folders
            result.links.append(entry.name)
            ours = False
        (result.ours if ours else result.foreign).append(entry.name)
    return result


def _may_nest(spec: CommandSpec, rel: str, command: str) -> bool:
    """An output folder of ``command`` belongs at ``rel`` inside a folder made by the command of ``spec``."""
    return any(fnmatch.fnmatchcase(rel, k) and command in v for k, v in spec.nests.items())


def _nested_here(spec: CommandSpec, entry: Path) -> bool:
    """``entry``, a top-level entry of a folder made by the command of ``spec``, is an output folder that belongs
    there (its manifest's command, :func:`_may_nest`)."""
    if not spec.nests or not entry.is_dir() or entry.is_symlink():
        return False
    nested = read_manifest(entry)
    return nested is not None and _may_nest(spec, entry.name, str(nested["command"]))


def foreign_inside(folder: PathLike, found: Owner | None = None) -> list[str]:
    """Paths (relative to ``folder``, ``/``-separated) of what the toolkit did not write anywhere in ``folder``,
    made by ``found.command``: its foreign top-level entries, then whatever inside its subfolders neither matches
    what the command writes there (``CommandSpec.inside``, temporary files included) nor lies in a subfolder of
    the toolkit's own (a manifest, or an earlier version's files) that passes the same test. Such a subfolder made
    by a command that does not belong there (``CommandSpec.nests``: a fine-tune written to ``RUN/previews``) is
    listed itself, with a trailing ``/``: another command's complete output is the user's result."""
    folder = Path(folder)
    found = found if found is not None else owner(folder)
    if found is None:
        return sorted(p.name for p in folder.iterdir())
    spec = COMMANDS.get(found.command, CommandSpec())
    bad = list(found.foreign)
    for name in found.ours:
        entry = folder / name
        if entry.is_dir() and not entry.is_symlink() and not is_temp_name(name):  # a killed writer's folder: ours
            patterns = next((v for k, v in spec.inside.items() if fnmatch.fnmatchcase(name, k)), None)
            bad += [f"{name}/{p}" for p in _foreign_in_subfolder(entry, patterns, spec, name)]
    return bad


def _nested(folder: Path, spec: CommandSpec, rel: str) -> list[str]:
    """What :func:`foreign_inside` reports for ``folder``, a folder of the toolkit's own at ``rel`` inside one
    made by the command of ``spec``: its foreign contents, or ``[""]`` (the folder itself) when its command does
    not belong there."""
    found = owner(folder)
    if found is None:
        return sorted(p.name for p in folder.iterdir())
    if not _may_nest(spec, rel, found.command):
        return [""]
    return foreign_inside(folder, found)


def _foreign_in_subfolder(sub: Path, patterns: tuple[str, ...] | None, spec: CommandSpec, rel: str) -> list[str]:
    """What in ``sub`` (a subfolder of ours, at ``rel`` in a folder made by the command of ``spec``) the toolkit did
    not write; ``patterns``: what its command writes there (None: nothing, unless ``sub`` is a folder of the
    toolkit's own)."""
    if read_manifest(sub) is not None or patterns is None:
        return _nested(sub, spec, rel)
    bad: list[str] = []
    for root, dirs, files in os.walk(sub):
        here = Path(root)
        inner = here.relative_to(sub)
        for d in list(dirs):
            if is_temp_name(d) and not (here / d).is_symlink():  # a killed writer's folder: ours, not descended
                dirs.remove(d)
            elif (here / d).is_symlink():  # judged by name, as a file; never followed
                files.append(d)
                dirs.remove(d)
            elif read_manifest(here / d) is not None:  # a folder of the toolkit's own: its own rule
                dirs.remove(d)
                at = (inner / d).as_posix()
                bad += [f"{at}/{p}" for p in _nested(here / d, spec, f"{rel}/{at}")]
        for f in files:
            path = (inner / f).as_posix()
            if not (matches(path, patterns) or is_temp_name(f)):
                bad.append(path)
    return sorted(bad)


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
    entries = _entry_names(found.manifest) + (found.ours if found.manifest is None else []) + list(names)
    entries = [e for e in entries if e != MANIFEST]
    atomic_write_text(folder / MANIFEST, _manifest_text(found.command, entries, old.get("created")))


# -- inputs -----------------------------------------------------------------------------------------------------
def _resolved(path: PathLike) -> Path:
    return Path(path).expanduser().resolve()


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
    verbs = {"--resume": "--resume to continue it", "--overwrite": "--overwrite to replace it"}
    return ", ".join(f"pass {verbs[f]}" for f in flags) + (", or " if flags else "") + "choose another --out"


def check_writable(out: PathLike) -> None:
    """An OutputError when ``out``, or the nearest folder above it that exists, cannot be written (a read-only
    mount, another user's folder): said before a command computes for hours, not when it saves."""
    place = Path(out).absolute()
    while not place.exists() and place.parent != place:
        place = place.parent
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
    if all(p.name == MANIFEST or is_temp_name(p.name) for p in out.iterdir()):
        return "create"  # empty but for our manifest, or what a killed in-place export left (atomic_write_dir)
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
                              f"write; {how} deletes only what geomed-ssl wrote, so move that file away or "
                              "choose another --out.")
        return "replace"
    if resume:
        if found.links:
            raise OutputError(f"output folder '{out}' also holds '{found.links[0]}', which geomed-ssl did not "
                              f"write: a link to another folder, named as `geomed-ssl {command}` names what it writes "
                              "there; going on would write into the linked folder, so remove the link or choose "
                              "another --out.")
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
    if action == "reuse":
        if read_manifest(out) is None:  # an earlier version's folder: it gets a manifest of its own entries
            record_entries(out, [])
        remove_stale_partials(out)  # what a killed run of any command left at the top level
        return out
    if action == "replace":
        for name in owner(out).ours:  # type: ignore[union-attr]  (check_out_dir found it ours)
            entry = out / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)  # a folder a killed first run made holds only its manifest and such names
    write_manifest(out, command)
    return out


def _recorded(path: Path) -> bool:
    """``path`` is an output file the toolkit recorded in the manifest of its folder (``attention``'s PNGs): not
    one of the names the folder's own command writes, which only that command replaces."""
    manifest = read_manifest(path.parent)
    if manifest is None or path.name not in _entry_names(manifest):
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
                raise OutputError(f"--out '{path}' lies in '{path.parent.name}/' inside the folder `{found['command']}` "
                                  f"made ('{folder}'), whose contents only that command writes; write it beside them "
                                  f"(e.g. --out {folder / path.name}) or choose another --out.")
    if not path.name.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise ConfigError(f"--out '{path}' must name a {' or '.join(suffixes)} file, e.g. --out attention.png.")
    if (path.exists() or path.is_symlink()) and not _recorded(path):
        manifest = read_manifest(path.parent)
        if manifest is not None and path.name in _entry_names(manifest):  # e.g. a cluster folder's scatter.png
            raise OutputError(f"--out '{path}' is a file `{manifest['command']}` wrote, which only that command "
                              "replaces; choose another --out.")
        for folder in list(path.parents)[1:]:  # e.g. a cluster folder's maps/*_clusters.png
            found = read_manifest(folder)
            if found is not None:
                raise OutputError(f"--out '{path}' already exists inside the folder `{found['command']}` made "
                                  f"('{folder}'), whose files only that command replaces; choose another --out.")
        raise OutputError(f"--out '{path}' already exists and geomed-ssl did not write it; move it away or choose "
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
