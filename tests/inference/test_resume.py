"""``predict --resume``: the class maps an earlier prediction finished stay; what changed is predicted again."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from geomed_ssl.cli import app
from tests.conftest import structured_raster, write_geotiff
from tests.inference.test_finetuned import make_ft_dir

runner = CliRunner()


def predict(ft: Path, inputs: Path, out: Path, *extra: str) -> list[str]:
    result = runner.invoke(app, ["predict", str(ft), str(inputs), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return [line for line in result.output.splitlines() if " -> " in line]


def stamps(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("*.tif"))}


def test_resume_keeps_the_maps_a_killed_prediction_finished_and_predicts_what_changed(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    ft = make_ft_dir(tmp_path)
    scenes, out = tmp_path / "in", tmp_path / "p"
    scenes.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        write_geotiff(scenes / f"scene_{i}.tif", 1000 + structured_raster(rng, 4, 40) * 2000)
    predict(ft, scenes, out, "--probabilities")
    for name in ("scene_2_pred.tif", "scene_2_pred_proba.tif", "scene_2_pred.tif.aux.xml"):
        (out / name).unlink()  # killed before the last scene's outputs took their names
    before = stamps(out)
    lines = predict(ft, scenes, out, "--probabilities", "--resume")
    assert sum("(kept: --resume)" in line for line in lines) == 2 and len(lines) == 3
    after = stamps(out)
    assert {k: after[k] for k in before} == before and "scene_2_pred.tif" in after  # kept as they were
    stat = (scenes / "scene_1.tif").stat()  # an input replaced since: predicted again, the others kept
    os.utime(scenes / "scene_1.tif", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    lines = predict(ft, scenes, out, "--probabilities", "--resume")
    assert [line for line in lines if "kept" not in line] == [f"{scenes / 'scene_1.tif'} -> {out / 'scene_1_pred.tif'}"]
    assert all("(kept" not in line for line in predict(ft, scenes, out, "--probabilities", "--resume",
                                                       "--overlap", "0.5"))  # other settings: other maps
    lines = predict(ft, scenes, out, "--resume")  # without probabilities: a new map, and the old ones go
    assert all("(kept" not in line for line in lines) and not list(out.glob("*_proba.tif"))
    assert all("(kept" not in line for line in predict(ft, scenes, out))  # no --resume: everything again
    import geomed_ssl.inference.resume as resume  # maps of a version that recorded less (no class names): redone

    with monkeypatch.context() as older:
        older.setattr(resume, "RECORDS", resume.RECORDS - 1)
        predict(ft, scenes, out)
    assert all("(kept" not in line for line in predict(ft, scenes, out, "--resume"))


def test_resume_reads_what_a_volume_prediction_recorded(tmp_path: Path) -> None:
    import nibabel as nib

    ft = make_ft_dir(tmp_path, kind="volume")
    volume = 1000 + np.random.default_rng(1).random((20, 20, 20)).astype(np.float32) * 2000
    nib.save(nib.Nifti1Image(np.stack([volume] * 4, -1), np.eye(4)), str(tmp_path / "t1.nii.gz"))
    out = tmp_path / "p"
    predict(ft, tmp_path / "t1.nii.gz", out)
    assert predict(ft, tmp_path / "t1.nii.gz", out, "--resume") == [
        f"{tmp_path / 't1.nii.gz'} -> {out / 't1_pred.nii.gz'} (kept: --resume)"]
