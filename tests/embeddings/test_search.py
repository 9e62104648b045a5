"""Nearest-neighbour search over stored embeddings: exact cosine top-k, queries embedded like the rows, CLI."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from geomed_ssl.cli import app
from geomed_ssl.embeddings import search as search_mod
from geomed_ssl.embeddings.extract import embed_folder
from geomed_ssl.embeddings.search import cosine_top_k, find_similar
from geomed_ssl.embeddings.store import read_columns
from geomed_ssl.errors import ConfigError
from tests.embeddings.test_extract import make_encoder, scenes, volumes

runner = CliRunner()


def test_cosine_top_k_is_exact_across_chunks_and_skips_excluded(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(103, 8)).astype(np.float32)
    q = rng.normal(size=8).astype(np.float32)
    monkeypatch.setattr(search_mod, "CHUNK", 10)
    idx, sims = cosine_top_k(x, q, 5, exclude={int(np.argmax(x @ q / np.linalg.norm(x, axis=1)))})
    ref = (x @ q) / np.linalg.norm(x, axis=1) / np.linalg.norm(q)
    order = np.argsort(-ref)[1:6]
    assert idx.tolist() == order.tolist()
    np.testing.assert_allclose(sims, ref[order], rtol=1e-5)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, Path]:
    """Three scenes plus an exact copy of scene_1 under another name, and a random-init encoder."""
    root = tmp_path_factory.mktemp("search")
    data = scenes(root / "rasters", [40, 40, 48])
    shutil.copy(data / "scene_1.tif", data / "twin_of_1.tif")
    return data, make_encoder(data, root / "enc")


def test_image_query_finds_its_twin_first(archive: tuple[Path, Path], tmp_path: Path) -> None:
    data, enc = archive
    emb = tmp_path / "emb"
    embed_folder(enc, data, emb, level="image", progress=False)
    result = find_similar(emb, data / "scene_1.tif", top=2, out_dir=tmp_path / "q")
    assert Path(result.hits[0]["file"]).name == "twin_of_1.tif"
    assert result.hits[0]["score"] == pytest.approx(1, abs=1e-5)
    assert all(Path(h["file"]).name != "scene_1.tif" for h in result.hits)  # its own row is left out
    assert (tmp_path / "q" / "similar.png").is_file()


def test_a_one_cell_patch_query_is_that_cells_stored_vector(archive: tuple[Path, Path], tmp_path: Path) -> None:
    data, enc = archive
    emb = tmp_path / "emb"
    embed_folder(enc, data, emb, level="patch", pca_dims=0, progress=False)
    cols = read_columns(emb, ["file", "box"])
    i = next(i for i, (f, b) in enumerate(zip(cols["file"], cols["box"]))
             if f.endswith("scene_2.tif") and list(b) == [20, 24, 4, 4])
    result = find_similar(emb, data / "scene_2.tif", box="20,24,4,4", top=3, include_self=True, out_dir=tmp_path / "q")
    assert result.hits[0]["id"] == i and result.hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    bigger = find_similar(emb, data / "scene_2.tif", box="16,16,12,12", top=3, out_dir=tmp_path / "q2", sheet=False)
    inside = {h["id"] for h in bigger.hits if h["file"].endswith("scene_2.tif")}
    assert all(not (16 <= cols["box"][j][0] + 2 <= 28 and 16 <= cols["box"][j][1] + 2 <= 28) for j in inside)


def test_a_map_point_queries_the_stored_window_or_cell_that_holds_it(archive: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    """A GIS user has a point (clicked in QGIS, or lon / lat), not pixel rows and columns: --at finds the window
    of the embedding's grid nearest it (or the patch cell under it), in the file's CRS or --at-crs."""
    import rasterio
    from rasterio.warp import transform

    data, enc = archive
    emb = tmp_path / "emb"
    embed_folder(enc, data, emb, level="window", stride=8, progress=False)
    with rasterio.open(data / "scene_2.tif") as src:
        x, y = src.xy(21, 29)  # the centre of pixel (21, 29): nearest the centre of the window at (16, 24)
        crs = src.crs
    hit = find_similar(emb, data / "scene_2.tif", at=f"{x},{y}", top=1, include_self=True, out_dir=tmp_path / "q",
                       sheet=False).hits[0]
    assert hit["file"].endswith("scene_2.tif") and hit["box"] == [16, 24, 16, 16]
    assert hit["score"] == pytest.approx(1.0, abs=1e-5)
    (lon,), (lat,) = transform(crs, "EPSG:4326", [x], [y])
    result = runner.invoke(app, ["similar", str(emb), "--query", str(data / "scene_2.tif"), "--at", f"{lon},{lat}",
                                 "--at-crs", "EPSG:4326", "--top", "2", "--out", str(tmp_path / "q2")])
    assert result.exit_code == 0, result.output
    assert "box [16, 24, 16, 16]" in result.output
    with (tmp_path / "q2" / "similar.csv").open() as fh:  # its own window left out, as for --box
        assert all(r["box"] != "16 24 16 16" or not r["file"].endswith("scene_2.tif") for r in csv.DictReader(fh))
    far = runner.invoke(app, ["similar", str(emb), "--query", str(data / "scene_2.tif"), "--at", f"{x + 1e5},{y}"])
    assert far.exit_code == 2 and "lies outside" in far.output and "scene_2.tif" in far.output
    both = runner.invoke(app, ["similar", str(emb), "--query", str(data / "scene_2.tif"), "--at", f"{x},{y}",
                               "--box", "0,0,4,4"])
    assert both.exit_code == 2 and "give --box or --at, not both" in both.output
    cells = tmp_path / "cells"
    embed_folder(enc, data, cells, level="patch", pca_dims=0, progress=False)
    cell = find_similar(cells, data / "scene_2.tif", at=(x, y), top=1, include_self=True, sheet=False,
                        out_dir=tmp_path / "q3").hits[0]
    assert cell["box"] == [20, 28, 4, 4] and cell["score"] == pytest.approx(1.0, abs=1e-5)  # the cell under it
    with rasterio.open(data / "scene_2.tif") as src:  # the last pixel: the grid's last window, not one past it
        x, y = src.xy(47, 47)
    edge = find_similar(emb, data / "scene_2.tif", at=(x, y), top=1, include_self=True, sheet=False,
                        out_dir=tmp_path / "q4")
    assert edge.hits[0]["box"] == [32, 32, 16, 16] and edge.hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert f"at {x:.9g},{y:.9g} box [32, 32, 16, 16]" in edge.lines[0]
    with pytest.raises(ConfigError, match="expected X,Y"):
        find_similar(emb, data / "scene_2.tif", at=5, out_dir=tmp_path / "q5")
    with pytest.raises(ConfigError, match=r"top \(--top\) must be an integer, got '5'"):
        find_similar(emb, data / "scene_2.tif", top="5", out_dir=tmp_path / "q6")  # from Python: not a TypeError
    whole = tmp_path / "whole"
    embed_folder(enc, data, whole, level="image", progress=False)
    refused = runner.invoke(app, ["similar", str(whole), "--query", str(data / "scene_2.tif"), "--at", f"{x},{y}"])
    assert refused.exit_code == 2 and "at --level image each file is one row" in refused.output


def test_volume_box_query(tmp_path: Path) -> None:
    vols = volumes(tmp_path / "vols")
    enc = make_encoder(vols, tmp_path / "enc3d", kind="volume")
    emb = tmp_path / "emb3d"
    embed_folder(enc, vols, emb, level="window", stride=8, progress=False)
    result = find_similar(emb, vols / "subject_1.nii.gz", box="8,8,0,16,16,16", top=4, include_self=True)
    top = result.hits[0]
    assert Path(top["file"]).name == "subject_1.nii.gz" and top["box"] == [8, 8, 0, 16, 16, 16]
    assert top["score"] == pytest.approx(1.0, abs=1e-5) and top["z"] is not None
    assert (emb / "search" / "subject_1_8-8-0-16-16-16" / "similar.png").is_file()


def test_similar_cli_prints_the_table_and_writes_csv_and_contact_sheet(archive: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    data, enc = archive
    emb = tmp_path / "emb"
    assert runner.invoke(app, ["embed", str(enc), str(data), "--out", str(emb), "--level", "window"]).exit_code == 0
    out = tmp_path / "hits"
    result = runner.invoke(app, ["similar", str(emb), "--query", str(data / "scene_0.tif"), "--box", "16,16,16,16",
                                 "--top", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "rank" in result.output and "score" in result.output and "similar.png" in result.output
    with (out / "similar.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows), reverse=True)
    assert {r["crs"] for r in rows} == {"EPSG:32633"}  # which units x and y are in
    assert f"{float(rows[0]['x']):12.9g}" in result.output  # metres (and degrees) printed to the metre or better
    assert " crs " in result.output and " EPSG:32633 " in result.output  # printed too: hits may span UTM zones
    assert f"query: {data / 'scene_0.tif'}" in result.output  # as given
    assert (out / "similar.png").stat().st_size > 1000
    bad = runner.invoke(app, ["similar", str(emb), "--query", str(data / "scene_0.tif"), "--box", "1,2,3"])
    assert bad.exit_code == 2 and "ROW,COL,H,W" in bad.output


def test_volume_box_is_i_j_k_along_the_ras_axes_like_the_stored_box_column(tmp_path: Path) -> None:
    from geomed_ssl.errors import DataError

    vols = volumes(tmp_path / "vols", shape=(32, 24, 20))  # RAS shape 32 x 24 x 20: every axis tells apart
    enc = make_encoder(vols, tmp_path / "enc3d", kind="volume")
    emb = tmp_path / "emb3d"
    embed_folder(enc, vols, emb, level="window", stride=8, progress=False)
    result = find_similar(emb, vols / "subject_0.nii.gz", box="16,8,0,16,16,16", top=1, include_self=True,
                          sheet=False)
    assert result.hits[0]["box"] == [16, 8, 0, 16, 16, 16] and result.hits[0]["score"] == pytest.approx(1, abs=1e-5)
    with pytest.raises(DataError, match=r"starts outside .* along k 20\.\.35 \(0\.\.19\); its RAS grid is 32x24x20 "
                       r"\(the file on disk: 32x24x20, stored LPS\).*give --at X,Y,Z in world mm \(i x j x k\)"):
        find_similar(emb, vols / "subject_0.nii.gz", box="0,0,20,16,16,16", top=1, sheet=False)
    # a viewer shows the file's voxel (8, 10, 5) at world (28, 15, -10) mm; stored LPS, it is RAS voxel (23, 13, 5),
    # in the stored window at (16, 8, 0), whose centre is nearest
    at = runner.invoke(app, ["similar", str(emb), "--query", str(vols / "subject_0.nii.gz"), "--at", "28,15,-10",
                             "--top", "1", "--include-self", "--out", str(tmp_path / "at")])
    assert at.exit_code == 0, at.output
    assert "at 28,15,-10 mm box [16, 8, 0, 16, 16, 16]" in at.output
    with (tmp_path / "at" / "similar.csv").open() as fh:
        assert next(csv.DictReader(fh))["box"] == "16 8 0 16 16 16"
    hit = result.hits[0]  # a stored row's x, y, z given back as --at names that row
    again = find_similar(emb, vols / "subject_0.nii.gz", at=(hit["x"], hit["y"], hit["z"]), top=1, include_self=True,
                         sheet=False, out_dir=tmp_path / "at2")
    assert again.hits[0]["box"] == [16, 8, 0, 16, 16, 16] and again.hits[0]["score"] == pytest.approx(1, abs=1e-5)
    apart = tmp_path / "emb_apart"  # windows side by side: the last along j and k reach past the volume,
    embed_folder(enc, vols, apart, level="window", stride=16, progress=False)  # their centre in their padding
    cols = read_columns(apart, ["file", "box", "x", "y", "z"])
    edge = [r for r in range(len(cols["box"])) if cols["file"][r].endswith("subject_0.nii.gz")
            and any(a + n / 2 >= size for a, n, size in zip(cols["box"][r][:3], cols["box"][r][3:], (32, 24, 20)))]
    assert len(edge) >= 3
    for n, r in enumerate(edge[:4]):
        back = find_similar(apart, vols / "subject_0.nii.gz", at=(cols["x"][r], cols["y"][r], cols["z"][r]), top=1,
                            include_self=True, sheet=False, out_dir=tmp_path / f"edge{n}")
        assert back.hits[0]["box"] == list(cols["box"][r])
    with pytest.raises(DataError, match=r"--at 100,15,-10 \(mm\) lies outside .*subject_0.nii.gz.*x -6\.5\.\.40"):
        find_similar(emb, vols / "subject_0.nii.gz", at="100,15,-10", sheet=False, out_dir=tmp_path / "at3")
    for bad_at, message in (("28,15", "expected X,Y,Z"), ("28,15,nan", "expected X,Y,Z")):
        with pytest.raises(ConfigError, match=message):
            find_similar(emb, vols / "subject_0.nii.gz", at=bad_at, out_dir=tmp_path / "at4")
    with pytest.raises(ConfigError, match="a volume's --at is in its world mm"):
        find_similar(emb, vols / "subject_0.nii.gz", at="28,15,-10", at_crs="EPSG:4326", out_dir=tmp_path / "at4")
    help_text = runner.invoke(app, ["similar", "--help"]).output
    assert "I,J,K,DI,DJ,DK" in help_text and "Z,Y,X" not in help_text
    bad = runner.invoke(app, ["similar", str(emb), "--query", str(vols / "subject_0.nii.gz"), "--box", "1,2,3"])
    assert bad.exit_code == 2 and "I,J,K,DI,DJ,DK" in bad.output and "i=Right" in bad.output


def test_default_result_folders_of_different_queries_never_meet(archive: tuple[Path, Path], tmp_path: Path) -> None:
    """Dated names keep their dots (``S2A_2020.06.01`` and ``S2A_2020.07.01`` are two folders), a query from
    outside the embedded folder carries its path's hash, and a result without a contact sheet leaves no earlier
    sheet beside its table."""
    data, enc = archive
    dated = tmp_path / "dated"
    dated.mkdir()
    for name in ("S2A_2020.06.01.tif", "S2A_2020.07.01.tif"):
        shutil.copy(data / "scene_0.tif", dated / name)
    emb = tmp_path / "emb"
    embed_folder(enc, dated, emb, level="image", progress=False)
    for name in ("S2A_2020.06.01.tif", "S2A_2020.07.01.tif"):
        find_similar(emb, dated / name, top=1, include_self=True)
    assert sorted(p.name for p in (emb / "search").iterdir()) == ["S2A_2020.06.01", "S2A_2020.07.01"]
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    shutil.copy(data / "scene_1.tif", elsewhere / "S2A_2020.06.01.tif")
    outside = find_similar(emb, elsewhere / "S2A_2020.06.01.tif", top=1)
    assert outside.out_dir.name.startswith("S2A_2020.06.01-") and outside.out_dir.parent == emb / "search"
    for name in ("s.tif", "s.tiff"):  # names that meet without their extension
        shutil.copy(data / "scene_0.tif", dated / name)
    embed_folder(enc, dated, emb, level="image", progress=False, overwrite=True)
    folders = {find_similar(emb, dated / n, top=1, include_self=True).out_dir.name for n in ("s.tif", "s.tiff")}
    assert len(folders) == 2 and all(f.startswith("s-") for f in folders)
    again = find_similar(emb, dated / "S2A_2020.06.01.tif", top=1, include_self=True, sheet=False)
    assert (again.out_dir / "similar.csv").is_file() and not (again.out_dir / "similar.png").exists()


def test_a_query_from_a_moved_data_folder_still_leaves_out_its_own_cells(archive: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    """After the data and embedding folders moved, the query's path is no stored one: it is known by its path in
    the data folder, size and time, so its own cells stay out of the hits and its folder is named as before; a
    file of the same name elsewhere with other stamps is still a stranger."""
    data, enc = archive
    shutil.copytree(data, tmp_path / "old" / "data")
    embed_folder(enc, tmp_path / "old" / "data", tmp_path / "old" / "emb", level="patch", pca_dims=0, progress=False)
    (tmp_path / "old").rename(tmp_path / "new")
    emb, query = tmp_path / "new" / "emb", tmp_path / "new" / "data" / "scene_2.tif"
    result = find_similar(emb, query, box="0,0,8,8", top=3, sheet=False)
    assert result.hits and result.hits[0]["score"] < 1 - 1e-4
    assert not any(h["file"].endswith("scene_2.tif") and h["box"][0] < 8 and h["box"][1] < 8 for h in result.hits)
    assert result.out_dir == emb / "search" / "scene_2_0-0-8-8"
    stranger = tmp_path / "other" / "data" / "scene_2.tif"
    stranger.parent.mkdir(parents=True)
    shutil.copy(query, stranger)  # same name and size, another modification time
    assert find_similar(emb, stranger, box="0,0,8,8", top=1, sheet=False).out_dir.name.startswith("scene_2-")


def test_a_failed_contact_sheet_leaves_no_earlier_querys_sheet_beside_the_new_table(
        archive: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, enc = archive
    emb = tmp_path / "emb"
    embed_folder(enc, data, emb, level="image", progress=False)
    find_similar(emb, data / "scene_0.tif", top=2, out_dir=tmp_path / "q")
    assert (tmp_path / "q" / "similar.png").is_file()

    def unreadable_hit(*args, **kwargs) -> None:
        raise OSError("a hit's file was moved")

    monkeypatch.setattr(search_mod, "contact_sheet", unreadable_hit)
    with pytest.raises(OSError):
        find_similar(emb, data / "scene_1.tif", top=2, out_dir=tmp_path / "q")
    assert not (tmp_path / "q" / "similar.png").exists()
    rows = list(csv.DictReader((tmp_path / "q" / "similar.csv").open()))
    assert rows and all(r["file"] != str(data / "scene_1.tif") for r in rows)  # the new query's table


def test_similar_refuses_an_encoder_that_is_not_the_one_the_vectors_came_from(archive: tuple[Path, Path],
                                                                               tmp_path: Path) -> None:
    """Re-exported weights at the same path would rank the query's own file anywhere: refused; a copy of the
    right encoder elsewhere (--encoder) is accepted."""
    from geomed_ssl.errors import GeomedError

    data, enc = archive
    mine = tmp_path / "run" / "encoder"
    shutil.copytree(enc, mine)
    emb = tmp_path / "emb"
    embed_folder(tmp_path / "run", data, emb, level="image", progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(mine, copy)
    hits = find_similar(emb, data / "scene_1.tif", top=1, out_dir=tmp_path / "q1", encoder=copy, sheet=False).hits
    assert Path(hits[0]["file"]).name == "twin_of_1.tif"
    make_encoder(data, mine, patch=8)  # pretraining went on: other weights under the same path
    with pytest.raises(GeomedError, match="not the one these embeddings were made with"):
        find_similar(emb, data / "scene_1.tif", top=1, out_dir=tmp_path / "q2", sheet=False)
    assert not (tmp_path / "q2").exists()


def test_an_edge_windows_stored_box_queries_itself_and_a_moved_hit_only_leaves_the_sheet(archive: tuple[Path, Path],
                                                                                           tmp_path: Path) -> None:
    """The last window of a 40-px scene (16-px windows every 16 px) runs past the edge, padded: its stored box is a
    valid query and finds itself. A hit whose file moved after embedding is ranked and left off the sheet."""
    data, enc = archive
    mine = tmp_path / "data"
    shutil.copytree(data, mine)
    emb = tmp_path / "emb"
    embed_folder(enc, mine, emb, level="window", window=16, stride=16, progress=False)
    cols = read_columns(emb, ["file", "box"])
    edge = next(b for f, b in zip(cols["file"], cols["box"]) if f.endswith("scene_0.tif") and b[0] + b[2] > 40)
    (mine / "scene_2.tif").unlink()
    result = find_similar(emb, mine / "scene_0.tif", box=[int(v) for v in edge], top=40, include_self=True,
                          out_dir=tmp_path / "q")
    assert Path(result.hits[0]["file"]).name == "scene_0.tif" and list(result.hits[0]["box"]) == list(edge)
    assert result.hits[0]["score"] == pytest.approx(1, abs=1e-5)
    assert any(Path(h["file"]).name == "scene_2.tif" for h in result.hits)
    assert (tmp_path / "q" / "similar.png").is_file()


def test_a_box_far_past_the_edge_ends_a_window_past_it(archive: tuple[Path, Path], tmp_path: Path) -> None:
    """A box's far side beyond the file only adds padding: it ends one window past the edge, instead of reading a
    window for every 16 px of a box 10^20 px tall (a MemoryError before)."""
    data, enc = archive
    emb = tmp_path / "emb"
    embed_folder(enc, data, emb, level="window", window=16, stride=16, progress=False)
    huge = find_similar(emb, data / "scene_0.tif", box="0,0,99999999999999999999,16", top=3, out_dir=tmp_path / "q",
                        sheet=False)
    ends = find_similar(emb, data / "scene_0.tif", box="0,0,56,16", top=3, out_dir=tmp_path / "q2", sheet=False)
    assert [h["id"] for h in huge.hits] == [h["id"] for h in ends.hits]
    assert [h["score"] for h in huge.hits] == pytest.approx([h["score"] for h in ends.hits])


def test_a_folder_of_an_earlier_version_warns_rather_than_refuses_a_copied_encoder(archive: tuple[Path, Path],
                                                                                    tmp_path: Path, caplog) -> None:
    """Earlier folders recorded the export's size and time only, which a copy changes: it cannot be checked, so it
    is used with a warning."""
    import json

    data, enc = archive
    emb = tmp_path / "emb"
    embed_folder(enc, data, emb, level="image", progress=False)
    manifest = json.loads((emb / "manifest.json").read_text())
    del manifest["settings"]["encoder_digest"]
    (emb / "manifest.json").write_text(json.dumps(manifest))
    copy = tmp_path / "copy"
    shutil.copytree(enc, copy, copy_function=shutil.copy)  # contents only: new modification times
    result = find_similar(emb, data / "scene_1.tif", top=1, out_dir=tmp_path / "q", encoder=copy, sheet=False)
    assert Path(result.hits[0]["file"]).name == "twin_of_1.tif" and "earlier version" in caplog.text


def test_read_rows_gives_the_rows_asked_for_in_their_order_from_their_row_groups(tmp_path) -> None:
    """similar reads its hits' metadata by id, not every row's (gigabytes of strings on millions of rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from geomed_ssl.embeddings.store import TABLE, read_columns, read_rows

    with pq.ParquetWriter(tmp_path / TABLE, pa.schema([("id", pa.int64()), ("file", pa.string())])) as w:
        for start in (0, 5, 12):  # three row groups of 5, 7 and 3 rows
            n = {0: 5, 5: 7, 12: 3}[start]
            w.write_table(pa.table({"id": list(range(start, start + n)), "file": [f"f{i}" for i in
                                                                                  range(start, start + n)]}))
    assert pq.ParquetFile(tmp_path / TABLE).num_row_groups == 3
    got = read_rows(tmp_path, ["id", "file"], [13, 0, 7, 6])
    assert got["id"].tolist() == [13, 0, 7, 6] and got["file"] == ["f13", "f0", "f7", "f6"]
    every = read_columns(tmp_path, ["file"])["file"]
    assert read_rows(tmp_path, ["file"], range(15))["file"] == every and read_rows(tmp_path, ["file"], [])["file"] == []


def test_the_folder_that_keeps_the_searches_is_no_search_folder(archive: tuple[Path, Path], tmp_path: Path) -> None:
    """``--out EMB/search`` would make the default searches' parent a search, which embed --overwrite then could
    not clear; a folder inside it is fine."""
    data, enc = archive
    emb = tmp_path / "emb"
    embed_folder(enc, data, emb, level="image", progress=False)
    result = runner.invoke(app, ["similar", str(emb), "--query", str(data / "scene_0.tif"), "--out",
                                 str(emb / "search")])
    assert result.exit_code == 2 and "where similar keeps one folder per query" in result.output
    assert not (emb / "search").exists()
    find_similar(emb, data / "scene_0.tif", out_dir=emb / "search" / "mine", top=1)
    assert (emb / "search" / "mine" / "similar.csv").is_file()


@pytest.mark.parametrize("level", ["window", "image"])
def test_a_box_of_nodata_alone_finds_nothing_at_window_and_image_level(archive: tuple[Path, Path], tmp_path: Path,
                                                                       level: str) -> None:
    import rasterio

    from tests.conftest import write_geotiff

    data, enc = archive
    emb = tmp_path / "emb"
    embed_folder(enc, data, emb, level=level, window=16, progress=False)
    with rasterio.open(data / "scene_0.tif") as src:
        arr = src.read().astype(np.float32)
    arr[:, :20] = np.nan
    query = write_geotiff(tmp_path / "holes.tif", arr)
    result = runner.invoke(app, ["similar", str(emb), "--query", str(query), "--box", "0,0,16,16"])
    assert result.exit_code == 2 and "holds no valid pixel" in result.output, result.output
    assert find_similar(emb, query, box=[20, 0, 16, 16], top=1, sheet=False).hits  # rows 20-35: found


def test_a_box_leaves_out_the_rows_centred_in_it_half_open(archive: tuple[Path, Path], tmp_path: Path) -> None:
    """Box 8,8,16,16 covers pixels 8-23: windows of 16 px every 8 px centred at 8 and 16 lie in it, the one centred at
    24 (its far edge) does not (it was left out too, with a window overlapping the box by a quarter)."""
    import json

    from geomed_ssl.embeddings.search import rows_of_region

    data, enc = archive
    emb = tmp_path / "emb"
    embed_folder(enc, data, emb, level="window", window=16, stride=8, progress=False)
    manifest = json.loads((emb / "manifest.json").read_text())
    cols = read_columns(emb, ["file", "box"])
    rows = rows_of_region(emb, manifest, (data / "scene_0.tif").resolve(), [8, 8, 16, 16], 2)
    assert sorted(tuple(cols["box"][i][:2]) for i in rows) == [(0, 0), (0, 8), (8, 0), (8, 8)]
    assert all(cols["file"][i].endswith("scene_0.tif") for i in rows)


@pytest.mark.parametrize("box", ["1,2,3", "1,2,x,4", "0,0,0,8"])
def test_a_malformed_box_is_refused_before_the_query_is_read(archive: tuple[Path, Path], tmp_path: Path, box: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from geomed_ssl.errors import ConfigError

    data, enc = archive
    emb = tmp_path / "emb"
    embed_folder(enc, data, emb, level="window", window=16, stride=16, progress=False)
    monkeypatch.setattr(search_mod, "embedder_for", lambda *a, **k: pytest.fail("the encoder was loaded"))
    with pytest.raises(ConfigError, match=rf"--box '{box}': expected ROW,COL,H,W"):
        find_similar(emb, data / "scene_0.tif", box=box, out_dir=tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_a_whole_file_query_leaves_out_all_its_rows_an_edge_window_centred_on_the_edge_too(
        archive: tuple[Path, Path], tmp_path: Path) -> None:
    """48 px in 32-px windows every 32 px: the second window's centre is 48, the file's far edge; a half-open test
    of the whole file let it back into the hits as its own near-copy."""
    data, enc = archive
    emb = tmp_path / "emb"
    embed_folder(enc, data, emb, level="window", window=32, stride=32, progress=False)
    cols = read_columns(emb, ["file", "box"])
    assert any(f.endswith("scene_2.tif") and b[0] + b[2] / 2 == 48 for f, b in zip(cols["file"], cols["box"]))
    hits = find_similar(emb, data / "scene_2.tif", top=40, out_dir=tmp_path / "q", sheet=False).hits
    assert hits and not any(Path(h["file"]).name == "scene_2.tif" for h in hits)


def test_a_query_less_valid_than_the_embeddings_min_valid_is_warned_about(archive: tuple[Path, Path], tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Windows under --min-valid were left out of the stored rows; a query like them was answered without a word."""
    import rasterio

    from tests.conftest import write_geotiff

    data, enc = archive
    emb = tmp_path / "emb"
    embed_folder(enc, data, emb, level="window", window=16, stride=16, min_valid=0.8, progress=False)
    with rasterio.open(data / "scene_0.tif") as src:
        arr = src.read().astype(np.float32)
    arr[:, :12] = np.nan  # rows 0-11 of the 16-px box: 25 % valid
    query = write_geotiff(tmp_path / "holes.tif", arr)
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        assert find_similar(emb, query, box=[0, 0, 16, 16], top=1, sheet=False).hits
    assert "--box 0,0,16,16 is 25 % valid, below the embedding's --min-valid 0.8" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="geomed_ssl"):
        find_similar(emb, query, box=[16, 0, 16, 16], top=1, out_dir=tmp_path / "q2", sheet=False)
    assert "min-valid" not in caplog.text


def test_a_query_whose_own_rows_are_all_there_is_is_told_so(archive: tuple[Path, Path], tmp_path: Path,
                                                             caplog) -> None:
    """An empty table with exit 0 read as "nothing is similar"; fewer hits than --top say why."""
    import logging

    from geomed_ssl.errors import DataError

    data, enc = archive
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(data / "scene_0.tif", alone / "scene_0.tif")
    emb = tmp_path / "emb"
    embed_folder(enc, alone, emb, level="window", stride=16, progress=False)
    with pytest.raises(DataError, match=r"every stored row \(\d+\) is the query's own.*--include-self"):
        find_similar(emb, alone / "scene_0.tif", top=2, sheet=False)
    assert not (emb / "search").exists()  # refused before its folder is made
    assert find_similar(emb, alone / "scene_0.tif", top=2, include_self=True, sheet=False).hits
    whole = tmp_path / "whole"
    embed_folder(enc, data, whole, level="image", progress=False)
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        hits = find_similar(whole, data / "scene_0.tif", top=10, sheet=False).hits
    stored = len(list(data.glob("*.tif")))
    assert len(hits) == stored - 1
    assert f"not --top 10: {stored} rows are stored, 1 of them the query's own" in caplog.text
