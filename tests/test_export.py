"""timm export: timm's VisionTransformer built from the export gives our encoder's features; bands and statistics
travel beside the weights; encoders timm cannot reproduce are refused (the CLI cases are in test_bad_input.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from geomed_ssl.checkpoint import save_encoder
from geomed_ssl.cli import app
from geomed_ssl.errors import GeomedError
from geomed_ssl.export import export_timm
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

STATS = {"version": 1, "bands": [{"name": n, "mean": 1000.0 + i, "std": 50.0, "p1": 900.0, "p99": 1100.0,
                                  "count": 10} for i, n in enumerate(["B02", "B03", "B04", "B08", "B11"])]}


def trained_like_encoder(img_size=(32, 32), patch_size=(4, 4), **kw) -> ViTEncoder:
    """A plain 2D encoder whose every parameter is random (not the zero biases of a fresh init)."""
    cfg = EncoderConfig(in_chans=5, img_size=img_size, patch_size=patch_size, embed_dim=32, depth=2, num_heads=2,
                        band_names=[b["name"] for b in STATS["bands"]], wavelengths=[0.49, 0.56, 0.665, 0.842, 1.61],
                        stats=STATS, **kw)
    torch.manual_seed(0)
    enc = ViTEncoder(cfg)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return enc.eval()


def timm_model(folder: Path) -> torch.nn.Module:
    """The model the export's README says to build: create_model(name, pretrained=False, **args) + its weights."""
    meta = json.loads((folder / "geomed_ssl.json").read_text())
    model = timm.create_model(meta["timm"]["model_name"], pretrained=False, **meta["timm"]["model_args"])
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.eval()


@pytest.mark.parametrize("img_size,patch_size", [((32, 32), (4, 4)), ((16, 24), (8, 4))], ids=["square", "oblong"])
def test_timm_model_from_export_gives_our_tokens_and_cls(tmp_path: Path, img_size, patch_size) -> None:
    enc = trained_like_encoder(img_size, patch_size)
    save_encoder(enc, tmp_path / "run" / "encoder")
    export_timm(tmp_path / "run", tmp_path / "timm")
    model = timm_model(tmp_path / "timm")
    x = torch.randn(3, 5, *img_size)
    with torch.no_grad():
        ours, theirs = enc(x), model.forward_features(x)  # (B, 1+N, D)
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
        torch.testing.assert_close(model(x), ours[:, 0], rtol=0, atol=1e-5)  # pooled: the normed CLS token
        ours_blocks, _ = enc.forward_features(x, layers=[0, 1])  # raw block outputs, CLS dropped
        theirs_blocks = model.forward_intermediates(x, indices=[0, 1], norm=False, output_fmt="NLC",
                                                    intermediates_only=True)
        for a, b in zip(theirs_blocks, ours_blocks, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_export_folder_loads_with_timm_local_dir(tmp_path: Path) -> None:
    enc = trained_like_encoder()
    save_encoder(enc, tmp_path / "encoder")
    export_timm(tmp_path / "encoder", tmp_path / "timm")
    model = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    x = torch.randn(2, 5, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), enc(x), rtol=0, atol=1e-5)
    assert timm.data.resolve_data_config(model=model)["input_size"] == (5, 32, 32)


def test_export_carries_band_names_statistics_and_a_readme(tmp_path: Path) -> None:
    save_encoder(trained_like_encoder(), tmp_path / "encoder")
    out = export_timm(tmp_path / "encoder", tmp_path / "timm")
    meta = json.loads((out / "geomed_ssl.json").read_text())
    assert meta["format"] == "geomed-ssl-timm" and meta["format_version"] == 1
    assert meta["band_names"] == ["B02", "B03", "B04", "B08", "B11"] and meta["stats"] == STATS
    assert meta["timm"]["model_args"]["in_chans"] == 5 and meta["timm"]["model_args"]["img_size"] == 32
    readme = (out / "README.txt").read_text()
    assert "timm.create_model" in readme and "B02 B03 B04 B08 B11" in readme and "p99" in readme


def test_fine_tuned_model_exports_its_encoder(tmp_path: Path) -> None:
    from geomed_ssl.checkpoint import save_model
    from geomed_ssl.models.cls_heads import ClassificationModel

    enc = trained_like_encoder()
    save_model(ClassificationModel(enc, 3), tmp_path / "ft" / "model", {"task": "classify"})
    export_timm(tmp_path / "ft", tmp_path / "timm")
    x = torch.randn(2, 5, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(timm_model(tmp_path / "timm").forward_features(x), enc(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("cfg,message", [
    (dict(in_chans=2, spatial_dims=3, img_size=(16, 16, 16), patch_size=(8, 8, 8), embed_dim=36, depth=1,
          num_heads=2), "3D (volume) encoder; timm has no 3D VisionTransformer, so it has no timm equivalent"),
    (dict(in_chans=4, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=1, num_heads=2,
          embedding="grouped"), "'grouped' patch embedding, which has no timm equivalent"),
], ids=["3d", "grouped"])
def test_encoders_without_timm_equivalent_are_refused_before_writing(tmp_path: Path, cfg, message) -> None:
    save_encoder(ViTEncoder(EncoderConfig(**cfg)), tmp_path / "encoder")
    with pytest.raises(GeomedError, match=re.escape(message)):
        export_timm(tmp_path / "encoder", tmp_path / "timm")
    assert not (tmp_path / "timm").exists()


def test_export_command_writes_the_folder_and_says_where(tmp_path: Path) -> None:
    save_encoder(trained_like_encoder(), tmp_path / "run" / "encoder")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--format", "timm", "--out",
                                      str(tmp_path / "timm")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "timm").iterdir()) == [".geomed-ssl.json", "README.txt", "config.json",
                                                                     "geomed_ssl.json", "model.safetensors"]
    assert str(tmp_path / "timm" / "README.txt") in result.output
    long = tmp_path / ("é" * 120)  # 240 bytes: a legal name, but not with the draft's ~40-byte prefix
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--format", "timm", "--out", str(long)])
    assert result.exit_code == 2 and "its name is too long for this file system" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # one line, no traceback


def test_export_overwrite_deletes_what_it_recorded_and_keeps_the_users_files(tmp_path: Path) -> None:
    """An ``attention`` PNG written into the export is recorded there: ``--overwrite`` deletes it as promised
    (before, it was carried into the new folder unrecorded, and every later --overwrite refused it as the user's)."""
    from geomed_ssl.outowners import record_entries

    save_encoder(trained_like_encoder(), tmp_path / "run" / "encoder")
    out = tmp_path / "timm"
    args = ["export", str(tmp_path / "run"), "--format", "timm", "--out", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    (out / "att.png").write_bytes(b"png")
    record_entries(out, ["att.png"])  # as attention records what it writes into a toolkit folder
    for _ in range(2):
        result = CliRunner().invoke(app, [*args, "--overwrite"])
        assert result.exit_code == 0, result.output
        assert not (out / "att.png").exists()
    (out / "notes.txt").write_text("mine")  # a file the toolkit never recorded is the user's: it refuses
    result = CliRunner().invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 2 and "notes.txt" in result.output and (out / "notes.txt").read_text() == "mine"


def test_an_export_killed_mid_swap_is_judged_as_the_folder_it_stands_for(tmp_path: Path) -> None:
    """Killed between moving the old export aside and moving the new one in: the next export without --overwrite
    replaced the folder (its checks saw no folder), and a refused one left the whole temporary copy behind."""
    import os
    import shutil

    from geomed_ssl.outfiles import host_tag
    from tests.test_outfiles import dead_pid

    save_encoder(trained_like_encoder(), tmp_path / "run" / "encoder")
    out = tmp_path / "timm"
    args = ["export", str(tmp_path / "run"), "--format", "timm", "--out", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    (out / "notes.txt").write_text("mine")
    tag = f"{dead_pid()}.{host_tag()}"
    shutil.copytree(out, tmp_path / f".partial-{tag}-timm")
    os.replace(out, tmp_path / f".replaced-{tag}-timm")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--overwrite" in result.output  # the old folder is back, and it is not empty
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "timm"]  # the dead writer's copy is gone

