"""``geomed-ssl embed``: stream a folder of rasters or volumes through a pretrained encoder into an embedding table.

Levels (``level``):

- ``image``: one vector per file. A file that fits in one window is centre-cropped to a multiple of the token patch
  and encoded whole; a larger one is covered by windows (``window``/``stride``, kept inside the file) whose vectors
  are averaged, weighted by their valid fraction.
- ``window``: one vector per window of a regular grid (origins at multiples of ``stride``; the last window may run
  past the edge and is padded with nodata); windows with no valid pixel are skipped.
- ``patch``: one vector per encoder token (the normed final tokens of non-overlapping windows), i.e. a map at patch
  resolution; also written as a PCA-reduced GeoTIFF / NIfTI per input.

Pooling (``pool``) of a window: ``cls`` (the CLS token), ``mean`` (mean of the tokens holding a valid pixel) or
``auto`` (the default: what the encoder's training read, see :func:`auto_pool`).
Everything is normalised with the encoder's own statistics; bands are checked against the encoder's.
Work is streamed (rasters one strip of windows at a time, volumes one at a time, batches of ``batch_size``) and
stored in atomic parts (see :mod:`geomed_ssl.embeddings.store`): a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from geomed_ssl.checkpoint import (export_digest, export_fingerprint, find_encoder_dir, load_encoder,
                                   read_encoder_config)
from geomed_ssl.config import DataConfig, recipe_with_overrides, sets_key
from geomed_ssl.config.loading import override_list, string_list
from geomed_ssl.data.catalog import Catalog, Problem, scan
from geomed_ssl.files.listing import absolute, file_stamps
from geomed_ssl.data.stats import BandStats
from geomed_ssl.windows.tiling import grid_shape
from geomed_ssl.embeddings.embedder import LEVELS, POOLS, Embedder  # noqa: F401  (re-exported)
from geomed_ssl.embeddings.maps import write_embedding_maps
from geomed_ssl.embeddings.store import CROP_KEYS, EmbeddingStore, load_embeddings, read_columns
from geomed_ssl.errors import ConfigError, DataError, GeomedError
from geomed_ssl.models.device import resolve_device
from geomed_ssl.models.encoder import ViTEncoder
from geomed_ssl.models.model_data import (catalog_for_encoder, check_value_ranges, export_data, naming_hint,
                                          note_encoder_naming, warn_other_scale)
from geomed_ssl.outcommands import MAPS_TAGGED
from geomed_ssl.outdirs import check_out_dir, free_bytes, prepare_out_dir, size_text
from geomed_ssl.process import keeps_process_state
from geomed_ssl.train.console import WorkProgress

log = logging.getLogger("geomed_ssl")
DTYPES = ("float32", "float16")
FILES_PER_PART = 256  # files per atomic part (at most)
WINDOWS_PER_PART = 4096  # window / patch level: small files share a part up to this many windows


@dataclass
class EmbedResult:
    """What an ``embed`` run did."""

    out_dir: Path
    manifest: dict[str, Any] = field(repr=False)  # one entry per file: too long to print
    files_embedded: int  # in this run
    files_skipped: int  # already done by an earlier (interrupted) run
    windows: int  # encoder inputs of this run
    seconds: float

    @property
    def windows_per_s(self) -> float:
        return self.windows / max(self.seconds, 1e-9)


def parse_size(value: str | int | Sequence[int] | None, ndim: int, name: str) -> tuple[int, ...] | None:
    """``64`` / ``"64"`` / ``"64,64,32"`` / ``[64, 64]`` -> a tuple of ``ndim`` positive ints (None stays None)."""
    if value is None:
        return None
    try:
        items = [int(v) for v in str(value).split(",")] if isinstance(value, (str, int)) else [int(v) for v in value]
    except ValueError:
        raise ConfigError(f"{name} '{value}': expected an integer or {ndim} comma-separated integers.") from None
    items = items * ndim if len(items) == 1 else items
    if len(items) != ndim or any(v < 1 for v in items):
        raise ConfigError(f"{name} '{value}': expected a positive integer or {ndim} comma-separated ones.")
    return tuple(items)


def data_config(meta: dict[str, Any], spatial_dims: int, patch_size: Sequence[int], overrides: list[str] | None,
                include: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> DataConfig:
    """The reading settings an encoder was trained with (its export's recipe ``data`` section: band names, sensor,
    nodata, spacing, intensity; not its pretraining crops), every file included unless ``include``/``--set
    data.include`` say otherwise, the recipe's excludes plus ``exclude``."""
    names = {f.name for f in dataclasses.fields(DataConfig)}
    raw = {k: v for k, v in export_data(meta).items() if k in names}
    raw.update(kind="raster" if spatial_dims == 2 else "volume", include=["**/*"], patch_size=list(patch_size),
               val_labels=None, knn_every=0,  # pretraining's k-NN monitor: not run here
               **dict.fromkeys(CROP_KEYS))  # a pretraining method's crops: not read here
    other = [o for o in overrides or [] if not o.split("=", 1)[0].strip().startswith("data.")]
    if other:
        raise ConfigError(f"embed --set takes data.* keys (how files are read; the encoder is as it was saved), "
                          f"got {other[0]!r}.")
    if include and sets_key(overrides, "data.include"):
        raise ConfigError("give the files to embed with --include or with --set data.include=[...], not both.")
    if sets_key(overrides, "data.patch_size"):
        raise ConfigError("embed reads windows of --window (default: the encoder's input size), not "
                          "data.patch_size: give --window N instead.")
    recipe = recipe_with_overrides({"data": raw, "model": {"patch_size": list(patch_size)}}, overrides,
                                   "embedding data settings")
    cfg = recipe.data
    if include:
        cfg.include = list(include)
    cfg.exclude = list(cfg.exclude or []) + list(exclude or [])
    return cfg


def reader_shape(record: Any, spacing: Sequence[float] | None) -> tuple[int, ...]:
    """The shape the embedder reads ``record`` at: a raster's own, a volume's on the reader's grid (RAS, resampled
    to ``spacing`` when set)."""
    from geomed_ssl.data.probe import read_shape

    if record.kind != "volume":
        return tuple(record.shape)
    affine = np.asarray(record.affine if record.affine is not None else np.eye(4), np.float64)
    return read_shape(tuple(record.shape[:3]), affine, spacing)


def without_small_files(catalog: Catalog, patch: tuple[int, ...], strict: bool,
                        spacing: Sequence[float] | None = None) -> Catalog:
    """The catalog without the files smaller than one token along an axis (an image-level vector needs one), each
    listed among its problems (``strict``: a DataError before any output is made). Volumes are judged on the grid
    the reader gives them (:func:`reader_shape`)."""
    sizes = {id(r): reader_shape(r, spacing) for r in catalog.records}
    small = [r for r in catalog.records if any(n < p for n, p in zip(sizes[id(r)], patch))]
    if not small:
        return catalog
    token = "x".join(map(str, patch))
    problems = [Problem(r.path, f"is {'x'.join(map(str, sizes[id(r)]))}, smaller than one {token} token of the "
                        "encoder; exclude it (--exclude), or embed at --level window with a --window at most "
                        "twice its size (the rest padded as nodata)") for r in small]
    if strict:
        raise DataError(f"{len(problems)} file(s) too small to embed (strict): "
                        + "; ".join(str(p) for p in problems[:5]))
    if len(small) == len(catalog.records):
        raise DataError(f"every file is smaller than one {token} token of the encoder (e.g. {problems[0]}).")
    dropped = {id(r) for r in small}
    keep = [r for r in catalog.records if id(r) not in dropped]
    return dataclasses.replace(catalog, records=keep, problems=[*catalog.problems, *problems])


def encoder_for(path: str | Path, catalog: Catalog, device: str | torch.device = "cpu",
                spacing: Sequence[float] | None = None) -> tuple[ViTEncoder, Catalog]:
    """The encoder for the catalog's data and the catalog read as it needs (``model_data.catalog_for_encoder``:
    bands picked and ordered by name; plain/grouped: exactly the encoder's, spectral/wavelength: the matched ones),
    with the one range check of the data against the encoder's statistics and the check of its pixel / voxel size
    (read at ``spacing``, ``data.spacing``) against the encoder's training size."""
    cfg, _ = read_encoder_config(path)
    if cfg.stats is None:
        raise GeomedError(f"encoder '{path}' carries no normalisation statistics; re-export it with "
                          "`geomed-ssl pretrain`.")
    catalog = catalog_for_encoder(cfg, catalog)
    enc = load_encoder(path, bands=catalog.band_names, wavelengths=catalog.wavelengths,
                       bandwidths=catalog.bandwidths)
    check_value_ranges(catalog.records, BandStats.from_dict(enc.config.stats, source=f"encoder {path}"))
    warn_other_scale(catalog.records, cfg.scale, spacing, f"encoder '{path}'")
    return enc.to(device).eval(), catalog


def ensure_maps(store: EmbeddingStore, manifest: dict[str, Any]) -> dict[str, Any]:
    """Patch level: write the PCA embedding maps unless the manifest lists them (a run killed while writing them
    redoes them on its next call)."""
    st = manifest["settings"]
    if st["level"] != "patch" or st["pca_dims"] <= 0 or "maps" in manifest:
        return manifest
    _, vectors = load_embeddings(store.dir)
    grid_index = read_columns(store.dir, ["grid_index"])["grid_index"]
    manifest["maps"] = write_embedding_maps(store.dir, manifest, vectors, grid_index, st["pca_dims"])
    manifest[MAPS_TAGGED] = True  # each map says it is ours: --overwrite takes no file in maps/ for its name alone
    store.write_manifest(manifest)
    return manifest


def auto_pool(meta: dict[str, Any]) -> str:
    """``cls`` when the encoder's training read its CLS token (a pretraining method whose ``embedding_pool`` is
    ``cls``: the two-view, self-distillation and CLS pretext methods; a classifier fine-tuned on the CLS token),
    else ``mean`` (masked-image and dense methods, segmentation fine-tunes, random weights)."""
    from geomed_ssl.methods import METHODS

    if meta.get("task") == "classify":
        return str((meta.get("head") or {}).get("pool") or "mean")
    method = METHODS.get(str(meta.get("method")))
    return method.embedding_pool if method is not None else "mean"


@keeps_process_state  # the random generators as found; the folder's lock let go when it returns
def embed_folder(encoder: str | Path, data_dir: str | Path, out_dir: str | Path, *, level: str = "image",
                 window: Any = None, stride: Any = None, pool: str = "auto", batch_size: int = 32,
                 dtype: str = "float32", pca_dims: int = 8, min_valid: float = 0.0,
                 overrides: list[str] | None = None, include: Sequence[str] | None = None,
                 exclude: Sequence[str] | None = None, overwrite: bool = False, progress: bool = True,
                 device: str | None = "auto", strict: bool = False) -> EmbedResult:
    """Embed every file under ``data_dir`` into ``out_dir`` (see the module docstring); resumes an interrupted run
    made with the same settings."""
    t0 = time.perf_counter()
    rule = {"command": "embed", "inputs": {"encoder": encoder, "data folder": data_dir}, "overwrite": overwrite,
            "resume": True}
    check_out_dir(out_dir, **rule)  # the folder is made once everything is valid
    if dtype not in DTYPES:
        raise ConfigError(f"dtype (--dtype) must be float32 or float16, got '{dtype}'.")
    if level not in LEVELS:  # before the folder is scanned
        raise ConfigError(f"level (--level) must be one of {', '.join(LEVELS)}, got '{level}'.")
    if pool != "auto" and pool not in POOLS:
        raise ConfigError(f"pool (--pool) must be one of auto, {', '.join(POOLS)}, got '{pool}'.")
    if level == "image" and min_valid > 0:  # one row per file, whatever its valid area: the option would do nothing
        raise ConfigError("--min-valid skips windows or patch cells; at --level image every file is one row (leave "
                          "files out with --exclude, or use --level window).")
    if int(batch_size) < 1 or int(pca_dims) < 0:
        raise ConfigError(f"batch_size (--batch-size) must be >= 1 and pca_dims (--pca) >= 0, got {batch_size} and "
                          f"{pca_dims}.")
    overrides, include, exclude = (override_list(overrides), string_list(include, "include", "glob patterns"),
                                   string_list(exclude, "exclude", "glob patterns"))
    cfg, meta = read_encoder_config(encoder)
    if pool == "auto":
        pool = auto_pool(meta)
        if level != "patch":  # a patch row is its token: no pooling to speak of
            log.info("--pool auto: %s (the encoder was trained by %s)", pool,
                     meta.get("method") or f"a {meta.get('task', 'pretraining')} fine-tune")
    win = parse_size(window, cfg.spatial_dims, "--window") or tuple(cfg.img_size)
    strd = parse_size(stride, cfg.spatial_dims, "--stride") or win
    if max(win) > 4096:
        raise ConfigError(f"--window {window}: at most 4096 pixels / voxels a side (embed reads windows whole).")
    if any(s > w for s, w in zip(strd, win)):
        log.warning("warning: --stride %s is longer than --window %s: the %s %s between windows are embedded in no "
                    "row, and each map cell is larger than the window it holds.", "x".join(map(str, strd)),
                    "x".join(map(str, win)), "x".join(str(max(s - w, 0)) for s, w in zip(strd, win)),
                    "px" if len(win) == 2 else "voxels")
    data_cfg = data_config(meta, cfg.spatial_dims, cfg.patch_size if level == "image" else win, overrides, include,
                           exclude)
    taken = ({"band_names": list(data_cfg.band_names)}
             if data_cfg.band_names is not None and not sets_key(overrides, "data.band_names") else {})
    try:
        catalog = scan(data_dir, data_cfg, strict=strict, names_by_position="error" if strict else "warn",
                       reader=f"the encoder '{encoder}'")
    except DataError as err:
        raise naming_hint(err, taken) from None
    if catalog.excluded:  # (said only when some file is left out)
        log.info("%d file(s) matching data.exclude %s are left out (the encoder's recipe and --exclude; --set "
                 "data.exclude=[] includes them), e.g. %s", len(catalog.excluded), data_cfg.exclude,
                 catalog.excluded[0])
    note_encoder_naming(catalog.records, taken)
    if level == "image":
        catalog = without_small_files(catalog, tuple(cfg.patch_size), strict, data_cfg.spacing)
    catalog.warn_problems()
    dev = resolve_device(device)
    enc, catalog = encoder_for(encoder, catalog, dev, data_cfg.spacing)
    emb = Embedder(enc, data_cfg, level, win, strd, pool, batch_size, min_valid, dev)
    settings = {"encoder": str(find_encoder_dir(encoder).resolve()), "encoder_digest": export_digest(encoder),
                "encoder_fingerprint": export_fingerprint(encoder),
                "data_dir": str(absolute(data_dir)),  # as the catalog's paths: links kept
                "level": level, "window": list(win), "stride": list(strd),
                "pool": pool, "dtype": dtype, "min_valid": float(min_valid), "pca_dims": int(pca_dims),
                "patch": list(cfg.patch_size), "data": dataclasses.asdict(data_cfg)}
    store = EmbeddingStore(out_dir)
    old = store.check(settings, overwrite)
    paths = [r.path for r in catalog.records]
    prepare_out_dir(out_dir, **rule)  # locked before anything is written, even a finished run's missing maps
    if old is not None and old.get("complete"):
        return finished_run(store, old, paths, out_dir, t0)
    store.start(settings, old)
    done = store.done_paths()
    gone = sorted(set(done) - set(paths))
    if gone:  # their rows would go into the table beside files embedded now: neither run's set of files
        more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
        raise DataError(f"'{gone[0]}'{more} was embedded into '{out_dir}' by the interrupted run but is not among "
                        "the files to embed now (removed, renamed, or another name of a file now read once); embed "
                        "again with --overwrite.")
    refuse_changed(store.done_files(), out_dir, "by the interrupted run")
    todo = [r for r in catalog.records if r.path not in done]
    if done:
        log.info("resuming: %d of %d files already embedded in %s", len(paths) - len(todo), len(paths), out_dir)
    warn_embed_room(emb, todo, store.done_rows(), out_dir, cfg.embed_dim, dtype)
    embed_records(emb, store, todo, catalog.root, dtype, progress)
    seconds = time.perf_counter() - t0
    manifest = ensure_maps(store, store.finalize(paths, {"seconds_last_run": round(seconds, 3)}))
    return EmbedResult(Path(out_dir), manifest, len(todo), len(paths) - len(todo), emb.windows_encoded,
                       time.perf_counter() - t0)


ROW_TABLE_BYTES = 256  # a row's table columns (ids, boxes, coordinates, footprint) in the parquet file, about
VECTOR_COPIES = 3  # the committed parts, then the table's vector column and vectors.npy made from them before they go


def embed_windows(emb: Embedder, records: Sequence[Any]) -> int:
    """The windows the embedder reads from ``records``, on the grid it reads them at (:func:`reader_shape`)."""
    return sum(math.prod(grid_shape(reader_shape(r, emb.data_cfg.spacing), emb.window, emb.stride)) for r in records)


def embed_rows(emb: Embedder, records: Sequence[Any]) -> int:
    """The rows embedding ``records`` gives: one per file (image level), per window (window level) or per token
    patch of the file (patch level), on the grid the embedder reads (:func:`reader_shape`)."""
    if emb.level == "image":
        return len(records)
    if emb.level == "patch":
        return sum(math.prod(-(-s // p) for s, p in zip(reader_shape(r, emb.data_cfg.spacing), emb.patch))
                   for r in records)
    return embed_windows(emb, records)


def embed_bytes(emb: Embedder, todo: Sequence[Any], done_rows: int, dim: int, dtype: str) -> int:
    """What embedding ``todo`` (after ``done_rows`` rows an interrupted run committed) takes on disk at most: every
    row's vector :data:`VECTOR_COPIES` times when the table and ``vectors.npy`` are made from the parts, and the
    table's other columns."""
    rows = embed_rows(emb, todo) + done_rows
    return rows * (VECTOR_COPIES * dim * np.dtype(dtype).itemsize + ROW_TABLE_BYTES)


def warn_embed_room(emb: Embedder, todo: Sequence[Any], done_rows: int, out_dir: str | Path, dim: int,
                    dtype: str) -> None:
    """A warning before embedding when :func:`embed_bytes` exceeds the free space of the disk ``out_dir`` is on
    (with what the committed parts take already): a full disk stops the run at the part that does not fit (the
    committed ones stay, and a later run resumes)."""
    free, needed = free_bytes(out_dir), embed_bytes(emb, todo, done_rows, dim, dtype)
    if free is not None:
        free += done_rows * dim * np.dtype(dtype).itemsize  # the committed parts are on the disk already
    if free is not None and needed > free:
        log.warning("warning: embedding these %d file(s) at --level %s takes up to %s (vectors of %d %s values, "
                    "three copies while the table and vectors.npy are made from the parts) and the disk of '%s' has "
                    "%s free; use a coarser --level, a larger --stride, --dtype float16, or give --out on a "
                    "larger disk.", len(todo), emb.level, size_text(needed), dim, dtype, out_dir, size_text(free))


def finished_run(store: EmbeddingStore, manifest: dict[str, Any], paths: list[str], out_dir: str | Path,
                 t0: float) -> EmbedResult:
    """A complete embedding folder asked again with the same settings: nothing to do (its maps written if a killed
    run left them out), unless the data folder holds files it does not, which is an error."""
    new = sorted(set(paths) - {f["path"] for f in manifest["files"]})
    if new:
        raise GeomedError(f"'{out_dir}' is complete but {len(new)} file(s) are new (e.g. {new[0]}); embed them "
                          "into another --out or pass --overwrite to redo everything.")
    gone = sorted({f["path"] for f in manifest["files"]} - set(paths))
    if gone:
        raise GeomedError(f"'{out_dir}' is complete but {len(gone)} of its file(s) are no longer in the data folder "
                          f"(e.g. {gone[0]}: removed, renamed or left out now); its table still holds their rows: "
                          "pass --overwrite to embed the files there are now, or restore them.")
    refuse_changed(manifest["files"], out_dir, "")
    log.info("embeddings in %s are complete; nothing to do", out_dir)
    store.remove_parts()  # a run killed between its complete manifest and this clean-up left them
    return EmbedResult(Path(out_dir), ensure_maps(store, manifest), 0, len(paths), 0, time.perf_counter() - t0)


def refuse_changed(files: Sequence[dict[str, Any]], out_dir: str | Path, when: str) -> None:
    """A GeomedError when a file embedded into ``out_dir`` (its manifest entries ``files``) was replaced or rewritten
    since (size or modification time; folders of an earlier version, without stamps, are not checked): its rows
    would be kept beside embeddings of what the file holds now."""
    changed = []
    for f in files:
        if "stamps" in f:
            try:
                now = file_stamps(f["paths"])
            except OSError:
                continue  # gone: said by the caller, which knows the files to embed now
            if now != f["stamps"]:  # the stack's file that changed
                changed.append(next((p for p, a, b in zip(f["paths"], now, f["stamps"]) if a != b), f["path"]))
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise GeomedError(f"'{changed[0]}'{more} changed (size or modification time) since it was embedded into "
                          f"'{out_dir}'{' ' + when if when else ''}: its rows describe what it held then; embed again "
                          "with --overwrite.")


def embed_records(emb: Embedder, store: EmbeddingStore, todo: Sequence[Any], root: str | None, dtype: str,
                  progress: bool) -> None:
    """Embed ``todo`` into committed parts of ``store``: image level ``FILES_PER_PART`` files a part, window and
    patch levels consecutive files up to ``WINDOWS_PER_PART`` windows a part (a larger file alone): every commit
    rewrites the manifest, so one part per small file made an archive of chips quadratic. With ``progress``, a bar
    (files or windows) on a terminal, a line a minute in a batch job's log (``WorkProgress``)."""
    image = emb.level == "image"
    total = len(todo) if image else embed_windows(emb, todo)
    bar = WorkProgress(total, "embedding", "file" if image else "window", shown=progress)
    if image:
        groups = [todo[i:i + FILES_PER_PART] for i in range(0, len(todo), FILES_PER_PART)]
    else:
        groups = window_groups(todo, emb.window, emb.stride)
        emb.progress = bar.update
    try:
        for group in groups:
            part = store.part(dtype)
            try:
                metas = _image_part(emb, part, group, root, bar) if image else \
                    [m for rec in group for m in _window_part(emb, part, rec, root)]
                part.commit(metas)
            except BaseException:
                part.abort()
                raise
    finally:
        bar.close()


def window_groups(todo: Sequence[Any], window: Sequence[int], stride: Sequence[int]) -> list[list[Any]]:
    """``todo`` cut into consecutive groups of at most ``FILES_PER_PART`` files and ``WINDOWS_PER_PART`` windows (a
    file with more windows is a group alone): the files of one part."""
    groups: list[list[Any]] = []
    current: list[Any] = []
    windows = 0
    for rec in todo:
        n = math.prod(grid_shape(rec.shape, window, stride))
        if current and (windows + n > WINDOWS_PER_PART or len(current) >= FILES_PER_PART):
            groups.append(current)
            current, windows = [], 0
        current.append(rec)
        windows += n
    return groups + ([current] if current else [])


def _image_part(emb: Embedder, part: Any, group: Sequence[Any], root: str | None, bar: Any) -> list[dict[str, Any]]:
    """One vector per file of ``group`` into ``part``; the files' meta to commit."""
    metas, rows = [], []
    for meta, row in emb.image_rows(group, root):
        metas.append({**meta, "rows": 1})
        rows.append(row)
        bar.update(1)
    part.add({k: np.concatenate([r[k] for r in rows]) for k in rows[0]}, metas)
    return metas


def _window_part(emb: Embedder, part: Any, record: Any, root: str | None) -> list[dict[str, Any]]:
    """The window or patch rows of one file into ``part``; its meta (with the row count) to commit."""
    fmeta, n = emb.file_meta(record, root), 0
    for rows in emb.window_rows(record, fmeta):
        part.add(rows, fmeta)
        n += len(rows["vector"])
    return [{**fmeta, "rows": n}]
