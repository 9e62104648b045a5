"""Bounded preview reads of the catalog probe: strided whole reads, overviews, sampled blocks, truncation."""

from __future__ import annotations

import numpy as np
import pytest

from geomed_ssl.config import DataConfig
from geomed_ssl.data import probe
from geomed_ssl.data.catalog import scan
from geomed_ssl.errors import DataError

BIG = 2048  # over probe.SMALL_RASTER_AREA pixels: the sampled path


def _big(tmp_path, make_tif, name="big.tif", array=None, **extra):
    """A 1-band uint8 2048x2048 deflate GeoTIFF in 256x256 tiles (noisy, so every tile has real compressed size)."""
    if array is None:
        array = np.random.default_rng(0).integers(1, 255, (1, BIG, BIG), dtype=np.uint8)
    return make_tif(tmp_path / name, array, nodata=0, compress="deflate", tiled=True, blockxsize=256,
                    blockysize=256, **extra)


def _probe(path):
    return probe.probe_file(str(path), "raster", DataConfig(patch_size=32), (32, 32))


@pytest.mark.parametrize("block", [(16, 16), (32, 48), None, (96, 96)])  # None: GDAL's default strips
def test_strided_read_equals_every_nth_pixel_for_any_block_layout(tmp_path, make_tif, grad, block):
    import rasterio

    arr = grad(2, 96, 96)
    tiled = dict(tiled=True, blockysize=block[0], blockxsize=block[1]) if block else {}
    path = make_tif(tmp_path / "a.tif", arr, **tiled)
    with rasterio.open(path) as src:
        for stride in (1, 5, 7):
            np.testing.assert_array_equal(probe._read_strided(src, stride), arr[:, ::stride, ::stride])


def test_large_raster_without_overviews_reads_only_sampled_block_aligned_chunks(tmp_path, make_tif, monkeypatch):
    path = _big(tmp_path, make_tif)
    windows = []
    real_read = probe._read
    monkeypatch.setattr(probe, "_read", lambda src, win: windows.append(win) or real_read(src, win))
    p = _probe(path)
    assert p.preview == "blocks" and p.valid.all()
    assert len(windows) <= 5 + probe.SAMPLE_BLOCKS and len(set(windows)) == len(windows)
    assert all(r % 256 == 0 and c % 256 == 0 and h == w == 256 for r, c, h, w in windows)
    assert (BIG - 256, BIG - 256, 256, 256) in windows  # the last block: where a truncated file fails
    lo, p1, p99, hi = p.value_range[0]
    assert lo < 5 and hi > 250 and 1 < p1 < 10 and 245 < p99 < 255


def test_sampled_valid_fraction_estimates_a_nodata_half(tmp_path, make_tif):
    arr = np.random.default_rng(1).integers(1, 255, (1, BIG, BIG), dtype=np.uint8)
    arr[:, :, : BIG // 2] = 0
    rec = scan(_big(tmp_path, make_tif, array=arr), DataConfig(patch_size=32)).records[0]
    assert rec.valid_fraction == pytest.approx(0.5, abs=0.15)


def test_truncated_large_raster_is_caught(tmp_path, make_tif):
    full = _big(tmp_path, make_tif, name="cut.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(full[: len(full) * 97 // 100])
    make_tif(tmp_path / "good.tif", np.ones((1, 64, 64), np.uint8))
    problems = {p.path.rsplit("/", 1)[-1]: p.reason for p in scan(tmp_path, DataConfig(patch_size=32)).problems}
    assert "truncated or corrupt" in problems["cut.tif"]


def test_data_patch_missed_by_the_sample_is_found_by_a_whole_read(tmp_path, make_tif):
    sampled = {(r // 256, c // 256) for r, c, _, _ in probe.sample_windows((BIG, BIG), (256, 256))}
    row, col = next((i, j) for i in range(8) for j in range(8) if (i, j) not in sampled)
    arr = np.zeros((1, BIG, BIG), np.uint8)
    arr[:, row * 256 + 64 : row * 256 + 192, col * 256 + 64 : col * 256 + 192] = 7
    path = _big(tmp_path, make_tif, array=arr)
    assert _probe(path).preview == "decimated"
    rec = scan(path, DataConfig(patch_size=32)).records[0]
    assert 0 < rec.valid_fraction < 0.05


def test_overviews_are_used_when_present(tmp_path, make_tif):
    import rasterio
    from rasterio.enums import Resampling

    path = _big(tmp_path, make_tif)
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([2, 4, 8, 16], Resampling.nearest)
    p = _probe(path)
    assert p.preview == "overview" and p.valid.shape == (256, 256)  # factor 8: the smallest >= 256 px a side
    assert p.value_range[0][0] < 10 and p.value_range[0][3] > 245


def test_sample_windows_are_seeded_and_include_corners_and_centre():
    a = probe.sample_windows((5000, 3000), (256, 256))
    assert a == probe.sample_windows((5000, 3000), (256, 256))
    starts = {(r, c) for r, c, _, _ in a}
    assert {(0, 0), (0, 2816), (4864, 0), (4864, 2816)} <= starts
    assert len(a) <= 5 + probe.SAMPLE_BLOCKS
    assert all(h >= 1 and w >= 1 and r + h <= 5000 and c + w <= 3000 for r, c, h, w in a)


def test_thin_strips_are_read_as_row_groups_of_bounded_size():
    assert probe._chunk_shape((1, 8192), (8192, 8192)) == (128, 8192)
    assert probe._chunk_shape((256, 256), (8192, 8192)) == (256, 256)
    assert probe._chunk_shape((8192, 8192), (8192, 8192)) == (512, 512)  # one strip: 512-px pieces


def test_complex_rasters_and_volumes_are_refused_with_what_to_convert(tmp_path, make_tif, make_nii):
    """Single-look complex SAR or MR phase: read as they are, only the real part would reach the encoder."""
    slc = (np.random.default_rng(0).normal(size=(2, 32, 32)) + 200j).astype(np.complex64)
    make_tif(tmp_path / "r" / "slc.tif", slc)
    with pytest.raises(DataError, match=r"complex values \(complex64\), .*amplitude or intensity"):
        scan(tmp_path / "r", DataConfig(patch_size=16))
    make_nii(tmp_path / "v" / "phase.nii.gz", np.full((16, 16, 16), 1 + 1j, np.complex64))
    with pytest.raises(DataError, match="complex values"):
        scan(tmp_path / "v", DataConfig(kind="volume", patch_size=16))


def test_a_nodata_collar_at_the_corners_is_counted_for_its_area(tmp_path, make_tif):
    """The four corner chunks were always in the sample, where a scene's nodata collar lies: a 70 %-valid scene
    was put at 57 % and drawn less than its share."""
    arr = np.random.default_rng(1).integers(1, 255, (1, BIG, BIG), dtype=np.uint8)
    rows, cols = np.mgrid[:BIG, :BIG]
    arr[:, (np.minimum(rows, BIG - rows) + np.minimum(cols, BIG - cols)) < BIG * 0.38] = 0  # a tilted scene's collar
    truth = (arr[0] != 0).mean()
    rec = scan(_big(tmp_path, make_tif, array=arr), DataConfig(patch_size=32, nodata=0)).records[0]
    assert rec.valid_fraction == pytest.approx(truth, abs=0.08)


@pytest.mark.parametrize("affine", [np.zeros((4, 4)), np.array([[1.0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0],
                                                                  [0, 0, 0, 1]])])
def test_a_volume_whose_affine_maps_no_3d_grid_is_a_problem_file_not_a_crash(tmp_path, affine):
    """An sform of zeros, or two equal axes: every volume command ended in a TypeError traceback (aff2axcodes gives
    None codes); the file is now skipped with its reason (an error under --strict)."""
    import nibabel as nib

    good, bad = tmp_path / "good.nii.gz", tmp_path / "bad.nii.gz"
    vol = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(good))
    img = nib.Nifti1Image(vol, np.eye(4))
    img.set_sform(affine, code=1)
    img.set_qform(None, code=0)
    nib.save(img, str(bad))
    cfg = DataConfig(kind="volume", patch_size=16)
    catalog = scan(tmp_path, cfg)
    assert [r.path for r in catalog.records] == [str(good)]
    assert any("bad.nii.gz" in p.path and "affine that maps no 3D grid" in p.reason for p in catalog.problems)
    with pytest.raises(DataError, match="affine that maps no 3D grid"):
        scan(tmp_path, cfg, strict=True)


def test_a_volume_of_tiny_voxels_in_metres_is_read_in_mm_not_refused_as_a_grid_of_zeros(tmp_path):
    """20-um voxels given in metres (a micro-CT export) have an affine determinant of 8e-15, which the check for a
    header of zeros refused before the mm conversion came into play."""
    import nibabel as nib

    img = nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.diag([2e-5] * 3 + [1]))
    img.header.set_xyzt_units("meter")
    nib.save(img, str(tmp_path / "micro.nii.gz"))
    catalog = scan(tmp_path, DataConfig(kind="volume", patch_size=16))
    assert not catalog.problems and catalog.records[0].spacing == pytest.approx([0.02] * 3)
