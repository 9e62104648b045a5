"""Where embeddings live: atomic parts while extracting, then one Parquet table + one ``.npy`` of vectors.

An embedding folder (EMB_DIR) while a run is going::

    manifest.json            settings, files done so far (rewritten atomically after every part)
    parts/part-000007/       one committed part: chunk-00000.parquet, ... and files.json (the files it holds)
    parts/.partial-...       a part being written (a killed run leaves it; the next run deletes it)

A part holds whole files only and becomes visible by one rename (:mod:`geomed_ssl.outfiles`), so a killed run
never leaves half a file behind and the next run skips exactly the files in committed parts (no duplicates). When
every file is done the parts are concatenated, in catalog order, into::

    embeddings.parquet       one row per image / window / patch cell (columns: see ``COLUMNS``)
    vectors.npy              (N, D) float32 or float16, row i = table row i (``np.load(..., mmap_mode="r")``)
    manifest.json            complete: true, plus per file its first row, row count and map grid

Coordinates (``geomed_ssl.embeddings.geometry``): rasters use the GDAL pixel-corner convention (window corners
through the file's transform, in its CRS); volumes use voxel centres (box corners at index - 0.5 through the RAS
affine of the volume reader, in mm).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import shutil
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from geomed_ssl.embeddings.geometry import footprint_wkb, geo_columns, raster_corners
from geomed_ssl.errors import DataError, GeomedError
from geomed_ssl.outfiles import (atomic_paths, atomic_write_text, commit_partial, naming_write_errors, partial_path,
                                 remove_stale_partials)
from geomed_ssl.once import said_set

log = logging.getLogger("geomed_ssl")
FORMAT, VERSION = "geomed-ssl-embeddings", 1
TABLE, VECTORS, MANIFEST, PARTS = "embeddings.parquet", "vectors.npy", "manifest.json", "parts"
COLUMNS = ("id", "file", "box", "window", "grid_index", "valid_fraction", "x", "y", "z", "minx", "miny", "minz",
           "maxx", "maxy", "maxz", "footprint_wkt", "crs", "vector")
_WARNED: set[str] = said_set()


def optional_module(name: str, pip_name: str, fallback: str) -> Any:
    """Import an optional dependency, or say once in one line which fallback is used instead and return None."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if name not in _WARNED:
            _WARNED.add(name)
            log.info("note: %s is not installed: %s (pip install %s, or geomed-ssl[full])", pip_name, fallback,
                     pip_name)
        return None


def fixed_list(a: np.ndarray, t: Any = None) -> Any:
    """(n, k) numpy array -> a pyarrow fixed-size list column (one list of k values per row)."""
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(a).ravel(), t), a.shape[1])


def file_runs(paths: Sequence[str]) -> list[tuple[int, int]]:
    """[start, end) ranges of consecutive equal paths."""
    cuts = [i for i in range(1, len(paths)) if paths[i] != paths[i - 1]]
    return list(zip([0, *cuts], [*cuts, len(paths)]))


# -- a part being written -------------------------------------------------------------------------------------
class PartWriter:
    """Rows of whole files written as Parquet chunks into a hidden folder; ``commit`` publishes it atomically."""

    def __init__(self, store: EmbeddingStore, dtype: str):
        self.store, self.dtype = store, np.dtype(dtype)
        self.tmp = partial_path(store.parts_dir / f"part-{uuid.uuid4().hex[:8]}")
        self.tmp.mkdir(parents=True)
        self.files: list[dict[str, Any]] = []
        self.chunks = 0
        self.rows = 0

    def add(self, rows: dict[str, np.ndarray], metas: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """Write rows: ``box`` (n, 4|6), ``window`` (n, 4|6), ``grid_index`` (n, 2|3), ``valid_fraction`` (n,),
        ``vector`` (n, D), with the file meta of all rows (one dict) or of each row (consecutive rows of one file
        share it). Geometry columns are derived from the boxes."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = len(rows["vector"])
        if n == 0:
            return
        metas = [metas] * n if isinstance(metas, dict) else list(metas)
        vec = np.ascontiguousarray(rows["vector"], dtype=self.dtype)  # (n, D)
        cols = {"file": pa.array([m["path"] for m in metas], pa.string()),
                "box": fixed_list(rows["box"].astype(np.int64), pa.int64()),
                "window": fixed_list(rows["window"].astype(np.int64), pa.int64()),
                "grid_index": fixed_list(rows["grid_index"].astype(np.int32), pa.int32()),
                "valid_fraction": pa.array(rows["valid_fraction"].astype(np.float32))}
        geo = [geo_columns(rows["box"][a:b], metas[a]) for a, b in file_runs([m["path"] for m in metas])]
        for key in geo[0]:
            parts = [g[key] for g in geo]
            value = np.concatenate(parts) if all(isinstance(v, np.ndarray) for v in parts) else \
                [x for v in parts for x in v]
            cols[key] = pa.array(value, pa.string() if key in ("footprint_wkt", "crs") else pa.float64())
        cols["vector"] = fixed_list(vec, pa.from_numpy_dtype(self.dtype))
        chunk = self.tmp / f"chunk-{self.chunks:05d}.parquet"
        with naming_write_errors(self.store.dir / TABLE):  # pyarrow's OSError names no file: name the output
            pq.write_table(pa.table(cols), chunk)
        self.chunks += 1
        self.rows += n

    def commit(self, files: list[dict[str, Any]]) -> Path:
        """Publish the part holding ``files`` (each a file-meta dict with its ``rows`` count)."""
        with naming_write_errors(self.store.dir / TABLE):
            (self.tmp / "files.json").write_text(json.dumps(files))
        return self.store._publish(self.tmp, files)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- the folder -----------------------------------------------------------------------------------------------
CROP_KEYS = ("global_crop_size", "local_crop_size")  # data settings of a pretraining method, never read by embed


def comparable(settings: dict[str, Any], digests: bool) -> dict[str, Any]:
    """``settings`` as a resume compares them: without the crop sizes in their ``data`` section (earlier versions
    recorded them too), its settings at their defaults (so one that an earlier version did not have yet compares
    equal at its default) and the encoder's path (any spelling or copy of it will do); the encoder is compared by its
    content digest when both runs recorded one (``digests``), else by the fingerprint of earlier versions."""
    from geomed_ssl.config import DataConfig

    drop = {"encoder", "encoder_fingerprint"} if digests else {"encoder", "encoder_digest"}
    out = {k: v for k, v in settings.items() if k not in drop}
    data = out.get("data")
    if isinstance(data, dict):
        default = json.loads(json.dumps(dataclasses.asdict(DataConfig())))  # as a manifest holds them
        out["data"] = {k: v for k, v in data.items() if k not in CROP_KEYS and not (k in default and v == default[k])}
    return out


def setting_change(key: str, then: Any, now: Any) -> str:
    """``key: then, now now`` for a changed setting, naming the changed entries of a section (``data.include``)
    rather than printing the whole section; an encoder's digest or fingerprint as 'another encoder'."""
    if key in ("encoder_digest", "encoder_fingerprint"):
        return "encoder: another encoder's weights or configuration than before"
    if isinstance(then, dict) and isinstance(now, dict):
        keys = [k for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
        return "; ".join(f"{key}.{k}: {then.get(k)!r}, now {now.get(k)!r}" for k in keys[:3])
    return f"{key}: {then!r}, now {now!r}"


def folded(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Manifest entries with their paths' ``..`` folded by name (``files.listing.absolute``): folders written by
    earlier versions stored ``/work/sub/../data/a.tif`` for data given as ``../data``, and a run resumed or checked
    from another folder must meet the same strings."""
    for f in files:
        f["path"] = os.path.normpath(f["path"])
        if "paths" in f:
            f["paths"] = [os.path.normpath(p) for p in f["paths"]]
    return files


class EmbeddingStore:
    """An EMB_DIR: settings check and resume, atomic parts, the final table, vectors and manifest."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.parts_dir = self.dir / PARTS

    def manifest(self) -> dict[str, Any] | None:
        path = self.dir / MANIFEST
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except ValueError as err:
            raise GeomedError(f"{path} is not valid JSON ({err}); delete the folder or pass --overwrite.") from None
        if data.get("format") != FORMAT:
            raise GeomedError(f"{path} is not a geomed-ssl embedding manifest.")
        if isinstance(data.get("settings"), dict) and data["settings"].get("data_dir"):
            data["settings"]["data_dir"] = os.path.normpath(data["settings"]["data_dir"])
        return {**data, "files": folded(data.get("files") or [])}

    def check(self, settings: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
        """The manifest of the run this one continues (same ``settings``), or None when there is none or it is
        to be replaced (``overwrite``); other settings are refused. Reads only: the output-folder rule
        (:mod:`geomed_ssl.outdirs`) decides whether the folder may be used at all."""
        old = self.manifest() if self.dir.is_dir() and not overwrite else None
        if old is not None:
            digests = "encoder_digest" in settings and "encoder_digest" in old["settings"]
            now, then = comparable(settings, digests), comparable(old["settings"], digests)
            diff = sorted((k for k in set(now) | set(then) if now.get(k) != then.get(k)),
                          key=lambda k: (isinstance(now.get(k), dict), k))  # a level before the data it implies
            if diff:
                change = setting_change(diff[0], then.get(diff[0]), now.get(diff[0]))
                raise GeomedError(f"'{self.dir}' holds embeddings made with other settings ({change}); pass "
                                  "--overwrite to replace them or choose another --out.")
        return old

    def start(self, settings: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Get the (existing) folder ready: a new manifest unless ``old`` (from :meth:`check`) is continued;
        temporary parts and partial files a killed run left are deleted."""
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self.parts_dir)
        remove_stale_partials(self.dir)
        if old is None:
            self.write_manifest({"format": FORMAT, "version": VERSION, "complete": False, "settings": settings,
                                  "files": []})

    def write_manifest(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.dir / MANIFEST, json.dumps(data, indent=1))

    def committed(self) -> list[tuple[Path, list[dict[str, Any]]]]:
        """Committed parts and their files (the truth about what is done; the manifest mirrors it)."""
        out = []
        for part in sorted(self.parts_dir.glob("part-*")):
            try:
                out.append((part, folded(json.loads((part / "files.json").read_text()))))
            except (OSError, ValueError):
                raise GeomedError(f"embedding part '{part}' is damaged (no readable files.json); delete it and run "
                                  "the command again to redo its files.") from None
        return out

    def done_files(self) -> list[dict[str, Any]]:
        """The manifest entries of the files the committed parts hold."""
        return [f for _, files in self.committed() for f in files]

    def done_paths(self) -> set[str]:
        return {f["path"] for f in self.done_files()}

    def done_rows(self) -> int:
        """The rows the committed parts hold."""
        return sum(int(f["rows"]) for f in self.done_files())

    def part(self, dtype: str) -> PartWriter:
        return PartWriter(self, dtype)

    def _publish(self, tmp: Path, files: list[dict[str, Any]]) -> Path:
        ids = [int(p.name.split("-")[1]) for p in self.parts_dir.glob("part-*")]
        target = self.parts_dir / f"part-{max(ids, default=-1) + 1:06d}"
        commit_partial(tmp, target)
        manifest = self.manifest() or {}
        manifest["files"] = [f for _, fs in self.committed() for f in fs]
        self.write_manifest(manifest)
        return target

    # -- finalising -------------------------------------------------------------------------------------------
    def finalize(self, order: Sequence[str], extra: dict[str, Any], geoparquet: bool = True) -> dict[str, Any]:
        """Concatenate the committed parts (files in ``order``, the catalog's) into the table and ``vectors.npy``,
        mark the manifest complete and delete the parts. Streams chunk by chunk: memory is one chunk."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rank = {p: i for i, p in enumerate(order)}
        parts = sorted(self.committed(), key=lambda pf: min([rank.get(f["path"], len(rank)) for f in pf[1]] or [0]))
        files = [f for _, fs in parts for f in fs]
        twice = [p for p, n in Counter(f["path"] for f in files).items() if n > 1]
        if twice:  # two runs wrote this folder at once (where the filesystem has no locks): never a table of both
            raise GeomedError(f"'{twice[0]}' (and {len(twice) - 1} more file(s)) is embedded in two parts of "
                              f"'{self.parts_dir}', as two embed runs writing this folder at once leave it; run the "
                              "command again with --overwrite to embed every file once.")
        total = sum(int(f["rows"]) for f in files)
        if total == 0:
            raise DataError("no embeddings were produced: every window of every file was nodata; check data.nodata "
                            "or lower --min-valid.")
        chunks = [c for part, _ in parts for c in sorted(part.glob("chunk-*.parquet"))]
        first = pq.read_table(chunks[0])
        dim = first.schema.field("vector").type.list_size
        dtype = np.asarray(first.column("vector").combine_chunks().flatten()).dtype
        settings = (self.manifest() or {})["settings"]
        geo = self._geo_metadata(files) if geoparquet else None
        schema = pa.schema([pa.field("id", pa.int64()), *first.schema,
                            *([pa.field("geometry", pa.binary())] if geo else [])])
        meta = {b"geomed_ssl": json.dumps({"format": FORMAT, "settings": settings}).encode()}
        if geo:
            meta[b"geo"] = json.dumps(geo).encode()
        schema = schema.with_metadata(meta)
        # plain writes, not a memory map: a full disk is then an error to report, not a SIGBUS that kills the process
        with atomic_paths([self.dir / TABLE, self.dir / VECTORS]) as (tmp_table, tmp_vec), \
                open(tmp_vec, "wb") as vectors:
            np.lib.format.write_array_header_1_0(vectors, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                           "fortran_order": False, "shape": (total, dim)})
            row, meta_of = 0, {f["path"]: f for f in files}
            with pq.ParquetWriter(tmp_table, schema) as writer:
                for chunk in chunks:
                    t = pq.read_table(chunk)
                    n = t.num_rows
                    t = t.add_column(0, "id", pa.array(np.arange(row, row + n, dtype=np.int64)))
                    if geo:
                        boxes = np.asarray(t.column("box").combine_chunks().flatten()).reshape(n, -1)
                        paths = t.column("file").to_pylist()
                        corners = np.concatenate([raster_corners(boxes[a:b], meta_of[paths[a]]["transform"])
                                                  for a, b in file_runs(paths)])
                        t = t.append_column("geometry", footprint_wkb(corners))
                    writer.write_table(t)  # same fields as the schema; its metadata comes from the writer
                    block = np.asarray(t.column("vector").combine_chunks().flatten()).reshape(n, dim)
                    vectors.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
                    row += n
            if row != total:
                raise DataError(f"the embedding parts of '{self.dir}' hold {row} rows, their manifest says {total}; "
                                "embed again with --overwrite.")
        start = 0
        for f in files:
            f["first_row"], start = start, start + int(f["rows"])
        manifest = {"format": FORMAT, "version": VERSION, "complete": True, "settings": settings, "count": total,
                    "dim": int(dim), "dtype": str(dtype), "files": files, **extra,
                    "geoparquet": bool(geo)}
        self.write_manifest(manifest)
        self.remove_parts()
        return manifest

    def remove_parts(self) -> None:
        """Delete the committed parts (once in the table) and their folder if nothing else is left in it: a file the
        user put in ``parts/`` stays. Also what a run killed after its table was complete left."""
        for part in self.parts_dir.glob("part-*"):
            if part.is_dir() and not part.is_symlink():
                shutil.rmtree(part, ignore_errors=True)
        try:
            self.parts_dir.rmdir()
        except OSError:
            pass

    def _geo_metadata(self, files: list[dict[str, Any]]) -> dict[str, Any] | None:
        """GeoParquet 1.0 metadata for the footprint polygons when geopandas (hence pyproj) is installed and every
        file is a raster in one CRS; else None (footprints stay WKT)."""
        if not files or files[0]["kind"] != "raster":
            return None
        if optional_module("geopandas", "geopandas", "footprints stored as WKT text, not GeoParquet geometry") is None:
            return None
        crs = {f.get("crs") for f in files}
        if len(crs) != 1 or None in crs:
            log.info("files have %s CRS: footprints stored as WKT text only (GeoParquet needs one CRS)",
                     "no" if None in crs else "several")
            return None
        import pyproj

        return {"version": "1.0.0", "primary_column": "geometry",
                "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"],
                                         "crs": pyproj.CRS.from_wkt(crs.pop()).to_json_dict()}}}


# -- reading ----------------------------------------------------------------------------------------------------
def load_embeddings(emb_dir: str | Path, mmap: bool = True) -> tuple[dict[str, Any], np.ndarray]:
    """The manifest of a complete EMB_DIR and its vectors (N, D), memory-mapped by default."""
    store = EmbeddingStore(emb_dir)
    manifest = store.manifest() if store.dir.is_dir() else None
    if manifest is None:
        raise GeomedError(f"'{emb_dir}' is not an embedding folder (no {MANIFEST}); run `geomed-ssl embed` first.")
    if not manifest.get("complete"):
        raise GeomedError(f"the embeddings in '{emb_dir}' are incomplete (an interrupted run); run the same "
                          "`geomed-ssl embed` command again to finish them.")
    for name in (VECTORS, TABLE):
        if not (store.dir / name).is_file():
            raise GeomedError(f"'{store.dir / name}' is missing; re-run the embedding with --overwrite.")
    try:
        vectors = np.load(store.dir / VECTORS, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as err:  # truncated or not an .npy file
        raise GeomedError(f"'{store.dir / VECTORS}' cannot be read ({err}); re-run the embedding with --overwrite.") \
            from None
    if vectors.shape[0] != manifest["count"]:
        raise GeomedError(f"{store.dir / VECTORS} has {vectors.shape[0]} rows but the manifest says "
                          f"{manifest['count']}; re-run the embedding with --overwrite.")
    return manifest, vectors


def read_columns(emb_dir: str | Path, columns: Iterable[str]) -> dict[str, Any]:
    """Some columns of ``embeddings.parquet`` as numpy arrays (list columns as (N, k)) or Python lists (strings)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(Path(emb_dir) / TABLE, columns=list(columns))
    except (pa.ArrowException, OSError) as err:
        raise GeomedError(f"'{Path(emb_dir) / TABLE}' cannot be read ({str(err).splitlines()[0]}); re-run the "
                          "embedding with --overwrite.") from None
    return _as_columns(table)


def read_rows(emb_dir: str | Path, columns: Iterable[str], rows: Sequence[int]) -> dict[str, Any]:
    """Some columns of the rows ``rows`` (ids, in this order) of ``embeddings.parquet``, as :func:`read_columns`
    gives them, reading only the row groups that hold them: a few hits of millions of rows never load the rest
    (their file names and CRSs as Python strings took gigabytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(emb_dir) / TABLE
    try:
        pf = pq.ParquetFile(path)
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        ids = np.asarray(list(rows), np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= starts[-1]):
            raise IndexError(f"rows outside the table's {int(starts[-1])}")
        group_of = np.searchsorted(starts, ids, side="right") - 1
        groups = sorted(set(group_of.tolist()))
        table = pf.read_row_groups(groups, columns=list(columns)) if groups else \
            pf.schema_arrow.empty_table().select(list(columns))
    except (pa.ArrowException, OSError, IndexError) as err:
        raise GeomedError(f"'{path}' cannot be read ({str(err).splitlines()[0]}); re-run the embedding with "
                          "--overwrite.") from None
    begin = {g: int(b) for g, b in zip(groups, np.concatenate([[0], np.cumsum([sizes[g] for g in groups])]))}
    local = [begin[g] + int(i - starts[g]) for i, g in zip(ids.tolist(), group_of.tolist())]
    return _as_columns(table.take(pa.array(local, pa.int64())))


def _as_columns(table: Any) -> dict[str, Any]:
    """A pyarrow table as numpy arrays (list columns as (N, k)) or Python lists (strings)."""
    import pyarrow as pa

    out: dict[str, Any] = {}
    for name in table.column_names:
        if pa.types.is_string(table.column(name).type):
            out[name] = _strings(table.column(name))
            continue
        col = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            out[name] = np.asarray(col.flatten()).reshape(len(col), col.type.list_size)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def _strings(column: Any) -> list[str | None]:
    """A string column as a list in which equal values are one ``str`` (each row's file name and CRS WKT repeat for
    every cell of a file), chunk by chunk: joined into one array, 3.6 million 600-character CRSs overflowed Arrow's
    32-bit string offsets."""
    out: list[str | None] = []
    one: dict[str, str] = {}  # a value seen in an earlier chunk keeps its str
    for chunk in column.chunks:
        encoded = chunk.dictionary_encode()
        words = [*(one.setdefault(w, w) for w in encoded.dictionary.to_pylist()), None]  # index -1: a null
        out.extend(words[i] for i in encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).tolist())
    return out
