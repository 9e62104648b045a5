"""``enc.preprocess``: arrays in file units become exactly what the pretraining pipeline feeds the encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from geomed_ssl.checkpoint import load_encoder, save_encoder
from geomed_ssl.config import DataConfig
from geomed_ssl.data.catalog import scan
from geomed_ssl.views.datasets import PretrainDataset
from geomed_ssl.data.stats import compute_stats
from geomed_ssl.views.builder import build_views
from geomed_ssl.errors import ConfigError, DataError
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder
from tests.data.conftest import gradient, write_nii, write_tif


def export_for(catalog, stats, tmp_path: Path, data: dict, **cfg) -> ViTEncoder:
    """An encoder for the catalog's bands with these statistics, saved as pretraining saves it and loaded back."""
    args = {**dict(in_chans=len(catalog.band_names), img_size=(16, 16), patch_size=(4, 4), embed_dim=32, depth=2,
                   num_heads=2, band_names=list(catalog.band_names), stats=stats.to_dict()), **cfg}
    save_encoder(ViTEncoder(EncoderConfig(**args)), tmp_path / "run" / "encoder", {"recipe": {"data": data}})
    return load_encoder(tmp_path / "run")


def pipeline_sample(folder: Path, cfg: DataConfig, index: int | None = None):
    """The catalog, statistics and one IdentityView sample of the pretraining dataset: ``index``, or else the
    first one whose window holds both valid and nodata pixels."""
    catalog = scan(folder, cfg)
    stats = compute_stats(catalog, cfg, seed=0)
    dataset = PretrainDataset(catalog, stats, cfg, build_views("none", cfg, 2 if cfg.kind == "raster" else 3),
                              length=64)
    if index is None:
        index = next(i for i in range(len(dataset)) if 0 < int(dataset[i]["valid"].sum()) < dataset[i]["valid"].numel())
    return catalog, stats, dataset[index]


def test_preprocess_of_a_raw_raster_window_is_the_pipeline_sample(tmp_path: Path) -> None:
    img = gradient(4, 48, 48, scale=700.0)
    img[:, :, :20] = 0  # a nodata stripe, so some windows hold invalid pixels
    write_tif(tmp_path / "data" / "a.tif", img, nodata=0)
    cfg = DataConfig(patch_size=16, min_valid_fraction=0.0)
    catalog, stats, sample = pipeline_sample(tmp_path / "data", cfg)
    r, c, h, w = sample["meta"]["window"]
    with rasterio.open(tmp_path / "data" / "a.tif") as src:
        raw, nodata = src.read(window=Window(c, r, w, h)), src.nodata  # (C, h, w) uint16, file units
    enc = export_for(catalog, stats, tmp_path, {"nodata": None})
    x, valid = enc.preprocess(raw, nodata=nodata)
    assert x.shape == (1, 4, 16, 16) and x.dtype == torch.float32 and valid.shape == (1, 16, 16)
    torch.testing.assert_close(x, sample["image"][None], rtol=0, atol=0)
    assert torch.equal(valid, sample["valid"][None]) and 0 < int(valid.sum()) < valid.numel()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), enc(sample["image"][None]), rtol=0, atol=0)


def test_preprocess_of_a_whole_ras_volume_matches_the_pipeline_patch(tmp_path: Path) -> None:
    import nibabel as nib

    zz, yy, xx = np.mgrid[0:32, 0:32, 0:32].astype(np.float32)
    vol = 300 + 400 * np.exp(-((xx - 12) ** 2 + (yy - 18) ** 2 + (zz - 15) ** 2) / 60.0) + 3 * xx - 2 * zz  # MR-like
    affine = np.diag([-1.5, 1.5, 2.0, 1.0])  # stored LAS: the reader flips it to RAS
    write_nii(tmp_path / "data" / "v.nii.gz", vol.astype(np.float32), affine)
    cfg = DataConfig(kind="volume", patch_size=16)
    catalog, stats, sample = pipeline_sample(tmp_path / "data", cfg, index=3)
    z, y, x0, d, h, w = sample["meta"]["box"]
    canonical = nib.as_closest_canonical(nib.load(tmp_path / "data" / "v.nii.gz"))
    ras = np.asarray(canonical.get_fdata(dtype=np.float32))[None]  # (1, X, Y, Z) in RAS, as the reader has it
    enc = export_for(catalog, stats, tmp_path, {"nodata": None, "intensity": "auto", "ct_window": [-1000, 1000]},
                     spatial_dims=3, img_size=(16, 16, 16), patch_size=(8, 8, 8), embed_dim=36)
    x, valid = enc.preprocess(ras)  # the whole volume, scaled on its own values as the reader scales it
    patch = x[:, :, z:z + d, y:y + h, x0:x0 + w]
    # the reader's MR percentiles are the catalog's, rounded to 6 decimals: equal to float precision
    torch.testing.assert_close(patch, sample["image"][None], rtol=0, atol=1e-5)
    assert bool(valid.all())


def test_preprocess_takes_batches_and_tensors_and_keeps_the_batch(tmp_path: Path) -> None:
    write_tif(tmp_path / "data" / "a.tif", gradient(4, 32, 32, scale=500.0))
    cfg = DataConfig(patch_size=16)
    catalog, stats, _ = pipeline_sample(tmp_path / "data", cfg, index=0)
    enc = export_for(catalog, stats, tmp_path, {})
    batch = gradient(4, 16, 16, scale=500.0)[None].repeat(3, axis=0)  # (3, 4, 16, 16)
    x_np, _ = enc.preprocess(batch)
    x_t, _ = enc.preprocess(torch.from_numpy(batch.astype(np.float32)))
    x_one, _ = enc.preprocess(batch[0])
    assert x_np.shape == (3, 4, 16, 16)
    torch.testing.assert_close(x_t, x_np, rtol=0, atol=0)
    torch.testing.assert_close(x_one[0], x_np[1], rtol=0, atol=0)


def test_preprocess_refuses_arrays_of_another_shape_or_band_count(tmp_path: Path) -> None:
    write_tif(tmp_path / "data" / "a.tif", gradient(4, 32, 32))
    cfg = DataConfig(patch_size=16)
    catalog, stats, _ = pipeline_sample(tmp_path / "data", cfg, index=0)
    enc = export_for(catalog, stats, tmp_path, {})
    with pytest.raises(DataError, match=r"expected an array of shape \(C, H, W\) or \(B, C, H, W\)"):
        enc.preprocess(np.zeros((16, 16)))
    with pytest.raises(DataError, match="the array has 3 bands but the statistics have 4"):
        enc.preprocess(np.zeros((3, 16, 16)))
    with pytest.raises(DataError, match="holds complex64 values"):
        enc.preprocess(np.zeros((4, 16, 16), np.complex64))
    x, _ = enc.preprocess(np.zeros((4, 16, 16)))
    assert enc(x).shape[0] == 1
    for raw in (x.numpy(), x.double(), x.long(), x.half()):  # what a notebook passes before preprocess: the fix
        with pytest.raises(DataError, match=r"takes a float32 torch tensor .* enc.preprocess\(raw_values\)"):
            enc(raw)  # named (a float16 tensor was a RuntimeError from inside the patch projection)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts each op's inputs itself
        assert enc(x.bfloat16()).shape[0] == 1
        with pytest.raises(DataError, match="takes a float32 torch tensor"):
            enc(x.double())  # but no double
    with pytest.raises(ConfigError, match=r"encoder layers are block numbers .* got \[True\]"):
        enc.forward_features(x, layers=[True])
    assert len(enc.forward_features(x, layers=-1)[0]) == 1  # one block, as a number
    assert len(enc.forward_features(x, layers=[np.int64(0), -1])[0]) == 2  # numpy's integers are numbers too


def test_preprocess_defaults_to_the_runs_nodata_setting(tmp_path: Path) -> None:
    write_tif(tmp_path / "data" / "a.tif", gradient(4, 32, 32, scale=500.0))
    cfg = DataConfig(patch_size=16)
    catalog, stats, _ = pipeline_sample(tmp_path / "data", cfg, index=0)
    enc = export_for(catalog, stats, tmp_path, {"nodata": 7})  # the run said data.nodata: 7
    raw = gradient(4, 16, 16, scale=500.0)
    raw[:, 0, :5] = 7
    _, valid = enc.preprocess(raw)
    assert int((~valid).sum()) == 5 and not bool(valid[0, 0, :5].any())
    _, valid_other = enc.preprocess(raw, nodata=-1)  # an explicit value wins
    assert bool(valid_other.all())
