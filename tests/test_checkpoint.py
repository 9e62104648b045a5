"""Encoder export: safetensors + JSON round trip, band checks, atomic writes, no unpickling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from geomed_ssl.checkpoint import expected_shapes, load_encoder, read_encoder_config, save_encoder, tensor_shapes
from geomed_ssl.errors import DataError, GeomedError
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder


def tiny_encoder() -> ViTEncoder:
    cfg = EncoderConfig(in_chans=3, img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=2, num_heads=2,
                        band_names=["B02", "B03", "B04"], wavelengths=[0.49, 0.56, 0.665],
                        stats={"version": 1, "bands": []})
    return ViTEncoder(cfg).eval()


def test_export_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    enc = tiny_encoder()
    save_encoder(enc, tmp_path / "encoder", {"method": "mae"})
    loaded = load_encoder(tmp_path)  # a run folder resolves to run/encoder
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded(x), enc(x), rtol=0, atol=0)
    assert loaded.config.band_names == ["B02", "B03", "B04"] and loaded.config.wavelengths == [0.49, 0.56, 0.665]
    cfg, meta = read_encoder_config(tmp_path / "encoder")
    assert meta["method"] == "mae" and "torch" in meta["versions"] and cfg.patch_size == (4, 4)


def test_load_refuses_data_with_other_bands(tmp_path: Path) -> None:
    save_encoder(tiny_encoder(), tmp_path / "encoder")
    with pytest.raises(DataError, match=r"missing \['B04'\].*extra \['B08'\]"):
        load_encoder(tmp_path, bands=["B02", "B03", "B08"])
    assert load_encoder(tmp_path, bands=["B02", "B03", "B04"]).config.in_chans == 3
    with pytest.raises(GeomedError, match=r"bands is a list of band names, e.g. \['B02,B03,B04'\]"):
        load_encoder(tmp_path, bands="B02,B03,B04")  # one string, from Python: not read letter by letter


def test_missing_export_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GeomedError, match="no encoder found"):
        load_encoder(tmp_path)


def test_export_replaces_previous_one_atomically(tmp_path: Path) -> None:
    save_encoder(tiny_encoder(), tmp_path / "encoder", {"step": 1})
    save_encoder(tiny_encoder(), tmp_path / "encoder", {"step": 2})
    assert json.loads((tmp_path / "encoder" / "config.json").read_text())["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder"]  # no temp folders left behind


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    import os

    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask,dir_mode,file_mode", [(0o002, 0o775, 0o664), (0o027, 0o750, 0o640)],
                         ids=["umask-002", "umask-027"])
def test_exported_encoder_and_model_folders_follow_the_umask(tmp_path: Path, umask, mask: int, dir_mode: int,
                                                              file_mode: int) -> None:
    from geomed_ssl.checkpoint import save_model
    from geomed_ssl.models.cls_heads import ClassificationModel

    umask(mask)
    save_encoder(tiny_encoder(), tmp_path / "encoder")
    save_model(ClassificationModel(tiny_encoder(), 2), tmp_path / "model", {"task": "classify"})
    for folder in (tmp_path / "encoder", tmp_path / "model"):
        assert folder.stat().st_mode & 0o777 == dir_mode, folder
        for name in ("model.safetensors", "config.json"):
            assert (folder / name).stat().st_mode & 0o777 == file_mode, folder / name


def test_shapes_of_the_largest_allowed_config_are_read_without_allocating() -> None:
    cfg = EncoderConfig(in_chans=4096, img_size=(256, 256), patch_size=(16, 16), embed_dim=8192, depth=128,
                        num_heads=64)  # ~100 G parameters: only the meta device can hold it
    shapes = expected_shapes(lambda: ViTEncoder(cfg))
    assert shapes["blocks.127.mlp.fc1.weight"] == (4 * 8192, 8192) and shapes["patch_embed.proj.weight"][1] == 4096


def test_tensor_shapes_are_read_from_the_header(tmp_path: Path) -> None:
    save_encoder(tiny_encoder(), tmp_path / "encoder")
    shapes = tensor_shapes(tmp_path / "encoder" / "model.safetensors")
    assert shapes == expected_shapes(tiny_encoder)


def test_config_json_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    save_encoder(tiny_encoder(), tmp_path / "encoder")
    (tmp_path / "encoder" / "config.json").write_text("[1, 2]")
    with pytest.raises(GeomedError, match="is not a geomed-ssl export"):
        read_encoder_config(tmp_path)


def test_config_json_without_an_encoder_mapping_is_refused(tmp_path: Path) -> None:
    save_encoder(tiny_encoder(), tmp_path / "encoder")
    meta = json.loads((tmp_path / "encoder" / "config.json").read_text())
    meta["encoder"] = 5
    (tmp_path / "encoder" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(GeomedError, match="has no 'encoder' mapping"):
        load_encoder(tmp_path)


def test_loading_leaves_the_callers_random_stream_and_names_an_unknown_device(tmp_path: Path) -> None:
    """A notebook's seeded stream was moved by the random init the loaded weights replace; map_location='gpu' was
    reported as a damaged export."""
    save_encoder(tiny_encoder(), tmp_path / "encoder")
    torch.manual_seed(5)
    before = torch.get_rng_state()
    load_encoder(tmp_path)
    assert torch.equal(torch.get_rng_state(), before)
    with pytest.raises(GeomedError, match="device 'gpu' is not one torch knows"):
        load_encoder(tmp_path, map_location="gpu")
