"""One writer per output folder: a second process that would resume, replace or add to a folder another command is
writing is refused, naming it; a killed holder leaves no stale lock; jobs that share a folder (predict) take turns
at the file they share."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from geomed_ssl.errors import OutputError
from geomed_ssl.outdirs import prepare_out_dir
from geomed_ssl.outlocks import LOCK, locked_briefly, released_after

HOLD = """
import sys, time
from geomed_ssl.outdirs import prepare_out_dir
prepare_out_dir(sys.argv[1], command=sys.argv[2], resume=sys.argv[2] == "embed")
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


def holder(folder: Path, command: str, seconds: float = 60) -> subprocess.Popen:
    """A process that prepares ``folder`` for ``command`` (taking its lock) and keeps it ``seconds``."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), command, str(seconds)], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline().strip() == "held"
    return proc


@contextlib.contextmanager
def held(folder: Path, command: str) -> Iterator[subprocess.Popen]:
    """A :func:`holder` for the ``with`` block, killed at its end (SIGKILL: the kernel lets go of its lock)."""
    proc = holder(folder, command)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_folder_in_use_is_refused_for_resume_and_overwrite_and_free_once_its_holder_is_killed(tmp_path) -> None:
    emb = tmp_path / "emb"
    with held(emb, "embed"):
        (emb / "manifest.json").write_text("{}")  # what the live run wrote
        with pytest.raises(OutputError, match=r"'.*emb' is in use by `geomed-ssl embed` \(process \d+ on this "
                                              r"machine, since .* UTC\); wait for it to finish, or choose another"):
            prepare_out_dir(emb, command="embed", resume=True)
        with pytest.raises(OutputError, match="in use by `geomed-ssl embed`"):
            prepare_out_dir(emb, command="embed", overwrite=True)
        assert (emb / "manifest.json").read_text() == "{}"  # nothing of the live run deleted
    with released_after():
        prepare_out_dir(emb, command="embed", resume=True)  # the kernel let go of the killed holder's lock
    assert not (emb / LOCK).exists()  # and a command that returns deletes its lock file


def test_two_new_runs_into_one_folder_the_second_stops_before_writing(tmp_path) -> None:
    run = tmp_path / "run"
    with held(run, "pretrain"):
        with pytest.raises(OutputError, match="in use by `geomed-ssl pretrain`"):
            prepare_out_dir(run, command="pretrain")  # the folder holds only a manifest yet: it looked new


def test_a_command_called_from_python_lets_its_folder_go_when_it_returns(tmp_path) -> None:
    with released_after():
        prepare_out_dir(tmp_path / "cmp", command="compare")
        assert (tmp_path / "cmp" / LOCK).is_file()
        prepare_out_dir(tmp_path / "cmp", command="compare", resume=True)  # this process holds it: no refusal
    proc = holder(tmp_path / "cmp", "compare", seconds=0)  # another process takes it at once
    proc.wait()


def test_jobs_sharing_a_folder_are_not_refused_and_take_turns_at_its_shared_file(tmp_path) -> None:
    out = tmp_path / "pred"
    with released_after():
        prepare_out_dir(out, command="predict")
    proc = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom geomed_ssl.outdirs import prepare_out_dir\nfrom geomed_ssl.outlocks import "
        "locked_briefly, released_after\nwith released_after():\n"
        "    prepare_out_dir(sys.argv[1], command='predict', resume=True)\n"
        "    with locked_briefly(sys.argv[1]):\n        print('held', flush=True)\n        time.sleep(1.5)\n"),
        str(out)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline().strip() == "held"
    with released_after():
        prepare_out_dir(out, command="predict", resume=True)  # this job shares the folder too
        start = time.monotonic()
        with locked_briefly(out):  # waits for the other job's read-merge-write to end
            waited = time.monotonic() - start
        proc.wait()
    assert waited > 0.5 and proc.returncode == 0
    assert sorted(os.listdir(out)) == [".geomed-ssl.json"]  # the last job to leave deleted both lock files


def test_the_lock_names_the_live_holder_not_a_killed_one(tmp_path) -> None:
    """A killed job leaves its name in the (unlocked) lock file; the next job to take the folder alone writes its
    own, so a refusal never sends the user after a dead process."""
    from geomed_ssl.outdirs import check_out_dir

    out = tmp_path / "pred"
    first = holder(out, "predict")
    first.kill()
    first.wait()
    with held(out, "predict") as second:
        with pytest.raises(OutputError, match=rf"in use by `geomed-ssl predict` \(process {second.pid} "):
            check_out_dir(out, command="evaluate")


def test_a_link_planted_as_the_lock_file_is_refused_and_its_target_untouched(tmp_path) -> None:
    """The lock file is opened without following links: a link under its name would have had the lock's text
    written into the file it points to (any file the user may write)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).symlink_to(victim)
    with pytest.raises(OutputError, match="is a link or a special file, not geomed-ssl's lock file"):
        prepare_out_dir(out, command="pretrain")
    assert victim.read_text() == "precious data"
    with released_after():
        prepare_out_dir(tmp_path / "fine", command="pretrain")  # a plain lock file, made and removed
    assert not (tmp_path / "fine" / LOCK).exists()


def test_a_new_folder_a_running_command_is_still_writing_is_not_taken_by_another(tmp_path) -> None:
    """A folder holding only our manifest counts as empty, unless a live command made it: a predict classifying
    its images before it writes predictions.csv (it holds the folder shared), or a pretrain holding its lock before
    its first file. Another predict goes on beside the first; a command that owns its folder does not."""
    from geomed_ssl.outdirs import check_out_dir
    from geomed_ssl.outfiles import host_tag

    out = tmp_path / "pred"
    with held(out, "predict"):
        for command in ("pretrain", "evaluate"):
            with pytest.raises(OutputError, match=r"'.*pred' is in use by `geomed-ssl predict` \(process \d+ on this"):
                check_out_dir(out, command=command)
        with released_after():
            assert check_out_dir(out, command="predict") == "create"
            prepare_out_dir(out, command="predict")  # a second job beside the first
    assert check_out_dir(out, command="pretrain") == "create"  # its holder is gone
    (out / f".partial-4242.{'0' * 8 if host_tag() != '0' * 8 else '1' * 8}-scene_pred.tif").write_bytes(b"half")
    assert check_out_dir(out, command="predict") == "create"  # another machine's leftover is no live writer
    run = tmp_path / "run"
    with held(run, "pretrain"):
        with pytest.raises(OutputError, match="in use by `geomed-ssl pretrain`"):
            check_out_dir(run, command="predict")
    assert check_out_dir(run, command="predict") == "create"


def test_a_second_predict_job_shares_a_folder_in_use_and_the_last_to_leave_deletes_the_lock(tmp_path) -> None:
    """While a predict job uses its folder, another predict job shares it and a command that owns its folders is
    refused (here by the folder's command, which is predict's)."""
    pred = tmp_path / "pred"
    with held(pred, "predict"):
        (pred / "scene_pred.tif").write_bytes(b"a map")  # the folder is no longer empty
        with pytest.raises(OutputError, match="holds the output of `geomed-ssl predict`"):
            prepare_out_dir(pred, command="embed", resume=True)
        with released_after():
            prepare_out_dir(pred, command="predict", resume=True)  # sharers share
    assert (pred / LOCK).exists()  # a killed holder leaves the file, unlocked: the next command takes it
    with released_after():
        prepare_out_dir(pred, command="predict", resume=True)
    assert not (pred / LOCK).exists()  # and the last sharer to let go deletes it


def test_a_sharer_that_leaves_first_takes_its_name_out_of_the_lock(tmp_path) -> None:
    from geomed_ssl.outdirs import check_out_dir

    out = tmp_path / "pred"
    with contextlib.ExitStack() as second:
        with released_after():
            prepare_out_dir(out, command="predict")  # the first job: its name goes in
            second.enter_context(held(out, "predict"))
        with pytest.raises(OutputError, match=r"in use by `geomed-ssl predict` jobs; wait"):  # the first job has
            check_out_dir(out, command="evaluate")  # returned; the second still runs


def test_a_library_merge_shares_the_folder_for_a_moment(tmp_path) -> None:
    """A call holding no lock (predict_files from Python) shares the folder while it merges: it goes on beside a
    running predict job at once, is refused while a command that owns the folder runs, and leaves no lock file."""
    out = tmp_path / "pred"
    with held(out, "predict"):
        start = time.monotonic()
        with locked_briefly(out):
            pass
        assert time.monotonic() - start < 2  # not the job's whole run
    with locked_briefly(out):
        pass
    assert not (out / LOCK).exists() and not (out / ".geomed-ssl.merge.lock").exists()
    owned = tmp_path / "emb"
    with held(owned, "embed"):
        with pytest.raises(OutputError, match="in use by `geomed-ssl embed`"):
            with locked_briefly(owned):
                pass
