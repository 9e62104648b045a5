"""log.txt: what a pretraining run said (the catalog, warnings, step lines, how it ended), kept in its folder."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest

from geomed_ssl.errors import OutputError, TrainingError
from tests.conftest import TINY

RECIPE = "recipes/mae_sentinel2.yaml"
RUN = [*TINY, "data.sensor=null", "data.patch_size=16", "train.max_steps=2", "train.warmup_steps=1"]


class Fails(L.Callback):
    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == 3:
            raise TrainingError("the loss became nan in step 3; training stopped.")


def test_a_run_keeps_what_it_said_in_log_txt_and_a_resume_appends_to_it(raster_dir: Path, tmp_path: Path,
                                                                          caplog) -> None:
    from geomed_ssl.train.pretrain import pretrain

    caplog.set_level("INFO", logger="geomed_ssl")  # as the command line logs (Python: your logging configuration)

    run = tmp_path / "run"
    pretrain(RECIPE, raster_dir, run, overrides=RUN, progress=False)
    first = (run / "log.txt").read_text().splitlines()
    os.link(run / "log.txt", tmp_path / "snapshot_log.txt")  # a hard-linked snapshot of the run (cp -al, rsnapshot)
    assert first[0].startswith("--- geomed-ssl ") and first[0].endswith(" ---")
    assert any("usable raster files under" in line for line in first)  # said before the folder existed
    assert "  step 2/2  loss " in first[-2] and first[-1].endswith("  done: 2 steps")  # the step lines, how it ended
    with pytest.raises(TrainingError):
        pretrain(None, raster_dir, run, resume=True, overrides=["train.max_steps=5"], progress=False,
                 callbacks=[Fails()])
    lines = (run / "log.txt").read_text().splitlines()
    assert lines[: len(first)] == first
    assert (tmp_path / "snapshot_log.txt").read_text().splitlines() == first  # the resume wrote a new file
    assert lines[len(first)].startswith("--- resumed from step 2 (geomed-ssl ")
    assert lines[-1].endswith("  error: the loss became nan in step 3; training stopped.")


def test_a_log_txt_the_toolkit_did_not_write_is_left_as_it_is(raster_dir: Path, tmp_path: Path, caplog) -> None:
    """A run folder of an earlier version (its manifest lists no log.txt) holding the user's own log.txt (a tee of
    the console): a resume appends nothing to it, and --overwrite counts it as the user's."""
    import json

    from geomed_ssl.outdirs import check_out_dir
    from geomed_ssl.outowners import MANIFEST
    from geomed_ssl.train.pretrain import pretrain

    run = tmp_path / "run"
    pretrain(RECIPE, raster_dir, run, overrides=RUN, progress=False)
    manifest = json.loads((run / MANIFEST).read_text())
    assert "log.txt" in manifest["entries"]  # recorded as it was made
    manifest["entries"].remove("log.txt")
    (run / MANIFEST).write_text(json.dumps(manifest))
    (run / "log.txt").write_text("my notes\n")
    with pytest.raises(OutputError, match="also holds 'log.txt', which geomed-ssl did not write"):
        check_out_dir(run, command="pretrain", overwrite=True)
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        pretrain(None, raster_dir, run, resume=True, overrides=["train.max_steps=3"], progress=False)
    assert (run / "log.txt").read_text() == "my notes\n"
    assert "log.txt' was not written by geomed-ssl: it is left as it is" in caplog.text


def test_a_log_that_cannot_be_written_is_warned_about_and_never_stops_the_run(raster_dir: Path, tmp_path: Path,
                                                                              monkeypatch, caplog) -> None:
    from geomed_ssl.train import run_log
    from geomed_ssl.train.pretrain import pretrain

    def read_only(self, path, resumed_at):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(run_log.RunLog, "attach", read_only)
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        result = pretrain(RECIPE, raster_dir, tmp_path / "run", overrides=RUN, progress=False)
    assert result.steps == 2 and "log.txt' (Permission denied): this run keeps no log.txt" in caplog.text


def test_a_spawned_rank_0_that_cannot_open_the_log_trains_on(tmp_path: Path, monkeypatch) -> None:
    """ddp_spawn's rank 0 opens log.txt again in its own interpreter: a log it cannot write (the launching process
    warned) must not fail its setup hook."""
    import os
    from types import SimpleNamespace

    from geomed_ssl.outowners import write_manifest
    from geomed_ssl.train import run_log

    write_manifest(tmp_path, "pretrain", ["log.txt"])
    (tmp_path / "log.txt").write_text("--- geomed-ssl ---\n")
    real = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied"))
                        if str(path).endswith("log.txt") else real(path, *a, **k))
    monkeypatch.setattr(run_log, "_ACTIVE", [])  # a fresh interpreter
    worker = run_log.WorkerRunLog(tmp_path)
    worker.setup(SimpleNamespace(is_global_zero=True), None, "fit")
    assert worker.handler is None
