"""User-facing errors: the CLI prints their message (no traceback) and exits with code 2; and which file-system
failures while writing an output it prints as one line naming the file (:func:`write_error`)."""

import errno as _errno
import os as _os
import shutil as _shutil


class GeomedError(Exception):
    """An error the user can fix: bad data, bad config, a refused operation. The message says what and how."""


class ConfigError(GeomedError):
    """A recipe or override is invalid."""


class DataError(GeomedError):
    """Input files are missing, unreadable or inconsistent."""


class TrainingError(GeomedError):
    """Training could not go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class OutputError(GeomedError):
    """An output path is refused: it is an input, holds one, or is a folder the toolkit did not make (or made for
    another command)."""


def message_of(err: BaseException) -> str:
    """``err``'s message; for one a DataLoader worker raised, which PyTorch raises again in the main process with
    the worker's whole traceback as its message, only the message the worker's error had."""
    text = str(err)
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return text
    tail = f"{type(err).__module__}.{type(err).__qualname__}: "
    return text[text.rindex(tail) + len(tail):].strip() if tail in text else text


def innermost_message(err: BaseException) -> str:
    """The innermost message of an exception chain, one line: GDAL puts the useful one deepest (rasterio's
    "Read failed. See previous exception for details." wraps the error that says what failed)."""
    msgs: list[str] = []
    seen: BaseException | None = err
    while seen is not None and len(msgs) < 8:
        text = str(seen).strip()
        msgs.append(text.splitlines()[0] if text else type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    return msgs[-1][:240]


class RunStopped(Exception):
    """A run stopped by a signal (a scheduler's SIGTERM, Ctrl-C) before it finished. Not a user error: the CLI prints
    the message, which says what was kept and how to go on, and exits 128 + the signal's number (143, 130)."""

    def __init__(self, signal_name: str, message: str):
        super().__init__(message)
        self.signal = signal_name


# -- file-system failures while writing an output ------------------------------------------------------------------
# refusals the CLI prints as one line naming the file (permission, read-only, full disk, quota, a size limit, a
# folder or a file standing where the other is to be written, a name too long, a loop of links)
WRITE_ERRNOS = {_errno.EACCES, _errno.EPERM, _errno.EROFS, _errno.ENOSPC, _errno.EDQUOT, _errno.EFBIG, _errno.EIO,
                _errno.EISDIR, _errno.ENOTDIR, _errno.EEXIST, _errno.ENAMETOOLONG, _errno.ELOOP}
# what libraries that wrap the OSError (torch, safetensors, GDAL) leave of it in their messages
_WRAPPED = (("no space left on device", _errno.ENOSPC), ("os error 28", _errno.ENOSPC),
            ("disk quota exceeded", _errno.EDQUOT), ("file too large", _errno.EFBIG))
FULL_DISK_BYTES = 1 << 20  # a write that failed with less free space than this is taken for a full disk
# the writers whose failures on a full disk may carry neither an errno nor its words (torch raises RuntimeError)
_LIBRARIES = {"torch", "safetensors", "rasterio", "pyarrow", "nibabel", "PIL", "matplotlib", "numpy"}


def write_error(err: BaseException, path: str | _os.PathLike) -> OSError | None:
    """The file-system failure behind ``err``, raised while writing ``path``, as an OSError naming ``path`` (the CLI
    prints it as one line): ``err`` or an OSError in its chain, or what a library wrapping one says of it (torch,
    safetensors and GDAL keep only its text), or, when nothing says why, a disk left with almost no free space;
    None when it is none of these (a bug, a bad input: let it show)."""
    if not isinstance(err, Exception) or isinstance(err, (GeomedError, RunStopped)):
        return None  # an interruption, or a failure that says what it is already
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in WRITE_ERRNOS:
            return OSError(seen.errno, seen.strerror or _os.strerror(seen.errno), str(path))
        text = str(seen).lower()
        for needle, code in _WRAPPED:
            if needle in text:
                return OSError(code, _os.strerror(code), str(path))
        seen = seen.__cause__ or seen.__context__
    library = type(err).__module__.split(".")[0] in _LIBRARIES
    if not (library or isinstance(err, (RuntimeError, OSError))):
        return None  # a TypeError, a KeyError: a bug to show, whatever the free space
    try:
        full = _shutil.disk_usage(_os.path.dirname(_os.path.abspath(path)) or ".").free < FULL_DISK_BYTES
    except OSError:
        return None
    return OSError(_errno.ENOSPC, _os.strerror(_errno.ENOSPC), str(path)) if full else None
