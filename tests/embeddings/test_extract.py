"""Embedding extraction: rows trace back to their windows, georeferenced patch maps, resume after a kill, CLI."""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

from geomed_ssl.cli import app
from geomed_ssl.config import DataConfig
from geomed_ssl.embeddings import extract as embed_mod
from geomed_ssl.embeddings.extract import Embedder, embed_folder
from geomed_ssl.embeddings.search import embedder_for, record_for
from geomed_ssl.embeddings.geometry import footprint_wkb, raster_corners
from geomed_ssl.embeddings.store import load_embeddings, read_columns
from geomed_ssl.errors import DataError, GeomedError
from tests.conftest import TINY, structured_raster, write_geotiff

runner = CliRunner()
TRANSFORM = Affine(10, 0, 500000, 0, -10, 5100000)  # write_geotiff's grid


def make_encoder(data_dir: Path, out: Path, kind: str = "raster", window: int = 16, patch: int = 4,
                 band_names: list[str] | None = None) -> Path:
    """A tiny random-init encoder export with statistics of ``data_dir`` (seconds, no pretraining), its recipe
    naming the bands ``band_names`` when given."""
    import torch

    from geomed_ssl.checkpoint import save_encoder
    from geomed_ssl.data.catalog import scan
    from geomed_ssl.data.stats import compute_stats
    from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

    nd = 2 if kind == "raster" else 3
    cfg = DataConfig(kind=kind, patch_size=window, stats_windows=16, band_names=band_names)
    catalog = scan(data_dir, cfg)
    stats = compute_stats(catalog, cfg)
    enc_cfg = EncoderConfig(in_chans=len(catalog.band_names), spatial_dims=nd, img_size=(window,) * nd,
                            patch_size=(patch,) * nd, embed_dim=32, depth=2, num_heads=2,
                            band_names=catalog.band_names, stats=stats.to_dict())
    torch.manual_seed(0)
    return save_encoder(ViTEncoder(enc_cfg), out, {"method": "mae", "recipe": {"data": dataclasses.asdict(cfg)}})


def scenes(folder: Path, sizes: list[int], bands: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        write_geotiff(folder / f"scene_{i}.tif", structured_raster(rng, bands, size))
    return folder


def volumes(folder: Path, n: int = 2, shape: tuple[int, int, int] = (32, 24, 20)) -> Path:
    """Small NIfTI volumes stored LPS-like (x and y flipped), so the reader's RAS reorientation matters."""
    import nibabel as nib

    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    grids = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]].astype(np.float32)
    for i in range(n):
        vol = 100 + sum(rng.uniform(100, 500) * np.sin(grids[a] / rng.uniform(3, 8) + rng.uniform(0, 6)) ** 2
                        for a in range(3))
        affine = np.array([[-1.5, 0, 0, 40.0], [0, -1.5, 0, 30.0], [0, 0, 2.0, -20.0], [0, 0, 0, 1]])
        nib.save(nib.Nifti1Image(vol.astype(np.float32), affine), str(folder / f"subject_{i}.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return scenes(tmp_path_factory.mktemp("emb") / "rasters", [40, 40, 56])


@pytest.fixture(scope="module")
def encoder(data: Path, tmp_path_factory) -> Path:
    return make_encoder(data, tmp_path_factory.mktemp("enc") / "encoder")


def reembed(emb_dir: Path, row: int) -> np.ndarray:
    """Re-read row ``row``'s recorded box from its file and embed it again, as a user would."""
    manifest, _ = load_embeddings(emb_dir)
    cols = read_columns(emb_dir, ["file", "box"])
    record = record_for(cols["file"][row], DataConfig(**manifest["settings"]["data"]))
    return embedder_for(manifest, record, device="cpu").region_vector(record, cols["box"][row])[0]


@pytest.mark.parametrize("level", ["window", "image"])
def test_rows_trace_back_to_the_window_they_were_embedded_from(data: Path, encoder: Path, tmp_path: Path,
                                                               level: str) -> None:
    out = tmp_path / level
    embed_folder(encoder, data, out, level=level, window=16, stride=8 if level == "window" else None,
                 progress=False)
    manifest, vectors = load_embeddings(out)
    cols = read_columns(out, ["file", "box", "x", "y", "footprint_wkt", "crs"])
    assert len(set(zip(cols["file"], map(tuple, cols["box"])))) == len(vectors)  # one row per box
    rows = [0, len(vectors) // 2, len(vectors) - 1]
    for i in rows:
        np.testing.assert_allclose(reembed(out, i), vectors[i], atol=1e-4, rtol=1e-4)
        r, c, h, w = cols["box"][i]
        assert (cols["x"][i], cols["y"][i]) == pytest.approx(TRANSFORM @ (c + w / 2, r + h / 2))
        x0, y0 = TRANSFORM @ (c, r)
        assert cols["footprint_wkt"][i].startswith(f"POLYGON (({x0:.12g} {y0:.12g}, ")
        assert "32633" in cols["crs"][i]
    if level == "image":  # larger than the 16 px window: the whole file, its windows averaged
        assert [list(b) for b in cols["box"]] == [[0, 0, 40, 40], [0, 0, 40, 40], [0, 0, 56, 56]]
    else:  # 40 px: origins 0, 8, 16, 24 (the last reaches 40); 56 px: 0..40 -> 6
        assert [f["grid"] for f in manifest["files"]] == [[4, 4], [4, 4], [6, 6]]


def test_a_stride_longer_than_the_files_gives_one_window_each(data: Path, encoder: Path, tmp_path: Path,
                                                               caplog) -> None:
    """Before, an origin a stride away sat beyond the edge and the reader padded a strip out to it (2 TiB); a
    stride longer than the window, which leaves pixels out of every row, is said."""
    out = tmp_path / "sparse"
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        embed_folder(encoder, data, out, level="window", window=16, stride=10**10, progress=False)
    assert "--stride 10000000000x10000000000 is longer than --window 16x16" in caplog.text
    manifest, vectors = load_embeddings(out)
    assert [f["grid"] for f in manifest["files"]] == [[1, 1]] * 3 and len(vectors) == 3
    assert [list(b) for b in read_columns(out, ["box"])["box"]] == [[0, 0, 16, 16]] * 3


@pytest.mark.parametrize("args, said", [({"batch_size": 0}, r"batch_size \(--batch-size\) must be >= 1"),
                                        ({"pca_dims": -1}, r"pca_dims \(--pca\) >= 0"),
                                        ({"include": "scene_0.tif"}, r"include is a list of glob patterns"),
                                        ({"overrides": "data.nodata=0"}, r"overrides is a list")])
def test_python_arguments_the_cli_checks_are_checked_before_the_folder_is_made(data: Path, encoder: Path,
                                                                               tmp_path: Path, args, said) -> None:
    """A batch of 0 was a ValueError from range(); one string was read letter by letter (include ['s', 'c', ...])."""
    from geomed_ssl.errors import ConfigError

    with pytest.raises(ConfigError, match=said):
        embed_folder(encoder, data, tmp_path / "emb", progress=False, **args)
    assert not (tmp_path / "emb").exists()


def test_patch_level_geotiff_has_the_input_crs_and_a_transform_scaled_by_the_patch(data: Path, encoder: Path,
                                                                                  tmp_path: Path) -> None:
    out = tmp_path / "patch"
    result = embed_folder(encoder, data, out, level="patch", pca_dims=3, progress=False)
    manifest, vectors = load_embeddings(out)
    assert len(vectors) == 10 * 10 * 2 + 14 * 14 and result.windows == 3 * 3 * 2 + 4 * 4
    path = out / "maps" / "scene_2_embedding.tif"
    assert str(path) in manifest["maps"]
    with rasterio.open(path) as dst, rasterio.open(data / "scene_2.tif") as src:
        assert dst.crs == src.crs and dst.count == 3 and dst.shape == (14, 14)
        assert dst.transform == src.transform @ Affine.scale(4)
        arr = dst.read()
    assert np.isfinite(arr).all()
    cols = read_columns(out, ["file", "box", "grid_index", "x", "y"])
    i = next(i for i, f in enumerate(cols["file"]) if f.endswith("scene_2.tif"))
    gi, gj = cols["grid_index"][i + 20]
    assert list(cols["box"][i + 20]) == [gi * 4, gj * 4, 4, 4]
    assert (cols["x"][i + 20], cols["y"][i + 20]) == pytest.approx(dst.transform @ (gj + 0.5, gi + 0.5))


def test_more_pca_components_than_the_vectors_allow_are_said_to_be_fewer(data: Path, encoder: Path, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="geomed_ssl"):
        embed_folder(encoder, data, tmp_path / "patch", level="patch", pca_dims=500, progress=False)
    manifest, vectors = load_embeddings(tmp_path / "patch")
    k = min(vectors.shape)
    with rasterio.open(tmp_path / "patch" / "maps" / "scene_2_embedding.tif") as dst:
        assert dst.count == k < 500
    assert f"--pca 500: the maps hold {k} components" in caplog.text


def test_volume_patch_nifti_affine_is_the_ras_affine_scaled_by_the_patch(tmp_path: Path) -> None:
    import nibabel as nib

    vols = volumes(tmp_path / "vols")
    enc = make_encoder(vols, tmp_path / "enc3d", kind="volume", window=16, patch=4)
    out = tmp_path / "emb3d"
    embed_folder(enc, vols, out, level="patch", pca_dims=2, progress=False)
    manifest, vectors = load_embeddings(out)
    f = manifest["files"][0]
    ras = np.asarray(f["affine"])
    assert f["shape"] == [32, 24, 20] and ras[0, 0] > 0 and ras[1, 1] > 0  # reoriented to RAS
    img = nib.load(out / "maps" / "subject_0_embedding.nii.gz")
    assert img.shape == (8, 6, 5, 2)
    expected = ras @ np.array([[4, 0, 0, 1.5], [0, 4, 0, 1.5], [0, 0, 4, 1.5], [0, 0, 0, 1]])
    np.testing.assert_allclose(img.affine, expected, atol=1e-5)
    cols = read_columns(out, ["box", "grid_index", "x", "y", "z"])
    k = 37
    centre = img.affine @ np.r_[cols["grid_index"][k], 1.0]  # the map voxel of row k sits on the row's centre
    np.testing.assert_allclose(centre[:3], [cols["x"][k], cols["y"][k], cols["z"][k]], atol=1e-6)
    # and a window-level row of a volume re-embeds to the same vector; its rows were counted before on the grid
    # the reader gives (here resampled to 1 mm: 48x36x30 voxels), as the disk check needs
    from geomed_ssl.embeddings import extract

    counted, count = [], extract.embed_rows
    out_w = tmp_path / "emb3d_w"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(extract, "embed_rows", lambda *a: counted.append(count(*a)) or counted[-1])
        embed_folder(enc, vols, out_w, level="window", stride=8, progress=False, overrides=["data.spacing=[1,1,1]"])
    _, vw = load_embeddings(out_w)
    assert counted == [len(vw)]
    np.testing.assert_allclose(reembed(out_w, 5), vw[5], atol=1e-4, rtol=1e-4)


class Killed(Exception):
    pass


def test_a_run_killed_midway_resumes_without_duplicates(data: Path, encoder: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from geomed_ssl.embeddings import extract

    monkeypatch.setattr(extract, "WINDOWS_PER_PART", 1)  # a part per file, as a large file makes
    ref = tmp_path / "ref"
    embed_folder(encoder, data, ref, level="window", batch_size=4, dtype="float16", progress=False)
    out = tmp_path / "killed"
    real, calls = Embedder.encode, {"n": 0}

    def dying(self, images, valid):
        calls["n"] += 1
        if calls["n"] == 9:  # in the third file (the first two take 3 batches each)
            raise Killed()
        return real(self, images, valid)

    monkeypatch.setattr(Embedder, "encode", dying)
    with pytest.raises(Killed):
        embed_folder(encoder, data, out, level="window", batch_size=4, dtype="float16", progress=False)
    assert len(list((out / "parts").glob("part-*"))) == 2 and not (out / "embeddings.parquet").exists()
    assert all(p.name.startswith("part-") for p in (out / "parts").iterdir())  # the unfinished part was dropped
    monkeypatch.setattr(Embedder, "encode", real)
    with pytest.raises(GeomedError, match="pool"):  # other settings are refused, not mixed in
        embed_folder(encoder, data, out, level="window", batch_size=4, dtype="float16", pool="cls", progress=False)
    result = embed_folder(encoder, data, out, level="window", batch_size=4, dtype="float16", progress=False)
    assert result.files_skipped == 2 and result.files_embedded == 1
    _, v_ref = load_embeddings(ref)
    _, v = load_embeddings(out)
    assert v.dtype == np.float16 and v.shape == v_ref.shape
    np.testing.assert_array_equal(v, v_ref)
    a, b = read_columns(ref, ["file", "box"]), read_columns(out, ["file", "box"])
    assert a["file"] == b["file"] and (a["box"] == b["box"]).all()
    assert not (out / "parts").exists()
    again = embed_folder(encoder, data, out, level="window", batch_size=4, dtype="float16", progress=False)
    assert again.files_embedded == 0  # complete: nothing to redo


def test_a_run_killed_after_its_table_was_complete_drops_its_parts_on_the_rerun(data: Path, encoder: Path,
                                                                                 tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    """Killed between the complete manifest and the parts' deletion: the rerun has nothing to embed, and the parts
    (a second copy of every vector) go; a file the user put in parts/ stays."""
    from geomed_ssl.embeddings.store import EmbeddingStore

    out = tmp_path / "emb"
    monkeypatch.setattr(EmbeddingStore, "remove_parts", lambda self: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        embed_folder(encoder, data, out, level="window", batch_size=4, progress=False)
    monkeypatch.undo()
    assert (out / "embeddings.parquet").is_file() and list((out / "parts").glob("part-*"))
    (out / "parts" / "notes.txt").write_text("mine")
    again = embed_folder(encoder, data, out, level="window", batch_size=4, progress=False)
    assert again.files_embedded == 0 and not list((out / "parts").glob("part-*"))
    assert (out / "parts" / "notes.txt").read_text() == "mine"


def test_footprint_wkb_is_a_closed_little_endian_polygon() -> None:
    corners = raster_corners(np.array([[2, 3, 4, 5]]), list(TRANSFORM)[:6])
    raw = footprint_wkb(corners)[0].as_py()
    order, kind, rings, points = struct.unpack("<BIII", raw[:13])
    xy = np.frombuffer(raw[13:], "<f8").reshape(5, 2)
    assert (order, kind, rings, points) == (1, 3, 1, 5)
    np.testing.assert_allclose(xy[0], TRANSFORM @ (3, 2))
    np.testing.assert_allclose(xy[2], TRANSFORM @ (8, 6))
    np.testing.assert_allclose(xy[0], xy[4])


def test_geoparquet_when_geopandas_is_installed(data: Path, encoder: Path, tmp_path: Path) -> None:
    gpd = pytest.importorskip("geopandas")
    embed_folder(encoder, data, tmp_path / "g", level="window", progress=False)
    frame = gpd.read_parquet(tmp_path / "g" / "embeddings.parquet")
    assert frame.crs.to_epsg() == 32633 and frame.geometry.iloc[0].area == pytest.approx(160 * 160)


@pytest.mark.parametrize("meta, pool", [
    ({"method": "mae"}, "mean"), ({"method": "vicreg_dense"}, "mean"), ({"method": "simmim"}, "mean"),
    ({"method": "dino"}, "cls"), ({"method": "moco_v3"}, "cls"), ({"method": "vicreg"}, "cls"),
    ({"method": "swav"}, "cls"), ({"method": "jigsaw"}, "cls"), ({"method": "no_such_method"}, "mean"),
    ({"task": "classify", "head": {"pool": "cls"}}, "cls"), ({"task": "classify", "head": {"pool": "mean"}}, "mean"),
    ({"task": "segment", "head": {"kind": "unetr"}}, "mean"), ({}, "mean")])
def test_auto_pool_reads_the_token_the_encoder_was_trained_on(meta: dict, pool: str) -> None:
    assert embed_mod.auto_pool(meta) == pool


def test_embed_pools_a_self_distilled_encoder_by_its_cls_token_by_default(data: Path, tmp_path: Path) -> None:
    import json

    enc = make_encoder(data, tmp_path / "encoder")
    meta = json.loads((enc / "config.json").read_text())
    (enc / "config.json").write_text(json.dumps({**meta, "method": "dino"}))
    auto = embed_folder(enc, data, tmp_path / "auto", level="window", progress=False)
    for pool in ("cls", "mean"):
        embed_folder(enc, data, tmp_path / pool, level="window", pool=pool, progress=False)
    assert auto.manifest["settings"]["pool"] == "cls"
    np.testing.assert_array_equal(load_embeddings(tmp_path / "auto")[1], load_embeddings(tmp_path / "cls")[1])
    assert not np.allclose(load_embeddings(tmp_path / "auto")[1], load_embeddings(tmp_path / "mean")[1])


@pytest.fixture(scope="module")
def pretrained(data: Path, tmp_path_factory) -> Path:
    from geomed_ssl.train.pretrain import pretrain

    out = tmp_path_factory.mktemp("pre") / "run"
    pretrain("recipes/mae_sentinel2.yaml", data, out, progress=False,
             overrides=[*TINY, "data.sensor=null", "data.patch_size=16", "train.max_steps=2"])
    return out


def test_embed_cli_end_to_end_from_a_pretrained_run(data: Path, pretrained: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = runner.invoke(app, ["embed", str(pretrained), str(data), "--out", str(out), "--level", "patch",
                                 "--exclude", "scene_0*", "--pca", "4"])
    assert result.exit_code == 0, result.output
    assert "vectors of 32 dims from 2 files" in result.output
    table = pq.read_table(out / "embeddings.parquet")
    assert table.num_rows == 10 * 10 + 14 * 14 and np.load(out / "vectors.npy", mmap_mode="r").shape == (296, 32)
    assert {"id", "file", "box", "window", "x", "y", "footprint_wkt", "crs", "vector"} <= set(table.column_names)
    assert sorted(p.name for p in (out / "maps").iterdir()) == ["scene_1_embedding.tif", "scene_2_embedding.tif"]
    from geomed_ssl.outdirs import foreign_inside

    assert foreign_inside(out) == []  # --overwrite may replace all of it
    bad = scenes(tmp_path / "three_bands", [32], bands=3)
    refused = runner.invoke(app, ["embed", str(pretrained), str(bad), "--out", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "missing ['band_4']" in refused.output
    assert embed_mod.LEVELS == ("image", "window", "patch")


def described(folder: Path, arrays: list[np.ndarray], names: list[str]) -> Path:
    """GeoTIFFs whose bands carry the descriptions ``names``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, arr in enumerate(arrays):
        path = write_geotiff(folder / f"scene_{i}.tif", arr)
        with rasterio.open(path, "r+") as ds:
            for b, name in enumerate(names, start=1):
                ds.set_band_description(b, name)
    return folder


def test_the_same_bands_in_another_order_with_an_extra_band_embed_by_name(tmp_path: Path, caplog) -> None:
    rng = np.random.default_rng(4)
    arrays = [structured_raster(rng, 4, 32) for _ in range(2)]
    names = ["B02", "B03", "B04", "B08"]
    train = described(tmp_path / "train", arrays, names)
    enc = make_encoder(train, tmp_path / "enc")
    order = [3, 0, 2, 1]  # B08 B02 B04 B03, then an extra B11 the encoder never saw
    other = described(tmp_path / "other", [np.concatenate([a[order], a[:1] + 7]) for a in arrays],
                      [names[i] for i in order] + ["B11"])
    embed_folder(enc, train, tmp_path / "e1", level="image", progress=False)
    with caplog.at_level("INFO", logger="geomed_ssl"):
        embed_folder(enc, other, tmp_path / "e2", level="image", progress=False)
    _, v1 = load_embeddings(tmp_path / "e1")
    _, v2 = load_embeddings(tmp_path / "e2")
    np.testing.assert_allclose(v2, v1, rtol=1e-5, atol=1e-5)
    notes = " ".join(r.getMessage() for r in caplog.records)
    assert "reordered by name" in notes and "['B11'] dropped" in notes


def test_data_far_from_the_training_statistics_is_a_warning_naming_file_and_bands(tmp_path: Path, caplog) -> None:
    rng = np.random.default_rng(5)
    dn = scenes(tmp_path / "dn", [32, 32])  # digital numbers ~1000-3000
    enc = make_encoder(dn, tmp_path / "enc")
    refl = tmp_path / "refl"
    refl.mkdir()
    write_geotiff(refl / "reflectance.tif", (structured_raster(rng, 4, 32) / 20000.0).astype(np.float32))  # 0-0.15
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        embed_folder(enc, dn, tmp_path / "e_dn", level="image", progress=False)
        assert not [r for r in caplog.records if "value range" in r.getMessage()]
        embed_folder(enc, refl, tmp_path / "e_refl", level="image", progress=False)
    (msg,) = [r.getMessage() for r in caplog.records if "value range" in r.getMessage()]
    assert "reflectance.tif" in msg and "band_1" in msg and "trained on" in msg


def test_maps_of_files_whose_names_would_meet_are_kept_apart(encoder: Path, tmp_path: Path) -> None:
    """``a/b.tif`` and ``a__b.tif`` (both ``a__b``), ``s.tif`` and ``s.tiff`` (both ``s``): each file gets its own
    embedding map and cluster map, none replaces another's."""
    from geomed_ssl.embeddings.cluster import cluster_embeddings

    rng = np.random.default_rng(4)
    data = tmp_path / "rasters"
    (data / "a").mkdir(parents=True)
    for rel in ("a/b.tif", "a__b.tif", "s.tif", "s.tiff", "t.tif"):
        write_geotiff(data / rel, structured_raster(rng, 4, 40))
    out = tmp_path / "patch"
    embed_folder(encoder, data, out, level="patch", pca_dims=2, progress=False)
    manifest, _ = load_embeddings(out)
    maps = sorted(Path(p).name for p in manifest["maps"])
    assert len(maps) == 5 and len(set(maps)) == 5 and "t_embedding.tif" in maps
    assert sorted(p.name for p in (out / "maps").glob("*_embedding.tif")) == maps
    clusters = cluster_embeddings(out, tmp_path / "clusters", k=2)
    assert len(list((tmp_path / "clusters" / "maps").glob("*_clusters.tif"))) == 5, clusters


def test_an_encoder_pretrained_on_crops_embeds_at_any_window() -> None:
    """The hyperspectral recipe's encoders carry data.global_crop_size 32: a 36-px embedding window (the demo
    encoder's) must not be checked against those pretraining crops."""
    from geomed_ssl.embeddings.extract import data_config

    meta = {"recipe": {"data": {"global_crop_size": 32, "local_crop_size": 12, "patch_size": 36}}}
    cfg = data_config(meta, 2, (36, 36), None)
    assert cfg.global_crop_size is None and cfg.local_crop_size is None and list(cfg.patch_size) == [36, 36]


def test_a_folder_whose_settings_recorded_the_encoders_crop_sizes_still_resumes(tmp_path: Path) -> None:
    """Folders written before embed ignored the pretraining crops recorded them: not a change of settings."""
    from geomed_ssl.embeddings.store import EmbeddingStore

    store = EmbeddingStore(tmp_path / "emb")
    settings = {"level": "patch", "data": {"kind": "raster", "global_crop_size": None, "local_crop_size": None}}
    old = {"level": "patch", "data": {"kind": "raster", "global_crop_size": [32, 32], "local_crop_size": [12, 12]}}
    store.dir.mkdir(parents=True)
    store.write_manifest({"format": "geomed-ssl-embeddings", "version": 1, "complete": False, "settings": old,
                          "files": []})
    assert store.check(settings, overwrite=False)["settings"] == old


def test_a_folder_of_a_version_without_a_data_setting_resumes_when_it_is_at_its_default(tmp_path: Path) -> None:
    """data.date_pairs came after some folders were made: absent there, and at its default (False) now, it is no
    change of settings; set otherwise it is."""
    from geomed_ssl.embeddings.store import EmbeddingStore

    store = EmbeddingStore(tmp_path / "emb")
    old = {"level": "patch", "data": {"kind": "raster", "patch_size": 64}}
    store.dir.mkdir(parents=True)
    store.write_manifest({"format": "geomed-ssl-embeddings", "version": 1, "complete": False, "settings": old,
                          "files": []})
    now = {"level": "patch", "data": {"kind": "raster", "patch_size": 64, "date_pairs": False}}
    assert store.check(now, overwrite=False)["settings"] == old
    with pytest.raises(GeomedError, match="data.date_pairs"):
        store.check({**now, "data": {**now["data"], "date_pairs": True}}, overwrite=False)


def test_a_resume_refuses_files_embedded_before_that_are_no_longer_to_embed(data: Path, encoder: Path,
                                                                             tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Their rows would have joined the table beside the files embedded now (a table of neither run's files)."""
    from geomed_ssl.embeddings import extract

    monkeypatch.setattr(extract, "WINDOWS_PER_PART", 1)
    mine = tmp_path / "data"
    shutil.copytree(data, mine)
    out = tmp_path / "emb"
    real, calls = Embedder.encode, {"n": 0}

    def dying(self, images, valid):
        calls["n"] += 1
        if calls["n"] == 7:  # in the third file
            raise Killed()
        return real(self, images, valid)

    monkeypatch.setattr(Embedder, "encode", dying)
    with pytest.raises(Killed):
        embed_folder(encoder, mine, out, level="window", batch_size=4, progress=False)
    monkeypatch.setattr(Embedder, "encode", real)
    first = sorted(mine.glob("*.tif"))[0]
    first.rename(mine / "renamed.tif")
    with pytest.raises(DataError, match=f"'{first}' was embedded into .* not among the files to embed now"):
        embed_folder(encoder, mine, out, level="window", batch_size=4, progress=False)
    assert not (out / "embeddings.parquet").exists()
    (mine / "renamed.tif").rename(first)
    replaced = scenes(tmp_path / "other", [40], seed=5) / "scene_0.tif"
    shutil.copyfile(replaced, first)  # replaced by other data: its rows would be kept as they are
    with pytest.raises(GeomedError, match=f"'{first}' changed .* since it was embedded .* by the interrupted run"):
        embed_folder(encoder, mine, out, level="window", batch_size=4, progress=False)


def test_a_complete_folder_refuses_files_replaced_or_gone_since(data: Path, encoder: Path, tmp_path: Path) -> None:
    """"Complete; nothing to do" kept a replaced file's old vectors, and a removed file's rows, without a word."""
    mine = tmp_path / "data"
    shutil.copytree(data, mine)
    out = tmp_path / "emb"
    embed_folder(encoder, mine, out, level="image", progress=False)
    first = sorted(mine.glob("*.tif"))[0]
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))  # rewritten in place
    with pytest.raises(GeomedError, match=f"'{first}' changed .* since it was embedded into"):
        embed_folder(encoder, mine, out, level="image", progress=False)
    first.unlink()
    with pytest.raises(GeomedError, match="1 of its file.* are no longer in the data folder"):
        embed_folder(encoder, mine, out, level="image", progress=False)
    assert embed_folder(encoder, mine, out, level="image", progress=False, overwrite=True).files_embedded == 2


def test_patch_maps_of_a_scene_georeferenced_by_ground_control_points_carry_them_on_their_grid(
        tmp_path: Path) -> None:
    """Sentinel-1 GRD-like files carry GCPs and no transform: the 4-px-cell map gets the same points at a quarter
    of their pixel coordinates (else it could not be placed on a map)."""
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    data = tmp_path / "grd"
    data.mkdir()
    arr = structured_raster(np.random.default_rng(3), 4, 48).astype(np.float32)
    gcps = [GroundControlPoint(row=r, col=c, x=10 + c / 1000, y=45 - r / 1000, z=0.0)
            for r, c in ((0, 0), (0, 48), (48, 0), (48, 48))]
    with rasterio.open(data / "grd.tif", "w", driver="GTiff", height=48, width=48, count=4, dtype="float32",
                       gcps=gcps, crs=CRS.from_epsg(4326)) as dst:
        dst.write(arr)
    enc = make_encoder(data, tmp_path / "enc")
    embed_folder(enc, data, tmp_path / "emb", level="patch", pca_dims=3, progress=False)
    with rasterio.open(tmp_path / "emb" / "maps" / "grd_embedding.tif") as dst:
        got, crs = dst.gcps
        assert dst.shape == (12, 12) and crs == CRS.from_epsg(4326)
        tags = dst.tags()  # what made the map, as predict's outputs say it
        assert tags["GEOMED_SSL_INPUT"].endswith("grd.tif") and Path(tags["GEOMED_SSL_ENCODER"]).name == "enc"
    assert [(g.row, g.col, g.x, g.y) for g in got] == pytest.approx(
        [(g.row / 4, g.col / 4, g.x, g.y) for g in gcps])
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "emb" / "embeddings.parquet").drop(["vector"]).to_pylist()
    first = min(rows, key=lambda r: (-r["y"], r["x"]))  # the table is in map coordinates, not pixels
    assert (first["x"], first["y"]) == pytest.approx((10.002, 44.998))
    assert (first["minx"], first["maxy"], first["maxx"], first["miny"]) == pytest.approx((10.0, 45.0, 10.004, 44.996))
    assert CRS.from_wkt(first["crs"]) == CRS.from_epsg(4326)


def test_a_resume_takes_the_encoder_by_any_spelling_and_names_the_setting_that_changed(data: Path, encoder: Path,
                                                                                         tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(encoder, run / "encoder")
    out = tmp_path / "emb"
    first = embed_folder(run, data, out, level="image", progress=False)
    again = embed_folder(run / "encoder", data, out, level="image", progress=False)  # the same export
    assert again.files_embedded == 0 and again.manifest["files"] == first.manifest["files"]
    with pytest.raises(GeomedError, match=r"other settings \(level: 'image', now 'window'\)"):
        embed_folder(run, data, out, level="window", progress=False)


def test_a_file_smaller_than_one_token_is_skipped_at_image_level_before_any_output(data: Path, encoder: Path,
                                                                                  tmp_path: Path, caplog) -> None:
    import shutil

    from geomed_ssl.errors import DataError

    mixed = tmp_path / "mixed"
    shutil.copytree(data, mixed)
    write_geotiff(mixed / "tiny.tif", np.ones((4, 3, 3), np.uint16))  # 3x3 px, the encoder's tokens are 4x4
    with pytest.raises(DataError, match="tiny.tif.*smaller than one 4x4 token"):
        embed_folder(encoder, mixed, tmp_path / "strict", strict=True, progress=False)
    assert not (tmp_path / "strict").exists()
    result = embed_folder(encoder, mixed, tmp_path / "emb", progress=False)
    assert len(result.manifest["files"]) == 3 and "tiny.tif" in caplog.text


def test_a_volumes_size_against_the_token_is_judged_on_the_resampled_grid() -> None:
    """32x32x6 voxels of 4 mm slices are 21 slices at 1 mm (over an 8-voxel token); 16 voxels of 0.25 mm are 5."""
    from types import SimpleNamespace

    from geomed_ssl.data.catalog import Catalog
    from geomed_ssl.embeddings.extract import without_small_files

    thin = SimpleNamespace(path="thin.nii.gz", kind="volume", shape=(32, 32, 6), affine=np.diag([1.0, 1.0, 4.0, 1.0]))
    fine = SimpleNamespace(path="fine.nii.gz", kind="volume", shape=(16, 16, 16), affine=np.diag([0.25] * 3 + [1.0]))
    catalog = Catalog([thin, fine], [], "volume", ["band_1"], None)
    kept = without_small_files(catalog, (8, 8, 8), strict=False, spacing=[1.0, 1.0, 1.0])
    assert [r.path for r in kept.records] == ["thin.nii.gz"]
    assert "is 5x5x5, smaller than one 8x8x8 token" in kept.problems[0].reason


def test_embed_set_takes_only_data_keys() -> None:
    """The encoder is as it was saved: a model.* or train.* value would be accepted and ignored."""
    from geomed_ssl.embeddings.extract import data_config
    from geomed_ssl.errors import ConfigError

    assert data_config({}, 2, (8, 8), ["data.nodata=0"]).nodata == 0
    with pytest.raises(ConfigError, match=r"embed --set takes data\.\* keys .* got 'model.depth=7'"):
        data_config({}, 2, (8, 8), ["model.depth=7"])
    with pytest.raises(ConfigError, match=r"embed reads windows of --window .* give --window N instead"):
        data_config({}, 2, (16, 16), ["data.patch_size=8"])


def test_embed_options_are_checked_before_the_folder_is_read(encoder: Path, tmp_path: Path) -> None:
    from geomed_ssl.errors import ConfigError

    missing = tmp_path / "not-scanned"  # a scan would fail first on this folder, with another message
    for kwargs, message in (({"level": "tile"}, r"level \(--level\) must be one of"),
                            ({"pool": "max"}, r"pool \(--pool\) must be one of"),
                            ({"level": "window", "window": "5000"}, "--window 5000: at most 4096"),
                            ({"level": "image", "min_valid": 0.5}, "at --level image every file is one row")):
        with pytest.raises(ConfigError, match=message):
            embed_folder(encoder, missing, tmp_path / "emb", progress=False, **kwargs)


def test_small_files_share_window_level_parts_and_a_large_one_stands_alone() -> None:
    """One part (and one manifest rewrite) per small file made an archive of chips quadratic."""
    from types import SimpleNamespace

    from geomed_ssl.embeddings.extract import FILES_PER_PART, WINDOWS_PER_PART, window_groups

    chips = [SimpleNamespace(shape=(64, 64)) for _ in range(600)]  # one 64-px window each
    big = SimpleNamespace(shape=(64 * 80, 64 * 80))  # 6,400 windows
    groups = window_groups([*chips[:10], big, *chips[10:]], (64, 64), (64, 64))
    assert [len(g) for g in groups] == [10, 1, FILES_PER_PART, FILES_PER_PART, 590 - 2 * FILES_PER_PART]
    assert groups[1] == [big] and sum(len(g) for g in groups) == 601 and WINDOWS_PER_PART >= FILES_PER_PART


def test_embed_says_when_the_encoders_recipe_names_undescribed_bands(tmp_path, caplog) -> None:
    """Files without band descriptions are named by the encoder's recipe's data.band_names: a note says so (and how
    to state another order); a file with another band count is told where the names came from."""
    import logging

    data = scenes(tmp_path / "data", [40])
    enc = make_encoder(data, tmp_path / "enc", band_names=["B02", "B03", "B04", "B08"])
    with caplog.at_level(logging.INFO, logger="geomed_ssl"):
        embed_folder(enc, data, tmp_path / "e1", level="image", progress=False)
    notes = " ".join(r.getMessage() for r in caplog.records)
    assert "named by the encoder's recipe (data.band_names: B02 B03 B04 B08)" in notes
    three = scenes(tmp_path / "three", [40], bands=3)
    with pytest.raises(DataError, match=r"lists 4.*the encoder's recipe's: --set data.band_names"):
        embed_folder(enc, three, tmp_path / "e2", level="image", progress=False)


def test_map_names_of_deep_long_paths_stay_within_the_file_name_limit() -> None:
    """A map is named after the file's path under the data folder ('/' -> '__'): five 45-character folder names
    made a name whose temporary form passed 255 bytes. Long names are cut and told apart by their path's hash."""
    from geomed_ssl.embeddings.maps import grid_stems
    from geomed_ssl.outcommands import MAX_STEM_BYTES

    deep = "/".join(["S2A_MSIL2A_20200101T101031_N0213_R022_T32TQM_" + str(i) for i in range(5)])
    files = [{"path": f"/d/{deep}/{name}.tif", "rel": f"{deep}/{name}.tif"} for name in ("a", "b")]
    names = list(grid_stems(files).values())
    assert len(set(names)) == 2 and all(len(n.encode()) <= MAX_STEM_BYTES for n in names)
    assert grid_stems([{"path": "/d/x/y.tif", "rel": "x/y.tif"}]) == {"/d/x/y.tif": "x__y"}  # short: as before


def test_a_file_embedded_in_two_parts_is_never_finalised_into_one_table(tmp_path: Path) -> None:
    """Two embed runs writing one folder at once (where the filesystem has no locks) each commit a part holding the
    same file: the table would hold its rows twice and look complete. Finalising refuses, naming the way out."""
    from geomed_ssl.embeddings.store import EmbeddingStore
    from geomed_ssl.errors import GeomedError

    store = EmbeddingStore(tmp_path / "emb")
    store.dir.mkdir(parents=True)
    store.start({"level": "image"}, None)
    for _ in range(2):
        part = store.parts_dir / f".partial-1.0a1b2c3d-{_}"
        part.mkdir()
        (part / "files.json").write_text('[{"path": "/d/a.tif", "rows": 1, "kind": "raster"}]')
        store._publish(part, [])
    with pytest.raises(GeomedError, match=r"'/d/a.tif' \(and 0 more file\(s\)\) is embedded in two parts.*--overwrite"):
        store.finalize(["/d/a.tif"], {})


def test_an_encoder_pretrained_with_the_knn_monitor_reads_its_data_settings_without_it() -> None:
    """A DINO run with data.knn_every 5 (train.log_every 1): embed took its data section with the default log_every
    10 and refused it (knn_every must be a multiple of log_every); the monitor is no reading setting."""
    from geomed_ssl.embeddings.extract import data_config

    meta = {"method": "dino", "recipe": {"data": {"knn_every": 5, "val_labels": "/somewhere/classes"},
                                         "train": {"log_every": 1}}}
    cfg = data_config(meta, 2, (16, 16), None)
    assert cfg.knn_every == 0 and cfg.val_labels is None


def test_a_data_folder_spelt_with_dotdot_is_one_folder_from_anywhere(data: Path, encoder: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``../rasters`` from one folder and the plain path from another are the same data: the manifest stores paths
    with ``..`` folded, so a run resumed or re-run from elsewhere continues, and its paths outlive the folder they
    were given from. A folder an earlier version wrote with ``..`` in its paths is read folded too."""
    import json

    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    out = tmp_path / "emb"
    dotted = os.path.relpath(data, sub)
    assert dotted.startswith("..")
    first = embed_folder(encoder, dotted, out, level="image", progress=False)
    stored = [first.manifest["settings"]["data_dir"]] + [f["path"] for f in first.manifest["files"]]
    assert stored[0] == str(data) and not any(".." in Path(p).parts for p in stored)
    monkeypatch.chdir(tmp_path)
    assert embed_folder(encoder, data, out, level="image", progress=False).files_embedded == 0
    manifest = json.loads((out / "manifest.json").read_text())  # as an earlier version wrote it from sub/
    manifest["settings"]["data_dir"] = str(sub / dotted)
    for f in manifest["files"]:
        f["path"] = str(sub / os.path.relpath(f["path"], sub))
        f["paths"] = [f["path"]]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert embed_folder(encoder, data, out, level="image", progress=False).files_embedded == 0


def test_a_finished_folder_is_not_written_while_another_run_holds_it(data: Path, encoder: Path,
                                                                     tmp_path: Path) -> None:
    """Even a re-run with nothing to embed takes the folder's lock before it writes maps a killed run left out."""
    from tests.test_outlocks import holder

    import json

    out = tmp_path / "emb"
    embed_folder(encoder, data, out, level="patch", progress=False)
    shutil.rmtree(out / "maps")
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["maps"]  # as a run killed before its maps leaves it
    (out / "manifest.json").write_text(json.dumps(manifest))
    proc = holder(out, "embed")
    try:
        with pytest.raises(GeomedError, match="in use by `geomed-ssl embed`"):
            embed_folder(encoder, data, out, level="patch", progress=False)
        assert not (out / "maps").exists()
    finally:
        proc.kill()
        proc.wait()


def test_a_folder_of_volumes_given_to_a_raster_encoder_names_the_encoder_not_a_setting(encoder: Path,
                                                                                       tmp_path: Path) -> None:
    result = runner.invoke(app, ["embed", str(encoder), str(volumes(tmp_path / "vols", n=1)),
                                 "--out", str(tmp_path / "emb")])
    assert result.exit_code == 2, result.output
    assert "was trained on 2D GeoTIFF rasters; give it raster files" in result.output
    assert "set data.kind" not in result.output and not (tmp_path / "emb").exists()


def test_a_disk_too_small_for_the_vectors_is_warned_about_before_embedding(data: Path, encoder: Path, tmp_path: Path,
                                                                         monkeypatch, caplog) -> None:
    """embed counts its rows before it starts (a row per token patch of a file at --level patch) and warns when
    their vectors (three copies while the table and vectors.npy are made from the parts) and table would not fit
    on the disk."""
    import shutil

    import geomed_ssl.embeddings.extract as extract

    counted, count = [], extract.embed_bytes
    monkeypatch.setattr(extract, "embed_bytes", lambda *a: counted.append(count(*a)) or counted[-1])
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        embed_folder(encoder, data, tmp_path / "p", level="patch", progress=False)
    said = [r.getMessage() for r in caplog.records if "has 1.0 kB free" in r.getMessage()]
    assert len(said) == 1 and "these 3 file(s) at --level patch" in said[0] and "--dtype float16" in said[0]
    _, vectors = load_embeddings(tmp_path / "p")
    assert counted == [len(vectors) * (3 * vectors.shape[1] * 4 + extract.ROW_TABLE_BYTES)]  # every row counted
    monkeypatch.setattr(shutil, "disk_usage", real)
    caplog.clear()
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        embed_folder(encoder, data, tmp_path / "w", level="window", progress=False)
    assert not [r for r in caplog.records if " free; " in r.getMessage()]


def test_volume_maps_keep_the_inputs_space_and_read_micron_headers_in_mm(tmp_path: Path) -> None:
    """A map of an MNI-registered volume said 'scanner' (codes 1 always), and a header in microns (micro-CT) was read
    as mm: resampled 1000x off and its map placed 1000x too large."""
    import nibabel as nib

    vols = volumes(tmp_path / "vols")
    enc = make_encoder(vols, tmp_path / "enc3d", kind="volume", window=16, patch=4)
    src = nib.load(vols / "subject_1.nii.gz")
    micron = nib.Nifti1Image(np.asarray(src.dataobj), np.diag([1000.0, 1000, 1000, 1]) @ src.affine)
    micron.set_sform(micron.affine, code=4)  # MNI
    micron.header.set_xyzt_units("micron")
    data = tmp_path / "data"
    data.mkdir()
    nib.save(micron, str(data / "micro.nii.gz"))
    nib.save(src, str(data / "milli.nii.gz"))
    out = tmp_path / "emb"
    embed_folder(enc, data, out, level="patch", pca_dims=2, progress=False, overrides=["data.spacing=[3,3,4]"])
    manifest, _ = load_embeddings(out)
    files = {Path(f["path"]).name: f for f in manifest["files"]}
    assert files["micro.nii.gz"]["shape"] == files["milli.nii.gz"]["shape"]
    np.testing.assert_allclose(files["micro.nii.gz"]["affine"], files["milli.nii.gz"]["affine"], atol=1e-3)
    maps = {name: nib.load(out / "maps" / f"{name}_embedding.nii.gz") for name in ("micro", "milli")}
    np.testing.assert_allclose(maps["micro"].affine, maps["milli"].affine, atol=1e-3)  # both in mm
    assert maps["micro"].header.get_xyzt_units()[0] == "mm"
    assert int(maps["micro"].header["sform_code"]) == int(maps["micro"].header["qform_code"]) == 4
    expected = int(src.header["sform_code"]) or int(src.header["qform_code"]) or 1
    assert int(maps["milli"].header["sform_code"]) == expected
