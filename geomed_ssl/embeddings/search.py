"""``geomed-ssl similar``: cosine nearest neighbours of a query among stored embeddings, with a contact sheet.

The query is embedded exactly as the stored rows were (same encoder, statistics, window, stride and pooling,
read from the embedding manifest): a whole file (image level, or the average of a file's rows' space at the
other levels) or a box in a file. At patch level a box query is the mean of the token vectors of the cells whose
centre lies in the box, computed in context (the same grid-aligned windows as the stored rows), so a one-cell box
gives exactly that cell's stored vector. Rows of the query file inside the query region are left out unless
``include_self``.

Search is exact: faiss (``IndexFlatIP`` on normalised vectors) when installed, else numpy over memory-mapped chunks.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from geomed_ssl.config import DataConfig
from geomed_ssl.config.loading import whole_number
from geomed_ssl.data.catalog import FileRecord, scan
from geomed_ssl.files.kinds import check_input_kind
from geomed_ssl.files.listing import file_stamps
from geomed_ssl.geo.grids import crs_name
from geomed_ssl.geo.points import raster_position, volume_position
from geomed_ssl.embeddings.embedder import Embedder
from geomed_ssl.embeddings.extract import encoder_for
from geomed_ssl.embeddings.maps import grid_stem, grid_stems
from geomed_ssl.embeddings.store import load_embeddings, optional_module, read_rows
from geomed_ssl.errors import ConfigError, DataError, GeomedError, OutputError
from geomed_ssl.files.cases import is_case_file
from geomed_ssl.models.device import resolve_device
from geomed_ssl.outcommands import name_hash
from geomed_ssl.outdirs import check_out_dir, prepare_out_dir, same_place
from geomed_ssl.outfiles import atomic_path, commit_partial, partial_path, save_figure
from geomed_ssl.process import keeps_process_state

log = logging.getLogger("geomed_ssl")

CHUNK = 65_536
MAX_VIEW = 512  # contact-sheet tiles larger than this (per side) show the centre window instead


@dataclass
class SearchResult:
    """The hits of a query (best first) and where they were written."""

    out_dir: Path
    hits: list[dict[str, Any]]
    lines: list[str]


BOX_AXES = {2: ("row", "col"), 3: ("i", "j", "k")}
BOX_FORMS = {2: "ROW,COL,H,W", 3: "I,J,K,DI,DJ,DK"}


def parse_box(text: str | Sequence[int] | None, nd: int) -> list[int] | None:
    """``"ROW,COL,H,W"`` (rasters: pixel row, column, height, width) or ``"I,J,K,DI,DJ,DK"`` (volumes: voxel
    indices and sizes along the volume reader's RAS axes, i towards Right, j Anterior, k Superior) -> ints. Both
    are the array order of the stored ``box`` column, so a box copied from ``embeddings.parquet`` or
    ``similar.csv`` means the same region."""
    if text is None:
        return None
    try:
        box = [int(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        box = []
    if len(box) != 2 * nd or any(v < 1 for v in box[nd:]):
        raise ConfigError(f"--box '{text}': expected {BOX_FORMS[nd]} (integers, positive sizes) for these {nd}D "
                          "embeddings" + (", along the RAS voxel axes i=Right, j=Anterior, k=Superior." if nd == 3
                                          else "."))
    return box


def parse_at(at: str | Sequence[float], nd: int, level: str, at_crs: str | None = None) -> tuple[float, ...]:
    """``--at X,Y`` (rasters: a map point) or ``X,Y,Z`` (volumes: a world point in mm, as the NIfTI affine and the
    stored x, y, z give it) -> floats, for embeddings at window or patch level (refused at image level), and
    ``at_crs`` checked to be a CRS, of rasters only (before the query is read)."""
    if level == "image":
        raise ConfigError("--at picks a window or patch cell by a point: at --level image each file is one row; give "
                          "--query alone.")
    form = "X,Y, a map point in the query file's CRS (or --at-crs)" if nd == 2 else \
        "X,Y,Z, a world point in mm as the NIfTI header's affine gives it (a viewer's world / RAS coordinates)"
    try:
        point = tuple(float(v) for v in (at.split(",") if isinstance(at, str) else at))
    except (TypeError, ValueError):
        point = ()
    if len(point) != nd or not all(math.isfinite(v) for v in point):
        raise ConfigError(f"--at '{at}': expected {form}.")
    if at_crs is not None and nd != 2:
        raise ConfigError("--at-crs is for rasters' map points; a volume's --at is in its world mm.")
    if at_crs is not None:
        from rasterio.crs import CRS
        from rasterio.errors import CRSError

        try:
            CRS.from_user_input(at_crs)
        except CRSError as err:
            raise ConfigError(f"--at-crs '{at_crs}': {err}") from None
    return point


def box_at(point: tuple[float, ...], record: FileRecord, emb: Embedder, at_crs: str | None = None) -> list[int]:
    """A map point (x, y) of the raster ``record`` (in its CRS, or ``at_crs``), or a world point (x, y, z) in mm of
    the volume ``record`` -> the box of a stored row: the patch cell under it (``--level patch``), or the window of
    the embedding's grid whose centre is nearest (``--level window``; near the far edge, the last window of the
    grid)."""
    from geomed_ssl.windows.tiling import grid_starts

    shape = emb.shape(record)
    if emb.nd == 2:
        pos = raster_position(point, record.path, record.crs, record.transform, shape, at_crs)
    else:
        reach = [max(grid_starts(n, w, st)) + w for n, w, st in zip(shape, emb.window, emb.stride)]
        pos = volume_position(point, record.path, emb.volume.affine(record), shape, reach)
    if emb.level == "patch":  # the cells tile the file from its origin
        return [int(v) - int(v) % p for v, p in zip(pos, emb.patch)] + list(emb.patch)
    starts = [min(grid_starts(size, n, s), key=lambda a: abs(a + n / 2 - v))  # the stored windows' origins
              for v, size, n, s in zip(pos, shape, emb.window, emb.stride)]
    return starts + list(emb.window)


def cosine_top_k(vectors: np.ndarray, query: np.ndarray, k: int,
                 exclude: set[int] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the ``k`` rows of ``vectors`` (N, D) most similar to ``query`` (D,),
    best first, rows in ``exclude`` left out."""
    q = np.asarray(query, np.float32)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    want = min(k + len(exclude), vectors.shape[0])
    faiss = optional_module("faiss", "faiss-cpu", "exact numpy search over memory-mapped chunks")
    if faiss is not None:
        index = faiss.IndexFlatIP(vectors.shape[1])
        for s in range(0, vectors.shape[0], CHUNK):
            x = np.asarray(vectors[s:s + CHUNK], np.float32)
            index.add(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))
        sims, idx = index.search(q[None], want)
        pairs = list(zip(idx[0].tolist(), sims[0].tolist()))
    else:
        best_i, best_s = np.zeros(0, np.int64), np.zeros(0, np.float32)
        for s in range(0, vectors.shape[0], CHUNK):
            x = np.asarray(vectors[s:s + CHUNK], np.float32)
            sim = (x @ q) / np.maximum(np.linalg.norm(x, axis=1), 1e-12)  # (n,)
            top = np.argpartition(-sim, min(want, len(sim)) - 1)[:want]
            best_i, best_s = np.concatenate([best_i, top + s]), np.concatenate([best_s, sim[top]])
            keep = np.argsort(-best_s, kind="stable")[:want]
            best_i, best_s = best_i[keep], best_s[keep]
        pairs = list(zip(best_i.tolist(), best_s.tolist()))
    pairs = [(i, s) for i, s in pairs if i >= 0 and i not in exclude][:k]
    return np.asarray([p[0] for p in pairs], np.int64), np.asarray([p[1] for p in pairs], np.float32)


def record_for(path: str | Path, data_cfg: DataConfig, names_by_position: str = "ignore") -> FileRecord:
    """The catalog record of one file read with ``data_cfg`` (every file accepted, whatever the include globs);
    band names assigned by position are reported as ``names_by_position`` says (``catalog.scan``)."""
    path = Path(path)
    cfg = dataclasses.replace(data_cfg, include=["**/*"], exclude=[])
    if data_cfg.channels and path.is_file() and not is_case_file(path, data_cfg.channels):
        path = path.parent  # stacked channels: the record is the folder (named by its first file); a case: its own
    return scan(path, cfg, strict=True, names_by_position=names_by_position).records[0]


def same_encoder(path: str | Path, settings: dict[str, Any]) -> bool:
    """Whether the export at ``path`` is the one an embedding folder's ``settings`` were made with, by content (a
    copy elsewhere counts). A folder of an earlier version recorded only the export's size and time, which a copy
    changes: there a mismatch is a warning, not a refusal."""
    from geomed_ssl.checkpoint import export_digest
    from geomed_ssl.checkpoint import export_fingerprint

    if "encoder_digest" in settings:
        return export_digest(path) == settings["encoder_digest"]
    if export_fingerprint(path) != settings.get("encoder_fingerprint"):
        log.warning("warning: these embeddings were made by an earlier version, which recorded only the encoder's "
                    "file size and time; '%s' differs in them (a copy, or other weights), so it cannot be checked "
                    "to be the encoder that made them. Embed again with it (--overwrite) to be sure.", path)
    return True


def embedder_for(manifest: dict[str, Any], record: FileRecord, encoder: str | Path | None = None,
                 device: str | None = "auto", batch_size: int = 32) -> Embedder:
    """An Embedder configured as the one that made ``manifest``'s embeddings."""
    st = manifest["settings"]
    path = Path(encoder or st["encoder"])
    if not path.exists():
        raise GeomedError(f"the encoder these embeddings were made with ('{path}') is gone; pass --encoder with its "
                          "new location.")
    if not same_encoder(path, st):
        raise GeomedError(f"the encoder at '{path}' is not the one these embeddings were made with (its weights or "
                          "configuration differ from when `geomed-ssl embed` ran), so their vectors cannot be "
                          "compared; embed again with this encoder (`geomed-ssl embed ... --overwrite`), or pass "
                          "--encoder with the one they were made with.")
    from geomed_ssl.data.catalog import Catalog

    one = Catalog([record], [], record.kind, record.band_names, record.wavelengths, bandwidths=record.bandwidths)
    dev = resolve_device(device)
    enc, _ = encoder_for(path, one, dev, st["data"].get("spacing"))
    return Embedder(enc, DataConfig(**st["data"]), st["level"], st["window"], st["stride"], st["pool"], batch_size,
                    st["min_valid"], dev)


def query_vector(emb: Embedder, record: FileRecord, box: list[int] | None) -> tuple[np.ndarray, list[int]]:
    """The query's vector and the region it covers (``box``, or the whole file)."""
    nd = emb.nd
    shape = list(emb.shape(record))
    region = box or [0] * nd + shape
    # a box may run past the far edge (the stored edge windows and cells do: the reader pads them with nodata)
    outside = [f"{ax} {a}..{a + n - 1} (0..{s - 1})" for ax, a, n, s in zip(BOX_AXES[nd], box[:nd], box[nd:], shape)
               if a < 0 or a >= s] if box is not None else []
    if outside:
        grid = f"the file is {'x'.join(map(str, shape))}" if nd == 2 else (
            f"its RAS grid is {'x'.join(map(str, shape))} (the file on disk: {'x'.join(map(str, record.shape))}, "
            f"stored {record.orientation or 'in its own order'}"
            f"{'; resampled to data.spacing' if emb.data_cfg.spacing else ''}): a volume's --box is in that grid, "
            "as the stored box column; to pick a place seen in a viewer, give --at X,Y,Z in world mm")
        raise DataError(f"--box {','.join(map(str, box))} ({BOX_FORMS[nd]}) starts outside '{record.path}' along "
                        f"{'; '.join(outside)}; {grid} ({' x '.join(BOX_AXES[nd])}).")
    if box is not None:  # beyond a window past the far edge there is only padding: the box ends there
        region = box[:nd] + [min(n, s - a + w) for a, n, s, w in zip(box[:nd], box[nd:], shape, emb.window)]
    if emb.level != "patch":
        if emb.level == "image" and box is None:
            _, row = next(emb.image_rows([record]))
            return row["vector"][0], region
        vector, _, valid = emb.region_vector(record, region)
        where = f"--box {','.join(map(str, box))}" if box is not None else "the query"
        if valid <= 0:  # a vector of padding alone would still find "similar" rows
            raise DataError(f"{where} holds no valid pixel of '{record.path}' (all nodata or NaN); choose a box "
                            "over valid pixels.")
        if valid < emb.min_valid:  # the stored rows left such windows out
            log.warning("warning: %s is %.0f %% valid, below the embedding's --min-valid %g: windows like it were "
                        "left out of the stored rows, so its hits are the rows nearest to a mostly-nodata vector.",
                        where, 100 * valid, emb.min_valid)
        return vector, region
    vecs = []
    for rows in emb.window_rows(record, emb.file_meta(record), restrict=region):
        vecs.append(rows["vector"] if box is None else rows["vector"][centred_in(rows["box"], region, nd)])
    vecs = np.concatenate(vecs) if vecs else np.zeros((0, 1))
    if not len(vecs):
        raise DataError(f"no valid patch cell of '{record.path}' has its centre in {region} (cells of "
                        f"{' x '.join(map(str, emb.patch))} px); choose a box that holds a cell's centre over valid "
                        "pixels.")
    return vecs.mean(0), region


@keeps_process_state
def find_similar(emb_dir: str | Path, query: str | Path, box: str | Sequence[int] | None = None, top: int = 10,
                 out_dir: str | Path | None = None, include_self: bool = False, encoder: str | Path | None = None,
                 device: str | None = "auto", sheet: bool = True, strict: bool = False,
                 at: str | Sequence[float] | None = None, at_crs: str | None = None) -> SearchResult:
    """The ``top`` stored rows most similar (cosine) to ``query`` (a file, ``box`` in it, or the window or cell at
    the map point ``at``, :func:`box_at`): ``similar.csv`` and a contact sheet ``similar.png`` in ``out_dir``
    (default ``EMB_DIR/search/<query name>``). ``strict``: the query's band names assigned by position are an error,
    not a warning."""
    search_dir = Path(emb_dir) / "search"
    rule: dict[str, Any] = {"command": "similar", "resume": True, "allow_inside": [search_dir],
                            "inputs": {"embedding folder": emb_dir, "query file": query, "encoder": encoder}}
    if out_dir is not None and same_place(out_dir, search_dir):  # each search is a folder in it, made by default
        raise OutputError(f"--out '{out_dir}' is the folder where similar keeps one folder per query; choose a "
                          f"folder inside it (e.g. '{search_dir / 'NAME'}') or outside '{emb_dir}'.")
    if out_dir is not None:
        check_out_dir(out_dir, **rule)  # the folder is made once the query is embedded
    manifest, vectors = load_embeddings(emb_dir)
    st = manifest["settings"]
    rule["inputs"]["encoder"] = encoder or st["encoder"]
    rule["inputs"]["embedded data folder"] = st.get("data_dir")  # the hits' files, read for the contact sheet
    if out_dir is not None:
        check_out_dir(out_dir, **rule)
    nd = len(st["window"])
    if whole_number(top, "top (--top)") < 1:
        raise ConfigError(f"--top must be at least 1, got {top}.")
    if box is not None and at is not None:
        raise ConfigError("give --box or --at, not both.")
    if at_crs is not None and at is None:
        raise ConfigError("--at-crs is the CRS of --at's point; give --at X,Y with it.")
    box_list = parse_box(box, nd)  # before the query is read or the encoder loaded
    point = parse_at(at, nd, st["level"], at_crs) if at is not None else None
    qpath = Path(query).resolve()
    if not qpath.exists():
        raise DataError(f"query file '{query}' does not exist.")
    if qpath.is_dir():
        raise DataError(f"--query '{query}' is a folder; give one file of it (and --box for a region).")
    check_input_kind(qpath, "raster" if nd == 2 else "volume", "the encoder of these embeddings")
    record = record_for(qpath, DataConfig(**st["data"]), "error" if strict else "warn")
    emb = embedder_for(manifest, record, encoder, device)
    if point is not None:
        box_list = box_at(point, record, emb, at_crs)
    qvec, region = query_vector(emb, record, box_list)
    exclude = set() if include_self else rows_of_region(emb_dir, manifest, qpath, region if box_list else None, nd)
    idx, sims = cosine_top_k(vectors, qvec, top, exclude)
    if len(idx) < top and exclude:
        if not len(idx):
            raise DataError(f"every stored row ({len(exclude)}) is the query's own, from '{qpath}', so there is "
                            "nothing else to compare it with: embed a folder with more files, or pass --include-self.")
        log.warning("warning: %d rows found, not --top %d: %d rows are stored, %d of them the query's own, from "
                    "'%s' (--include-self keeps them).", len(idx), top, vectors.shape[0], len(exclude), qpath)
    cols = read_rows(emb_dir, ["id", "file", "box", "window", "x", "y", "z", "crs"], [int(i) for i in idx])
    hits = [{"rank": r + 1, "score": round(float(s), 6), "id": int(i), "file": cols["file"][r],
             "box": [int(v) for v in cols["box"][r]], "window": [int(v) for v in cols["window"][r]],
             "x": float(cols["x"][r]), "y": float(cols["y"][r]),
             "z": None if cols["z"][r] is None or math.isnan(cols["z"][r]) else float(cols["z"][r]),
             "crs": crs_name(cols["crs"][r])}
            for r, (i, s) in enumerate(zip(idx, sims))]
    name = query_name(qpath, manifest) + ("_" + "-".join(map(str, box_list)) if box_list else "")
    out = prepare_out_dir(Path(out_dir) if out_dir is not None else search_dir / name, **rule)
    table, figure = partial_path(out / "similar.csv"), None
    write_hits_csv(hits, table)
    try:  # both complete before the earlier query's go: a kill leaves the earlier pair
        if sheet and hits:
            figure = contact_sheet(emb, record, region, hits, partial_path(out / "similar.png"))
    finally:  # the table is the result: kept when only the sheet failed; an earlier sheet never sits beside it
        (out / "similar.png").unlink(missing_ok=True)
        if figure is not None:
            commit_partial(figure, out / "similar.png")
        commit_partial(table, out / "similar.csv")
    at_text = (f" at {','.join(f'{v:.9g}' for v in point)}" + (f" ({at_crs})" if at_crs else " mm" if nd == 3 else "")
               if point else "")
    lines = [f"query: {query}{at_text}" + (f" box {box_list}" if box_list else "")
             + f"  ({st['level']} level, "
             f"{vectors.shape[0]} rows)", *hit_lines(hits, st["data_dir"], nd)]
    lines.append(f"table: {out / 'similar.csv'}"
                 + (f"  contact sheet: {out / 'similar.png'}" if sheet and hits else ""))
    return SearchResult(out, hits, lines)


def query_name(query: Path, manifest: dict[str, Any]) -> str:
    """The default result folder's name of a query file: a file of the embedded archive is named as its maps are
    (:func:`~geomed_ssl.embeddings.maps.grid_stems`: its path in the data folder without extension, '/' -> '__', a
    hash where two files' names would meet; ``S2A_2020.06.01.tif`` -> ``S2A_2020.06.01``); a file from elsewhere
    adds 6 hex digits of its path's hash, so two queries never share a folder (:func:`embedded_file` tells which)."""
    f = embedded_file(query, manifest)
    if f is None:
        return f"{grid_stem({'rel': query.name})}-{name_hash(str(query))}"
    return grid_stems(manifest["files"])[f["path"]]


def embedded_file(path: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest entry of the embedded file at ``path`` (resolved; a stack's query may name any of its files),
    or None: by its stored absolute path, else (the data folder moved since) by its stored path in the data folder
    and its size and modification time, so another file of that name never stands for it."""
    files = manifest["files"]
    f = next((f for f in files if path in {Path(p).resolve() for p in f.get("paths") or [f["path"]]}), None)
    if f is not None or not path.is_file():
        return f
    stamp = file_stamps([str(path)])[0]
    for f in files:
        if not f.get("rel") or "stamps" not in f:  # a folder of an earlier version
            continue
        for p, s in zip(f["paths"], f["stamps"]):
            rel = Path(os.path.dirname(f["rel"]), os.path.basename(p)).parts  # a stack's files share one folder
            if s == stamp and path.parts[-len(rel):] == rel:
                return f
    return None


def centred_in(boxes: np.ndarray, region: Sequence[int], nd: int) -> np.ndarray:
    """Which ``boxes`` (n, 2*nd) have their centre in ``region``, half-open (a box centred on its far edge is not)."""
    centre = boxes[:, :nd] + boxes[:, nd:] / 2.0
    return np.all((centre >= region[:nd]) & (centre < np.add(region[:nd], region[nd:])), axis=1)


def rows_of_region(emb_dir: str | Path, manifest: dict[str, Any], path: Path, region: list[int] | None,
                   nd: int) -> set[int]:
    """The stored rows of the file at ``path`` whose box centre lies in ``region`` (None: all of them, edge windows
    past the far edge too; none when it was not embedded): the query's own rows, left out of its hits. Reads that
    file's boxes only."""
    f = embedded_file(path, manifest)
    if f is None or not int(f["rows"]):
        return set()
    a, n = int(f["first_row"]), int(f["rows"])
    if region is None:
        return set(range(a, a + n))
    b = read_rows(emb_dir, ["box"], range(a, a + n))["box"]
    return set((np.flatnonzero(centred_in(b, region, nd)) + a).tolist())


def write_hits_csv(hits: list[dict[str, Any]], path: Path) -> None:
    """``similar.csv``: rank, score, id, file, box (space-separated), x, y, z (empty for rasters), crs (of x / y;
    empty for volumes and rasters without one)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["rank", "score", "id", "file", "box", "x", "y", "z", "crs"])
        for h in hits:
            w.writerow([h["rank"], h["score"], h["id"], h["file"], " ".join(map(str, h["box"])), h["x"], h["y"],
                        "" if h["z"] is None else h["z"], h.get("crs", "")])


def hit_lines(hits: list[dict[str, Any]], root: str, nd: int) -> list[str]:
    """The hits as a printed table (files relative to the embedded data folder when under it)."""
    z = nd == 3
    names = [(c or "-") if len(c or "") <= 60 else c[:57] + "..." for c in (h["crs"] for h in hits)]  # WKT: cut
    crs = 0 if z or not any(h["crs"] for h in hits) else max(map(len, names))  # x / y of several CRSs
    lines = [f"{'rank':>4}  {'score':>7}  {'box':<24} {'x':>12} {'y':>12} " + (f"{'z':>10} " if z else "")
             + (f"{'crs':<{crs}} " if crs else "") + " file"]
    for h, name in zip(hits, names):
        rel = os.path.relpath(os.path.normpath(h["file"]), root)
        rel = h["file"] if rel.startswith("..") else rel
        lines.append(f"{h['rank']:>4}  {h['score']:7.4f}  {' '.join(map(str, h['box'])):<24} {h['x']:12.9g} "
                     f"{h['y']:12.9g} " + (f"{h['z']:10.2f} " if z else "")  # 9 digits: degrees too
                     + (f"{name:<{crs}} " if crs else "") + f" {rel}")
    return lines


def contact_sheet(emb: Embedder, record: FileRecord, region: list[int], hits: list[dict[str, Any]], path: Path,
                  cols: int = 6) -> Path:
    """The query region and each hit's window in false colour (volumes: the first-axis slice through the middle of
    the box), the hit's own box outlined, all with the query's display stretch so colours compare."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from geomed_ssl.bands.names import false_colour_bands
    from geomed_ssl.viz.previews import middle_slice, stretch, to_rgb

    cfg = emb.encoder.config
    bands = false_colour_bands(cfg.band_names or [f"b{i}" for i in range(cfg.in_chans)], cfg.wavelengths)
    nd = emb.nd
    records = {record.path: record}
    ctx = [max(n, w) for n, w in zip(region[nd:], emb.window)]  # a small query box is shown in context
    tiles = [("query", record, [a + (n - c) // 2 for a, n, c in zip(region[:nd], region[nd:], ctx)] + ctx, region)]
    gone: list[str] = []
    for h in hits:
        if h["file"] not in records:
            try:
                records[h["file"]] = record_for(h["file"], emb.data_cfg)
            except DataError:  # moved or deleted since it was embedded: its row still ranks, its tile is left out
                gone.append(h["file"])
                continue
        tiles.append((f"#{h['rank']}  {h['score']:.3f}\n{Path(h['file']).name}", records[h["file"]],
                      h["window"], h["box"]))
    def shown(view: list[int]) -> list[int]:
        if all(n <= MAX_VIEW for n in view[nd:]):
            return list(view)
        size = [min(n, w) for n, w in zip(view[nd:], emb.window)]
        return [a + (n - s) // 2 for a, n, s in zip(view[:nd], view[nd:], size)] + size

    if gone:
        log.warning("warning: %d hit(s) left off the contact sheet: their files are no longer where they were "
                    "embedded (e.g. '%s'); the table lists them.", len(gone), gone[0])
    tiles = [(t, r, shown(list(v)), list(o)) for t, r, v, o in tiles]
    rows = math.ceil(len(tiles) / cols)
    fig = Figure(figsize=(2.2 * min(cols, len(tiles)), 2.6 * rows + 0.2), dpi=90)
    FigureCanvasAgg(fig)
    limits = None
    for i, (title, rec, view, outline) in enumerate(tiles):
        image, valid = emb.read(rec, view)
        if nd == 3:  # the first-axis slice through the middle of the outlined box
            k = int(np.clip(outline[0] + outline[3] // 2 - view[0], 0, image.shape[1] - 1))
            img2, val2 = image[:, k], valid[k]
        else:
            img2, val2 = middle_slice(image), middle_slice(valid[None])[0]
        limits = stretch(img2, bands, val2) if limits is None else limits
        ax = fig.add_subplot(rows, min(cols, len(tiles)), i + 1)
        rgb = to_rgb(img2, bands, limits, val2)
        ax.imshow(np.rot90(rgb) if nd == 3 else rgb, interpolation="nearest")
        if list(outline) != list(view) and all(n <= MAX_VIEW for n in outline[nd:]):
            o = [a - b for a, b in zip(outline[:nd], view[:nd])][-2:]
            size = list(outline[nd:])[-2:]
            if nd == 3:  # the slice is shown rotated: superior up, anterior to the right
                o, size = [img2.shape[2] - o[1] - size[1], o[0]], [size[1], size[0]]
            ax.add_patch(Rectangle((o[1] - 0.5, o[0] - 0.5), size[1], size[0], fill=False, edgecolor="yellow", lw=1.5))
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, path)
