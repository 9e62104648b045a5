"""Who made a folder: its ``.geomed-ssl.json`` manifest (tool, version, command, creation time, the entries the
command writes there) or, for a folder an earlier version made, the files that say so (``COMMANDS[...].legacy``);
and what in a folder of ours the toolkit did not write (:func:`foreign_inside`), which ``--overwrite`` never
deletes. The rule these serve is in :mod:`geomed_ssl.outdirs`."""

from __future__ import annotations

import datetime
import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from geomed_ssl.outcommands import COMMANDS, CommandSpec, matches, read_json_object
from geomed_ssl.outfiles import atomic_write_text, final_name, is_temp_name
from geomed_ssl.outlocks import LOCK, MERGE_LOCK

MANIFEST = ".geomed-ssl.json"
BOOKKEEPING = (MANIFEST, LOCK, MERGE_LOCK)  # the toolkit's own files in a folder it made: no output, never the user's
TOOL = "geomed-ssl"
PathLike = str | os.PathLike


@dataclass
class Owner:
    """A folder the toolkit made: by which command, its manifest (None: an earlier version's folder), which of its
    top-level entries are ours and which are not."""

    command: str
    manifest: dict[str, Any] | None
    ours: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # links named like what the command writes: the user's


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


def entry_names(manifest: dict[str, Any] | None) -> list[str]:
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
    names = set(spec.entries) | set(entry_names(manifest)) | set(BOOKKEEPING)
    result = Owner(command, manifest)
    for entry in sorted(folder.iterdir()):
        named = matches(entry.name, spec.patterns) and (not matches(entry.name, spec.folders)
                                                        or (entry.is_dir() and not entry.is_symlink()))
        ours = entry.name in names or named or is_temp_name(entry.name) or _nested_here(spec, entry)
        if entry.name in (LOCK, MERGE_LOCK) and entry.is_symlink():  # the toolkit's locks are plain files
            ours = False
        if ours and entry.is_symlink():  # the toolkit makes no links: one named as its outputs is the user's
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
    the toolkit's own (a manifest, or an earlier version's files) that passes the same test; a file named like the
    command's outputs that its contents do not vouch for (``CommandSpec.vouch``) is listed too. Such a subfolder made
    by a command that does not belong there (``CommandSpec.nests``: a fine-tune written to ``RUN/previews``) is
    listed itself, with a trailing ``/``: another command's complete output is the user's result."""
    folder = Path(folder)
    found = found if found is not None else owner(folder)
    if found is None:
        return sorted(p.name for p in folder.iterdir())
    spec = COMMANDS.get(found.command, CommandSpec())
    bad = list(found.foreign)
    if spec.vouch is not None:  # named like the command's outputs (a writer's draft aside), not vouched for
        bad += [n for n in found.ours
                if matches(n, spec.patterns) and not is_temp_name(n) and not spec.vouch(folder / n)]
    for name in found.ours:
        entry = folder / name
        if entry.is_dir() and not entry.is_symlink():  # a killed writer's folder (a folder swapped in whole, the
            real = final_name(name).name  # old one set aside) is judged as the one it stands for: it may hold the
            patterns = next((v for k, v in spec.inside.items() if fnmatch.fnmatchcase(real, k)), None)  # user's
            bad += [f"{name}/{p}" for p in _foreign_in_subfolder(entry, patterns, spec, real,
                                                                  spec.vouch_inside.get(real))]
    return bad


def links_inside(folder: PathLike, found: Owner) -> list[str]:
    """Links (relative paths) anywhere in ``folder``'s subfolders of ours (``found.ours``): the toolkit makes none,
    so each is the user's, and going on in the folder would write through or replace it (a ``checkpoints/last.ckpt``
    pointing at the user's own checkpoint)."""
    folder = Path(folder)
    links = []
    for name in found.ours:
        entry = folder / name
        if entry.is_dir() and not entry.is_symlink():
            for root, dirs, files in os.walk(entry):  # links to folders are listed, not followed
                links += [(Path(root) / n).relative_to(folder).as_posix() for n in dirs + files
                          if (Path(root) / n).is_symlink()]
    return sorted(links)


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


def _foreign_in_subfolder(sub: Path, patterns: tuple[str, ...] | None, spec: CommandSpec, rel: str,
                          vouch: Callable[[Path], bool] | None = None) -> list[str]:
    """What in ``sub`` (a subfolder of ours, at ``rel`` in a folder made by the command of ``spec``) the toolkit did
    not write; ``patterns``: what its command writes there (None: nothing, unless ``sub`` is a folder of the
    toolkit's own), a file of which is ours only when ``vouch`` (if given) says so."""
    if read_manifest(sub) is not None or patterns is None:
        return _nested(sub, spec, rel)
    bad: list[str] = []
    walked: list[str] = []  # its plain folders, to tell which of them hold nothing of ours
    ours: list[str] = []
    for root, dirs, files in os.walk(sub):
        here = Path(root)
        inner = here.relative_to(sub)
        if here != sub and not any(is_temp_name(part) for part in inner.parts):  # an empty draft folder is ours
            walked.append(inner.as_posix())
        for d in list(dirs):
            if (here / d).is_symlink():  # a link, never followed: the user's (below)
                files.append(d)
                dirs.remove(d)
            elif read_manifest(here / d) is not None:  # a folder of the toolkit's own: its own rule
                dirs.remove(d)
                at = (inner / d).as_posix()
                bad += [f"{at}/{p}" for p in _nested(here / d, spec, f"{rel}/{at}")]
        stands_for = "/".join(final_name(part).name for part in inner.parts)  # a killed writer's folder: as its own
        for f in files:
            path = (inner / f).as_posix()
            if (here / f).is_symlink():  # the toolkit makes no links, whatever the name
                bad.append(path)
            elif is_temp_name(f):
                ours.append(path)
            elif not matches(f"{stands_for}/{f}" if stands_for else f, patterns) or (
                    vouch is not None and not vouch(here / f)):
                bad.append(path)
            else:
                ours.append(path)
    # a folder with nothing of ours anywhere in it (an empty one, say) is the user's: named once, at its top (no
    # trailing /, which marks another command's output)
    held = {"/".join(parts[:k]) for parts in (p.split("/") for p in ours + bad) for k in range(1, len(parts))}
    empty = [d for d in walked if d not in held]
    bad += [d for d in empty if not any(d.startswith(f"{e}/") for e in empty)]
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
    entries = entry_names(found.manifest) + (found.ours if found.manifest is None else []) + list(names)
    entries = [e for e in entries if e not in BOOKKEEPING]
    atomic_write_text(folder / MANIFEST, _manifest_text(found.command, entries, old.get("created")))
