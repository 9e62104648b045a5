"""Streaming sliding-window prediction: seamless blending, georeferenced outputs, bounded memory, band checks, and
NIfTI outputs that overlay their input exactly."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from geomed_ssl.data.stats import BandStats, normalize
from geomed_ssl.windows.tiling import window_starts
from geomed_ssl.errors import DataError
from geomed_ssl.inference.predict import predict_files, predict_raster, predict_volume
from geomed_ssl.inference.writers import GeoTiffWriter, write_nifti_like
from tests.conftest import structured_raster, write_geotiff

H, W, C, K = 1000, 700, 4, 4
NODATA = 0
TILED = dict(tiled=True, blockxsize=256, blockysize=256, compress="deflate")


def stats_of(array: np.ndarray, names: list[str], nodata: float | None = None) -> BandStats:
    """Band statistics of the valid pixels of (C, ...) ``array``."""
    flat = array.reshape(array.shape[0], -1).astype(np.float64)
    keep = ~(flat == nodata).all(axis=0) if nodata is not None else np.ones(flat.shape[1], bool)
    v = flat[:, keep]
    p1, p99 = np.percentile(v, [1, 99], axis=1)
    return BandStats(names, v.mean(1).tolist(), v.std(1).tolist(), p1.tolist(), p99.tolist(), [v.shape[1]] * len(names))


def conv_model(in_ch: int, classes: int, dims: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(in_ch, classes, 1)
    with torch.no_grad():
        conv.weight.mul_(3.0)
    return conv.eval()


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict:
    """A 1000x700 4-band uint16 deflate-tiled GeoTIFF with smooth structure and a nodata (0) rectangle."""
    arr = structured_raster(np.random.default_rng(3), C, H)[:, :, :W].copy()  # (C, H, W)
    arr[:, 100:180, 40:300] = NODATA
    path = write_geotiff(tmp_path_factory.mktemp("scene") / "scene.tif", arr, nodata=NODATA, **TILED)
    names = [f"band_{i}" for i in range(1, C + 1)]
    stats = stats_of(arr, names, NODATA)
    model = conv_model(C, K)
    x, valid = normalize(arr, stats, NODATA)
    with torch.no_grad():
        proba = torch.softmax(model(torch.from_numpy(x)[None]), 1)[0].numpy()  # (K, H, W) whole image at once
    return {"path": path, "array": arr, "stats": stats, "model": model, "proba": proba, "valid": valid}


def read_tif(path: Path):
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(), ds.profile, ds


def near_tie(proba: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    top2 = np.sort(proba, axis=0)[-2:]
    return (top2[1] - top2[0]) < eps


@pytest.mark.parametrize("blend", ["gaussian", "linear"])
@pytest.mark.parametrize("overlap", [0.0, 0.25])
def test_sliding_window_output_equals_whole_image_prediction(scene, tmp_path, blend, overlap):
    out = tmp_path / "scene_pred.tif"
    summary = predict_raster(scene["model"], scene["path"], out, scene["stats"], window=(96, 80), overlap=overlap,
                             blend=blend, batch_size=8, num_classes=K, probabilities=True)
    labels, _, _ = read_tif(out)
    proba, _, _ = read_tif(Path(summary["proba_output"]))
    valid, ref = scene["valid"], scene["proba"]
    assert summary["windows"] == len(window_starts(H, 96, overlap)) * len(window_starts(W, 80, overlap))
    np.testing.assert_allclose(proba[:, valid], ref[:, valid], atol=1e-5, rtol=0)
    ref_labels = ref.argmax(0)
    differ = (labels[0] != ref_labels) & valid
    assert not (differ & ~near_tie(ref)).any()  # identical wherever the two top classes are not tied to 1e-5
    assert differ.sum() <= 3
    assert (labels[0][~valid] == 255).all() and np.isnan(proba[:, ~valid]).all()
    assert summary["class_counts"] == np.bincount(labels[0][valid], minlength=K).tolist()


def test_output_grid_matches_input_and_is_tiled_deflate(scene, tmp_path):
    import rasterio

    out = tmp_path / "pred.tif"
    summary = predict_raster(scene["model"], scene["path"], out, scene["stats"], window=(128, 128),
                             num_classes=K, probabilities="uint8")
    with rasterio.open(scene["path"]) as src, rasterio.open(out) as dst, \
            rasterio.open(summary["proba_output"]) as pr:
        for ds in (dst, pr):
            assert (ds.crs, ds.transform, ds.width, ds.height) == (src.crs, src.transform, src.width, src.height)
            assert ds.profile["tiled"] and ds.block_shapes[0] == (256, 256)
            assert ds.profile["compress"] == "deflate"
        assert dst.dtypes[0] == "uint8" and dst.nodata == 255 and dst.count == 1
        assert pr.dtypes[0] == "uint8" and pr.nodata == 255 and pr.count == K
        assert pr.scales[0] == pytest.approx(1 / 254)
        labels, codes = dst.read(1), pr.read()
    valid = scene["valid"]
    assert (labels[~valid] == 255).all() and (labels[valid] < K).all()
    assert (codes[:, ~valid] == 255).all()
    np.testing.assert_allclose(codes[:, valid] / 254, scene["proba"][:, valid], atol=0.5 / 254 + 1e-5)
    assert Path(summary["proba_output"]).name == "pred_proba.tif"


@pytest.mark.parametrize("probabilities", [False, True])
def test_prediction_streams_without_a_full_scene_buffer(scene, tmp_path, monkeypatch, probabilities):
    import rasterio.io

    reads = []
    original = rasterio.io.DatasetReader.read

    def spy(self, *args, **kwargs):
        if Path(self.name) == Path(scene["path"]):  # (the outputs are read back whole once written)
            reads.append(kwargs.get("window"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    wh = 64
    tracemalloc.start()
    try:
        summary = predict_raster(scene["model"], scene["path"], tmp_path / "p.tif", scene["stats"],
                                 window=(wh, 64), overlap=0.25, num_classes=K, probabilities=probabilities)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full_scene = H * W * 4 * K  # float32 probabilities of the whole scene
    # A 256-tile output needs one tile row (256 x W per band) gathered before compression; that is all the
    # writers hold, whatever the scene height.
    tile_rows = summary["writer_buffer_bytes"]
    assert tile_rows <= (1 + (4 * K if probabilities else 0)) * 256 * W
    assert peak < 0.4 * full_scene + tile_rows, f"peak traced memory {peak / 2**20:.1f} MiB"
    assert summary["max_buffer_pixels"] <= wh * W < 2 * wh * W
    assert summary["max_read_pixels"] <= wh * W
    assert reads and all(w is not None and w.height <= wh and w.width == W for w in reads)
    assert sum(w.height for w in reads) == H  # every row read once, never the whole file


def test_image_smaller_than_window_is_padded(tmp_path):
    arr = structured_raster(np.random.default_rng(5), 3, 40)[:, :40, :30].copy()
    path = write_geotiff(tmp_path / "small.tif", arr)
    stats = stats_of(arr, ["band_1", "band_2", "band_3"])
    model = conv_model(3, 2, seed=1)
    summary = predict_raster(model, path, tmp_path / "small_pred.tif", stats, window=64, num_classes=2,
                             probabilities=True)
    proba, _, _ = read_tif(Path(summary["proba_output"]))
    x, _ = normalize(arr, stats, None)
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(x)[None]), 1)[0].numpy()
    assert proba.shape == (2, 40, 30) and summary["windows"] == 1
    np.testing.assert_allclose(proba, ref, atol=1e-5)


def test_band_mismatch_is_refused_naming_the_bands(tmp_path):
    import rasterio

    arr = structured_raster(np.random.default_rng(6), 4, 32)
    path = write_geotiff(tmp_path / "s2.tif", arr)
    with rasterio.open(path, "r+") as ds:
        for i, name in enumerate(["B02", "B03", "B04", "B09"], start=1):
            ds.set_band_description(i, name)
    stats = stats_of(arr, ["B02", "B03", "B04", "B08"])
    with pytest.raises(DataError, match=r"missing \['B08'\], extra \['B09'\]"):
        predict_raster(conv_model(4, 2), path, tmp_path / "o.tif", stats, window=16, num_classes=2)
    with pytest.raises(DataError, match="B08"):
        predict_raster(conv_model(3, 2), path, tmp_path / "o.tif", stats, band_names=["B02", "B03", "B04", "X"],
                       window=16, num_classes=2)
    assert not (tmp_path / "o.tif").exists()


def test_writer_gathers_row_strips_and_writes_other_windows(tmp_path):
    from affine import Affine

    like = {"height": 300, "width": 50, "crs": "EPSG:4326", "transform": Affine(1, 0, 0, 0, -1, 0)}
    data = np.arange(300 * 50, dtype=np.uint16).reshape(1, 300, 50)
    with GeoTiffWriter(tmp_path / "w.tif", like, 1, "uint16", 65535) as w:
        for r0, r1 in [(0, 7), (7, 200), (200, 260), (260, 300)]:
            w.write(data[:, r0:r1], (r0, 0, r1 - r0, 50))
        w.write(np.zeros((5, 5), np.uint16), (10, 10, 5, 5))
    out, profile, _ = read_tif(tmp_path / "w.tif")
    data[:, 10:15, 10:15] = 0
    assert (out == data).all() and profile["nodata"] == 65535
    w2 = GeoTiffWriter(tmp_path / "x.tif", like, 1, "uint8", 255)
    w2.abort()
    assert not list(tmp_path.glob("*x.tif"))


def test_a_writers_sidecar_appears_with_its_map_and_goes_with_an_abort(tmp_path):
    """The GDAL sidecar a class map is written with (its class names) takes its final name only after the map; a
    writer aborted after finishing (the probability file beside it failed) leaves neither, nor a partial file."""
    from affine import Affine

    like = {"height": 20, "width": 20, "crs": "EPSG:4326", "transform": Affine(1, 0, 0, 0, -1, 0)}
    w = GeoTiffWriter(tmp_path / "a.tif", like, 1, "uint8", 255, sidecar="<PAMDataset/>\n")
    w.write(np.ones((20, 20), np.uint8), (0, 0, 20, 20))
    w.finish()
    assert not (tmp_path / "a.tif.aux.xml").exists()
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with GeoTiffWriter(tmp_path / "a.tif", like, 1, "uint8", 255, sidecar="<PAMDataset/>\n") as w:
        w.write(np.ones((20, 20), np.uint8), (0, 0, 20, 20))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "a.tif.aux.xml"]
    assert (tmp_path / "a.tif.aux.xml").read_text() == "<PAMDataset/>\n"


def test_a_map_larger_than_a_viewers_tile_gets_overviews_that_keep_its_classes(tmp_path):
    """Internal overviews halve a map until it fits in 256 px, so a GIS viewer draws a whole scene from them: a class
    map's by the most common value (only its own classes appear), probabilities by their mean; none for a small map."""
    import rasterio
    from affine import Affine

    from geomed_ssl.geo.gdal_read import check_written
    from geomed_ssl.inference.writers import overview_levels

    assert overview_levels(256, 100) == [] and overview_levels(257, 10) == [2] and overview_levels(600, 300) == [2, 4]
    like = {"height": 600, "width": 300, "crs": "EPSG:32633", "transform": Affine(10, 0, 0, 0, -10, 0)}
    classes = np.where(np.arange(600)[:, None] // 7 % 3 == 0, 10, 20).astype(np.uint8).repeat(300, axis=1)
    classes[:, :30] = 255  # nodata
    with GeoTiffWriter(tmp_path / "c.tif", like, 1, "uint8", 255, overviews="mode") as w:
        w.write(classes, (0, 0, 600, 300))
    proba = np.full((2, 600, 300), 0.25, np.float32)
    proba[:, :, :30] = np.nan
    with GeoTiffWriter(tmp_path / "p.tif", like, 2, "float32", math.nan, overviews="average") as w:
        w.write(proba, (0, 0, 600, 300))
    with rasterio.open(tmp_path / "c.tif") as ds:
        assert ds.overviews(1) == [2, 4] and ds.tags(ns="rio_overview") == {"resampling": "mode"}
        assert set(np.unique(ds.read(1, out_shape=(150, 75)))) <= {10, 20, 255}
    with rasterio.open(tmp_path / "p.tif") as ds:
        coarse = ds.read(out_shape=(2, 150, 75))
        assert ds.overviews(2) == [2, 4] and np.allclose(coarse[~np.isnan(coarse)], 0.25)
    for shape in ((600, 1), (1, 600)):  # a level GDAL sizes otherwise than by halving each side: read back too
        thin = {**like, "height": shape[0], "width": shape[1]}
        path = tmp_path / f"thin_{shape[0]}.tif"
        with GeoTiffWriter(path, thin, 1, "uint8", 255, overviews="mode") as w:
            w.write(np.full(shape, 10, np.uint8), (0, 0, *shape))
        levels = len(rasterio.open(path).overviews(1))
        assert levels >= 1
        for level in range(levels):
            broken = tmp_path / f"broken_{shape[0]}_{level}.tif"
            broken.write_bytes(path.read_bytes())
            with rasterio.open(broken, overview_level=level) as ds:  # where that level's first block lies
                offset = int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
            data = bytearray(broken.read_bytes())
            data[offset:offset + 16] = b"\xff" * 16
            broken.write_bytes(bytes(data))
            with pytest.raises(OSError, match="unreadable"):
                check_written(broken, tmp_path / "final.tif")
    small = {**like, "height": 200, "width": 100}
    with GeoTiffWriter(tmp_path / "s.tif", small, 1, "uint8", 255, overviews="mode") as w:
        w.write(classes[:200, :100], (0, 0, 200, 100))
    with rasterio.open(tmp_path / "s.tif") as ds:
        assert ds.overviews(1) == []


def test_a_stop_while_a_writer_sets_its_file_up_leaves_no_partial_file(tmp_path, monkeypatch):
    """A SIGTERM that reached predict while the class map's colour table was written left its .partial- file."""
    from affine import Affine

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(GeoTiffWriter, "_describe", stopped)
    like = {"height": 20, "width": 20, "crs": "EPSG:4326", "transform": Affine(1, 0, 0, 0, -1, 0)}
    with pytest.raises(KeyboardInterrupt):
        GeoTiffWriter(tmp_path / "w.tif", like, 1, "uint8", 255, colormap={0: (0, 0, 0, 255)})
    assert list(tmp_path.iterdir()) == []


# -- volumes ----------------------------------------------------------------------------------------------------
def threshold_model() -> torch.nn.Module:
    """Class 0 where the normalised intensity x > 0.5, class 2 where x < -0.5, else class 1 (a 1x1x1 conv)."""
    conv = torch.nn.Conv3d(1, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, 0.0, -2.0]).reshape(3, 1, 1, 1, 1))
        conv.bias.copy_(torch.tensor([-1.0, 0.0, -1.0]))
    return conv.eval()


def expected_labels(vol: np.ndarray, stats: BandStats) -> np.ndarray:
    x, _ = normalize(vol[None], stats, None)
    return np.where(x[0] > 0.5, 0, np.where(x[0] < -0.5, 2, 1))


def asymmetric_volume(shape=(24, 24, 24)) -> np.ndarray:
    """A ramp along every axis with different slopes plus an off-centre blob: flips and swaps all show."""
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    blob = np.exp(-((i - 6) ** 2 + (j - 15) ** 2 + (k - 9) ** 2) / 18.0)
    return (100 + 3 * i + 7 * j + 1 * k + 150 * blob).astype(np.float32)


NON_RAS = {
    "LPS": np.array([[-1.5, 0, 0, 20.0], [0, -1.5, 0, 30.0], [0, 0, 1.5, -10.0], [0, 0, 0, 1]]),
    "PLI": np.array([[0, -1.5, 0, 5.0], [-1.5, 0, 0, 8.0], [0, 0, -1.5, 40.0], [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("orient", list(NON_RAS))
def test_nifti_prediction_keeps_the_input_grid_and_voxels(tmp_path, orient):
    import nibabel as nib

    from geomed_ssl.config import DataConfig

    vol = asymmetric_volume()
    src = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(vol, NON_RAS[orient]), str(src))
    assert "".join(nib.aff2axcodes(NON_RAS[orient])) == orient
    stats = stats_of(vol[None], ["band_1"])
    cfg = DataConfig(kind="volume", intensity="none")
    out = tmp_path / "case_pred.nii.gz"
    summary = predict_volume(threshold_model(), src, out, stats, roi_size=(16, 16, 16), data_cfg=cfg,
                             overlap=0.25, blend="gaussian", num_classes=3, probabilities=True)
    pred, ref = nib.load(str(out)), nib.load(str(src))
    assert pred.shape == ref.shape and np.array_equal(pred.affine, ref.affine)
    labels = np.asarray(pred.dataobj)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, expected_labels(vol, stats))
    assert len(set(np.unique(labels))) == 3  # all three classes present, so misplaced voxels would show
    proba = nib.load(summary["proba_output"])
    assert proba.shape == (*ref.shape, 3) and np.array_equal(proba.affine, ref.affine)


def test_a_volumes_faces_are_not_predicted_from_window_edges_alone(tmp_path):
    """A model that leans to class 1 on the outermost layer of every window (a decoder's convolutions meeting their
    zero padding there): the faces of the volume, reached by window edges only, were all class 1 (BraTS: tumour on
    the outermost layer, in the air). Padded by a quarter window, a face is no likelier to be class 1 than the
    inside, where windows overlap."""
    import nibabel as nib

    from geomed_ssl.config import DataConfig

    def edge_model(x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
        logits[:, 0] = 1.0
        edge = torch.ones(x.shape[2:], dtype=torch.bool)
        edge[1:-1, 1:-1, 1:-1] = False
        logits[:, 1, edge] = 2.0
        return logits

    vol = np.random.default_rng(0).random((40, 40, 40)).astype(np.float32)
    src = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(src))
    out = tmp_path / "case_pred.nii.gz"
    predict_volume(edge_model, src, out, stats_of(vol[None], ["band_1"]), roi_size=16,
                   data_cfg=DataConfig(kind="volume", intensity="none"), num_classes=2)
    labels = np.asarray(nib.load(str(out)).dataobj)
    face = np.ones(labels.shape, bool)
    face[1:-1, 1:-1, 1:-1] = False
    assert labels[face].mean() <= labels[~face].mean() < 0.05  # it was 1.0 on the faces


def test_nifti_prediction_after_resampling_maps_back_to_the_input_grid(tmp_path):
    import nibabel as nib

    from geomed_ssl.config import DataConfig

    vol = asymmetric_volume()
    src = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(vol, NON_RAS["LPS"]), str(src))
    stats = stats_of(vol[None], ["band_1"])
    cfg = DataConfig(kind="volume", intensity="none", spacing=[3.0, 3.0, 3.0])
    out = tmp_path / "case_pred.nii.gz"
    summary = predict_volume(threshold_model(), src, out, stats, roi_size=8, data_cfg=cfg, blend="constant",
                             num_classes=3)
    assert summary["resampled"] and summary["model_grid"] != [24, 24, 24]
    pred = nib.load(str(out))
    assert pred.shape == (24, 24, 24) and np.array_equal(pred.affine, nib.load(str(src)).affine)
    agree = (np.asarray(pred.dataobj) == expected_labels(vol, stats)).mean()
    assert agree > 0.95


def test_voxels_without_data_stay_nodata_after_resampling_there_and_back(tmp_path):
    import nibabel as nib

    from geomed_ssl.config import DataConfig

    vol = asymmetric_volume().astype(np.float32)
    vol[:, :7] = np.nan  # a slab without data, its edge between two of the model's voxels
    src = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(vol, NON_RAS["LPS"]), str(src))
    stats = stats_of(np.nan_to_num(vol)[None], ["band_1"])
    cfg = DataConfig(kind="volume", intensity="none", spacing=[2.5, 2.5, 2.5])  # the file's voxels are 1.5 mm
    out = tmp_path / "case_pred.nii.gz"
    summary = predict_volume(threshold_model(), src, out, stats, roi_size=8, data_cfg=cfg, blend="constant",
                             num_classes=3)
    assert summary["resampled"]
    labels = np.asarray(nib.load(str(out)).dataobj)
    assert (labels[:, :7] == 255).all() and (labels[:, 7:] != 255).mean() > 0.95  # without the file's own
    # validity, the slab's last plane (576 voxels) took a class from its neighbours' interpolated validity


def test_a_volume_thinner_than_half_the_window_passes_the_input_check_and_is_predicted_padded(tmp_path):
    """Training needs volumes of at least half a window; predict pads, so its up-front check takes any size."""
    import nibabel as nib

    from geomed_ssl.config import DataConfig
    from geomed_ssl.inference.predict import usable_inputs

    vol = asymmetric_volume((24, 24, 5))
    src = tmp_path / "thin.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(src))
    cfg = DataConfig(kind="volume", intensity="none", patch_size=16)
    out = tmp_path / "thin_pred.nii.gz"
    stats = stats_of(vol[None], ["band_1"])
    assert usable_inputs({src: out}, cfg, "gaussian", stats, strict=True) == {src: out}
    predict_files(threshold_model(), [src], tmp_path, stats, num_classes=3, window=16, data_cfg=cfg)
    assert nib.load(str(out)).shape == (24, 24, 5)


def test_predict_files_names_outputs_by_stem(scene, tmp_path):
    import nibabel as nib

    from geomed_ssl.config import DataConfig

    small = structured_raster(np.random.default_rng(2), C, 48)
    (tmp_path / "in").mkdir()
    write_geotiff(tmp_path / "in" / "tile_a.tif", small)
    results = predict_files(scene["model"], tmp_path / "in", tmp_path / "out", scene["stats"], num_classes=K,
                            window=32, data_cfg=DataConfig())
    assert [Path(r["output"]).name for r in results] == ["tile_a_pred.tif"]
    vol = asymmetric_volume((12, 12, 12))
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "in" / "ct_01.nii.gz"))
    results = predict_files(threshold_model(), [tmp_path / "in" / "ct_01.nii.gz"], tmp_path / "out",
                            stats_of(vol[None], ["band_1"]), num_classes=3, window=8,
                            data_cfg=DataConfig(kind="volume", intensity="none"))
    assert Path(results[0]["output"]) == tmp_path / "out" / "ct_01_pred.nii.gz"
    assert nib.load(results[0]["output"]).shape == (12, 12, 12)
    write_nifti_like(np.zeros((12, 12, 12), np.uint8), tmp_path / "in" / "ct_01.nii.gz", tmp_path / "z.nii.gz")
    with pytest.raises(DataError, match="grid"):
        write_nifti_like(np.zeros((5, 12, 12), np.uint8), tmp_path / "in" / "ct_01.nii.gz", tmp_path / "y.nii.gz")


def test_a_later_run_refuses_to_replace_the_prediction_of_another_input_with_the_same_name(scene, tmp_path):
    """Subjects predicted one at a time into one folder (BIDS sub-01/anat/..., TotalSegmentator s0001/ct.nii.gz):
    each run replaced the last one's map of the same name, which then held another subject's prediction."""
    import nibabel as nib

    from geomed_ssl.config import DataConfig

    small = structured_raster(np.random.default_rng(2), C, 48)
    vol = asymmetric_volume((12, 12, 12))
    for sub in ("s0001", "s0002"):
        (tmp_path / sub).mkdir()
        write_geotiff(tmp_path / sub / "scene.tif", small)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / sub / "ct.nii.gz"))
    raster = dict(num_classes=K, window=32, data_cfg=DataConfig())
    volume = dict(num_classes=3, window=8, data_cfg=DataConfig(kind="volume", intensity="none"))
    vstats = stats_of(vol[None], ["band_1"])
    for proba in (True, True, False):  # the same input again: its own map and probabilities are replaced
        predict_files(scene["model"], [tmp_path / "s0001" / "scene.tif"], tmp_path / "out", scene["stats"],
                      probabilities=proba, **raster)
        predict_files(threshold_model(), [tmp_path / "s0001" / "ct.nii.gz"], tmp_path / "out", vstats,
                      probabilities=proba, **volume)
    assert not (tmp_path / "out" / "scene_pred_proba.tif").exists()  # the last run's map has none beside it
    with pytest.raises(DataError, match=r"scene_pred.tif' holds the prediction of '.*s0001/scene.tif'.*another --out"):
        predict_files(scene["model"], [tmp_path / "s0002" / "scene.tif"], tmp_path / "out", scene["stats"], **raster)
    with pytest.raises(DataError, match=r"ct_pred.nii.gz' holds the prediction of '.*s0001/ct.nii.gz'"):
        predict_files(threshold_model(), [tmp_path / "s0002" / "ct.nii.gz"], tmp_path / "out", vstats, **volume)
    (tmp_path / "old").mkdir()  # a map an earlier version wrote: its input unknown, so not replaced either
    write_geotiff(tmp_path / "old" / "scene_pred.tif", small[:1])
    with pytest.raises(DataError, match="records no input .an earlier geomed-ssl's.*delete that file first"):
        predict_files(scene["model"], [tmp_path / "s0002" / "scene.tif"], tmp_path / "old", scene["stats"], **raster)
    theirs = tmp_path / "out" / "scene_pred_proba.tif"  # the user's file, named as the map's probabilities would be
    write_geotiff(theirs, small[:1])
    mine = theirs.read_bytes()
    for probabilities in (False, True):  # would be deleted beside a new map, or replaced by new probabilities
        with pytest.raises(DataError, match=r"scene_pred_proba.tif' holds a file that records no input"):
            predict_files(scene["model"], [tmp_path / "s0001" / "scene.tif"], tmp_path / "out", scene["stats"],
                          probabilities=probabilities, **raster)
        assert theirs.read_bytes() == mine


def test_two_jobs_writing_one_name_at_once_keep_the_first_map_and_the_second_is_refused(scene, tmp_path):
    """Two predict jobs, two inputs with one output name, one folder: the name checked free before predicting is
    taken by the other job while this one predicts; its commit refuses instead of replacing the other's map."""
    from geomed_ssl.config import DataConfig

    small = structured_raster(np.random.default_rng(2), C, 48)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        write_geotiff(tmp_path / sub / "scene.tif", small)
    raster = dict(num_classes=K, window=32, data_cfg=DataConfig())
    out = tmp_path / "out"
    predict_files(scene["model"], [tmp_path / "b" / "scene.tif"], tmp_path / "other", scene["stats"], **raster)
    theirs = (tmp_path / "other" / "scene_pred.tif").read_bytes()

    def racing(x):  # the other job commits its map of b while this one predicts a
        if not (out / "scene_pred.tif").exists():
            (out / "scene_pred.tif").write_bytes(theirs)
        return scene["model"](x)

    with pytest.raises(DataError, match=r"scene_pred.tif' holds the prediction of '.*b/scene.tif'"):
        predict_files(racing, [tmp_path / "a" / "scene.tif"], out, scene["stats"], **raster)
    assert (out / "scene_pred.tif").read_bytes() == theirs
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".geomed")) == ["scene_pred.tif"]


def test_a_folder_far_from_the_statistics_is_one_warning_not_one_per_file(scene, tmp_path, caplog):
    import logging

    from geomed_ssl.config import DataConfig

    far = structured_raster(np.random.default_rng(2), C, 48).astype(np.float32) * 100 + 50000
    (tmp_path / "in").mkdir()
    for k in range(3):
        write_geotiff(tmp_path / "in" / f"tile_{k}.tif", far)
    with caplog.at_level(logging.INFO, logger="geomed_ssl"):
        predict_files(scene["model"], tmp_path / "in", tmp_path / "out", scene["stats"], num_classes=K, window=32,
                      data_cfg=DataConfig())
    warnings = [r.getMessage() for r in caplog.records if "far from" in r.getMessage()]
    assert len(warnings) == 1 and "and 2 more file(s)" in warnings[0]
    assert sum("predicted " in r.getMessage() and "/3:" in r.getMessage() for r in caplog.records) == 3


def test_a_nifti_output_keeps_the_grid_but_not_the_inputs_display_window(tmp_path):
    """An intensity image's cal_min / cal_max (a window of 100-500) would show a class map of 1..K as blank in
    FSLeyes or MRIcron; the output keeps the affine and codes and says what it is."""
    import nibabel as nib

    ref = nib.Nifti1Image(np.zeros((6, 7, 8), np.float32), np.diag([2.0, -1.0, 3.0, 1.0]))
    ref.header["cal_min"], ref.header["cal_max"], ref.header["descrip"] = 100, 500, b"T1 scan"
    ref.set_sform(ref.affine, 1)
    nib.save(ref, str(tmp_path / "t1.nii.gz"))
    out = nib.load(str(write_nifti_like(np.ones((6, 7, 8), np.uint8), tmp_path / "t1.nii.gz", tmp_path / "p.nii.gz")))
    assert float(out.header["cal_min"]) == 0 and float(out.header["cal_max"]) == 0
    assert out.header["descrip"].item() == b"geomed-ssl prediction"
    assert np.array_equal(out.affine, ref.affine) and int(out.header["sform_code"]) == 1


def test_a_nifti_output_is_not_a_statistic_nor_a_time_series_because_its_input_was(tmp_path):
    """A z-score map's intent and a 4D series' TR were copied: the class map claimed to be a 'z score' map and the
    probabilities' class axis was 2.5 s apart."""
    import nibabel as nib

    ref = nib.Nifti1Image(np.zeros((6, 7, 8, 3), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    ref.header.set_intent("z score", name="zstat1")
    ref.header.set_zooms((2.0, 2.0, 3.0, 2.5))
    ref.header.set_xyzt_units("mm", "sec")
    nib.save(ref, str(tmp_path / "bold.nii.gz"))
    labels = nib.load(str(write_nifti_like(np.ones((6, 7, 8), np.uint8), tmp_path / "bold.nii.gz",
                                           tmp_path / "p.nii.gz", intent="label")))
    assert labels.header.get_intent()[0] == "label" and labels.header.get_xyzt_units() == ("mm", "unknown")
    proba = nib.load(str(write_nifti_like(np.ones((6, 7, 8, 4), np.float32), tmp_path / "bold.nii.gz",
                                          tmp_path / "q.nii.gz")))
    assert proba.header.get_intent()[0] == "none" and proba.header.get_zooms() == (2.0, 2.0, 3.0, 1.0)


def test_a_reference_without_sform_or_qform_codes_keeps_its_affine(tmp_path):
    """ANALYZE-style NIfTI (both codes 0: the affine comes from the zooms): the output must overlay it too."""
    import nibabel as nib

    ref = nib.Nifti1Image(np.zeros((6, 7, 8), np.float32), np.diag([1.5, 2.0, 2.5, 1.0]))
    ref.set_sform(None, 0)
    ref.set_qform(None, 0)
    nib.save(ref, str(tmp_path / "ref.nii.gz"))
    back = nib.load(str(tmp_path / "ref.nii.gz"))
    out = nib.load(str(write_nifti_like(np.zeros((6, 7, 8), np.uint8), tmp_path / "ref.nii.gz", tmp_path / "o.nii.gz")))
    assert np.allclose(out.affine, back.affine) and out.header.get_zooms() == back.header.get_zooms()


def test_two_inputs_whose_outputs_differ_only_by_case_are_refused(tmp_path):
    """On a case-insensitive filesystem Scene_0_pred.tif and scene_0_pred.tif are one file: the second would
    replace the first."""
    from geomed_ssl.config import DataConfig
    from geomed_ssl.inference.predict import plan_outputs

    small = structured_raster(np.random.default_rng(2), C, 16)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    a = write_geotiff(tmp_path / "a" / "Scene_0.tif", small)
    b = write_geotiff(tmp_path / "b" / "scene_0.tif", small)
    with pytest.raises(DataError, match="would both be written to 'Scene_0_pred.tif'"):
        plan_outputs([a, b], tmp_path / "out", DataConfig(), window=16)


def test_class_values_are_stored_instead_of_indices_and_name_the_probability_bands(scene, tmp_path):
    out = tmp_path / "values.tif"
    predict_raster(scene["model"], scene["path"], out, scene["stats"], window=(256, 256), num_classes=K,
                   class_values=[10, 20, 30, 300], probabilities="uint8")
    labels, profile, _ = read_tif(out)
    valid = scene["valid"]
    expected = np.array([10, 20, 30, 300])[scene["proba"].argmax(0)]
    assert profile["dtype"] == "uint16" and profile["nodata"] == 65535
    assert (labels[0][valid] == expected[valid]).mean() > 0.9999 and (labels[0][~valid] == 65535).all()
    import rasterio

    with rasterio.open(tmp_path / "values_proba.tif") as src:  # bands named by the label values, not the indices
        assert src.descriptions == ("p_class_10", "p_class_20", "p_class_30", "p_class_300")


KILLED_PREDICTION = """
import os, signal, sys
from geomed_ssl.config import DataConfig
from geomed_ssl.data.stats import BandStats
from geomed_ssl.inference.predict import predict_files

def killed_on_first_window(x):
    os.kill(os.getpid(), signal.SIGKILL)

predict_files(killed_on_first_window, sys.argv[1], sys.argv[2], BandStats.load(sys.argv[3]), num_classes=2,
              window=32, data_cfg=DataConfig())
"""


def test_the_next_prediction_removes_the_partial_file_a_killed_one_left(tmp_path):
    import subprocess
    import sys

    from geomed_ssl.config import DataConfig

    (tmp_path / "in").mkdir()
    arr = structured_raster(np.random.default_rng(4), C, 48)
    write_geotiff(tmp_path / "in" / "tile.tif", arr)
    stats = stats_of(arr, [f"band_{i}" for i in range(1, C + 1)])
    stats.save(tmp_path / "stats.json")
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", KILLED_PREDICTION, str(tmp_path / "in"), str(out),
                             str(tmp_path / "stats.json")], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    left = [p.name for p in out.iterdir()]
    assert len(left) == 1 and left[0].startswith(".partial-") and left[0].endswith("-tile_pred.tif")
    (out / ".partial-notes.txt").write_text("not ours: no process id")
    predict_files(conv_model(C, 2), tmp_path / "in", out, stats, num_classes=2, window=32, data_cfg=DataConfig())
    assert sorted(p.name for p in out.iterdir()) == [".partial-notes.txt", "tile_pred.tif"]


def describe_bands(path: Path, names: list[str]) -> Path:
    import rasterio

    with rasterio.open(path, "r+") as ds:
        for i, name in enumerate(names, start=1):
            ds.set_band_description(i, name)
    return path


def test_bands_are_read_by_name_in_the_models_order_and_extra_bands_dropped(tmp_path):
    arr = structured_raster(np.random.default_rng(7), 4, 48)
    names = ["B02", "B03", "B04", "B08"]
    stats, model = stats_of(arr, names), conv_model(4, 3)
    same = describe_bands(write_geotiff(tmp_path / "same.tif", arr), names)
    order = [3, 1, 0, 2]
    shuffled = np.concatenate([arr[order], arr[:1] // 2])  # B08 B03 B02 B04 and an extra B11
    other = describe_bands(write_geotiff(tmp_path / "other.tif", shuffled), [names[i] for i in order] + ["B11"])
    a = predict_raster(model, same, tmp_path / "a.tif", stats, window=16, num_classes=3, probabilities=True)
    b = predict_raster(model, other, tmp_path / "b.tif", stats, window=16, num_classes=3, probabilities=True)
    np.testing.assert_array_equal(read_tif(Path(a["proba_output"]))[0], read_tif(Path(b["proba_output"]))[0])
    assert b["band_names"] == names


def test_an_all_nodata_input_predicts_with_a_warning(tmp_path, caplog):
    arr = np.zeros((4, 32, 32), np.uint16)
    path = write_geotiff(tmp_path / "empty.tif", arr, nodata=0)
    stats = stats_of(structured_raster(np.random.default_rng(1), 4, 32), [f"band_{i}" for i in range(1, 5)])
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        summary = predict_raster(conv_model(4, 2), path, tmp_path / "o.tif", stats, window=16, num_classes=2)
    assert summary["valid_pixels"] == 0
    assert any("no valid pixel" in r.getMessage() and "empty.tif" in r.getMessage() for r in caplog.records)


def test_a_folder_is_predicted_as_the_models_include_and_exclude_say(scene, tmp_path, caplog):
    from geomed_ssl.config import DataConfig

    folder = tmp_path / "in"
    folder.mkdir()
    small = structured_raster(np.random.default_rng(2), C, 32)
    write_geotiff(folder / "tile_a.tif", small)
    write_geotiff(folder / "lulc_mask.tif", np.ones((1, 32, 32), np.uint8))  # a label beside the scenes
    cfg = DataConfig(exclude=["*mask*", "*lulc*"])
    with caplog.at_level("INFO", logger="geomed_ssl"):
        results = predict_files(scene["model"], folder, tmp_path / "out", scene["stats"], num_classes=K, window=32,
                                data_cfg=cfg)
    assert [Path(r["input"]).name for r in results] == ["tile_a.tif"]
    assert "1 file(s) under" in caplog.text and "'lulc_mask.tif'; name a file on the command line" in caplog.text
    with pytest.raises(DataError, match=r"0 left after the model's data.include .* data.exclude \['\*'\]"):
        predict_files(scene["model"], folder, tmp_path / "out", scene["stats"], num_classes=K, window=32,
                      data_cfg=DataConfig(exclude=["*"]))


def test_a_file_that_goes_bad_midway_through_a_folder_says_the_maps_made_stay_and_how_to_go_on(scene, tmp_path,
                                                                                              monkeypatch):
    from geomed_ssl.inference import predict as pr

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.tif", "b.tif"):
        write_geotiff(folder / name, structured_raster(np.random.default_rng(2), C, 32))
    real = pr.predict_raster

    def then_cut_b(*args, **kwargs):
        done = real(*args, **kwargs)
        (folder / "b.tif").write_bytes((folder / "b.tif").read_bytes()[:300])  # deleted or cut short since the probe
        return done

    monkeypatch.setattr(pr, "predict_raster", then_cut_b)
    with pytest.raises(DataError, match=r"b.tif.*\(1 of 2 inputs were predicted before it; their maps stay: .*resume"):
        predict_files(scene["model"], folder, tmp_path / "out", scene["stats"], num_classes=K, window=32)
    assert (tmp_path / "out" / "a_pred.tif").is_file()


def test_only_files_named_as_predicts_outputs_are_skipped_in_a_folder_and_the_warning_names_them(tmp_path, caplog):
    """A user's field_pred2019.tif or a_prediction_area.tif is an input like any other; only X_pred.tif and
    X_pred_proba.tif (what predict writes) are left out, and never silently."""
    from geomed_ssl.inference.predict import list_inputs

    names = ["a.tif", "field_pred2019.tif", "a_prediction_area.tif", "old_pred.tif", "old_pred_proba.TIF"]
    for name in names:
        write_geotiff(tmp_path / name, np.ones((1, 8, 8), np.uint8))
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        found = list_inputs(tmp_path)
    assert sorted(p.name for p in found) == ["a.tif", "a_prediction_area.tif", "field_pred2019.tif"]
    assert "skipped 2 file(s)" in caplog.text and "old_pred.tif" in caplog.text and "old_pred_proba.TIF" in caplog.text
    assert [p.name for p in list_inputs(tmp_path / "old_pred.tif")] == ["old_pred.tif"]  # named: predicted


def test_one_channel_file_of_a_model_that_stacks_channels_stands_for_its_folder_or_says_what_it_lacks(tmp_path):
    import nibabel as nib

    from geomed_ssl.config import DataConfig
    from geomed_ssl.inference.predict import list_inputs

    case = tmp_path / "pat1"
    case.mkdir()
    nib.save(nib.Nifti1Image(asymmetric_volume((8, 8, 8)), np.eye(4)), str(case / "Flair_norm.nii.gz"))
    cfg = DataConfig(kind="volume", channels=["*Flair*", "*T1c*"])
    with pytest.raises(DataError, match=r"Flair_norm.nii.gz': missing channel '\*T1c\*'"):
        list_inputs(case / "Flair_norm.nii.gz", cfg)
    nib.save(nib.Nifti1Image(asymmetric_volume((8, 8, 8)), np.eye(4)), str(case / "T1c_norm.nii.gz"))
    assert list_inputs(case / "T1c_norm.nii.gz", cfg) == [case]  # as its folder is given


def test_a_folder_of_several_cases_predicts_each_case_as_a_folder_per_case_does(tmp_path):
    """nnU-Net's imagesTr (case_000_0000.nii.gz, case_000_0001.nii.gz, ...): one map per case, named after it,
    the same voxels as the same files in a folder each; a channel file named explicitly is its case."""
    import nibabel as nib

    from geomed_ssl.config import DataConfig

    rng = np.random.default_rng(4)
    vols = {(i, c): asymmetric_volume((12, 12, 12)) * (1 + c) + rng.normal(0, 20, (12, 12, 12)).astype(np.float32)
            for i in range(2) for c in range(2)}
    for (i, c), vol in vols.items():
        for folder in (tmp_path / "imagesTr", tmp_path / "cases" / f"case_{i}"):
            folder.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(folder / f"case_{i}_{c:04d}.nii.gz"))
    names = ["0000.nii.gz", "0001.nii.gz"]  # the channel names data.channels gives these files
    stats = stats_of(np.stack([vols[0, 0], vols[0, 1]]), names)
    conv = torch.nn.Conv3d(2, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, -2.0]]).reshape(3, 2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([-1.0, 0.0, -1.0]))  # 0: first channel high, 2: second low, else 1
    cfg = DataConfig(kind="volume", intensity="none", channels=["*_0000.nii.gz", "*_0001.nii.gz"])
    run = dict(num_classes=3, window=[8, 8, 8], data_cfg=cfg, device="cpu")
    flat = predict_files(conv.eval(), tmp_path / "imagesTr", tmp_path / "p_flat", stats, **run)
    predict_files(conv.eval(), tmp_path / "cases", tmp_path / "p_apart", stats, **run)
    assert sorted(Path(r["output"]).name for r in flat) == ["case_0_pred.nii.gz", "case_1_pred.nii.gz"]
    for i in range(2):
        a = np.asarray(nib.load(str(tmp_path / "p_flat" / f"case_{i}_pred.nii.gz")).dataobj)
        b = np.asarray(nib.load(str(tmp_path / "p_apart" / f"case_{i}_pred.nii.gz")).dataobj)
        assert (a == b).all() and len(np.unique(a)) == 3
    both = [tmp_path / "imagesTr" / "case_1_0001.nii.gz", tmp_path / "imagesTr" / "case_1_0000.nii.gz"]  # a glob
    one = predict_files(conv.eval(), both, tmp_path / "p_one", stats, **run)
    assert len(one) == 1 and Path(one[0]["output"]).name == "case_1_pred.nii.gz" and (
        np.asarray(nib.load(one[0]["output"]).dataobj) == np.asarray(nib.load(str(
            tmp_path / "p_flat" / "case_1_pred.nii.gz")).dataobj)).all()


def test_a_nifti_given_to_a_raster_model_is_one_clear_line(scene, tmp_path):
    import nibabel as nib

    from geomed_ssl.config import DataConfig

    nii = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(asymmetric_volume((12, 12, 12)), np.eye(4)), str(nii))
    with pytest.raises(DataError, match="is a NIfTI volume but this model was trained on 2D GeoTIFF rasters"):
        predict_files(scene["model"], [nii], tmp_path / "out", scene["stats"], num_classes=K, window=[32, 32],
                      data_cfg=DataConfig(kind="raster"))
    with pytest.raises(DataError, match="is a GeoTIFF raster but this model was trained on 3D NIfTI volumes"):
        predict_files(threshold_model(), [scene["path"]], tmp_path / "out", scene["stats"], num_classes=3,
                      window=[8, 8, 8], data_cfg=DataConfig(kind="volume"))
    assert not (tmp_path / "out").exists()


def test_a_scene_georeferenced_by_ground_control_points_keeps_them_in_its_prediction(tmp_path: Path) -> None:
    """Sentinel-1 GRD-like files carry GCPs and no transform: the class map gets the same GCPs (else it could not
    be placed on a map)."""
    import rasterio
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    arr = structured_raster(np.random.default_rng(1), C, 48).astype(np.uint16)
    gcps = [GroundControlPoint(row=r, col=c, x=10 + c / 1000, y=45 - r / 1000, z=0.0)
            for r, c in ((0, 0), (0, 47), (47, 0), (47, 47))]
    path = tmp_path / "grd.tif"
    with rasterio.open(path, "w", driver="GTiff", height=48, width=48, count=C, dtype="uint16",
                       gcps=gcps, crs=CRS.from_epsg(4326)) as dst:
        dst.write(arr)
    names = [f"band_{i}" for i in range(1, C + 1)]
    predict_raster(conv_model(C, K), path, tmp_path / "p.tif", stats_of(arr, names), window=(32, 32),
                   num_classes=K)
    with rasterio.open(tmp_path / "p.tif") as out:
        got, crs = out.gcps
    assert crs == CRS.from_epsg(4326) and [(g.row, g.col, g.x, g.y) for g in got] == \
        [(g.row, g.col, g.x, g.y) for g in gcps]


def test_an_unplaced_scene_gets_an_unplaced_map_and_a_pixel_is_point_one_keeps_its_convention(tmp_path: Path) -> None:
    """A 38-Cloud patch has no georeferencing: its map was given GDAL's identity transform as a ModelTransformation
    tag (a place it does not have); a DEM's pixel-is-point tag was written back as pixel-is-area."""
    import warnings

    import rasterio
    from rasterio.crs import CRS
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.transform import from_origin

    arr = structured_raster(np.random.default_rng(1), C, 48).astype(np.uint16)
    names = [f"band_{i}" for i in range(1, C + 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "patch.tif", "w", driver="GTiff", height=48, width=48, count=C,
                           dtype="uint16") as dst:
            dst.write(arr)
    with rasterio.open(tmp_path / "dem.tif", "w", driver="GTiff", height=48, width=48, count=C, dtype="uint16",
                       crs=CRS.from_epsg(32633), transform=from_origin(500000, 5000000, 30, 30)) as dst:
        dst.write(arr)
        dst.update_tags(AREA_OR_POINT="Point")
    for name in ("patch", "dem"):
        predict_raster(conv_model(C, K), tmp_path / f"{name}.tif", tmp_path / f"{name}_pred.tif",
                       stats_of(arr, names), window=(32, 32), num_classes=K)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rasterio.open(tmp_path / "patch_pred.tif").close()
    assert any(issubclass(w.category, NotGeoreferencedWarning) for w in caught)  # as its input: placed nowhere
    with rasterio.open(tmp_path / "dem_pred.tif") as out, rasterio.open(tmp_path / "dem.tif") as src:
        assert out.tags()["AREA_OR_POINT"] == "Point" and out.transform == src.transform


def test_a_commit_that_fails_leaves_no_partial_file_of_the_other_map(scene, tmp_path, monkeypatch):
    """The class map's rename fails (disk full, a quota): the probability map's partial file goes too."""
    from geomed_ssl.inference import writers

    commits = []

    def full_disk(tmp, final):
        commits.append(final)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers, "commit_partial", full_disk)
    with pytest.raises(OSError):
        predict_raster(scene["model"], scene["path"], tmp_path / "out" / "pred.tif", scene["stats"], window=(64, 64),
                       num_classes=K, probabilities=True)
    assert len(commits) == 1 and list((tmp_path / "out").iterdir()) == []


def test_a_class_map_without_probabilities_removes_an_earlier_runs_probabilities_beside_it(scene, tmp_path):
    """An earlier run with --probabilities (another model, say) wrote ``*_pred_proba``: a new class map alone must
    not leave it beside the new map as if it belonged to it."""
    from geomed_ssl.config import DataConfig

    (tmp_path / "in").mkdir()
    write_geotiff(tmp_path / "in" / "tile_a.tif", structured_raster(np.random.default_rng(2), C, 48))
    kwargs = {"num_classes": K, "window": 32, "data_cfg": DataConfig()}
    first = predict_files(scene["model"], tmp_path / "in", tmp_path / "out", scene["stats"], probabilities=True,
                          **kwargs)
    assert Path(first[0]["proba_output"]).is_file()
    second = predict_files(scene["model"], tmp_path / "in", tmp_path / "out", scene["stats"], **kwargs)
    assert not Path(first[0]["proba_output"]).exists() and Path(second[0]["output"]).is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tile_a_pred.tif"]


def test_a_rerun_that_fails_midway_leaves_the_earlier_class_map_and_probabilities(scene, tmp_path, monkeypatch):
    from geomed_ssl.config import DataConfig
    from geomed_ssl.inference import predict as predict_mod

    (tmp_path / "in").mkdir()
    write_geotiff(tmp_path / "in" / "tile_a.tif", structured_raster(np.random.default_rng(2), C, 48))
    kwargs = {"num_classes": K, "window": 32, "data_cfg": DataConfig()}
    predict_files(scene["model"], tmp_path / "in", tmp_path / "out", scene["stats"], probabilities=True, **kwargs)
    before = sorted(p.name for p in (tmp_path / "out").iterdir())

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill during the new prediction

    monkeypatch.setattr(predict_mod, "predict_raster", killed)
    with pytest.raises(KeyboardInterrupt):
        predict_files(scene["model"], tmp_path / "in", tmp_path / "out", scene["stats"], **kwargs)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before and "tile_a_pred_proba.tif" in before


def test_a_scene_thinner_than_half_the_window_is_predicted_padded_not_skipped_as_unreadable(tmp_path):
    """Training needs scenes of at least half a window; prediction pads, so a 5-px strip gets its 5-px map."""
    import rasterio
    from typer.testing import CliRunner

    from geomed_ssl.cli import app
    from tests.test_bad_input import predicting_model

    strip = write_geotiff(tmp_path / "strip.tif", structured_raster(np.random.default_rng(1), 4, 40)[:, :5].copy())
    result = CliRunner().invoke(app, ["predict", str(predicting_model(tmp_path)), str(strip), "--out",
                                      str(tmp_path / "p")])  # the model's window: 16 x 16
    assert result.exit_code == 0, result.output
    assert "unreadable" not in result.output
    with rasterio.open(tmp_path / "p" / "strip_pred.tif") as out, rasterio.open(strip) as src:
        assert out.shape == (5, 40) and out.transform == src.transform and out.crs == src.crs


def test_predict_says_which_extra_bands_it_drops_once_for_alike_scenes(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from geomed_ssl.cli import app
    from geomed_ssl.once import forget_said
    from tests.test_bad_input import predicting_model

    forget_said()  # what earlier tests in this process said is said again
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i in range(2):  # 5 bands for a model of 4 (band_1..band_4): band_5 is not read
        write_geotiff(scenes / f"s{i}.tif", structured_raster(np.random.default_rng(i), 5, 24))
    result = CliRunner().invoke(app, ["predict", str(predicting_model(tmp_path)), str(scenes), "--out",
                                      str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if "dropped" in line]
    assert len(notes) == 1 and "['band_5']" in notes[0] and "s0.tif" in notes[0], result.output


def test_a_geotiff_whose_tiles_fail_to_reach_the_disk_never_takes_the_final_name(tmp_path, monkeypatch):
    """GDAL writes cached tiles when the file closes and rasterio does not raise when that fails (a full disk): the
    file is read back whole before it replaces the earlier one."""
    import errno

    from affine import Affine

    like = {"height": 300, "width": 300, "crs": "EPSG:32633", "transform": Affine(10, 0, 0, 0, -10, 0)}
    (tmp_path / "w.tif").write_bytes(b"the earlier map")
    w = GeoTiffWriter(tmp_path / "w.tif", like, 1, "uint8", 255)
    w.write(np.random.default_rng(0).integers(0, 9, (300, 300), dtype=np.uint8), (0, 0, 300, 300))
    close, tmp = w._ds.close, w._tmp

    def close_losing_tiles() -> None:
        close()
        with open(tmp, "r+b") as f:  # what a failed flush leaves: the header and only part of the tiles
            f.truncate(600)

    monkeypatch.setattr(w._ds, "close", close_losing_tiles)
    with pytest.raises(OSError) as caught:
        w.close()
    with pytest.raises(ValueError, match="failed: nothing to finish"):
        w.commit()  # a failed finish never commits the unreadable draft
    w.abort()
    assert caught.value.errno in (errno.EIO, errno.ENOSPC) and caught.value.filename == str(tmp_path / "w.tif")
    assert (tmp_path / "w.tif").read_bytes() == b"the earlier map" and len(list(tmp_path.iterdir())) == 1


def test_a_volume_whose_probabilities_fail_keeps_the_earlier_class_map_and_probabilities(tmp_path, monkeypatch):
    """The class map and its probabilities appear together: a failure writing the second leaves both earlier files."""
    import nibabel as nib

    from geomed_ssl.config import DataConfig
    from geomed_ssl.inference import volume as volume_mod

    vol = asymmetric_volume()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "case.nii.gz"))
    stats = stats_of(vol[None], ["band_1"])
    kwargs = {"roi_size": (16, 16, 16), "data_cfg": DataConfig(kind="volume", intensity="none"), "num_classes": 3,
              "probabilities": True}
    out = tmp_path / "out" / "case_pred.nii.gz"
    predict_volume(threshold_model(), tmp_path / "case.nii.gz", out, stats, **kwargs)
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    save = volume_mod.save_nifti

    def full_disk_on_probabilities(img, path, final):
        if final.name.endswith("_proba.nii.gz"):
            raise OSError(28, "No space left on device", str(path))
        save(img, path, final)

    monkeypatch.setattr(volume_mod, "save_nifti", full_disk_on_probabilities)
    with pytest.raises(OSError):
        predict_volume(lambda x: -threshold_model()(x), tmp_path / "case.nii.gz", out, stats, **kwargs)
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before and len(before) == 2


def test_an_output_name_the_file_system_refuses_is_one_line_naming_it(tmp_path):
    """A name whose draft (.partial-...) is too long for the file system: an OSError naming the file asked for, which
    the CLI prints in one line (cli_options.write_failure)."""
    import errno

    import nibabel as nib

    from geomed_ssl.cli_options import write_failure

    ref = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8), np.float32), np.eye(4)), str(ref))
    out = tmp_path / ("p" * 240 + ".nii.gz")
    with pytest.raises(OSError) as caught:
        write_nifti_like(np.ones((6, 7, 8), np.uint8), ref, out)
    assert caught.value.errno == errno.ENAMETOOLONG and caught.value.filename == str(out)
    assert write_failure(caught.value).startswith(f"cannot write '{out}': its name is too long for this file system")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.nii.gz"]


def test_predicting_only_the_windows_that_hold_wanted_pixels_gives_the_whole_scenes_map_there(scene, tmp_path,
                                                                                              caplog):
    """``only`` (what evaluate asks for its labelled pixels): a model with spatial context, so a pixel's value is
    a blend of every window holding it; they are all computed, so the wanted pixels match the whole prediction."""
    torch.manual_seed(1)
    model = torch.nn.Conv2d(C, K, 5, padding=2).eval()  # zero padding: each window's edge pixels differ
    full = predict_raster(model, scene["path"], tmp_path / "full.tif", scene["stats"], window=(96, 80), num_classes=K,
                          probabilities=True)
    rng = np.random.default_rng(0)
    only = np.zeros((H, W), bool)
    only[rng.integers(0, H, 30), rng.integers(0, W, 30)] = True
    part = predict_raster(model, scene["path"], tmp_path / "part.tif", scene["stats"], window=(96, 80),
                          num_classes=K, probabilities=True, only=only)
    assert 0 < part["windows_computed"] < part["windows"] == full["windows"] == full["windows_computed"]
    (got,), _, _ = read_tif(tmp_path / "part.tif")
    (want,), _, _ = read_tif(tmp_path / "full.tif")
    got_p, _, _ = read_tif(Path(part["proba_output"]))
    want_p, _, _ = read_tif(Path(full["proba_output"]))
    assert np.array_equal(got[only], want[only])
    np.testing.assert_array_equal(got_p[:, only], want_p[:, only])
    assert (got != 255).mean() < 0.5  # pixels no computed window reaches are nodata (the others are partial blends)
    with pytest.raises(ValueError, match="shape"):
        predict_raster(model, scene["path"], tmp_path / "bad.tif", scene["stats"], window=(96, 80), num_classes=K,
                       only=only[:-1])
    import logging

    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):  # nothing asked for: no "no valid pixel" warning
        none = predict_raster(model, scene["path"], tmp_path / "none.tif", scene["stats"], window=(96, 80),
                              num_classes=K, only=np.zeros((H, W), bool))
    assert none["windows_computed"] == 0 and "no valid pixel" not in caplog.text
    assert none["rows_read"] == 0 and full["rows_read"] == H  # strips with nothing to compute are not read
    corner = np.zeros((H, W), bool)  # a few labels at the top and bottom of a large scene: only their strips are read,
    corner[:4, :6] = corner[-3:, -5:] = True  # also with windows overlapping by more than half (rows read for a
    # strip it skips), and strips computed again after many skipped
    for overlap in (0.25, 0.75):
        whole = predict_raster(model, scene["path"], tmp_path / f"w{overlap}.tif", scene["stats"], window=(24, 20),
                               num_classes=K, overlap=overlap)
        top = predict_raster(model, scene["path"], tmp_path / f"t{overlap}.tif", scene["stats"], window=(24, 20),
                             num_classes=K, overlap=overlap, only=corner)
        assert top["rows_read"] < H // 2 and whole["rows_read"] == H
        (got,), _, _ = read_tif(tmp_path / f"t{overlap}.tif")
        (want,), _, _ = read_tif(tmp_path / f"w{overlap}.tif")
        assert np.array_equal(got[corner], want[corner])


def test_a_scene_whose_same_named_bands_lie_at_other_wavelengths_is_refused(tmp_path):
    """A fine-tuned model knows its bands' wavelengths (its encoder config): a scene of another sensor whose bands
    carry the same names (GDAL's "Band 1" ...) is refused before any window is computed, naming the band."""
    import rasterio

    path = write_geotiff(tmp_path / "other.tif", structured_raster(np.random.default_rng(0), 3, 32))
    with rasterio.open(path, "r+") as dst:
        for i, wl in enumerate((0.9, 1.6, 2.2), start=1):
            dst.set_band_description(i, f"Band {i} ({wl} Micrometers)")
    stats = BandStats([f"Band {i}" for i in (1, 2, 3)], [0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3, [1] * 3)
    stats.wavelengths = [0.45, 0.55, 0.65]
    with pytest.raises(DataError, match="band 'Band 1' lies at 0.9 µm, the model's band 'Band 1' at 0.45 µm"):
        predict_raster(lambda x: torch.zeros(x.shape[0], 2, *x.shape[2:]), path, tmp_path / "p.tif", stats,
                       window=(16, 16), num_classes=2)
    assert not (tmp_path / "p.tif").exists()
    stats.wavelengths = [0.9, 1.6, 2.2]  # its own sensor: read
    predict_raster(lambda x: torch.zeros(x.shape[0], 2, *x.shape[2:]), path, tmp_path / "p.tif", stats,
                   window=(16, 16), num_classes=2)


def test_an_input_with_a_very_long_name_gets_an_output_name_the_filesystem_takes(tmp_path):
    """A 244-character input name (legal) made a 249-character output name whose temporary name (.partial-...)
    passed 255 bytes: the stem is cut and made unique with a hash of the input's path."""
    from geomed_ssl.inference.predict import plan_outputs

    long = tmp_path / ("S2A_MSIL2A_" + "x" * 229 + ".tif")
    write_geotiff(long, structured_raster(np.random.default_rng(0), 3, 16))
    (out,) = plan_outputs([long], tmp_path / "out", window=16).values()
    assert len(out.name.encode()) <= 200 and out.name.startswith("S2A_MSIL2A_xxx") and out.name.endswith("_pred.tif")
    stats = BandStats([f"band_{i}" for i in (1, 2, 3)], [0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3, [1] * 3)
    (summary,) = predict_files(lambda x: torch.zeros(x.shape[0], 2, *x.shape[2:]), [long], tmp_path / "out", stats,
                               num_classes=2, window=16, probabilities=True)
    assert Path(summary["output"]) == out and out.is_file()


def test_a_scene_that_fails_to_read_mid_prediction_is_one_error_naming_it(tmp_path: Path, monkeypatch) -> None:
    """A scene truncated while it was predicted gave rasterio's traceback, not a line naming the file."""
    import rasterio
    from rasterio.errors import RasterioIOError

    from geomed_ssl.inference import raster as raster_mod

    path = tmp_path / "scene.tif"
    write_geotiff(path, np.ones((2, 16, 16), np.uint16))

    def damaged(*args, **kwargs):
        raise RasterioIOError("Read failed. See previous exception for details.")

    monkeypatch.setattr(raster_mod, "read_masked", damaged)
    with rasterio.open(path) as src:
        scene = raster_mod.RasterInput([src], None, None)
        read = scene.strip_reader(raster_mod.RangeSample(2, None, scene.shape))
        with pytest.raises(DataError, match=r"cannot read rows 0-7 of '.*scene.tif': Read failed"):
            read(0, 8)


def test_a_map_whose_classes_include_255_stays_uint8_with_a_free_value_as_nodata(scene, tmp_path):
    """A 0 / 255 cloud mask's classes made a uint16 map, whose colour table has 65,536 entries (400 KB a patch)."""
    out = tmp_path / "mask.tif"
    predict_raster(scene["model"], scene["path"], out, scene["stats"], window=(256, 256), num_classes=K,
                   class_values=[0, 1, 2, 255])
    labels, profile, _ = read_tif(out)
    valid = scene["valid"]
    assert profile["dtype"] == "uint8" and profile["nodata"] == 254
    expected = np.array([0, 1, 2, 255])[scene["proba"].argmax(0)]
    assert (labels[0][valid] == expected[valid]).mean() > 0.9999 and (labels[0][~valid] == 254).all()


def test_a_stacked_input_with_nothing_to_predict_is_named_not_dropped_silently(tmp_path, caplog):
    """38-Cloud's all-black patches: predict said "predicted 4/4" over five patch folders."""
    import logging

    from geomed_ssl.config import DataConfig
    from geomed_ssl.inference.sliding import channel_records

    rng = np.random.default_rng(0)
    for patch, scale in (("p1", 1), ("p2", 0)):
        for band in ("red", "nir"):
            (tmp_path / patch).mkdir(exist_ok=True)
            values = rng.integers(1, 900, (1, 32, 32)) * scale
            write_geotiff(tmp_path / patch / f"{band}.tif", values.astype(np.uint16))
    cfg = DataConfig(channels=["red*", "nir*"], nodata=0)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        records = channel_records(tmp_path, cfg, "raster")
    assert [Path(r.path).parent.name for r in records] == ["p1"]
    assert "1 stacked input(s) under" in caplog.text and "p2': all pixels are nodata" in caplog.text


def test_a_volume_of_nan_alone_in_a_folder_is_skipped_and_a_blank_one_warned_about(tmp_path, caplog):
    """One empty scan must not stop a folder's prediction (``--strict``: it does, naming the file); a blank one is
    predicted with a warning."""
    import logging

    import nibabel as nib

    from geomed_ssl.config import DataConfig
    from geomed_ssl.inference.predict import plan_outputs, usable_inputs

    (tmp_path / "in").mkdir()
    vol = asymmetric_volume((12, 12, 12))
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "in" / "good.nii.gz"))
    empty = np.full((12, 12, 12), np.nan, np.float32)
    nib.save(nib.Nifti1Image(empty, np.eye(4)), str(tmp_path / "in" / "empty.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((12, 12, 12), np.float32), np.eye(4)), str(tmp_path / "in" / "zeros.nii.gz"))
    cfg, stats = DataConfig(kind="volume", intensity="none"), stats_of(vol[None], ["band_1"])
    planned = plan_outputs(tmp_path / "in", tmp_path / "out", cfg, [8, 8, 8])
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        usable = usable_inputs(planned, cfg, "gaussian", stats)
    assert sorted(p.name for p in usable) == ["good.nii.gz", "zeros.nii.gz"]
    assert "hold one value in every voxel (blank scans?), e.g. '" in caplog.text  # predicted, and said
    assert "empty.nii.gz': all pixels are nodata or NaN" in caplog.text
    with pytest.raises(DataError, match="empty.nii.gz': all pixels are nodata or NaN"):
        usable_inputs(planned, cfg, "gaussian", stats, strict=True)


def test_a_file_the_recipe_excludes_is_no_channel_of_a_stack_even_when_a_channel_glob_matches_it(tmp_path):
    """FSL's ``flair_brain_mask.nii.gz`` beside ``flair_brain.nii.gz``: training left the mask out
    (``data.exclude``), so predict groups the folder's files the same way."""
    import nibabel as nib

    from geomed_ssl.config import DataConfig
    from geomed_ssl.inference.predict import list_inputs
    from geomed_ssl.inference.sliding import channel_records

    case = tmp_path / "p1"
    case.mkdir()
    for name in ("p1_t1_brain.nii.gz", "p1_flair_brain.nii.gz", "p1_flair_brain_mask.nii.gz"):
        nib.save(nib.Nifti1Image(asymmetric_volume((8, 8, 8)), np.eye(4)), str(case / name))
    cfg = DataConfig(kind="volume", channels=["*t1*", "*flair*"], exclude=["*mask*"])
    records = channel_records(tmp_path, cfg, "volume")
    assert len(records) == 1 and [Path(p).name for p in records[0].paths] == ["p1_t1_brain.nii.gz",
                                                                               "p1_flair_brain.nii.gz"]
    assert list_inputs(tmp_path, cfg) == [case]


def test_a_channel_file_named_explicitly_is_predicted_with_its_case_though_the_recipe_excluded_that_subject(tmp_path):
    """A test subject held out of training by ``data.exclude`` is what a user then names to predict."""
    import nibabel as nib

    from geomed_ssl.config import DataConfig
    from geomed_ssl.inference.predict import list_inputs

    for name in ("sub-01_flair.nii.gz", "sub-01_t1.nii.gz", "sub-05_flair.nii.gz", "sub-05_t1.nii.gz"):
        nib.save(nib.Nifti1Image(asymmetric_volume((8, 8, 8)), np.eye(4)), str(tmp_path / name))
    cfg = DataConfig(kind="volume", channels=["*_flair*", "*_t1*"], exclude=["*sub-05*", "*mask*"])
    assert [p.name for p in list_inputs(tmp_path / "sub-05_flair.nii.gz", cfg)] == ["sub-05_flair.nii.gz"]
    from geomed_ssl.inference.sliding import channel_records

    records = channel_records(tmp_path, cfg, "volume")  # the folder: as training read it, sub-05 left out
    assert [[Path(f).name for f in r.paths] for r in records] == [["sub-01_flair.nii.gz", "sub-01_t1.nii.gz"]]


def test_a_zero_collar_without_a_nodata_tag_is_warned_about_when_predicted(tmp_path, caplog):
    """``inspect``, ``pretrain`` and ``finetune`` warned of an untagged 0 collar; ``predict`` classified it without
    a word."""
    from geomed_ssl.config import DataConfig

    arr = structured_raster(np.random.default_rng(1), 4, 32).astype(np.uint16) + 100
    arr[:, :, :6] = 0  # an orthophoto's fill outside its footprint, no nodata tag
    (tmp_path / "in").mkdir()
    for k in range(2):
        write_geotiff(tmp_path / "in" / f"tile_{k}.tif", arr)
    stats = stats_of(arr[:, :, 6:], [f"band_{i}" for i in range(1, 5)])
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        predict_raster(conv_model(4, 2), tmp_path / "in" / "tile_0.tif", tmp_path / "o.tif", stats, window=16,
                       num_classes=2)
    assert "tile_0.tif' has 0 at its 1st percentile in every band" in caplog.text
    assert "give --nodata 0" in caplog.text and "predicted as data" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        predict_files(conv_model(4, 2), tmp_path / "in", tmp_path / "out", stats, num_classes=2, window=16,
                      data_cfg=DataConfig())
    collars = [r.getMessage() for r in caplog.records if "collar" in r.getMessage()]
    assert len(collars) == 1 and "and 1 more file(s)" in collars[0]  # one warning for the folder
    caplog.clear()
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        predict_raster(conv_model(4, 2), tmp_path / "in" / "tile_0.tif", tmp_path / "o2.tif", stats, window=16,
                       num_classes=2, nodata=0)
    assert "collar" not in caplog.text


def test_a_scene_under_half_the_window_is_predicted_with_a_warning(tmp_path, caplog):
    """A strip 1 px tall is padded to the window with the band means and came out one class, without a word."""
    from geomed_ssl.config import DataConfig
    from geomed_ssl.inference.predict import usable_inputs

    arr = structured_raster(np.random.default_rng(5), 3, 40)
    names = ["band_1", "band_2", "band_3"]
    thin = write_geotiff(tmp_path / "thin.tif", arr[:, :2, :].copy())
    wide = write_geotiff(tmp_path / "wide.tif", arr[:, :20, :].copy())
    planned = {thin: tmp_path / "out" / "thin_pred.tif", wide: tmp_path / "out" / "wide_pred.tif"}
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        usable = usable_inputs(planned, DataConfig(band_names=names), "gaussian", stats_of(arr, names), window=(32, 32),
                               model="model 'FT'")
    assert list(usable) == [thin, wide]  # still predicted
    assert "1 input(s) are smaller than half the 32x32 window of model 'FT'" in caplog.text
    assert "thin.tif': 2x40" in caplog.text and "wide.tif" not in caplog.text


def test_a_volume_under_half_the_window_is_warned_about_on_the_grid_its_windows_are_cut_from(tmp_path, caplog):
    """Stored (6, 40, 40) with its first axis pointing superior: read as RAS it is 40x40x6, under half a 16^3
    window along z; a 20^3 volume is not."""
    import nibabel as nib

    from geomed_ssl.config import DataConfig
    from geomed_ssl.inference.predict import usable_inputs

    rng = np.random.default_rng(0)
    to_ras = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], np.float64)  # voxel axis 0 -> S
    nib.save(nib.Nifti1Image(rng.normal(size=(6, 40, 40)).astype(np.float32), to_ras), str(tmp_path / "slab.nii.gz"))
    nib.save(nib.Nifti1Image(rng.normal(size=(20, 20, 20)).astype(np.float32), np.eye(4)), str(tmp_path / "ok.nii.gz"))
    planned = {tmp_path / n: tmp_path / "out" / n for n in ("slab.nii.gz", "ok.nii.gz")}
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        usable = usable_inputs(planned, DataConfig(), "gaussian", stats_of(rng.normal(size=(1, 50)), ["band_1"]),
                               window=(16, 16, 16), model="model 'FT'")
    assert list(usable) == list(planned)  # still predicted
    assert "1 input(s) are smaller than half the 16x16x16 window of model 'FT'" in caplog.text
    assert "slab.nii.gz': 40x40x6" in caplog.text and "a larger volume" in caplog.text


def test_a_files_own_nodata_tag_replaced_by_the_models_data_nodata_is_warned_about(tmp_path, caplog):
    """A model fine-tuned with data.nodata=0 reads another archive's declared -9999 as data (data.nodata overrides a
    file's tag, as documented): said when it happens."""
    from geomed_ssl.config import DataConfig

    arr = structured_raster(np.random.default_rng(1), 4, 32).astype(np.float32) + 100
    arr[:, :4] = -9999
    path = write_geotiff(tmp_path / "m9999.tif", arr, nodata=-9999)
    stats = stats_of(arr[:, 4:], [f"band_{i}" for i in range(1, 5)])
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        predict_raster(conv_model(4, 2), path, tmp_path / "o.tif", stats, window=16, num_classes=2,
                       data_cfg=DataConfig(nodata=0))
    assert ("m9999.tif' is tagged nodata -9999, but the nodata value read with (0: --nodata, else the model's "
            "data.nodata) replaces") in caplog.text
    assert "Predict such files with --nodata -9999" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="geomed_ssl"):  # the file's own value: nothing replaced
        predict_raster(conv_model(4, 2), path, tmp_path / "o2.tif", stats, window=16, num_classes=2,
                       data_cfg=DataConfig(nodata=-9999))
        predict_raster(conv_model(4, 2), path, tmp_path / "o3.tif", stats, window=16, num_classes=2)
    assert "tagged nodata" not in caplog.text


def test_a_volumes_classes_are_taken_class_by_class_as_argmax_takes_them() -> None:
    """The (x, y, z, K) view a volume's prediction ends in keeps each class's volume apart in memory; numpy's argmax
    copied all of it first (900 MB more for 16 classes of 13 million voxels, against 88 MB now). Same classes, ties
    to the first, in a flipped and transposed view, and past 256 classes."""
    from geomed_ssl.inference.volume import class_argmax

    rng = np.random.default_rng(0)
    for k in (1, 2, 5, 300):
        proba = torch.from_numpy(rng.random((k, 7, 6, 5)).astype(np.float32))
        proba[:, 0, 0, 0] = 0.5  # a tie between every class
        view = proba.permute(1, 2, 3, 0).numpy()[::-1, :, ::-1].transpose(1, 0, 2, 3)
        assert np.array_equal(class_argmax(view), view.argmax(axis=-1))


def test_a_volumes_progress_counts_the_windows_monai_runs() -> None:
    from monai.inferers import sliding_window_inference

    from geomed_ssl.inference.volume import window_count

    for size, roi, overlap in [((40, 33, 20), (16, 16, 16), 0.25), ((96, 96, 96), (96, 96, 96), 0.5),
                               ((100, 17, 50), (32, 32, 32), 0.5), ((50, 50, 9), (20, 20, 16), 0.3)]:
        seen = []
        sliding_window_inference(torch.zeros(1, 1, *size), roi, 3, lambda b: seen.append(len(b)) or b, overlap=overlap)
        assert sum(seen) == window_count(size, roi, overlap)
