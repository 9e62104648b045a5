"""``data.date_pairs``: a two-view method's second crop is the same ground read from another file on the grid."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from geomed_ssl.config import DataConfig
from geomed_ssl.data.catalog import scan
from geomed_ssl.data.stats import BandStats
from geomed_ssl.errors import ConfigError
from geomed_ssl.views.builder import ViewSpec, build_views
from geomed_ssl.views.datasets import PretrainDataset, same_grid_mates
from tests.data.conftest import gradient, write_nii, write_tif

PAIR = ViewSpec(crops=2, shift=3, intensity=False)
WHOLE = ViewSpec(crops=2, intensity=False, scale=(1.0, 1.0), orientation=False)  # with ratio 1: both crops = window
OFFSET = 5000.0  # the second date's values: the first's plus this


def identity_stats(names: list[str]) -> BandStats:
    """Statistics that leave raw values unchanged (mean 0, std 1, no clipping), so crops can be compared raw."""
    n = len(names)
    return BandStats(list(names), [0.0] * n, [1.0] * n, [-1e9] * n, [1e9] * n, [1] * n)


def pair_dataset(root, cfg: DataConfig, spec: ViewSpec = PAIR, **opts) -> PretrainDataset:
    """Seeded windows of ``root`` with ``spec``'s views (``opts``: ``build_views`` options, e.g. ``ratio``)."""
    catalog = scan(root, cfg)
    ndim = 2 if cfg.kind == "raster" else 3
    view = build_views(spec, cfg, ndim, patch_size=1, **opts)
    return PretrainDataset(catalog, identity_stats(catalog.band_names), cfg, view, seed=3, length=100)


def shared_pixels(sample) -> tuple[np.ndarray, np.ndarray]:
    """Values of the pixels both crops show, as seen in crop 1 and in crop 2 (pixel p of crop 1 is p - offset of
    crop 2)."""
    c1, c2 = (v.numpy() for v in sample["views"]["global"])
    d = sample["offset"].tolist()
    size = c1.shape[1:]
    in1 = tuple(slice(max(0, k), s + min(0, k)) for k, s in zip(d, size))
    in2 = tuple(slice(max(0, -k), s - max(0, k)) for k, s in zip(d, size))
    return c1[(slice(None), *in1)], c2[(slice(None), *in2)]


@pytest.fixture
def dates(tmp_path):
    """Two dates of one 2-band scene (the second = the first + OFFSET) and a scene on another grid."""
    a = gradient(2, 40, 48, dtype="float32")
    write_tif(tmp_path / "t1.tif", a)
    write_tif(tmp_path / "t2.tif", a + OFFSET)
    write_tif(tmp_path / "other.tif", gradient(2, 40, 40, dtype="float32"))
    return tmp_path


def test_second_crop_is_the_same_ground_at_the_other_date(dates) -> None:
    cfg = DataConfig(kind="raster", patch_size=16, global_crop_size=12, date_pairs=True, windows_per_read=1)
    ds = pair_dataset(dates, cfg)
    names = [r.path.rsplit("/", 1)[-1] for r in ds.records]
    assert {names[i]: sorted(names[j] for j in m) for i, m in enumerate(ds.mates)} == {
        "t1.tif": ["t2.tif"], "t2.tif": ["t1.tif"], "other.tif": []}
    seen = set()
    for i in range(30):
        s = ds[i]
        first, second = shared_pixels(s)
        assert first.size > 0
        source = s["meta"]["path"].rsplit("/", 1)[-1]
        seen.add(source)
        expected = {"t1.tif": first + OFFSET, "t2.tif": first - OFFSET, "other.tif": first}[source]
        np.testing.assert_allclose(second, expected)
        again = ds[i]
        assert all(torch.equal(x, y) for x, y in zip(s["views"]["global"], again["views"]["global"]))
    assert seen == {"t1.tif", "t2.tif", "other.tif"}


def test_without_date_pairs_both_crops_come_from_one_file(dates) -> None:
    ds = pair_dataset(dates, DataConfig(kind="raster", patch_size=16, global_crop_size=12, windows_per_read=1))
    assert ds.mates == [[], [], []]
    for i in range(10):
        first, second = shared_pixels(ds[i])
        np.testing.assert_allclose(second, first)


@pytest.fixture
def holed(tmp_path):
    """Two dates of a 1-band 32x32 scene; the second has no data (0) on its left half."""
    a = gradient(1, 32, 32, dtype="float32") + 1
    b = a.copy()
    b[:, :, :16] = 0
    write_tif(tmp_path / "t1.tif", a, nodata=0)
    write_tif(tmp_path / "t2.tif", b, nodata=0)
    return tmp_path


def test_nodata_of_the_other_date_is_invalid_in_crop_two(holed) -> None:
    cfg = DataConfig(kind="raster", patch_size=32, global_crop_size=28, date_pairs=True, min_valid_fraction=0.0)
    ds = pair_dataset(holed, cfg, ViewSpec(crops=2, shift=4, intensity=False))
    for i in range(8):
        s = ds[i]
        v1, v2 = (v.numpy() for v in s["valid"]["global"])
        from_t1 = s["meta"]["path"].endswith("t1.tif")
        assert v1.all() if from_t1 else not v1.all()
        assert not v2.all() if from_t1 else v2.all()


def test_volumes_on_one_affine_are_paired_with_a_warning_about_subjects(tmp_path) -> None:
    vol = np.arange(16 * 16 * 16, dtype=np.float32).reshape(16, 16, 16)
    for name, values in (("s1.nii.gz", vol), ("s2.nii.gz", vol + OFFSET)):
        write_nii(tmp_path / name, values, np.eye(4))
    cfg = DataConfig(kind="volume", patch_size=12, global_crop_size=8, intensity="none", date_pairs=True)
    ds = pair_dataset(tmp_path, cfg, ViewSpec(crops=2, shift=2, intensity=False))
    for i in range(5):
        s = ds[i]
        first, second = shared_pixels(s)
        sign = 1.0 if s["meta"]["path"].endswith("s1.nii.gz") else -1.0
        np.testing.assert_allclose(second, first + sign * OFFSET)
    note = ds.pairing_note()
    assert note.startswith("warning: date pairs: 2 of 2 files") and "different subjects" in note
    crops = pair_dataset(tmp_path, dataclasses.replace(cfg, global_crop_size=None), WHOLE, ratio=(1.0, 1.0))
    for i in range(5):
        s = crops[i]
        g1, g2 = (v.numpy() for v in s["views"]["global"])
        sign = 1.0 if s["meta"]["path"].endswith("s1.nii.gz") else -1.0
        np.testing.assert_allclose(g2, g1 + sign * OFFSET, rtol=1e-5)  # whole 12^3 window of both dates


def test_records_differing_in_transform_or_bands_are_not_mates(tmp_path) -> None:
    a = gradient(2, 24, 24, dtype="float32")
    write_tif(tmp_path / "a.tif", a)
    write_tif(tmp_path / "b.tif", a, transform=(10.0, 0.0, 500.0, 0.0, -10.0, 900.0))  # shifted ground
    write_tif(tmp_path / "c.tif", a)
    records = scan(tmp_path, DataConfig(kind="raster", patch_size=16)).records
    assert [r.path.rsplit("/", 1)[-1] for r in records] == ["a.tif", "b.tif", "c.tif"]
    assert same_grid_mates(records) == [[2], [], [0]]
    renamed = dataclasses.replace(records[2], band_names=["x", "y"])
    assert same_grid_mates([records[0], renamed]) == [[], []]
    c, f = records[0].transform[2], records[0].transform[5]  # a date reprojected apart: float noise in its origin
    noisy = dataclasses.replace(records[2], transform=(10.0, 0.0, c + 1e-6, 0.0, -10.0, f - 1e-6))
    assert same_grid_mates([records[0], noisy]) == [[1], [0]]


def test_date_pairs_with_a_method_of_one_view_is_refused() -> None:
    cfg = DataConfig(kind="raster", patch_size=32, date_pairs=True)
    for one_view in (ViewSpec(), ViewSpec(intensity=False, scale=(0.2, 1.0), orientation=False)):
        with pytest.raises(ConfigError, match="data.date_pairs .* one view of each window"):
            build_views(one_view, cfg, 2)
    assert build_views("none", cfg, 2) is not None  # previews' plain windows are not pairs: allowed
    assert build_views(ViewSpec(crops=2), cfg, 2).pairs


def dates_of(crops: list[torch.Tensor]) -> list[int]:
    """Which date each crop of a ``dates`` scene shows: 0 (values below OFFSET) or 1."""
    out = []
    for c in crops:
        lo, hi = float(c.min()), float(c.max())
        assert (hi < OFFSET) or (lo >= OFFSET), "a crop mixes dates"
        out.append(int(lo >= OFFSET))
    return out


@pytest.mark.parametrize("local", [False, True])
def test_two_view_methods_see_the_same_ground_at_two_dates(dates, local: bool) -> None:
    """SimCLR / BYOL / MoCo / VICReg (two global crops) and DINO / SwAV (plus local crops): with date pairs the crops
    alternate between the window's date and another date of the same ground; the 3rd file has no other date."""
    cfg = DataConfig(kind="raster", patch_size=16, date_pairs=True, windows_per_read=1, n_local_crops=4,
                     local_crop_size=8)
    ds = pair_dataset(dates, cfg, dataclasses.replace(WHOLE, local_crops=local), ratio=(1.0, 1.0))
    seen = set()
    for i in range(20):
        s = ds[i]
        source = s["meta"]["path"].rsplit("/", 1)[-1]
        seen.add(source)
        g1, g2 = (v.numpy() for v in s["views"]["global"])
        shift = {"t1.tif": OFFSET, "t2.tif": -OFFSET, "other.tif": 0.0}[source]
        np.testing.assert_allclose(g2, g1 + shift)  # whole window, unflipped: the same pixels at the other date
        if local:
            first = 1 if source == "t2.tif" else 0
            expected = [first, 1 - first] * 2 if source != "other.tif" else [0] * 4
            assert dates_of(s["views"]["local"]) == expected
            assert all(v.all() for v in s["valid"]["local"])
    assert seen == {"t1.tif", "t2.tif", "other.tif"}


def test_a_window_mostly_without_data_at_the_other_date_pairs_with_itself(tmp_path) -> None:
    a = gradient(1, 32, 32, dtype="float32") + 1
    write_tif(tmp_path / "t1.tif", a, nodata=0)
    cloudy = a.copy()
    cloudy[:, 6:] = 0  # a date masked out below its first 6 rows (clouds): 19 % of any window is valid
    write_tif(tmp_path / "t2.tif", cloudy, nodata=0)
    cfg = DataConfig(kind="raster", patch_size=32, global_crop_size=28, date_pairs=True)
    ds = pair_dataset(tmp_path, cfg, ViewSpec(crops=2, shift=4, intensity=False))
    assert ds.mates == [[1], [0]]
    from_t1 = [ds[i] for i in range(12) if ds[i]["meta"]["path"].endswith("t1.tif")]
    assert from_t1
    for s in from_t1:
        first, second = shared_pixels(s)
        np.testing.assert_allclose(second, first)  # crop 2 from t1 itself, not the clouded date
        assert s["valid"]["global"][1].all()


def test_a_cloudy_mate_is_passed_over_for_a_clear_date_of_the_same_ground(tmp_path) -> None:
    """With one date clouded, a window whose drawn mate was that date paired with itself (14 % of the pairs on the
    Slovenia tile with one clouded date of five), though other clear dates held the same ground."""
    a = gradient(1, 32, 32, dtype="float32") + 1
    write_tif(tmp_path / "t1.tif", a, nodata=0)
    cloudy = a.copy()
    cloudy[:, 6:] = 0
    write_tif(tmp_path / "t2.tif", cloudy, nodata=0)
    write_tif(tmp_path / "t3.tif", a + OFFSET, nodata=0)
    cfg = DataConfig(kind="raster", patch_size=32, global_crop_size=28, date_pairs=True, windows_per_read=1)
    ds = pair_dataset(tmp_path, cfg, ViewSpec(crops=2, shift=4, intensity=False))
    from_t1 = [s for s in (ds[i] for i in range(30)) if s["meta"]["path"].endswith("t1.tif")]
    assert len(from_t1) >= 5
    for s in from_t1:
        first, second = shared_pixels(s)
        np.testing.assert_allclose(second, first + OFFSET)  # crop 2 from t3, the clear date, never from t1 itself


def test_the_pairing_is_reported_and_a_folder_without_dates_is_warned_about(dates, tmp_path) -> None:
    cfg = DataConfig(kind="raster", patch_size=16, global_crop_size=12, date_pairs=True)
    note = pair_dataset(dates, cfg).pairing_note()
    assert note == ("date pairs: 2 of 3 files have another date on their grid (1 grid(s)); alone on their grid, so "
                    f"paired with themselves: {dates / 'other.tif'}")
    alone = tmp_path / "alone"
    write_tif(alone / "a.tif", gradient(2, 24, 24, dtype="float32"))
    write_tif(alone / "b.tif", gradient(2, 24, 32, dtype="float32"))
    assert pair_dataset(alone, cfg).pairing_note().startswith("warning: data.date_pairs is on but no two files")
    more = tmp_path / "more"
    for name in ("early.tif", "late.tif", "lone.tif"):
        write_tif(more / name, gradient(2, 40, 44 if name == "lone.tif" else 40, dtype="float32"))
    note = pair_dataset(more, cfg).pairing_note()
    assert note == ("date pairs: 2 of 3 files have another date on their grid (1 grid(s)); alone on their grid, so "
                    f"paired with themselves: {more / 'lone.tif'}")
    assert pair_dataset(dates, DataConfig(kind="raster", patch_size=16, global_crop_size=12)).pairing_note() is None


def test_each_crop_keeps_the_valid_mask_of_the_date_it_is_cut_from(holed) -> None:
    cfg = DataConfig(kind="raster", patch_size=32, date_pairs=True, min_valid_fraction=0.0, n_local_crops=2,
                     local_crop_size=16)
    spec = ViewSpec(crops=2, local_crops=True, intensity=False, scale=(1.0, 1.0), orientation=False)
    ds = pair_dataset(holed, cfg, spec)
    for i in range(8):
        s = ds[i]
        from_t1 = s["meta"]["path"].endswith("t1.tif")
        g1, g2 = (v.numpy() for v in s["valid"]["global"])
        clear, holed = (g1, g2) if from_t1 else (g2, g1)
        assert clear.all() and not holed[:, :16].any() and holed[:, 16:].all()
        again = ds[i]
        assert all(torch.equal(x, y) for x, y in zip(s["views"]["local"], again["views"]["local"]))


def test_a_view_refuses_a_second_date_of_another_shape_or_without_two_crops() -> None:
    cfg = DataConfig(kind="raster", patch_size=16)
    rng = np.random.default_rng(0)
    image, valid = np.zeros((2, 16, 16), np.float32), np.ones((16, 16), bool)
    two = build_views(ViewSpec(crops=2, intensity=False), cfg, 2)
    with pytest.raises(ValueError, match="matching valid mask"):
        two(image, valid, rng, second=(np.zeros((2, 12, 12), np.float32), np.ones((12, 12), bool)))
    with pytest.raises(ValueError, match="two or more global crops"):
        build_views(ViewSpec(intensity=False), cfg, 2)(image, valid, rng, second=(image, valid))


def test_a_contrastive_recipe_trains_across_dates_and_mae_refuses_them_before_making_a_folder(tmp_path) -> None:
    from typer.testing import CliRunner

    from geomed_ssl.cli import app
    from tests.conftest import TINY, TINY_BASE

    rng = np.random.default_rng(0)
    base = gradient(4, 40, 40, dtype="float32") + rng.normal(0, 5, (4, 40, 40)).astype("float32")
    write_tif(tmp_path / "scene" / "2020-05.tif", base)
    write_tif(tmp_path / "scene" / "2020-08.tif", base * 1.1 + 20)
    common = ["data.sensor=null", "data.patch_size=32", "data.date_pairs=true", "train.max_steps=3",
              "train.checkpoint_every=3", "train.warmup_steps=1"]

    def run(recipe: str, out: str, tiny: list[str]):
        args = ["pretrain", recipe, "--data", str(tmp_path / "scene"), "--out", str(tmp_path / out)]
        for item in [*tiny, *common]:
            args += ["--set", item]
        return CliRunner().invoke(app, args)

    result = run("recipes/simclr_sentinel2.yaml", "simclr", [*TINY_BASE, "data.global_crop_size=32"])
    assert result.exit_code == 0, result.output
    assert "date pairs: 2 of 2 files have another date on their grid" in result.output
    assert (tmp_path / "simclr" / "encoder").is_dir()
    refused = run("recipes/mae_sentinel2.yaml", "mae", TINY)
    assert refused.exit_code != 0
    assert "one view of each window" in refused.output and "Traceback" not in refused.output
    assert not (tmp_path / "mae").exists()


def test_rasters_without_a_crs_are_never_dates_of_one_ground(tmp_path) -> None:
    """Unrelated patches without georeference (38-Cloud's, tiles cut from pictures) share the identity transform
    and a size: nothing says they show one ground, so they pair with none, and the note says why."""
    from affine import Affine

    for name, seed in (("crops.tif", 0), ("highway.tif", 1), ("houses.tif", 2)):
        write_tif(tmp_path / name, gradient(2, 24, 24, dtype="float32") * (seed + 1), crs=None,
                  transform=Affine.identity())
    records = scan(tmp_path, DataConfig(kind="raster", patch_size=16)).records
    assert same_grid_mates(records) == [[], [], []]
    cfg = DataConfig(kind="raster", patch_size=16, global_crop_size=12, date_pairs=True)
    note = pair_dataset(tmp_path, cfg).pairing_note()
    assert note.startswith("warning: data.date_pairs is on but no two files share a grid")
    assert note.endswith("3 file(s) have no CRS and pair with none (nothing says two of them show one ground)")

