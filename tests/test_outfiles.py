"""Files and folders written under a temporary name and renamed when complete; the clean-up of what a killed writer
left."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from geomed_ssl.outfiles import (atomic_path, atomic_write, atomic_write_dir, atomic_write_text, host_tag,
                                 is_temp_name, partial_path, remove_stale_partials, replace_with_copy)


def dead_pid() -> int:
    """The id of a process that has exited."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert tmp.parent == tmp_path and tmp.name.endswith("summary.json") and target.read_text() == "old"
    assert target.read_text() == "new"


def test_stale_partials_of_dead_processes_are_removed_and_nothing_else(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".partial-{int(dead.stdout)}.{host_tag()}-scene_pred.tif"
    live = partial_path(tmp_path / "other_pred.tif")  # this process is alive
    keep = [live, tmp_path / ".partial-notes.txt", tmp_path / "scene_pred.tif"]
    for path in [stale, *keep]:
        path.write_bytes(b"x")
    assert remove_stale_partials(tmp_path) == [stale]
    assert all(p.exists() for p in keep) and not stale.exists()
    assert os.getpid() != int(dead.stdout)


def test_atomic_write_creates_a_file_with_the_umask_modes_and_no_leftover(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    old = os.umask(0o027)
    try:
        atomic_write(target, lambda f: f.write(b"weights"))
    finally:
        os.umask(old)
    assert target.read_bytes() == b"weights" and target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_atomic_write_never_writes_through_a_link_at_its_temporary_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    partial_path(tmp_path / "out.bin").symlink_to(victim)  # planted where the write's temporary file goes
    atomic_write(tmp_path / "out.bin", lambda f: f.write(b"new"))
    assert victim.read_text() == "keep" and (tmp_path / "out.bin").read_bytes() == b"new"
    assert not partial_path(tmp_path / "out.bin").exists()


def test_replace_with_copy_gives_the_copy_the_finished_contents(tmp_path: Path) -> None:
    step, last = tmp_path / "step-000005.ckpt", tmp_path / "last.ckpt"
    step.write_bytes(b"step 5")
    last.write_bytes(b"step 0")
    replace_with_copy(step, last)
    assert last.read_bytes() == b"step 5"
    atomic_write(step, lambda f: f.write(b"rewritten"))  # a later save of one name leaves the other alone
    assert last.read_bytes() == b"step 5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "step-000005.ckpt"]


def test_atomic_write_dir_swaps_a_complete_folder_in_with_umask_modes(tmp_path: Path) -> None:
    target = tmp_path / "encoder"
    target.mkdir()
    (target / "config.json").write_text("old")

    def killed(folder: Path) -> None:
        (folder / "half.txt").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write_dir(target, killed)
    assert [p.name for p in target.iterdir()] == ["config.json"] and [p.name for p in tmp_path.iterdir()] == ["encoder"]
    assert (target / "config.json").read_text() == "old"
    old = os.umask(0o022)
    try:
        atomic_write_dir(target, lambda d: (d / "config.json").write_text("{}"))
    finally:
        os.umask(old)
    assert [p.name for p in target.iterdir()] == ["config.json"] and [p.name for p in tmp_path.iterdir()] == ["encoder"]
    assert (target / "config.json").read_text() == "{}"
    assert target.stat().st_mode & 0o777 == 0o755 and (target / "config.json").stat().st_mode & 0o777 == 0o644


def test_atomic_write_dir_leaves_no_temporary_sibling_while_writing_or_after(tmp_path: Path) -> None:
    target = tmp_path / "export"
    target.mkdir()
    (target / "new.txt").write_text("old")
    seen = []

    def write(folder: Path) -> None:
        seen.extend(p.name for p in tmp_path.iterdir() if p.name != "export")
        (folder / "new.txt").write_text("new")

    atomic_write_dir(target, write)
    assert all(is_temp_name(name) for name in seen) and seen  # the temporary folder carries a temporary name
    assert [p.name for p in tmp_path.iterdir()] == ["export"] and [p.name for p in target.iterdir()] == ["new.txt"]


def test_a_swap_killed_midway_is_undone_by_the_next_write_of_that_folder(tmp_path: Path) -> None:
    pid = dead_pid()
    target, notes = tmp_path / "export", tmp_path / ".partial-notes.txt"
    (tmp_path / f".replaced-{pid}.{host_tag()}-export").mkdir()  # killed after moving the old folder aside
    (tmp_path / f".replaced-{pid}.{host_tag()}-export" / "old.txt").write_text("old")
    (tmp_path / f".partial-{pid}.{host_tag()}-export").mkdir()
    (tmp_path / f".partial-{pid}.{host_tag()}-other").mkdir()  # another target's: not this write's to clean
    notes.write_text("not ours")
    assert remove_stale_partials(tmp_path, only="export") == [tmp_path / f".partial-{pid}.{host_tag()}-export"]
    assert (target / "old.txt").read_text() == "old"  # the previous folder is back under its name
    atomic_write_dir(target, lambda d: (d / "new.txt").write_text("new"))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([".partial-notes.txt", f".partial-{pid}.{host_tag()}-other", "export"])


def test_only_partial_names_of_gone_writers_are_removed_never_names_a_user_might_give(tmp_path: Path) -> None:
    """Backup-like names (what development versions once wrote, or a user's own copies) are never deleted: their
    writer cannot be told from the name."""
    dead = dead_pid()
    stale = [f".partial-{dead}.{host_tag()}-metrics.csv", f".replaced-{dead}.{host_tag()}-old_notes"]
    users = [".config.yaml.original", ".metrics.csv.tmp-17-00ff00", "metrics.csv.tmp", ".encoder.k2j3h4_9",
             ".encoder.old", ".tmp-17-0a1b2c3d", ".vectors.npy.tmp.npy", ".partial-notes.txt", ".hidden",
             f".partial-{dead}-draft.md", ".replaced-7-thesis"]  # no host tag: the form of a user's name too
    for name in stale + users:
        (tmp_path / name).write_text("x")
    assert sorted(p.name for p in remove_stale_partials(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(users)
    assert is_temp_name(stale[0]) and not any(is_temp_name(u) for u in users)


def test_atomic_write_dir_keeps_what_the_user_put_in_the_folder_it_replaces(tmp_path: Path) -> None:
    target = tmp_path / "encoder"
    atomic_write_dir(target, lambda d: (d / "model.safetensors").write_text("v1"))
    (target / "my_notes.txt").write_text("mine")
    (target / "figures").mkdir()
    (target / "figures" / "a.png").write_text("png")
    atomic_write_dir(target, lambda d: (d / "model.safetensors").write_text("v2"))
    assert (target / "model.safetensors").read_text() == "v2"  # ours replaced
    assert (target / "my_notes.txt").read_text() == "mine" and (target / "figures" / "a.png").read_text() == "png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder"]


def test_a_folder_swap_neither_hangs_on_a_pipe_nor_drops_a_users_partial_named_file(tmp_path: Path, caplog) -> None:
    target = tmp_path / "encoder"
    atomic_write_dir(target, lambda d: (d / "model.safetensors").write_text("v1"))
    os.mkfifo(target / "pipe")  # open() on it would block the export forever
    (target / ".partial-notes.txt").write_text("mine")  # no process id: not a writer's leftover
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        atomic_write_dir(target, lambda d: (d / "model.safetensors").write_text("v2"))
    assert (target / "model.safetensors").read_text() == "v2" and (target / ".partial-notes.txt").read_text() == "mine"
    assert os.path.exists(target / "pipe")  # hard-linked like any other entry


def test_another_machines_partials_are_kept_until_untouched_for_a_day(tmp_path: Path) -> None:
    """On a filesystem shared by several machines a process id of another machine means nothing here: its
    temporary files go only once nobody has touched them for FOREIGN_HOST_STALE_S."""
    from geomed_ssl.outfiles import FOREIGN_HOST_STALE_S, host_tag

    other = "0123abcd" if host_tag() != "0123abcd" else "fedc3210"
    busy = tmp_path / f".partial-{dead_pid()}.{other}-a_pred.tif"  # another node's predict, writing now
    old = tmp_path / f".partial-{dead_pid()}.{other}-b_pred.tif"  # a node that died yesterday
    for path in (busy, old):
        path.write_bytes(b"x")
    day_ago = os.stat(old).st_mtime - FOREIGN_HOST_STALE_S - 60
    os.utime(old, (day_ago, day_ago))
    assert remove_stale_partials(tmp_path) == [old]
    assert busy.exists()


def test_a_leftover_under_this_processs_own_id_is_stale_unless_this_process_made_it(tmp_path: Path) -> None:
    """A container's entry point is pid 1 in every run: what an earlier pid 1 left is not this process's."""
    from geomed_ssl.outfiles import host_tag

    leftover = tmp_path / f".partial-{os.getpid()}.{host_tag()}-scene_pred.tif"
    leftover.write_bytes(b"killed run")
    writing = partial_path(tmp_path / "other_pred.tif")
    writing.write_bytes(b"in progress")
    assert remove_stale_partials(tmp_path) == [leftover]
    assert writing.exists()


def test_atomic_write_works_under_a_umask_that_makes_files_read_only(tmp_path: Path) -> None:
    old = os.umask(0o222)
    try:
        atomic_write_text(tmp_path / "summary.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "summary.json").read_text() == "{}"


def test_atomic_write_dir_fills_an_empty_folder_in_place_and_writes_through_a_link(tmp_path: Path) -> None:
    """`export --out` may name the user's own empty folder (a group's setgid folder, a mount point) or a link to
    scratch storage: the folder itself and the link stay, and the files land where the link points."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2770)
    inode = shared.stat().st_ino
    atomic_write_dir(shared, lambda d: [(d / n).write_text(n) for n in ("config.json", "model.safetensors")])
    assert shared.stat().st_ino == inode and stat.S_IMODE(shared.stat().st_mode) == 0o2770
    assert sorted(p.name for p in shared.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]

    scratch, link = tmp_path / "scratch" / "export", tmp_path / "export"
    scratch.mkdir(parents=True)
    (scratch / "config.json").write_text("old")  # an earlier export there: swapped as usual
    link.symlink_to(scratch, target_is_directory=True)
    atomic_write_dir(link, lambda d: (d / "config.json").write_text("new"))
    assert link.is_symlink() and (scratch / "config.json").read_text() == "new"
    assert sorted(p.name for p in scratch.parent.iterdir()) == ["export"]

    os.chmod(shared, 0o2750)  # replacing a non-empty folder keeps its mode
    atomic_write_dir(shared, lambda d: (d / "config.json").write_text("v2"))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o2750 and (shared / "config.json").read_text() == "v2"


def test_a_scratch_folder_killed_with_its_process_goes_with_the_next_one(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """compare fine-tunes in a scratch folder (checkpoints with optimizer state): kill -9 cannot delete it."""
    import tempfile

    from geomed_ssl.outfiles import host_tag, scratch_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    killed = tmp_path / f"geomed-compare-{dead_pid()}.{host_tag()}-k2j3h4m5"
    running = tmp_path / f"geomed-compare-{os.getppid()}.{host_tag()}-a1b2c3d4"  # a live process's
    other = tmp_path / "geomed-compare-notes"  # no process id: not a scratch folder
    for folder in (killed, running, other):
        folder.mkdir()
    with scratch_dir("compare") as scratch:
        assert scratch.parent == tmp_path and scratch.is_dir()
        assert not killed.exists() and running.is_dir() and other.is_dir()
        with scratch_dir("compare"):  # a second one of this process keeps the first
            assert scratch.is_dir()
    assert not scratch.exists()


def test_an_in_place_fill_that_fails_leaves_the_empty_folder_empty_and_subfolders_arrive_whole(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()

    def killed(folder: Path) -> None:
        (folder / "model.safetensors").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write_dir(target, killed)
    assert list(target.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]

    def with_subfolder(folder: Path) -> None:
        (folder / "weights").mkdir()
        (folder / "weights" / "a.bin").write_text("a")
        (folder / "config.json").write_text("{}")

    atomic_write_dir(target, with_subfolder)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "weights"]
    assert (target / "weights" / "a.bin").read_text() == "a"


@pytest.mark.skipif(not hasattr(os, "chown") or os.geteuid() != 0, reason="needs to set another group (root)")
def test_a_replaced_setgid_folder_keeps_its_group_for_the_new_files(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "config.json").write_text("v1")
    os.chown(shared, -1, 1)
    os.chmod(shared, 0o2775)
    atomic_write_dir(shared, lambda d: (d / "config.json").write_text("v2"))
    assert shared.stat().st_gid == 1 and (shared / "config.json").stat().st_gid == 1
    assert stat.S_IMODE(shared.stat().st_mode) == 0o2775


def test_an_in_place_export_killed_midway_is_filled_in_place_again_by_the_next(tmp_path: Path) -> None:
    """A kill during ``write`` leaves the staging folder inside the user's folder: the next export still takes
    the folder as empty (same folder, not swapped), and the output-folder rule lets it."""
    from geomed_ssl.outdirs import check_out_dir
    from geomed_ssl.outfiles import host_tag

    target = tmp_path / "mine"
    stage = target / f".partial-{dead_pid()}.{host_tag()}-staging"
    stage.mkdir(parents=True)
    (stage / "model.safetensors").write_text("half")
    inode = target.stat().st_ino
    assert check_out_dir(target, command="export") == "create"
    atomic_write_dir(target, lambda d: (d / "config.json").write_text("{}"))
    assert target.stat().st_ino == inode and [p.name for p in target.iterdir()] == ["config.json"]


Usage = namedtuple("Usage", "total used free")  # shutil.disk_usage's result


def test_write_errors_wrapped_by_libraries_name_the_final_file(tmp_path: Path, monkeypatch) -> None:
    """torch, safetensors and GDAL keep only the words of a full disk; an interruption is never a write error."""
    import errno

    from geomed_ssl import errors

    wrapped = RuntimeError("writing failed")
    wrapped.__context__ = OSError(errno.ENOSPC, "No space left on device")
    cases = [(RuntimeError("[enforce fail] unexpected pos"), None),
             (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), errno.ENOSPC),
             (wrapped, errno.ENOSPC), (OSError(errno.EFBIG, "File too large"), errno.EFBIG)]
    for err, code in cases:
        found = errors.write_error(err, tmp_path / "x.tif")
        assert (found and found.errno, found and found.filename) == ((code, str(tmp_path / "x.tif")) if code else
                                                                     (None, None))
    assert errors.write_error(KeyboardInterrupt(), tmp_path / "x.tif") is None
    monkeypatch.setattr(errors._shutil, "disk_usage", lambda _p: Usage(10, 10, 0))  # a full disk
    assert errors.write_error(RuntimeError("unexpected pos"), tmp_path / "x.tif").errno == errno.ENOSPC
    for own in (errors.DataError("the parts hold 3 rows"), errors.RunStopped("SIGTERM", "stopped"),
                TypeError("a bug")):  # say what they are, full disk or not
        assert errors.write_error(own, tmp_path / "x.tif") is None


def test_a_failed_save_on_a_full_disk_keeps_the_old_file_and_says_which(tmp_path: Path, monkeypatch) -> None:
    import errno

    from geomed_ssl import errors

    target = tmp_path / "last.ckpt"
    target.write_bytes(b"good")
    monkeypatch.setattr(errors._shutil, "disk_usage", lambda _p: Usage(10, 10, 0))

    def fails(f) -> None:
        f.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")

    with pytest.raises(OSError) as caught:
        atomic_write(target, fails)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert target.read_bytes() == b"good" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_files_written_together_appear_together_or_not_at_all(tmp_path: Path) -> None:
    from geomed_ssl.outfiles import atomic_paths

    a, b = tmp_path / "x_pred.nii.gz", tmp_path / "x_pred_proba.nii.gz"
    a.write_text("old map")
    b.write_text("old proba")
    with pytest.raises(OSError):
        with atomic_paths([a, b]) as (ta, tb):
            ta.write_text("new map")
            raise OSError(28, "No space left on device", str(tb))
    assert (a.read_text(), b.read_text()) == ("old map", "old proba") and len(list(tmp_path.iterdir())) == 2
    with atomic_paths([a, b]) as (ta, tb):
        ta.write_text("new map")
        tb.write_text("new proba")
    assert (a.read_text(), b.read_text()) == ("new map", "new proba") and len(list(tmp_path.iterdir())) == 2
    b.unlink()
    b.mkdir()  # a folder in the second file's place: the first keeps its old contents too
    with pytest.raises(IsADirectoryError):
        with atomic_paths([a, b]) as (ta, tb):
            ta.write_text("newer map")
            tb.write_text("newer proba")
    assert a.read_text() == "new map" and sorted(p.name for p in tmp_path.iterdir()) == [a.name, b.name]


def test_a_full_disk_line_says_where_the_way_out_is(tmp_path: Path, monkeypatch) -> None:
    """A full temporary folder (compare's scratch fine-tunes) names TMPDIR, not --out; a full disk under a run's
    checkpoints says old step files can go and --resume continues (an --out in /tmp too); anything else: free space
    or another --out."""
    import errno
    import tempfile

    from geomed_ssl.cli_options import write_failure

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    full = lambda p: OSError(errno.ENOSPC, "No space left on device", str(p))  # noqa: E731
    scratch = tmp_path / "scratch" / "geomed-compare-1.0a1b2c3d-x"  # outfiles.scratch_dir's name
    assert "TMPDIR" in write_failure(full(scratch / "ft" / "model.safetensors"))
    assert write_failure(full(tmp_path / "scratch" / "myrun" / "a.tif")).endswith("or choose another --out.")
    assert write_failure(full(tmp_path / "scratch" / "geomed-ssl-demo" / "a.csv")).endswith("another --out.")
    assert "--resume" in write_failure(full(tmp_path / "scratch" / "myrun" / "checkpoints" / "last.ckpt"))
    draft = f".partial-{os.getpid()}.{host_tag()}-step-000300.ckpt"
    said = write_failure(full(tmp_path / "run" / "checkpoints" / draft))
    assert "step-*.ckpt" in said and "--resume" in said and "step-000300.ckpt'" in said
    assert write_failure(full(tmp_path / "pred" / "a.tif")).endswith("free some space or choose another --out.")


def test_a_figure_with_glyphs_the_font_lacks_is_saved_without_a_warning_per_glyph(tmp_path: Path) -> None:
    """Class folders named in Chinese or with emoji printed matplotlib's 'Glyph ... missing from font' twice a glyph
    on stderr under finetune classify, evaluate and cluster."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geomed_ssl.outfiles import save_figure

    fig, ax = plt.subplots()
    ax.set_title("森林 🌲")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_figure(fig, tmp_path / "f.png")
    plt.close(fig)
    assert (tmp_path / "f.png").is_file() and not [w for w in caught if "Glyph" in str(w.message)]
