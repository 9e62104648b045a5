"""What every ``geomed-ssl`` command shares: the ``--set`` and ``--strict`` options, the numeric options' bounds
the one-line error handling (:func:`user_errors`), and the
process-wide settings every command starts with (Slurm's warning signal, rasterio's plain-TIFF warning)."""

from __future__ import annotations

import errno
import functools
import os
import re
import tempfile
import warnings
from inspect import signature
from pathlib import Path
from typing import Any, Callable

import typer

from geomed_ssl.config.sections import STEPS
from geomed_ssl.errors import WRITE_ERRNOS, GeomedError, RunStopped, message_of
from geomed_ssl.once import command_scope

STATE: dict[str, Any] = {"debug": False}  # the global --debug (set by geomed_ssl.cli.main)

SetOpt = typer.Option(None, "--set", help="Override a recipe key: section.key=value (repeatable).")
StrictOpt = typer.Option(False, "--strict", help="Fail when any input file has a problem or band names are "
                         "assigned by position (default: skip / warn).")

# The values numeric options allow, by parameter name (one name is one option in every command); checked before
# a command runs, with the same one-line message as recipe keys.
OPTION_BOUNDS: dict[str, str] = {
    "batch_size": ">= 1",  # embed, predict
    "overlap": "[0, 1)",  # predict
    "pca": ">= 0",  # embed
    "min_valid": "[0, 1]",  # embed
    "k": ">= 2",  # cluster
    "min_cluster_size": ">= 2",  # cluster (HDBSCAN)
    "seed": "[0, 4294967295]",  # cluster (numpy / scikit-learn seeds)
    "top": ">= 1",  # similar
    "per_class": ">= 1",  # finetune --labels-per-class
    "fraction": "(0, 1]",  # finetune --label-fraction
    "unfreeze_after": ">= 0",  # finetune segment
    "steps": STEPS,  # demo (its train.max_steps)
    "finetune_steps": STEPS,  # demo (its finetune.max_steps)
}


def option_flags(fn: Callable) -> dict[str, str]:
    """``{parameter: its longest flag}`` of a command's options (``per_class`` -> ``--labels-per-class``)."""
    flags = {}
    for name, param in signature(fn).parameters.items():
        decls = [d for d in getattr(param.default, "param_decls", None) or () if d.startswith("-")]
        flags[name] = max(decls, key=len) if decls else f"--{name.replace('_', '-')}"
    return flags


def check_option_bounds(values: dict[str, Any], flags: dict[str, str]) -> None:
    """A ConfigError naming the option (as typed on the command line) whose value is outside ``OPTION_BOUNDS``."""
    from geomed_ssl.config import Spec, check_value
    from geomed_ssl.config.fields import parse_bounds

    for name, bounds in OPTION_BOUNDS.items():
        value = values.get(name)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        kind = int if isinstance(value, int) else float
        check_value(value, kind, Spec(bounds=parse_bounds(bounds)), flags.get(name, name), "")


def signal_exit_code(name: str | None) -> int:
    """The shell's code for a run stopped by signal ``name`` (128 + its number: SIGINT 130, SIGTERM 143)."""
    import signal

    try:
        return 128 + int(signal.Signals[name or ""])
    except KeyError:
        return 1


def user_errors(fn: Callable) -> Callable:
    """Check the numeric options, then run the command; print a GeomedError as one line and exit 2, a stop (a
    RunStopped, a Ctrl-C) as one line and exit 130 / 143; show the traceback only with --debug."""

    flags = option_flags(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            check_option_bounds(kwargs, flags)
            with command_scope():
                return fn(*args, **kwargs)
        except GeomedError as err:
            if STATE["debug"]:
                raise
            typer.secho(f"error: {message_of(err)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
        except RunStopped as stop:
            typer.secho(f"stopped: {stop}", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(code=signal_exit_code(stop.signal)) from None
        except KeyboardInterrupt:  # a command without a stop of its own
            if STATE["debug"]:
                raise
            typer.secho(f"stopped: {interrupted('SIGINT')}", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(code=signal_exit_code("SIGINT")) from None
        except OSError as err:
            if STATE["debug"] or err.errno not in WRITE_ERRNOS:
                raise
            typer.secho(f"error: {write_failure(err)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None

    return wrapper


def interrupted(name: str) -> str:
    """The line of a command without a training loop stopped by signal ``name``."""
    how = "Ctrl-C" if name == "SIGINT" else name
    return (f"interrupted ({how}). Every output file written so far is complete (none takes its final name before "
            "it is); run the same command again to go on, with --overwrite where it asks for it.")


def terminable(fn: Callable) -> Callable:
    """A SIGTERM (a scheduler's, ``kill``) ends the command as a Ctrl-C does: one line and exit 143, not a silent
    kill, wherever it comes but inside a training loop, where Lightning handles it (``process.stops_as``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from geomed_ssl.process import stops_as

        with stops_as(interrupted):
            return fn(*args, **kwargs)

    return wrapper


def _in_scratch(path: str) -> bool:
    """Whether ``path`` lies in one of the toolkit's working folders in the temporary folder
    (``outfiles.scratch_dir``: ``geomed-<tag>-*``), not merely under it (an --out in /tmp is the user's)."""
    try:
        rel = Path(os.path.realpath(path)).relative_to(os.path.realpath(tempfile.gettempdir()))
    except (OSError, ValueError):
        return False
    return bool(rel.parts) and re.match(r"geomed-[A-Za-z0-9_]+-\d+\.[0-9a-f]{8}-", rel.parts[0]) is not None


def progress_shown() -> bool:
    """Whether a command shows its progress bars: not under ``--quiet`` (which sets the root logger to warnings)."""
    import logging

    return logging.getLogger().level <= logging.INFO


def write_failure(err: OSError) -> str:
    """One line for a file-system refusal (permission, read-only, full disk) naming the path and the way out."""
    from geomed_ssl.outfiles import final_name

    where = f" '{final_name(err.filename)}'" if err.filename else ""  # the file the user asked for, not its draft
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        name = str(final_name(err.filename)) if err.filename else ""
        if name.endswith(".ckpt") or "checkpoints" in Path(name).parts:
            return (f"no space left to write{where} ({err.strerror}); free some space (older "
                    "checkpoints/step-*.ckpt of a run can go; train.keep_checkpoints keeps fewer), then continue "
                    "the run with --resume.")
        if name and _in_scratch(name):
            return (f"no space left to write{where} ({err.strerror}) in the temporary folder; point TMPDIR at a "
                    "disk with room (export TMPDIR=/path/with/space) and run the command again.")
        return f"no space left to write{where} ({err.strerror}); free some space or choose another --out."
    if err.errno == errno.EFBIG:
        return (f"cannot write{where}: {err.strerror} for this file system (FAT32 / exFAT drives hold files of at "
                "most 4 GB) or for your `ulimit -f`; choose another --out.")
    if err.errno == errno.EIO:
        return (f"cannot write{where}: {err.strerror} (the file came out unreadable: a full disk, or a failing or "
                "disconnected drive); free some space or choose another --out.")
    if err.errno == errno.ENAMETOOLONG:  # often only the draft's name: the final one plus ~40 bytes of prefix
        return (f"cannot write{where}: its name is too long for this file system once geomed-ssl's temporary prefix "
                "(about 40 bytes, while it is written) is added; choose a shorter name.")
    if err.errno == errno.ELOOP:
        return f"cannot write{where}: {err.strerror} (symbolic links that point in a circle); choose another --out."
    if err.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
        return (f"cannot write{where}: {err.strerror} (a folder stands where a file is to be written, or a file "
                "where a folder is); move it away or choose another --out.")
    return (f"cannot write{where}: {err.strerror}; choose a folder you can write to (--out), or change its "
            "permissions.")


def name_list(text: str | None, option: str) -> list[str] | None:
    """A comma-separated option (``--band-names B02,B03``) as its stripped entries; an empty entry is an error."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise GeomedError(f"{option} '{text}': give a comma-separated list without empty entries, e.g. B02,B03,B04.")
    return names


def ignore_slurm_warning() -> None:
    """SIGUSR1, Slurm's advance warning (``--signal=USR1@N``), ignored for the whole command: its default action
    would kill a fine-tune, a prediction or an export midway. Pretraining replaces this while it trains: there it
    is a stop with a checkpoint (``train.checkpointing.StopRequest``)."""
    import signal

    if hasattr(signal, "SIGUSR1"):
        try:
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        except ValueError:  # not the main thread (an embedding application's worker thread)
            pass


def quiet_plain_tiffs() -> tuple:
    """Ignore rasterio's NotGeoreferencedWarning (by its message: rasterio need not be imported); the filter added."""
    warnings.filterwarnings("ignore", message="Dataset has no geotransform")
    return warnings.filters[0]


def drop_filter(entry: tuple) -> None:
    """Remove one warnings filter :func:`quiet_plain_tiffs` added, if it is still there."""
    if entry in warnings.filters:
        warnings.filters.remove(entry)
        mutated = getattr(warnings, "_filters_mutated", None)  # what filterwarnings calls: caches see the change
        if mutated is not None:
            mutated()
