"""Evaluation of a fine-tuned model: what is scored and what is left out (end to end in test_finetune_cli.py)."""

from __future__ import annotations

import numpy as np

from geomed_ssl.finetune.evaluate import unknown_classes


def test_label_values_the_model_never_saw_are_a_warning_and_a_note(caplog) -> None:
    vals = np.array([1, 1, 2, 5, 5, 7])
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        notes = unknown_classes(vals, [1, 2], ["water", "forest"])
    assert len(notes) == 1 and "[5, 7] (3 labelled positions)" in notes[0] and "1=water, 2=forest" in notes[0]
    assert any("left out of the metrics" in r.getMessage() for r in caplog.records)
    assert unknown_classes(np.array([1, 2]), [1, 2], ["water", "forest"]) == []
