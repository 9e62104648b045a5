"""Evaluation of a fine-tuned model: what is scored and what is left out (end to end in test_finetune_cli.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geomed_ssl.errors import DataError
from geomed_ssl.finetune.evaluate import unknown_classes


def test_label_values_the_model_never_saw_are_a_warning_and_a_note(caplog) -> None:
    vals = np.array([1, 1, 2, 5, 5, 7])
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        notes = unknown_classes(vals, [1, 2], ["water", "forest"])
    assert len(notes) == 1 and "[5, 7] (3 labelled positions)" in notes[0] and "1=water, 2=forest" in notes[0]
    assert any("left out of the metrics" in r.getMessage() for r in caplog.records)
    assert unknown_classes(np.array([1, 2]), [1, 2], ["water", "forest"]) == []
    with pytest.raises(DataError, match=r"none of the label values \[5, 7\] is a class this model was trained on"):
        unknown_classes(np.array([5, 7]), [1, 2], ["water", "forest"])  # a metrics.json of nothing, exit 0 before


def test_a_volume_whose_input_has_no_data_somewhere_is_scored_where_it_has(tmp_path) -> None:
    """predict writes 255 where the volume is nodata and NIfTI has no nodata field: evaluation reads it as 'no
    prediction' (-1, left out of the metrics), as for rasters, instead of failing on class 255."""
    import nibabel as nib
    import torch

    from geomed_ssl.data.stats import BandStats
    from geomed_ssl.finetune.evaluate import predict_to_arrays

    vol = np.random.default_rng(3).uniform(1, 1000, (12, 12, 12)).astype(np.float32)
    vol[:3] = np.nan  # outside the field of view
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "img.nii.gz"))
    stats = BandStats(["band_1"], [500.0], [250.0], [0.0], [1000.0], [1])
    meta = {"encoder": {"stats": stats.to_dict()}, "classes": [{"value": 1}, {"value": 2}], "window": [8, 8, 8],
            "data": {"kind": "volume", "intensity": "none"}}
    torch.manual_seed(0)
    pred = predict_to_arrays(torch.nn.Conv3d(1, 2, 1).eval(), meta, [str(tmp_path / "img.nii.gz")])[0]
    assert set(np.unique(pred[:3]).tolist()) == {-1} and set(np.unique(pred[3:]).tolist()) <= {0, 1}


def test_with_data_spacing_predict_to_arrays_reads_the_map_on_the_grid_asked_for(tmp_path) -> None:
    """evaluate scores the volumes' own voxels (native: the map predict writes, against the label file as it is);
    a fine-tune scores on its training grid (data.spacing)."""
    import nibabel as nib
    import torch

    from geomed_ssl.data.stats import BandStats
    from geomed_ssl.finetune.evaluate import predict_to_arrays

    vol = np.random.default_rng(3).uniform(1, 1000, (12, 12, 12)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / "img.nii.gz"))
    stats = BandStats(["band_1"], [500.0], [250.0], [0.0], [1000.0], [1])
    meta = {"encoder": {"stats": stats.to_dict()}, "classes": [{"value": 1}, {"value": 2}], "window": [8, 8, 8],
            "data": {"kind": "volume", "intensity": "none", "spacing": [1.0, 1.0, 1.0]}}
    model = torch.nn.Conv3d(1, 2, 1).eval()
    paths = [str(tmp_path / "img.nii.gz")]
    assert predict_to_arrays(model, meta, paths)[0].shape == (23, 23, 23)
    assert predict_to_arrays(model, meta, paths, native=True)[0].shape == (12, 12, 12)



def test_class_folders_match_the_models_classes_in_unicode_nfc_and_unknown_ones_are_left_out(caplog) -> None:
    """A folder copied from macOS spells 'Forêt' decomposed (NFD) where the model stored it composed: the same
    class; so is a folder whose name differs only in case, when that names one class (with a note). A folder that is
    no class of the model is left out with a note; none known is refused."""
    import logging
    import unicodedata

    from geomed_ssl.errors import DataError
    from geomed_ssl.finetune.evaluate import model_classes

    folders = [unicodedata.normalize("NFD", "Forêt"), "Mangrove", "River"]
    records = ["f0", "f1", "m0", "r0"]
    labels_idx = np.array([0, 0, 1, 2])
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        kept, mapped, notes = model_classes(records, labels_idx, folders, ["River", "Forêt"], "TEST_DIR")
    assert kept == ["f0", "f1", "r0"] and mapped.tolist() == [1, 1, 0]
    assert len(notes) == 1 and "class folders ['Mangrove'] (1 images) in 'TEST_DIR'" in notes[0]
    assert notes[0] in caplog.text
    assert model_classes(records[:2], labels_idx[:2], folders[:1], ["Forêt"], "T")[2] == []
    kept, mapped, notes = model_classes(records, labels_idx, ["forêt", "mangrove", "RIVER"], ["River", "Forêt"], "T")
    assert mapped.tolist() == [1, 1, 0] and len(notes) == 3 and "class folder 'forêt' is scored as the model's " \
        "class 'Forêt' (the names differ only in case)" in notes[0]
    with pytest.raises(DataError, match="none of the class folders in 'T' .* is a class of this model"):
        model_classes(["r0"], np.array([0]), ["river"], ["River", "RIVER"], "T")  # two classes of those letters
    with pytest.raises(DataError, match="none of the class folders in 'T' .* is a class of this model"):
        model_classes(["m0"], np.array([0]), ["Mangrove"], ["River"], "T")


def test_a_fine_tune_of_a_fine_tune_read_on_another_grid_says_it_cannot_tell_its_positions_apart(tmp_path) -> None:
    """The earlier fine-tune read these labels at another data.spacing: nothing matched, and nothing was said."""
    from geomed_ssl.finetune.trained import untested_by_earlier_fine_tune
    from geomed_ssl.labels.sampling import LabelSelection

    label = str(tmp_path / "case_seg.nii.gz")

    def selection(shape: tuple[int, ...]) -> LabelSelection:
        idx = np.arange(8, dtype=np.int64)
        zeros = np.zeros(8, np.int32)
        return LabelSelection(zeros, idx, np.ones(8, np.int64), zeros, idx + 8, np.ones(8, np.int64), [1], ["1"],
                              [shape], paths=[label])

    (tmp_path / "ft1" / "model").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "ft1" / "model" / name).write_text("{}")
    selection((4, 4, 4)).save_npz(tmp_path / "ft1" / "labels_used.npz")  # trained at a coarser spacing
    said = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("geomed_ssl.finetune.evaluate.log.warning", lambda msg, *a: said.append(msg % a if a else msg))
        untested_by_earlier_fine_tune(tmp_path / "ft1", now := selection((8, 8, 8)))
    assert now.test_index.size == 8 and len(said) == 1 and "cannot be told apart" in said[0]
    a, b = str(tmp_path / "a_seg.nii.gz"), str(tmp_path / "b_seg.nii.gz")  # a on its grid still, b read otherwise then
    one, idx = np.ones(8, np.int64), np.arange(8, dtype=np.int64)
    (tmp_path / "ft2" / "model").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "ft2" / "model" / name).write_text("{}")
    files = np.repeat(np.arange(2, dtype=np.int32), 8)
    LabelSelection(files, np.tile(idx, 2), np.ones(16, np.int64), files[:0], idx[:0], one[:0], [1], ["1"],
                   [(8, 8, 8), (4, 4, 4)], paths=[a, b]).save_npz(tmp_path / "ft2" / "labels_used.npz")
    zeros = np.zeros(8, np.int32)  # a's earlier positions all train again: b's alone cannot be told apart
    now = LabelSelection(zeros, idx, one, np.ones(8, np.int32), idx + 8, one, [1], ["1"], [(8, 8, 8), (8, 8, 8)],
                         paths=[a, b])
    said.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("geomed_ssl.finetune.evaluate.log.warning", lambda msg, *a: said.append(msg % a if a else msg))
        untested_by_earlier_fine_tune(tmp_path / "ft2", now)
    assert len(said) == 1 and "trained on 1 of these label files on another grid" in said[0]
    (tmp_path / "cls" / "model").mkdir(parents=True)  # a classifier's folder as the encoder: no positions to match
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "cls" / "model" / name).write_text("{}")
    np.savez(tmp_path / "cls" / "labels_used.npz", train_index=np.array([0]), test_index=np.array([1]),
             meta=json.dumps({"paths": [a, b]}))
    said.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("geomed_ssl.finetune.evaluate.log.warning", lambda msg, *a: said.append(msg % a if a else msg))
        untested_by_earlier_fine_tune(tmp_path / "cls", now)
    assert not said and now.test_index.size == 8
