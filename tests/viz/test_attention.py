"""Last-layer CLS attention maps: recomputed attention matches the block's own, 2D and 3D grids, PNG written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geomed_ssl.viz.attention import cls_attention, save_attention_png
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder


def encoder(spatial_dims: int = 2, in_chans: int = 4) -> ViTEncoder:
    torch.manual_seed(0)
    size, patch = ((32, 32), (8, 8)) if spatial_dims == 2 else ((16, 16, 16), (4, 4, 4))
    cfg = EncoderConfig(in_chans=in_chans, spatial_dims=spatial_dims, img_size=size, patch_size=patch, embed_dim=24,
                        depth=2, num_heads=3)
    return ViTEncoder(cfg)


def unfused_cls_attention(enc: ViTEncoder, x: torch.Tensor) -> torch.Tensor:
    """The last block's CLS attention row per head, (H, 1 + T), read off timm's explicit (unfused) path, which
    computes softmax(q k^T * scale) in the open."""
    attn = enc.blocks[-1].attn
    attn.fused_attn = False
    seen: list[torch.Tensor] = []
    handle = attn.attn_drop.register_forward_hook(lambda _m, _i, out: seen.append(out))
    enc.eval()
    with torch.no_grad():
        enc(x)
    handle.remove()
    return seen[-1][0, :, 0]


def test_maps_have_heads_by_grid_and_match_unfused_attention_of_last_block() -> None:
    enc = encoder()
    x = torch.randn(1, 4, 32, 32)
    maps = cls_attention(enc, x)
    assert maps.shape == (3, 4, 4)
    torch.testing.assert_close(maps, unfused_cls_attention(enc, x)[:, 1:].reshape(3, 4, 4), rtol=1e-5, atol=1e-6)
    assert torch.all(maps.sum(dim=(1, 2)) <= 1.0 + 1e-5)


def test_maps_on_other_window_size_and_3d_grid() -> None:
    assert cls_attention(encoder(), torch.randn(1, 4, 48, 40)).shape == (3, 6, 5)
    assert cls_attention(encoder(3, 1), torch.randn(1, 1, 16, 16, 16)).shape == (3, 4, 4, 4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_png_is_written(tmp_path: Path, spatial_dims: int) -> None:
    if spatial_dims == 2:
        enc, img = encoder(2, 13), np.random.default_rng(0).standard_normal((13, 32, 32)).astype(np.float32)
        names = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    else:
        enc, img = encoder(3, 2), np.random.default_rng(0).standard_normal((2, 16, 16, 16)).astype(np.float32)
        names = ["flair", "t1c"]
    out = save_attention_png(enc, img, names, None, tmp_path / "attn" / "a.png")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kind, extra, units", [
    ("grouped", {"band_groups": [[0, 1, 2], [3, 4, 5]]}, 2),
    ("spectral", {"spectral_chunk": 2}, 3),
], ids=["grouped", "spectral"])
def test_maps_of_grouped_and_spectral_encoders_sum_units_per_position(kind: str, extra: dict, units: int) -> None:
    torch.manual_seed(0)
    enc = ViTEncoder(EncoderConfig(in_chans=6, img_size=(32, 32), patch_size=(8, 8), embedding=kind, embed_dim=24,
                                   depth=2, num_heads=3, **extra))
    x = torch.randn(1, 6, 32, 32)
    maps = cls_attention(enc, x)
    assert maps.shape == (3, 4, 4)
    full = unfused_cls_attention(enc, x)  # (H, 1 + U*N): CLS to itself, then unit-major tokens
    assert full.shape == (3, 1 + units * 16)
    torch.testing.assert_close(maps, full[:, 1:].reshape(3, units, 4, 4).sum(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps.sum(dim=(1, 2)), 1.0 - full[:, 0], rtol=1e-5, atol=1e-6)


def test_attention_file_reads_bands_by_name_drops_extras_and_warns_on_far_values(tmp_path: Path, monkeypatch,
                                                                               caplog) -> None:
    from geomed_ssl.viz import attention as attention_mod
    from tests.conftest import structured_raster
    from tests.embeddings.test_extract import described, make_encoder

    arr = structured_raster(np.random.default_rng(2), 4, 32)
    train = described(tmp_path / "train", [arr], ["B02", "B03", "B04", "B08"])
    enc = make_encoder(train, tmp_path / "enc")
    other = described(tmp_path / "other", [np.concatenate([arr[[2, 0, 3, 1]], arr[:1]])],
                      ["B04", "B02", "B08", "B03", "B11"])
    seen = []
    monkeypatch.setattr(attention_mod, "save_attention_png", lambda e, image, *a: seen.append(image) or Path("x"))
    attention_mod.attention_for_file(enc, train / "scene_0.tif", tmp_path / "a.png")
    attention_mod.attention_for_file(enc, other / "scene_0.tif", tmp_path / "b.png")
    np.testing.assert_array_equal(seen[0], seen[1])
    # reflectance into a DN encoder: the attention image was all black
    dark = described(tmp_path / "dark", [(arr / 20000.0).astype(np.float32)], ["B02", "B03", "B04", "B08"])
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        attention_mod.attention_for_file(enc, dark / "scene_0.tif", tmp_path / "c.png")
    assert any("value range of" in r.getMessage() and "dark" in r.getMessage() for r in caplog.records)


def test_a_window_past_an_edge_moves_inside_and_an_image_under_a_token_names_the_axis(tmp_path: Path, caplog,
                                                                                     monkeypatch) -> None:
    """--window 42,10 on a 45-px image of 16-px windows drew a 3-row sliver (an error when under a token): it is
    the whole window from row 29 now, with a note."""
    from geomed_ssl.errors import DataError
    from geomed_ssl.viz import attention as attention_mod
    from geomed_ssl.viz.attention import attention_for_file
    from tests.conftest import structured_raster
    from tests.embeddings.test_extract import described, make_encoder

    train = described(tmp_path / "train", [structured_raster(np.random.default_rng(2), 4, 45)],
                      ["B02", "B03", "B04", "B08"])
    enc = make_encoder(train, tmp_path / "enc")  # 16-px windows of 4-px tokens
    read, real = [], attention_mod._read_window
    monkeypatch.setattr(attention_mod, "_read_window", lambda *a: read.append(real(*a)) or read[-1])
    with caplog.at_level("INFO", logger="geomed_ssl"):
        assert attention_for_file(enc, train / "scene_0.tif", tmp_path / "a.png", window=[42, 10]).is_file()
    assert read[0].shape[-2:] == (16, 16)
    assert "a 16-pixel window from row 42 runs past the image's 45 rows; it starts at row 29 instead" in caplog.text
    assert attention_for_file(enc, train / "scene_0.tif", tmp_path / "b.png", window=[20, 10]).is_file()
    thin = described(tmp_path / "thin", [structured_raster(np.random.default_rng(2), 4, 45)[:, :3]],
                     ["B02", "B03", "B04", "B08"])
    with pytest.raises(DataError, match=r"\(3x45\): it has 3 rows, fewer than one token patch \(4\); give an image"):
        attention_for_file(enc, thin / "scene_0.tif", tmp_path / "c.png", window=[0, 0])
