"""Clustering stored embeddings: planted clusters recovered, maps aligned with the inputs, scores, CLI."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

from geomed_ssl.cli import app
from geomed_ssl.embeddings.cluster import agreement, cluster_embeddings, fit_predict
from geomed_ssl.embeddings.extract import embed_folder
from geomed_ssl.embeddings.store import read_columns
from geomed_ssl.errors import DataError
from tests.conftest import structured_raster, write_class_folders, write_geotiff
from tests.embeddings.test_extract import make_encoder, scenes, volumes

runner = CliRunner()


def blobs(n_per: int = 60, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 5
    truth = np.repeat(np.arange(3), n_per)
    return (centres[truth] + rng.normal(size=(len(truth), dim))).astype(np.float32), truth


@pytest.mark.parametrize("method", ["kmeans", "hdbscan"])
def test_planted_clusters_are_recovered(method: str) -> None:
    x, truth = blobs()
    labels, info = fit_predict(x, method, k=3, min_cluster_size=10)
    assert agreement(labels, [str(t) for t in truth])["nmi"] > 0.95
    assert info["backend"] in ("KMeans", "sklearn.HDBSCAN", "faiss.Kmeans", "hdbscan.HDBSCAN")


def test_rows_beyond_the_fit_sample_are_assigned_too() -> None:
    x, truth = blobs(n_per=200)
    labels, info = fit_predict(x, "hdbscan", min_cluster_size=10, fit_max=150, pca_dims=8)
    assert info["fit_rows"] == 150 and info["pca_dims"] == 8
    assert agreement(labels, [str(t) for t in truth])["nmi"] > 0.9


@pytest.fixture(scope="module")
def window_embeddings(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cl")
    data = scenes(root / "rasters", [48, 40])
    enc = make_encoder(data, root / "enc")
    out = root / "emb"
    embed_folder(enc, data, out, level="window", window=16, stride=8, progress=False)
    return data, out


def test_window_cluster_maps_align_with_their_inputs(window_embeddings: tuple[Path, Path], tmp_path: Path) -> None:
    data, emb = window_embeddings
    out = tmp_path / "cl"
    result = cluster_embeddings(emb, out, "kmeans", k=3)
    cols = read_columns(emb, ["file", "grid_index", "x", "y"])
    path = out / "maps" / "scene_0_clusters.tif"
    assert str(path) in result.summary["maps"] and path.with_suffix(".png").is_file()
    from geomed_ssl.outdirs import foreign_inside

    assert foreign_inside(out) == []  # --overwrite may replace all of it
    with rasterio.open(path) as dst, rasterio.open(data / "scene_0.tif") as src:
        assert dst.crs == src.crs and dst.shape == (5, 5) and dst.nodata == -32768
        # cells are stride-sized (8 px) and centred on their 16 px windows: a 4 px offset
        assert dst.transform == src.transform @ Affine.translation(4, 4) @ Affine.scale(8)
        grid = dst.read(1)
        for i in range(len(cols["file"])):
            if cols["file"][i].endswith("scene_0.tif"):
                gi, gj = cols["grid_index"][i]
                assert grid[gi, gj] == result.clusters[i]
                assert dst.transform @ (gj + 0.5, gi + 0.5) == pytest.approx((cols["x"][i], cols["y"][i]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clusters"] == 3 and -1 <= summary["silhouette"] <= 1 and sum(summary["sizes"].values()) == 25 + 16
    assert (out / "scatter.png").is_file() and summary["scatter"] in ("PCA", "UMAP")


def test_volume_cluster_maps_are_nifti_on_the_patch_grid(tmp_path: Path) -> None:
    import nibabel as nib

    vols = volumes(tmp_path / "vols", n=1)
    enc = make_encoder(vols, tmp_path / "enc3d", kind="volume")
    emb = tmp_path / "emb3d"
    embed_folder(enc, vols, emb, level="patch", pca_dims=0, progress=False)
    result = cluster_embeddings(emb, tmp_path / "cl3d", "hdbscan", min_cluster_size=20)
    img = nib.load(tmp_path / "cl3d" / "maps" / "subject_0_clusters.nii.gz")
    assert img.shape == (8, 6, 5) and img.get_data_dtype() == np.int16
    cols = read_columns(emb, ["grid_index", "x", "y", "z"])
    arr = np.asarray(img.dataobj)
    for k in (0, 50, len(result.clusters) - 1):
        g = cols["grid_index"][k]
        assert arr[tuple(g)] == result.clusters[k]
        np.testing.assert_allclose((img.affine @ np.r_[g, 1.0])[:3], [cols["x"][k], cols["y"][k], cols["z"][k]],
                                   atol=1e-6)


def test_label_map_gives_nmi_and_ari(window_embeddings: tuple[Path, Path], tmp_path: Path) -> None:
    data, emb = window_embeddings
    gt = np.zeros((1, 48, 48), np.uint8)
    gt[0, :, :24], gt[0, :, 24:] = 1, 2
    gt[0, :9] = 0  # unlabelled: the first row of window centres (row 8)
    write_geotiff(tmp_path / "scene_0_gt.tif", gt)
    s = cluster_embeddings(emb, tmp_path / "cl", "kmeans", k=2, labels=tmp_path / "scene_0_gt.tif").summary
    assert s["labels"] == "label map scene_0_gt.tif" and s["classes"] == 2
    assert s["labelled_rows"] == 20  # scene_0's 5x5 windows minus the first row of centres (unlabelled)
    assert 0 <= s["nmi"] <= 1 and -1 <= s["ari"] <= 1


def test_a_label_map_labels_only_the_files_on_its_grid_and_in_its_folder(tmp_path: Path) -> None:
    """Two dates of one scene beside their map are both labelled; a scene of the same size elsewhere on the ground
    is not; patients of one atlas space (same grid) take only the map in their own folder."""
    rng = np.random.default_rng(3)
    scene = tmp_path / "data" / "scene"
    scenes(scene, [32, 32])  # two dates: same size, CRS and transform
    write_geotiff(tmp_path / "data" / "elsewhere.tif", structured_raster(rng, 4, 32),
                  transform=Affine(10, 0, 550000, 0, -10, 5100000))
    enc = make_encoder(tmp_path / "data", tmp_path / "enc")
    emb = tmp_path / "emb"
    embed_folder(enc, tmp_path / "data", emb, level="window", window=16, stride=16, progress=False)
    gt = np.ones((1, 32, 32), np.uint8)
    gt[0, :, 16:] = 2
    write_geotiff(scene / "map.tif", gt)
    s = cluster_embeddings(emb, tmp_path / "cl", "kmeans", k=2, labels=scene / "map.tif").summary
    assert s["labelled_rows"] == 8  # 4 windows of each date, none of the scene 50 km east
    write_geotiff(tmp_path / "shifted.tif", gt, transform=Affine(10, 0, 500005, 0, -10, 5100000))
    with pytest.raises(DataError, match="grid of no embedded file.*origin shifted"):
        cluster_embeddings(emb, tmp_path / "cl2", "kmeans", k=2, labels=tmp_path / "shifted.tif")

    import nibabel as nib

    for name in ("pat1", "pat2"):
        volumes(tmp_path / "vols" / name, n=1)
    venc = make_encoder(tmp_path / "vols", tmp_path / "enc3d", kind="volume")
    vemb = tmp_path / "emb3d"
    embed_folder(venc, tmp_path / "vols", vemb, level="patch", pca_dims=0, progress=False)
    src = nib.load(tmp_path / "vols" / "pat1" / "subject_0.nii.gz")
    lab = np.zeros(src.shape, np.uint8)
    lab[:16], lab[16:] = 1, 2
    nib.save(nib.Nifti1Image(lab, src.affine), str(tmp_path / "vols" / "pat1" / "seg.nii.gz"))
    s = cluster_embeddings(vemb, tmp_path / "cl3d", "kmeans", k=2, labels=tmp_path / "vols" / "pat1" / "seg.nii.gz"
                           ).summary
    rows = read_columns(vemb, ["file"])["file"]
    assert s["labelled_rows"] == sum("pat1" in f for f in rows) < len(rows)


def test_a_label_maps_nodata_and_nan_are_unlabelled(window_embeddings: tuple[Path, Path], tmp_path: Path) -> None:
    _, emb = window_embeddings
    gt = np.ones((1, 48, 48), np.uint8)
    gt[0, :, 24:] = 2
    gt[0, :24] = 255  # the map's nodata: the first rows of window centres are unlabelled
    write_geotiff(tmp_path / "nd.tif", gt, nodata=255)
    s = cluster_embeddings(emb, tmp_path / "cl", "kmeans", k=2, labels=tmp_path / "nd.tif").summary
    assert s["classes"] == 2 and s["labelled_rows"] == 15  # 25 windows, 10 centred on nodata
    write_geotiff(tmp_path / "nan.tif", np.where(gt == 255, np.nan, gt).astype(np.float32), nodata=float("nan"))
    s = cluster_embeddings(emb, tmp_path / "cl2", "kmeans", k=2, labels=tmp_path / "nan.tif").summary
    assert s["classes"] == 2 and s["labelled_rows"] == 15  # 25 windows, 10 centred on nodata


def test_cluster_cli_with_class_folders_and_a_labels_csv(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "classes", ["Forest", "River", "Urban"], per_class=4)
    enc = make_encoder(root, tmp_path / "enc")
    emb = tmp_path / "emb"
    assert runner.invoke(app, ["embed", str(enc), str(root), "--out", str(emb)]).exit_code == 0
    result = runner.invoke(app, ["cluster", str(emb), "--method", "kmeans", "--k", "3", "--labels", "folders",
                                 "--out", str(tmp_path / "cl")])
    assert result.exit_code == 0, result.output
    assert "3 clusters over 12 rows" in result.output and "NMI" in result.output
    with (tmp_path / "cl" / "clusters.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and {r["label"] for r in rows} == {"Forest", "River", "Urban"}
    assert {r["crs"] for r in rows} == {"EPSG:32633"}  # x / y mean nothing without it (tiles of several zones)
    assert not (tmp_path / "cl" / "maps").exists()  # image level: one vector per file, no maps
    table = tmp_path / "labels.csv"
    table.write_text("file,label\n" + "".join(f"{Path(r['file']).name},{r['label'][0]}\n" for r in rows))
    again = runner.invoke(app, ["cluster", str(emb), "--method", "hdbscan", "--min-cluster-size", "3",
                                "--labels", str(table), "--out", str(tmp_path / "cl"), "--overwrite"])
    assert again.exit_code == 0, again.output
    s = json.loads((tmp_path / "cl" / "summary.json").read_text())
    assert s["method"] == "hdbscan" and s["labels"] == "CSV labels.csv" and s["labelled_rows"] == 12
    refused = runner.invoke(app, ["cluster", str(emb), "--out", str(tmp_path / "cl")])
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    table.write_text("Image,Class\n" + "".join(f"{Path(r['file']).name},{r['label']}\n" for r in rows))  # the
    by_classes = runner.invoke(app, ["cluster", str(emb), "--k", "3", "--labels", str(table),  # finetune's table
                                     "--out", str(tmp_path / "cl_classes")])
    assert by_classes.exit_code == 0, by_classes.output
    assert json.loads((tmp_path / "cl_classes" / "summary.json").read_text())["labelled_rows"] == 12


def test_folder_labels_work_when_the_data_folder_is_reached_through_a_symlink(tmp_path: Path) -> None:
    real = write_class_folders(tmp_path / "store" / "classes", ["Forest", "River"], per_class=3)
    link = tmp_path / "linked"
    link.symlink_to(real, target_is_directory=True)
    enc = make_encoder(real, tmp_path / "enc")
    emb = tmp_path / "emb"
    embed_folder(enc, link, emb, level="image", progress=False)
    result = cluster_embeddings(emb, tmp_path / "cl", k=2, labels="folders")
    assert result.summary["classes"] == 2 and result.summary["labelled_rows"] == 6
    manifest = json.loads((emb / "manifest.json").read_text())
    assert all(f["path"].startswith(manifest["settings"]["data_dir"] + "/") for f in manifest["files"])


def test_an_old_manifest_with_a_resolved_data_dir_still_finds_the_class_folders(tmp_path: Path) -> None:
    from geomed_ssl.embeddings.truth import true_labels

    real = write_class_folders(tmp_path / "store" / "classes", ["Forest", "River"], per_class=1)
    link = tmp_path / "linked"
    link.symlink_to(real, target_is_directory=True)
    files = [str(link / "Forest" / "Forest_0.tif"), str(link / "River" / "River_0.tif")]
    truth, _ = true_labels("folders", {"settings": {"data_dir": str(real.resolve())}}, {"file": files})
    assert truth == ["Forest", "River"]


def test_a_labels_source_that_yields_one_class_is_an_error_not_a_score(tmp_path: Path) -> None:
    from geomed_ssl.errors import DataError

    root = write_class_folders(tmp_path / "classes", ["Forest", "River"], per_class=3)
    enc = make_encoder(root, tmp_path / "enc")
    emb = tmp_path / "emb"
    embed_folder(enc, root / "Forest", emb, level="image", progress=False)
    table = tmp_path / "labels.csv"
    table.write_text("file,label\n" + "".join(f"Forest_{i}.tif,Forest\n" for i in range(3)))
    with pytest.raises(DataError, match=r"gives 1 class \('Forest'\) over 3 labelled rows"):
        cluster_embeddings(emb, tmp_path / "cl", k=2, labels=str(table))
    assert not (tmp_path / "cl").exists()


def test_cluster_and_similar_never_write_inside_the_embedded_data_folder(window_embeddings: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    """They read it (class folders, label maps beside it, the hits' files for the contact sheet): an input."""
    from geomed_ssl.embeddings.search import find_similar
    from geomed_ssl.errors import OutputError

    data, emb = window_embeddings
    with pytest.raises(OutputError, match="embedded data folder"):
        cluster_embeddings(emb, data / "clusters", "kmeans", k=2)
    with pytest.raises(OutputError, match="embedded data folder"):
        find_similar(emb, data / "scene_0.tif", top=1, out_dir=data / "hits", sheet=False)
    assert not (data / "clusters").exists() and not (data / "hits").exists()


def test_a_label_map_on_a_volumes_own_grid_labels_embeddings_made_at_another_spacing(tmp_path: Path) -> None:
    """The encoder resampled the volume to 3 mm; the segmentation lies on the scan's own 1.5 x 1.5 x 2 mm voxels, as
    it was saved: it is matched on the native grid and read on the resampled one, where the rows were embedded."""
    import nibabel as nib

    vols = volumes(tmp_path / "vols", n=1)
    enc = make_encoder(vols, tmp_path / "enc3d", kind="volume", window=8)
    emb = tmp_path / "emb3d"
    embed_folder(enc, vols, emb, level="patch", pca_dims=0, progress=False, overrides=["data.spacing=[3,3,3]"])
    src = nib.load(tmp_path / "vols" / "subject_0.nii.gz")
    lab = np.ones(src.shape, np.uint8)
    lab[16:] = 2  # two halves along the file's first axis
    nib.save(nib.Nifti1Image(lab, src.affine), str(tmp_path / "seg.nii.gz"))
    s = cluster_embeddings(emb, tmp_path / "cl", "kmeans", k=2, labels=tmp_path / "seg.nii.gz").summary
    assert s["labelled_rows"] == len(read_columns(emb, ["file"])["file"]) and s["classes"] == 2


def test_identical_vectors_are_one_warning_not_a_library_traceback_of_warnings(caplog) -> None:
    from geomed_ssl.embeddings.cluster import fit_predict

    vectors = np.ones((12, 8), np.float32)
    with caplog.at_level("WARNING", logger="geomed_ssl"), warnings.catch_warnings():
        warnings.simplefilter("error")  # a scikit-learn warning would fail here
        labels, _ = fit_predict(vectors, "kmeans", k=3, seed=0)
    assert "all 12 vectors are the same" in caplog.text and labels.shape == (12,)


def test_maps_are_recorded_by_absolute_path_whatever_the_working_folder(window_embeddings: tuple[Path, Path],
                                                                         tmp_path: Path, monkeypatch) -> None:
    """A relative --out gives the same summary.json as an absolute one, readable from any folder."""
    _, emb = window_embeddings
    monkeypatch.chdir(tmp_path)
    result = cluster_embeddings(emb, Path("cl"), "kmeans", k=3)
    assert result.summary["maps"] and all(Path(p).is_absolute() and Path(p).is_file() for p in result.summary["maps"])


def test_a_label_volume_among_subjects_of_one_atlas_space_labels_the_subject_it_is_named_after(tmp_path: Path,
                                                                                               caplog) -> None:
    """An images folder of subjects registered to one atlas (one grid, one folder, as nnU-Net's imagesTr): a label
    volume named after one of them labels that subject only (it labelled them all, and NMI was scored against
    another subject's labels); one named after none labels them all, with a warning."""
    import logging

    import nibabel as nib

    volumes(tmp_path / "vols", n=3)
    enc = make_encoder(tmp_path / "vols", tmp_path / "enc3d", kind="volume")
    emb = tmp_path / "emb3d"
    embed_folder(enc, tmp_path / "vols", emb, level="patch", pca_dims=0, progress=False)
    src = nib.load(tmp_path / "vols" / "subject_1.nii.gz")
    lab = np.zeros(src.shape, np.uint8)
    lab[:16], lab[16:] = 1, 2
    for name in ("subject_1_seg.nii.gz", "atlas_labels.nii.gz"):
        nib.save(nib.Nifti1Image(lab, src.affine), str(tmp_path / "vols" / name))
    rows = read_columns(emb, ["file"])["file"]
    s = cluster_embeddings(emb, tmp_path / "cl1", "kmeans", k=2,
                           labels=tmp_path / "vols" / "subject_1_seg.nii.gz").summary
    assert s["labelled_rows"] == sum(f.endswith("subject_1.nii.gz") for f in rows)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        s = cluster_embeddings(emb, tmp_path / "cl2", "kmeans", k=2,
                               labels=tmp_path / "vols" / "atlas_labels.nii.gz").summary
    assert s["labelled_rows"] == len(rows) and "named after none of them" in caplog.text


def test_a_map_of_an_unplaced_input_is_not_placed_either(tmp_path):
    """A map of a patch without georeferencing was given the cell scaling (8, 0, 0, 0, 8, 0) as its transform: a
    place on no map, which GIS read as one."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    from geomed_ssl.embeddings.maps import write_grid

    meta = {"kind": "raster", "path": "patch.tif", "crs": None, "transform": [1, 0, 0, 0, 1, 0],
            "map_transform": [8, 0, 0, 0, 8, 0]}
    out = write_grid(meta, np.zeros((1, 4, 4), np.float32), tmp_path / "m.tif", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rasterio.open(out).close()
    assert any(issubclass(w.category, NotGeoreferencedWarning) for w in caught)
    placed = write_grid({**meta, "transform": [10, 0, 5e5, 0, -10, 5e6], "map_transform": [80, 0, 5e5, 0, -80, 5e6]},
                        np.zeros((1, 4, 4), np.float32), tmp_path / "p.tif", None)
    with rasterio.open(placed) as ds:
        assert tuple(ds.transform)[:6] == (80, 0, 5e5, 0, -80, 5e6)


def test_a_map_of_an_rpc_scene_carries_its_rpcs_on_the_map_grid(tmp_path):
    """A raw optical scene placed only by RPCs: predict kept them, but embedding and cluster maps had none."""
    import rasterio
    from rasterio.rpc import RPC
    from rasterio.transform import RPCTransformer

    from geomed_ssl.embeddings.maps import map_geometry, raster_gcps, write_grid

    coeffs = lambda *pairs: [dict(pairs).get(i, 0.0) for i in range(20)]  # noqa: E731
    rpc = RPC(height_off=0, height_scale=100, lat_off=46.0, lat_scale=0.05, long_off=14.5, long_scale=0.05,
              line_off=63.5, line_scale=64, samp_off=47.5, samp_scale=48, line_num_coeff=coeffs((2, -1.0)),
              line_den_coeff=coeffs((0, 1.0)), samp_num_coeff=coeffs((1, 1.0), (2, 0.1)),
              samp_den_coeff=coeffs((0, 1.0)), err_bias=0, err_rand=0)
    with rasterio.open(tmp_path / "raw.tif", "w", driver="GTiff", height=128, width=96, count=1, dtype="uint8",
                       rpcs=rpc) as dst:
        dst.write(np.zeros((1, 128, 96), np.uint8))
    meta = {"kind": "raster", "path": str(tmp_path / "raw.tif"), "crs": None, "transform": [1, 0, 0, 0, 1, 0],
            **raster_gcps(str(tmp_path / "raw.tif"))}
    for level, window in (("patch", (16, 16)), ("window", (32, 32))):
        meta.update(map_geometry("raster", (128, 96), level, window, (16, 16), (8, 8), meta["transform"], None))
        out = write_grid(meta, np.zeros((1, *meta["grid"]), np.float32), tmp_path / f"{level}.tif", None)
        with rasterio.open(out) as ds:
            on_map = RPCTransformer(ds.rpcs)
        on_input = RPCTransformer(rpc)
        a, _, ow, _, e, oh = meta["map_transform"]
        for r, c in ((0, 0), (3, 2), (meta["grid"][0] - 1, meta["grid"][1] - 1)):
            centre = (oh + e * (r + 0.5), ow + a * (c + 0.5))  # the map cell's centre on the input's pixels
            np.testing.assert_allclose(on_map.xy(r, c, offset="center"),
                                       on_input.xy(*centre, offset="ul"), atol=1e-9)


def test_a_labels_csv_with_one_file_labelled_twice_is_refused_and_rows_naming_nothing_are_said(tmp_path: Path,
                                                                                                caplog) -> None:
    import logging

    from geomed_ssl.embeddings.truth import true_labels
    from geomed_ssl.errors import DataError

    root = tmp_path / "data"
    files = [str(root / "Forest" / "Forest_0.tif"), str(root / "River" / "River_0.tif")]
    manifest = {"settings": {"data_dir": str(root)}}
    (tmp_path / "twice.csv").write_text("file,label\nForest/Forest_0.tif,forest\nForest/Forest_0.tif,water\n")
    with pytest.raises(DataError, match=r"twice with different labels \(line 2: 'forest', line 3: 'water'\)"):
        true_labels(tmp_path / "twice.csv", manifest, {"file": files})
    (tmp_path / "typo.csv").write_text("file,label\nForest/Forest_0.tif,forest\nForest/Forest_0.tif,forest\n"
                                       "ghost.tif,river\n")
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        truth, _ = true_labels(tmp_path / "typo.csv", manifest, {"file": files})
    assert truth == ["forest", None]
    said = [r.getMessage() for r in caplog.records if "name no embedded file" in r.getMessage()]
    assert len(said) == 1 and "line 4 ('ghost.tif')" in said[0]
    (tmp_path / "sub").mkdir()  # as finetune reads its CSV: relative to the CSV's folder, a path's end, any case
    (tmp_path / "sub" / "rel.csv").write_text("file,label\n../data/Forest/Forest_0.tif,forest\nriver_0.tif,river\n")
    assert true_labels(tmp_path / "sub" / "rel.csv", manifest, {"file": files})[0] == ["forest", "river"]
    (tmp_path / "spelled.csv").write_text("file,label\nForest_0.tif,forest\nForest/Forest_0.tif,water\n")
    with pytest.raises(DataError, match="twice with different labels"):  # one file, two spellings
        true_labels(tmp_path / "spelled.csv", manifest, {"file": files})
    two = [str(root / "2019" / "tile.tif"), str(root / "2020" / "tile.tif")]
    (tmp_path / "bare.csv").write_text("file,label\ntile.tif,forest\n")
    with pytest.raises(DataError, match="line 2: 'tile.tif' names 2 embedded files"):
        true_labels(tmp_path / "bare.csv", manifest, {"file": two})
    (tmp_path / "windows.csv").write_text("file,label\nForest\\Forest_0.tif,forest\nRiver\\River_0.tif,river\n")
    assert true_labels(tmp_path / "windows.csv", manifest, {"file": files})[0] == ["forest", "river"]


def test_patches_placed_nowhere_take_only_the_label_map_named_after_them_and_0_can_be_a_class(tmp_path: Path) -> None:
    """38-Cloud patches carry no georeference, so every patch shares the identity "grid": one patch's cloud mask
    labelled all nine, and its 0 (clear sky) could not be made a class."""
    data = tmp_path / "patches"
    data.mkdir()
    rng = np.random.default_rng(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("p1", "p2", "p3"):
            with rasterio.open(data / f"{name}.tif", "w", driver="GTiff", height=32, width=32, count=4,
                               dtype="uint16") as dst:
                dst.write(structured_raster(rng, 4, 32))
        gt = np.zeros((1, 32, 32), np.uint8)
        gt[0, :, 16:] = 255
        (tmp_path / "gt").mkdir()
        with rasterio.open(tmp_path / "gt" / "p2_gt.tif", "w", driver="GTiff", height=32, width=32, count=1,
                           dtype="uint8") as dst:
            dst.write(gt)
        enc = make_encoder(data, tmp_path / "enc")
    emb = tmp_path / "emb"
    embed_folder(enc, data, emb, level="window", window=16, stride=16, progress=False)
    with pytest.raises(DataError, match="gives 1 class"):  # 0 unlabelled by default: the mask's clear sky left out
        cluster_embeddings(emb, tmp_path / "cl", "kmeans", k=2, labels=tmp_path / "gt" / "p2_gt.tif")
    result = runner.invoke(app, ["cluster", str(emb), "--k", "2", "--out", str(tmp_path / "cl2"), "--labels",
                                 str(tmp_path / "gt" / "p2_gt.tif"), "--ignore-value", "none"])
    assert result.exit_code == 0, result.output
    s = json.loads((tmp_path / "cl2" / "summary.json").read_text())
    assert s["labelled_rows"] == 4 and s["classes"] == 2  # p2's four windows, not all twelve


def test_a_case_of_a_folder_of_several_is_its_own_query_and_takes_the_label_named_after_it(tmp_path: Path) -> None:
    """nnU-Net-like folders: `similar --query` one channel file reads that case (not the folder's first), and
    `cluster --labels 001.nii.gz` labels case 001 even where the channel comes first in the names (flair_001)."""
    import nibabel as nib

    from geomed_ssl.config import DataConfig
    from geomed_ssl.embeddings.search import record_for
    from geomed_ssl.embeddings.truth import _named_after

    for case in ("000", "001"):
        for seq in ("flair", "t1"):
            nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(tmp_path / f"{seq}_{case}.nii.gz"))
    cfg = DataConfig(kind="volume", patch_size=8, channels=["flair_*.nii.gz", "t1_*.nii.gz"])
    record = record_for(tmp_path / "t1_001.nii.gz", cfg)
    assert record.case == "001" and [Path(p).name for p in record.paths] == ["flair_001.nii.gz", "t1_001.nii.gz"]
    files = [{"path": str(tmp_path / f"flair_{c}.nii.gz"), "case": c,
              "paths": [str(tmp_path / f"flair_{c}.nii.gz"), str(tmp_path / f"t1_{c}.nii.gz")]} for c in ("000", "001")]
    assert [f["case"] for f in _named_after(tmp_path / "001.nii.gz", files)] == ["001"]
    from geomed_ssl.embeddings.maps import grid_stems

    files[1]["rel"] = "sub/flair_001.nii.gz"
    assert list(grid_stems(files).values()) == ["000", "sub__001"]  # a case's maps: named as predict names it


def test_overwrite_deletes_the_maps_it_wrote_and_refuses_a_users_file_named_like_one(
        window_embeddings: tuple[Path, Path], tmp_path: Path) -> None:
    """A map's name alone made a file in maps/ ours: a user's `scene_0_clusters.tif` (or its PNG) was deleted by
    --overwrite. Now its contents say whether it is (the input tag a map carries; a PNG goes with its map)."""
    import shutil

    from geomed_ssl.errors import OutputError
    from geomed_ssl.outcommands import made_map

    data, emb = window_embeddings
    out = tmp_path / "cl"
    cluster_embeddings(emb, out, "kmeans", k=3)
    maps = sorted(p.name for p in (out / "maps").iterdir())
    assert "scene_0_clusters.tif" in maps and "scene_0_clusters.png" in maps
    assert all(made_map(out / "maps" / m, "summary.json") for m in maps)
    cluster_embeddings(emb, out, "kmeans", k=3, overwrite=True)  # its own maps: replaced
    (out / "maps" / "scene_0_clusters.tif.aux.xml").write_text("<PAMDataset/>")  # GDAL's, beside our map
    cluster_embeddings(emb, out, "kmeans", k=3, overwrite=True)
    for name in ("mine_clusters.tif", "mine_clusters.png", "notes.aux.xml"):  # the user's: no tag, a lone PNG,
        theirs = out / "maps" / name  # a sidecar of no map of ours
        if name.endswith(".tif"):
            shutil.copy(data / "scene_0.tif", theirs)
        else:
            theirs.write_bytes(b"\x89PNG the user's")
        with pytest.raises(OutputError, match=f"also holds 'maps/{name}'"):
            cluster_embeddings(emb, out, "kmeans", k=3, overwrite=True)
        assert theirs.is_file()
        theirs.unlink()
    mine = out / "maps" / "scene_0_clusters.tif"  # a user's file at a map's own name: the listing no longer vouches
    for content in (b"my notes", (data / "scene_0.tif").read_bytes()):  # a text file; a GeoTIFF without the tag
        mine.write_bytes(content)
        with pytest.raises(OutputError, match="also holds 'maps/scene_0_clusters.(tif|png)'"):  # the PNG goes
            cluster_embeddings(emb, out, "kmeans", k=3, overwrite=True)  # with its map: the user's too
        (out / "maps" / "scene_0_clusters.png").unlink(missing_ok=True)
        with pytest.raises(OutputError, match="also holds 'maps/scene_0_clusters.tif'"):
            cluster_embeddings(emb, out, "kmeans", k=3, overwrite=True)
        assert mine.read_bytes() == content
    summary = json.loads((out / "summary.json").read_text())
    del summary["maps_tagged"]  # a folder of an earlier version, whose maps carried no tag: its listing vouches
    (out / "summary.json").write_text(json.dumps(summary))
    assert made_map(mine, "summary.json")
    mine.write_bytes(b"my notes")  # but never for a file that is no raster at all
    assert not made_map(mine, "summary.json")


def test_a_volume_map_is_known_as_ours_by_its_nifti_description(tmp_path: Path) -> None:
    import nibabel as nib

    from geomed_ssl.outcommands import made_map

    vols = volumes(tmp_path / "vols", n=1)
    enc = make_encoder(vols, tmp_path / "enc3d", kind="volume")
    embed_folder(enc, vols, tmp_path / "emb3d", level="patch", pca_dims=2, progress=False)
    ours = tmp_path / "emb3d" / "maps" / "subject_0_embedding.nii.gz"
    assert made_map(ours, "manifest.json")
    theirs = tmp_path / "emb3d" / "maps" / "atlas_embedding.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(theirs))
    assert not made_map(theirs, "manifest.json")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(ours))  # no description: a user's
    assert not made_map(ours, "manifest.json")  # file, in a folder whose manifest says its maps carry theirs
    manifest = json.loads((tmp_path / "emb3d" / "manifest.json").read_text())
    del manifest["maps_tagged"]  # an earlier version's folder, whose maps had no description
    (tmp_path / "emb3d" / "manifest.json").write_text(json.dumps(manifest))
    assert made_map(ours, "manifest.json")  # listed by the folder's manifest


def test_numbers_given_as_strings_from_python_are_refused_naming_the_argument(tmp_path) -> None:
    """cluster_embeddings(k="10") ended in "'<' not supported between instances of 'int' and 'str'"."""
    from geomed_ssl.embeddings.cluster import cluster_embeddings
    from geomed_ssl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"k \(--k\) must be an integer, got '10'"):
        cluster_embeddings(tmp_path / "emb", tmp_path / "cl", k="10")
    with pytest.raises(ConfigError, match=r"min_cluster_size \(--min-cluster-size\) must be an integer"):
        cluster_embeddings(tmp_path / "emb", tmp_path / "cl", method="hdbscan", min_cluster_size=5.5)
    assert not (tmp_path / "cl").exists()

