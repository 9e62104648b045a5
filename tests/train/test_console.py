"""What the training commands print: Lightning's start-up banners stay quiet."""

from __future__ import annotations

import logging

import pytest

from geomed_ssl.train.trainer import probe_trainer

LIGHTNING = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")


@pytest.fixture
def loud_lightning():
    """Lightning's loggers at INFO, as a fresh process has them (another test may already have quieted them)."""
    loggers = [logging.getLogger(n) for n in LIGHTNING]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)  # as Lightning sets them on import
    yield
    for lg, level in zip(loggers, levels):
        lg.setLevel(level)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_settings_check_trainer_prints_no_lightning_banner(loud_lightning) -> None:
    seen = Collect()
    logging.getLogger("lightning.pytorch").addHandler(seen)
    try:
        probe_trainer("cpu", 1, "auto", 1, "32-true")  # the first Trainer of `finetune` and of each compare fine-tune
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(seen)
    assert seen.messages == []


def test_launch_settings_lightning_would_turn_into_a_traceback_or_a_silent_switch_are_one_line() -> None:
    import torch

    from geomed_ssl.config import load_recipe
    from geomed_ssl.errors import ConfigError
    from geomed_ssl.train.trainer import resolve_precision

    for value in ("bf16-true", "16-true", "64"):  # they cast the model: previews and class weights would crash
        with pytest.raises(ConfigError, match="train.precision"):
            load_recipe(None, [f"train.precision={value}"])
    if not torch.cuda.is_available():
        assert resolve_precision("16-mixed", "auto") == "bf16-mixed"  # said once, not Lightning's warning twice
        # Lightning's short names, read as what they mean (Lightning itself warns "for historical reasons")
        assert [resolve_precision(p, "cpu") for p in ("16", "bf16", "32")] == ["bf16-mixed", "bf16-mixed", "32-true"]
        with pytest.raises(ConfigError, match="train.accelerator / devices"):
            probe_trainer("cpu", [0], "auto", 1, "32-true")  # Lightning's TypeError


def test_a_long_prediction_off_a_terminal_says_how_far_it_has_got(caplog, monkeypatch) -> None:
    """Hours of windows in a batch job's log: a line every ``every`` seconds with the share done and the time left
    (a bar on a terminal instead); none under --quiet."""
    from geomed_ssl.train.console import WorkProgress

    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    with caplog.at_level(logging.INFO, logger="geomed_ssl"):
        bar = WorkProgress(4, "predicting", every=0.0)
        bar.update(1)
        bar.update(3)
        bar.close()
        WorkProgress(None, "predicting", every=0.0).update(2)
    said = [r.getMessage() for r in caplog.records]
    assert said[0].startswith("predicting: 1 of 4 windows (25 %), about ") and said[0].endswith(" min left")
    assert said[1].startswith("predicting: 4 of 4 windows (100 %)") and said[2] == "predicting: 2 windows"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):  # --quiet
        WorkProgress(4, "predicting", every=0.0).update(1)
    assert not caplog.records
