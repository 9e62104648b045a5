"""Files and folders that appear under their final name only when complete, and the clean-up of what a killed writer
left. Every atomic write of the toolkit goes through here: outputs, metrics, checkpoints, exports, embedding parts.

Temporary names, the one rule (other modules ask :func:`is_temp_name`, never spell a temporary name themselves):

- ``.partial-<pid>.<host>-<name>``: ``name`` (a file or a folder) being written by process ``pid`` where
  :func:`host_tag` is ``host`` (8 hex digits: the machine, its boot and process-id namespace), in the target's own
  folder (same filesystem, so the final ``os.replace`` is atomic; the full suffix is kept so writers that go by the
  extension, GDAL, nibabel, matplotlib, still work);
- ``.replaced-<pid>.<host>-<name>``: the previous folder ``name`` for the instant a new one is swapped in
  (:func:`atomic_write_dir`); deleted once the new one is in place, restored by the clean-up when a kill came in
  between.

Nothing else counts as temporary, not even the same without ``.<host>``, which earlier versions wrote: a user's
``.partial-2024-draft.md`` has that form. Development versions before 2026-12-02 also wrote
``.<name>.tmp-<pid>-<hex>``, ``.<name>.<random>``, ``.<name>.old``, ``.<name>.tmp.npy``, ``<name>.tmp`` and
``.tmp-<pid>-<hex>`` (embedding parts); such names cannot tell their writer from a user's backup
(``.config.yaml.original``, ``metrics.csv.tmp``), so they are never deleted: a leftover stays where it is, and
``--overwrite`` names it and asks the user to move it.

A file is flushed to disk (fsync) and renamed over the target, and the rename is made durable by syncing the
folder. A failure at any point deletes the partial file and leaves the target as it was. Files get the modes a plain
``open`` gives under the user's umask. :func:`remove_stale_partials` deletes what writers that are gone left: here,
those of processes that no longer run (or of an earlier process that had this one's id in the same process-id
namespace); from another machine or container sharing the folder (a cluster's network filesystem), whose processes
cannot be asked, only those untouched for :data:`FOREIGN_HOST_STALE_S`.

API::

    partial_path(path) -> Path
    commit_partial(tmp, path) -> Path (a finished partial file or folder flushed and renamed: for writers kept open)
    atomic_path(path) -> context manager yielding the temporary Path (the caller creates the file)
    atomic_write(path, write) -> Path (``write(binary file)``; the file is created here, never through a link)
    atomic_write_text(path, text) -> Path
    replace_with_copy(src, dst) -> None (a hard link when possible, else a copy)
    atomic_write_dir(target, write) -> None (``write(tmp_dir)``, then the folder is swapped in)
    is_temp_name(name) -> bool
    remove_stale_partials(folder, only=None) -> list[Path]
    scratch_dir(tag) -> context manager yielding a private folder in the system's temporary folder
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Collection, Iterator

from geomed_ssl.errors import write_error
from geomed_ssl.permissions import apply_umask

log = logging.getLogger("geomed_ssl")
PARTIAL, REPLACED = ".partial-", ".replaced-"
_OURS = re.compile(rf"^({re.escape(PARTIAL)}|{re.escape(REPLACED)})(\d+)\.([0-9a-f]{{8}})-(.+)$")
FOREIGN_HOST_STALE_S = 24 * 3600  # another machine's temporary entry untouched this long: its writer is gone
PathLike = str | os.PathLike
_MINE: set[str] = set()  # temporary names this process made (another process with our id may have left others)


@functools.lru_cache(maxsize=None)
def host_tag() -> str:
    """8 hex digits naming where process ids mean something: this machine (its name and, on Linux, its boot) and
    this process-id namespace (containers sharing the host's name have their own), in every temporary name. A
    folder on a filesystem shared by several machines or containers holds writers whose ids mean nothing here."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:8]


def _temp_name(kind: str, path: Path) -> Path:
    tmp = path.with_name(f"{kind}{os.getpid()}.{host_tag()}-{path.name}")
    _MINE.add(str(tmp.absolute()))
    return tmp


def partial_path(path: PathLike) -> Path:
    """The temporary name of ``path`` while it is written: hidden, in the same folder, full suffix kept (.tif,
    .nii.gz, .png), with this process's id and machine so a later run can tell a killed writer's leftovers."""
    return _temp_name(PARTIAL, Path(path))


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary name of ours (see the module docstring): exactly that form, so a user's
    ``.partial-1st-draft.md`` or ``.partial-2024-draft.md`` is not one."""
    return _OURS.match(name) is not None


def final_name(path: PathLike) -> Path:
    """The path a temporary name stands for (``.partial-<pid>.<host>-x.tif`` -> ``x.tif``); other paths as given."""
    path = Path(path)
    found = _OURS.match(path.name)
    return path.with_name(found.group(4)) if found else path


def fsync_dir(folder: PathLike) -> None:
    """Make a rename in ``folder`` durable (best effort: some filesystems cannot open or sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: PathLike) -> None:
    """Flush a finished file, or every file of a finished folder and the folders themselves, to disk: after a
    power cut the final name never holds a truncated file."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        if not path.is_symlink():
            _fsync_file(path)
        return
    for root, _, files in os.walk(path):
        for f in files:
            if stat.S_ISREG(os.lstat(os.path.join(root, f)).st_mode):  # not a link, a pipe (open would block), ...
                _fsync_file(Path(root) / f)
        fsync_dir(root)


def _fsync_file(path: Path) -> None:
    try:
        fh = open(path, "rb+")  # Windows flushes only a handle open for writing
    except PermissionError:  # a umask that leaves new files read-only: POSIX syncs a read handle too
        fh = open(path, "rb")
    with fh:
        try:
            os.fsync(fh.fileno())
        except OSError:  # Windows refuses a read handle: best effort there, as for folders
            if os.name != "nt":
                raise


def commit_partial(tmp: PathLike, path: PathLike) -> Path:
    """Flush the finished file ``tmp`` (a :func:`partial_path`) to disk and rename it to ``path``, durably. A
    finished folder is renamed to ``path`` the same way, provided ``path`` does not exist or is an empty folder."""
    tmp, path = Path(tmp), Path(path)
    fsync_tree(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def as_write_error(err: BaseException, path: PathLike) -> OSError | None:
    """The file-system failure behind ``err`` (a full disk, also one a library reports only in words) as an
    OSError naming the final file: ``err``'s own file, or ``path`` (:func:`geomed_ssl.errors.write_error`); None
    when ``err`` is not one."""
    named = getattr(err, "filename", None)
    return write_error(err, final_name(named) if isinstance(err, OSError) and named else path)


@contextmanager
def naming_write_errors(path: PathLike) -> Iterator[None]:
    """Within the block, a file-system failure (:func:`as_write_error`) is raised as an OSError naming ``path``;
    anything else passes as it is."""
    try:
        yield
    except Exception as err:
        failure = as_write_error(err, path)
        if failure is not None:
            raise failure from err
        raise


@contextmanager
def atomic_paths(paths: list[PathLike]) -> Iterator[list[Path]]:
    """Yield a temporary path beside each of ``paths``; when the block ends without error every file is flushed to
    disk and only then are all renamed to their final names (files that belong together, a class map and its
    probabilities, never stand as a new one beside an old one), else all are deleted. A file-system failure is
    raised as an OSError naming the final file (:func:`as_write_error`)."""
    finals = [Path(p) for p in paths]
    tmps = [partial_path(p) for p in finals]
    try:
        yield tmps
        for tmp in tmps:
            fsync_tree(tmp)
        for path in finals:  # checked before any rename: a folder in one file's place keeps every old file
            if path.is_dir() and not path.is_symlink():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        for tmp, path in zip(tmps, finals):
            os.replace(tmp, path)
        for folder in dict.fromkeys(path.parent for path in finals):
            fsync_dir(folder)
    except BaseException as err:
        failure = as_write_error(err, finals[0])  # before the drafts go: their space is not the disk's
        for tmp in tmps:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # a draft name the file system refused was never made
                pass
        if failure is not None:
            raise failure from err
        raise


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error the file is flushed to disk and
    renamed to ``path`` (so ``path`` is either the old file or the complete new one), else it is deleted; a
    file-system failure is raised as an OSError naming ``path`` (:func:`atomic_paths`)."""
    with atomic_paths([path]) as (tmp,):
        yield tmp


def atomic_write(path: PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """``write(file)`` into a new temporary file beside ``path`` (created here with the umask's permissions, never
    through an existing file or link), then fsync and rename it over ``path`` (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.unlink(missing_ok=True)  # a leftover of this very process (pid reuse): ours to replace
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
    return Path(path)


def save_figure(fig: Any, path: PathLike, **savefig: Any) -> Path:
    """A matplotlib figure laid out (``tight_layout``) and saved to ``path`` through :func:`atomic_path`. A class or
    file name in a script the font lacks (Chinese, emoji) is drawn as boxes, without matplotlib's two stderr lines
    per missing glyph."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, **savefig)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def replace_with_copy(src: PathLike, dst: PathLike) -> None:
    """Make ``dst`` a copy of the finished file ``src``, atomically: a hard link when the filesystem has them (no
    data copied; a later save of either replaces its own name only), else a copy."""
    src, dst = Path(src), Path(dst)
    tmp = partial_path(dst)
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)

        def copy(f: BinaryIO) -> None:
            with src.open("rb") as s:
                shutil.copyfileobj(s, f, 16 * 2**20)

        atomic_write(dst, copy)
        return
    fsync_dir(dst.parent)


def atomic_write_dir(target: PathLike, write: Callable[[Path], Any], recorded: Collection[str] = ()) -> None:
    """Call ``write(tmp_dir)`` then swap ``tmp_dir`` into ``target``, so a kill never leaves a half-written folder.

    The temporary folder is ``.partial-<pid>.<host>-<name>`` beside ``target``; an existing ``target`` is moved
    aside to ``.replaced-<pid>.<host>-<name>`` for the swap and deleted after it, so on success only ``target`` is
    left. Entries of the old ``target`` that ``write`` did not make (a user's notes) are carried into the new one
    first, as hard links where the filesystem has them, so no kill at any point loses them. What a killed swap of
    this target left is cleaned first (:func:`remove_stale_partials`). The files get the modes the user's umask
    gives new files (not safetensors' private 0600); a replaced folder's own mode and group (a group's setgid
    folder) are kept where this user may set them. A link is followed (the folder it names is written; the link
    stays). An empty folder or a mount point is never swapped (:func:`_fill_in_place`). ``recorded``: entries the
    old folder's manifest records as the toolkit's (an ``attention`` PNG written into it), not carried: they go."""
    target = Path(target)
    if target.is_symlink():
        target = target.resolve()
    if target.is_dir():
        remove_stale_partials(target, only=STAGE)  # a killed in-place fill's staging folder
    if target.is_dir() and (os.path.ismount(target) or all(_OURS.match(e.name) for e in target.iterdir())):
        _fill_in_place(target, write)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target.parent, only=target.name)
    tmp, old = partial_path(target), _temp_name(REPLACED, target)
    for leftover in (tmp, old):  # this very process's (pid reuse): ours to replace
        _remove(leftover)
    tmp.mkdir()
    try:
        previous = target.stat() if target.is_dir() else None
        if previous is not None:  # before ``write``: its files take the folder's group where it is setgid
            _keep_mode_and_group(tmp, previous)
        with naming_write_errors(target):
            write(tmp)
            apply_umask(tmp)
            fsync_tree(tmp)  # what ``write`` made; carried entries are the user's, already on disk
        if previous is not None:
            _carry_foreign(target, tmp, set(recorded))
            _keep_mode_and_group(tmp, previous)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        _remove(tmp)
        _remove(old)


STAGE = "staging"  # the temporary folder of an in-place fill, inside the target: .partial-<pid>.<host>-staging


def _fill_in_place(target: Path, write: Callable[[Path], Any]) -> None:
    """``write`` into a temporary folder inside ``target`` (same filesystem, so every rename is atomic), then move
    its entries up one by one: the manifest first (a kill midway leaves a folder the toolkit knows as its own),
    ``config.json``, what loaders look for, last. The folder itself (its mode, group, mount) is never replaced."""
    stage = partial_path(target / STAGE)
    _remove(stage)
    stage.mkdir()
    try:
        with naming_write_errors(target):
            write(stage)
            apply_umask(stage)
            fsync_tree(stage)
        if (stage / "config.json").exists():  # a refill: never new weights beside the old config, even briefly
            (target / "config.json").unlink(missing_ok=True)
        for entry in sorted(stage.iterdir(), key=lambda e: (e.name == "config.json", e.name)):
            dest = target / entry.name
            if dest.is_dir() and not dest.is_symlink():  # a subfolder an earlier export wrote here
                shutil.rmtree(dest)
            os.replace(entry, dest)
        fsync_dir(target)
    finally:
        _remove(stage)


def _keep_mode_and_group(folder: Path, previous: os.stat_result) -> None:
    try:
        os.chown(folder, -1, previous.st_gid)
    except (OSError, AttributeError):  # not this user's group, or no chown (Windows): the mode is still kept
        pass
    try:
        os.chmod(folder, stat.S_IMODE(previous.st_mode))
    except OSError:  # a bit this user may not set (another group's setgid)
        pass


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry_foreign(old: Path, new: Path, recorded: set[str]) -> None:
    """Hard-link (else copy) into ``new`` every entry of ``old`` whose name ``new`` does not hold (a killed writer's
    temporary entry of ours is not carried). What cannot be carried (a folder that cannot be read, a pipe on a
    filesystem without hard links) is named in a warning: the export itself never fails for it. The ``recorded``
    entries (the toolkit's, by ``old``'s manifest) go with ``old``, as its ``--overwrite`` promises."""
    for entry in old.iterdir():
        dst = new / entry.name
        if dst.exists() or dst.is_symlink() or _OURS.match(entry.name) or entry.name in recorded:
            continue
        try:
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(entry), dst)
            elif stat.S_ISDIR(mode):
                shutil.copytree(entry, dst, symlinks=True, copy_function=_link_or_copy)
            elif stat.S_ISREG(mode):
                _link_or_copy(str(entry), str(dst))
            else:  # a pipe or socket: a hard link only (a copy would read from it)
                os.link(entry, dst)
        except (OSError, shutil.Error) as err:
            log.warning("warning: '%s' (not written by geomed-ssl) was not kept when '%s' was replaced (%s); keep "
                        "your own files outside the toolkit's folders.", entry.name, old.name, err)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _writer_gone(entry: Path, pid: int, host: str) -> bool:
    """Whether the process that named the temporary ``entry`` is gone (see the module's docstring). Windows, where
    processes are not asked (:func:`_alive`), goes by age alone."""
    if host != host_tag() or os.name == "nt":
        try:
            return time.time() - entry.lstat().st_mtime > FOREIGN_HOST_STALE_S
        except OSError:
            return False
    if pid == os.getpid():  # ours, or left by an earlier process with our id (pid reuse, a container's pid 1)
        return str(entry.absolute()) not in _MINE
    return not _alive(pid)


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: another process is never judged gone
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OverflowError:
        return False
    return True


def remove_stale_partials(folder: PathLike, only: str | None = None) -> list[Path]:
    """Delete what killed writers left in ``folder``: ``.partial-<pid>.<host>-*`` files and folders whose process
    is gone (:func:`_writer_gone`; a ``.replaced-...-<name>`` folder is moved back to ``name`` when a kill left
    ``name`` missing, else deleted). Live processes' files and any other names are left alone; ``only`` limits the
    clean-up to the temporary names of that one entry (for a folder the toolkit does not own, such as the parent of
    an export). Returns the deleted paths."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        match = _OURS.match(entry.name)
        if not (match and only in (None, match.group(4)) and _writer_gone(entry, int(match.group(2)),
                                                                          match.group(3))):
            continue
        original = folder / match.group(4)
        if match.group(1) == REPLACED and entry.is_dir() and not (original.exists() or original.is_symlink()):
            os.replace(entry, original)  # killed mid-swap: the previous folder comes back
            continue
        _remove(entry)
        removed.append(entry)
    return removed


@contextmanager
def scratch_dir(tag: str) -> Iterator[Path]:
    """A working folder ``geomed-<tag>-<pid>.<host>-*`` in the system's temporary folder, deleted when the block
    ends; what killed processes (``kill -9``, the out-of-memory killer) left under the same tag is deleted first."""
    root = Path(tempfile.gettempdir())
    left = re.compile(rf"^geomed-{re.escape(tag)}-(\d+)\.([0-9a-f]{{8}})-")
    for entry in root.glob(f"geomed-{tag}-*"):
        match = left.match(entry.name)
        if (match and entry.is_dir() and not entry.is_symlink()
                and _writer_gone(entry, int(match.group(1)), match.group(2))):
            shutil.rmtree(entry, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"geomed-{tag}-{os.getpid()}.{host_tag()}-") as tmp:
        _MINE.add(str(Path(tmp).absolute()))
        yield Path(tmp)
