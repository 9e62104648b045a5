"""``geomed-ssl compare``: every encoder x budget x seed x protocol plus the baselines, on the same training and
test samples, into ``results.csv`` / ``summary.md`` / ``curve.png``; resumable (finished rows are skipped)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from geomed_ssl.compare.baselines import baseline_dims, baseline_features
from geomed_ssl.compare.features import check_feature_memory, encoder_features, memo
from geomed_ssl.compare.options import NONE, SEGMENT_BASELINES, BASELINES, CompareOptions
from geomed_ssl.compare.probes import classify, scores
from geomed_ssl.compare.report import pretrained, table, write_curve, write_summary
from geomed_ssl.compare.results import ResultsFile, make_row
from geomed_ssl.compare.sources import (EncoderSource, check_encoders_unchanged, encoders_record,
                                        load_compare_recipe, load_sources, none_dir, none_sources,
                                        other_architectures, recipe_path, save_none, warn_fixed_windows,
                                        warn_other_architectures)
from geomed_ssl.compare.task import (Split, Task, check_saved_selection, held_out_lines,
                                     load_classify_task, load_segment_task, make_split, save_split, settings_record,
                                     short_budgets, shortfalls, warn_notes, with_earlier_splits)
from geomed_ssl.compare.tuned import finetune_scores, kept_labels, kept_name, run_logs, said_once
from geomed_ssl.config import Recipe, load_recipe
from geomed_ssl.data.labelled import ImageDataset
from geomed_ssl.data.readers import VolumeReader
from geomed_ssl.data.stats import compute_stats
from geomed_ssl.errors import ConfigError, DataError, GeomedError, RunStopped
from geomed_ssl.labels.classes import class_inputs
from geomed_ssl.finetune.fit import check_trainer_settings, save_recipe, with_encoder_naming
from geomed_ssl.models.device import resolve_device
from geomed_ssl.models.model_data import naming_hint, note_encoder_naming
from geomed_ssl.models.probe import check_class_weights, probe_layers, read_image
from geomed_ssl.outdirs import check_out_dir, prepare_out_dir
from geomed_ssl.outfiles import atomic_write_text, scratch_dir
from geomed_ssl.process import keeps_process_state, stops_as

log = logging.getLogger("geomed_ssl")


@dataclass
class CompareResult:
    """What a compare produced: its folder, every row of results.csv, the headline metric and the table."""

    out_dir: Path
    rows: list[dict[str, str]]
    metric: str
    table: str
    runs_done: int
    other_architecture: list[str] = field(default_factory=list)  # encoders whose architecture is not none's


@dataclass(frozen=True)
class Job:
    """One row to compute: ``source`` is an encoder name or a baseline; ``split_index`` into the splits."""

    source: str
    protocol: str
    split_index: int


def headline_metric(task: Task) -> str:
    """Dice for volumes (tumour-like targets), overall accuracy otherwise."""
    return "dice" if task.kind == "segment" and task.spatial_dims == 3 else "oa"


def plan(options: CompareOptions, task: Task, splits: list[Split]) -> list[Job]:
    """Every (source, protocol, budget, seed) of the command, source-major (features are computed once per
    source; ``none``: per seed, its initialisation), fine-tuning last; ``none`` always also fine-tuned."""
    frozen = [p for p in options.protocols if p != "finetune"]
    chosen = options.baselines if options.baselines is not None else (
        list(SEGMENT_BASELINES) if task.kind == "segment" else list(BASELINES))
    jobs = []
    for e in options.encoders:
        mine = [Job(e, p, i) for p in frozen for i in range(len(splits))]
        if e == NONE:  # one initialisation per seed: its features once, so its jobs together
            mine.sort(key=lambda j: splits[j.split_index].seed)
        jobs += mine
    jobs += [Job(b, "forest" if b == "rf" else "linear", i) for b in chosen for i in range(len(splits))]
    tuned = [e for e in options.encoders if "finetune" in options.protocols or e == NONE]
    return jobs + [Job(e, "finetune", i) for e in tuned for i in range(len(splits))]


def check_baselines(options: CompareOptions, kind: str) -> None:
    if kind == "segment" and options.baselines and "band_stats" in options.baselines:
        raise ConfigError("--baselines band_stats describes whole images and applies to classification (--data); "
                          f"for segmentation choose from {', '.join(SEGMENT_BASELINES)}.")


def _load_task(options: CompareOptions, recipe_file: Recipe | Path, overrides: list[str] | None, images: Any,
               labels: Any, data: Any, strict: bool) -> tuple[Recipe, Task]:
    if (images is None) == (data is None):
        raise ConfigError("give the labelled data as --images IMG_DIR --labels LABELS (segmentation) or as "
                          "--data CLASSES (class folders or a classes CSV: classification), one of the two.")
    if data is not None and labels is not None:
        raise ConfigError("--labels goes with --images (segmentation); --data holds its own classes (folders or a "
                          "CSV).")
    kind = "segment" if images is not None else "classify"
    if kind == "classify" and options.split != "random":
        raise ConfigError(f"--split {options.split} is for label maps (--images/--labels); class folders (--data) "
                          "are split by image already: leave out --split.")
    check_baselines(options, kind)
    recipe, naming = with_encoder_naming(load_compare_recipe(recipe_file, overrides, kind),
                                         options.pretrained[0] if options.pretrained else None, overrides)
    if kind == "segment" and recipe.labels.split != options.split:  # a recipe made for finetune --split blocks
        log.warning(f"warning: the recipe's labels.split '{recipe.labels.split}' is not used: compare draws with "
                    f"--split ({options.split}); give --split {recipe.labels.split} if that is the split you meant.")
    try:
        if kind == "segment":
            from geomed_ssl.finetune.segment import training_window

            windows = [training_window(recipe, e) for e in options.pretrained] or [training_window(recipe, None)]
            window = [max(w[i] for w in windows) for i in range(len(windows[0]))]  # too small: for every encoder
            task = load_segment_task(recipe, images, labels, strict, window)
        else:  # classifiers read whole images, of any size
            task = load_classify_task(recipe, data, strict)
    except DataError as err:
        raise naming_hint(err, naming) from None
    note_encoder_naming(task.records, naming)
    return recipe, task


def _first_difference(before: dict[str, Any], now: dict[str, Any]) -> str | None:
    """What a user changed between two compare records, in words ("split 'random', not 'blocks'"), or None."""
    for key, what in (("split", "--split"), ("task", "the task"), ("images", "other images"),
                      ("label_files", "other label files"), ("classes", "other classes")):
        if before.get(key) != now.get(key):
            if isinstance(before.get(key), str) and isinstance(now.get(key), str):
                return f"{what} '{before[key]}', not '{now[key]}'"
            return what
    return None


def _check_resumed(out: Path, recipe: Recipe, record: str) -> None:
    """A compare continued in ``out`` must use the recipe and data its rows were made with."""
    earlier = (out / "compare.json").read_text(errors="replace") if (out / "compare.json").is_file() else None
    if earlier is not None and earlier != record:
        try:
            json.loads(earlier)
        except ValueError:
            raise ConfigError(f"'{out / 'compare.json'}' is damaged; pass --overwrite to start the compare again, or "
                              "choose another --out.") from None
        with contextlib.suppress(ValueError):
            before, now = json.loads(earlier), json.loads(record)
            if "none" not in before:
                raise ConfigError(f"'{out}' holds a compare an older geomed-ssl made, whose `none` was one random "
                                  "initialisation for every seed (encoder_none/); now each seed draws its own "
                                  "(encoder_none_seed<seed>/), so its rows cannot be continued: choose another "
                                  "--out, or pass --overwrite to start again.")
            if before.get("none_finetune") != now["none_finetune"]:
                raise ConfigError(f"'{out}' holds a compare an older geomed-ssl made, whose `none` was fine-tuned with "
                                  "layer-wise lr decay; random init now trains every block at the full rate, so its "
                                  "fine-tune rows would mix the two: choose another --out, or pass --overwrite to "
                                  "start again.")
            if before.get("budget") not in (None, now["budget"]):
                other = "--labels-per-class" if before["budget"] == "per_class" else "--label-fraction"
                raise ConfigError(f"'{out}' holds a curve of {other} budgets, and one curve has one kind of budget: "
                                  f"give {other}, or choose another --out.")
            changed = [k for k in ("labels_sha256", "image_files") if k in before and before[k] != now[k]]
            if changed and all(before.get(k) == now.get(k) for k in ("task", "split", "label_files", "images")):
                what = "label files' contents" if changed == ["labels_sha256"] else "image files (size or time)"
                raise ConfigError(f"the {what} changed since '{out}' was made, so its rows were scored on other "
                                  "data; choose another --out, or pass --overwrite to start again.")
            if before.get("grounds") != now.get("grounds") and all(before.get(k) == now.get(k) for k in
                                                                  ("task", "split", "label_files", "images")):
                raise ConfigError(f"'{out}' holds a compare that took the copies of one label map beside each date "
                                  "as separate grounds (an older geomed-ssl), where they are now one ground, so its "
                                  "draws differ: choose another --out, or pass --overwrite to start again.")
            named = _first_difference(before, now)
            if named:
                raise ConfigError(f"'{out}' holds a compare made with {named}; choose another --out, or pass "
                                  "--overwrite to start again.")
        raise ConfigError(f"'{out}' holds a compare of other data, classes or split, or one an older geomed-ssl "
                          "made (its probes fitted or its scores computed otherwise; compare.json); choose another "
                          "--out, or pass --overwrite to start again.")
    if (out / "config.yaml").is_file():
        with scratch_dir("compare") as tmp:
            recipe.save(Path(tmp) / "r.yaml")
            same = (Path(tmp) / "r.yaml").read_text() == (out / "config.yaml").read_text()
            if not same:  # one an older geomed-ssl wrote, without the settings added since (at their defaults)
                with contextlib.suppress(GeomedError):
                    load_recipe(out / "config.yaml").save(Path(tmp) / "s.yaml")
                    same = (Path(tmp) / "r.yaml").read_text() == (Path(tmp) / "s.yaml").read_text()
        if not same:
            raise ConfigError(f"'{out}' holds a compare made with another recipe or --set values (config.yaml); "
                              "choose another --out, or pass --overwrite to start again.")


def _images(task: Task, source_records: list[Any], stats: Any, recipe: Recipe, patch: Any = None) -> Any:
    """``load(i)``: image ``i`` of the task normalised with ``stats`` (classification: cropped to ``patch``)."""
    if task.kind == "classify" and patch is not None:
        ds = ImageDataset(source_records, task.values, stats, recipe.data, patch)
        return memo(lambda i: ds.image(i)[0])
    volumes = VolumeReader(recipe.data, max_cached=1) if task.spatial_dims == 3 else None
    return memo(lambda i: read_image(source_records[i], stats, recipe.data, task.spatial_dims, volumes))


def needed_rows(splits: list[Split]) -> np.ndarray:
    """Every row some split trains or tests on (sorted)."""
    return np.unique(np.concatenate([np.concatenate([s.train, s.test]) for s in splits]))


def feature_dims(name: str, sources: dict[str, EncoderSource], recipe: Recipe, in_chans: int) -> int:
    if name in sources:
        cfg = sources[name].encoder.config
        return len(probe_layers(cfg.depth, recipe.finetune.layers)) * cfg.embed_dim
    return baseline_dims(name, in_chans)


def check_memory(jobs: list[Job], splits: list[Split], task: Task, sources: dict[str, EncoderSource],
                 recipe: Recipe) -> None:
    """Refuse, before anything is written, frozen features that would not fit in memory."""
    if task.kind != "segment":
        return
    rows = needed_rows(splits).size
    if any(j.protocol == "propagate" for j in jobs):
        rows += min(recipe.finetune.probe_nodes, sum(int(np.prod(s)) for s in task.shapes))
    for name in dict.fromkeys(j.source for j in jobs if j.protocol != "finetune"):
        check_feature_memory(rows, feature_dims(name, sources, recipe, len(task.catalog.band_names)), name,
                             task.unit)


def features_for(name: str, src: EncoderSource | None, task: Task, recipe: Recipe, base_stats: Any,
                 needed: np.ndarray) -> Any:
    """The frozen features of an encoder (``src``) or a baseline (``name``; computed lazily, once, on first use)."""
    if src is not None:
        load = _images(task, src.records, src.stats, recipe, tuple(src.encoder.config.patch_size))
        layers = probe_layers(src.encoder.config.depth, recipe.finetune.layers)
        return encoder_features(task, src.encoder, layers, load, needed)
    load = _images(task, task.records, base_stats, recipe, (1,) * task.spatial_dims)
    return baseline_features(name, task, load, len(base_stats.band_names), needed)


def frozen_scores(feats: Any, task: Task, split: Split, protocol: str, recipe: Recipe) -> dict[str, float | None]:
    """Train the protocol's classifier on the split's training rows (``propagate``: and the unlabelled nodes),
    score it on its test rows."""
    x_train = feats.features(split.train, split.allowed)
    x_test = feats.features(split.test)
    x_nodes = (feats.nodes(recipe.finetune.probe_nodes, recipe.labels.seed, split.allowed)
               if protocol == "propagate" else None)
    pred = classify(protocol, x_train, task.values[split.train], x_test, split.seed, x_nodes,
                    recipe.finetune.class_weights, len(task.class_names))
    return scores(task.values[split.test], pred, len(task.class_names), task.kind == "segment",
                  task.background)


def progress_bar(total: int, enabled: bool) -> Any:
    """A bar over the runs on stderr when it is a terminal (as training's), else nothing."""
    from tqdm import tqdm

    return tqdm(total=total, desc="runs", file=sys.stderr, disable=not (enabled and sys.stderr.isatty()))


def execute(jobs: list[Job], splits: list[Split], task: Task, sources: dict[str, EncoderSource],
            nones: dict[int, EncoderSource], recipe: Recipe, results: ResultsFile, inputs: dict[str, Any],
            strict: bool, progress: bool, keep: Path | None = None, device: Any = None,
            known: Sequence[str] = (), stale: Sequence[Path] = ()) -> int:
    """Run the jobs whose rows are missing from results.csv, one row written after each; the number run.
    ``nones``: ``none`` of each label seed, each moved to ``device`` only while its features are in use.
    ``known``: the encoders of the folder's earlier runs too, whose kept fine-tunes the names keep apart.
    ``stale``: the summary files of the earlier rows, deleted as the first new row comes (a stop later would leave them
    beside rows they do not show, looking complete)."""
    todo = [j for j in jobs if (j.source, *splits[j.split_index].budget.cells, str(splits[j.split_index].seed),
                                j.protocol) not in results.done]
    if len(todo) < len(jobs):
        log.info("%d of %d runs are in results.csv already; running the other %d", len(jobs) - len(todo), len(jobs),
                 len(todo))
    base_stats = None
    needed = needed_rows(splits)
    feats: dict[tuple[str, int | None], Any] = {}
    live: EncoderSource | None = None  # the none initialisation on the device
    labels = kept_labels(list(dict.fromkeys([*sources, *known])))
    bar = progress_bar(len(todo), progress)
    with run_logs(bar):
        for n, job in enumerate(todo, start=1):
            split = splits[job.split_index]
            start = time.perf_counter()
            src = nones[split.seed] if job.source == NONE else sources.get(job.source)
            if job.protocol == "finetune":
                keep_as = keep / kept_name(labels[job.source], split.budget, split.seed) if keep is not None else None
                try:
                    result = finetune_scores(src, task, split, recipe, inputs, strict, keep_as)
                except RunStopped as stop:
                    raise RunStopped(stop.signal, _stopped(stop.signal, n, len(todo), job, split, results)) from None
            else:
                # a stop here is one line and 143 / 130 (inside a fine-tune, Lightning handles it: above)
                with stops_as(lambda sig: _stopped(sig, n, len(todo), job, split, results)):
                    key = (job.source, split.seed if job.source == NONE else None)
                    if key not in feats:
                        feats.clear()  # one source's features in memory at a time (jobs are source-major)
                        if live is not None:
                            live.encoder.cpu()
                            live = None
                        if job.source == NONE and device is not None:
                            src.encoder.to(device)
                            live = src
                        if src is None and base_stats is None:
                            base_stats = compute_stats(task.catalog, recipe.data, seed=recipe.labels.seed)
                        t0 = time.perf_counter()
                        feats[key] = features_for(job.source, src, task, recipe, base_stats, needed)
                        feats[key].features(split.test[:1])
                        what = (f"{job.source} (initialisation of seed {split.seed})" if job.source == NONE
                                else job.source)
                        log.info("features of %s: %.1f s", what, time.perf_counter() - t0)
                        start = time.perf_counter()
                    result = frozen_scores(feats[key], task, split, job.protocol, recipe)
            seconds = time.perf_counter() - start
            for path in stale:  # from the first new row on, the earlier summary no longer shows every row
                path.unlink(missing_ok=True)
            results.add(make_row(job.source, split.budget.cells, split.seed, job.protocol, result, seconds))
            bar.update(1)
            shown = {k: v for k, v in result.items() if v is not None}
            log.info("run %d/%d  %s %s %s seed %d: %s (%.1f s)", n, len(todo), job.source, job.protocol,
                     split.budget.slug, split.seed, "  ".join(f"{k} {v:.3f}" for k, v in shown.items()), seconds)
    bar.close()
    return len(todo)


def _preparing(signal_name: str) -> str:
    return (f"compare stopped by {signal_name} while it prepared its runs; rows already in results.csv are kept: run "
            "the same command again to go on.")


def _stopped(signal_name: str, n: int, total: int, job: Job, split: Split, results: ResultsFile) -> str:
    """The line of a compare stopped outside a fine-tune."""
    kept = f"the finished rows are in {results.path}" if results.rows else "no run had finished"
    return (f"compare stopped by {signal_name} in run {n}/{total} ({job.source} {job.protocol}, "
            f"{split.budget.slug}, seed {split.seed}); {kept}: run the same command again to go on from there.")


@keeps_process_state
def run_compare(options: CompareOptions, *, out: str | Path, images: str | Path | None = None,
                labels: str | Path | None = None, data: str | Path | None = None,
                recipe: Recipe | str | Path | None = None,
                overrides: list[str] | None = None, overwrite: bool = False,
                strict: bool = False, progress: bool = True, keep_finetuned: bool = False) -> CompareResult:
    """Score every encoder (and ``none``, and the baselines) at every budget and seed; see docs/label_efficiency.md.
    Everything is checked (options, recipe, data, labels, encoders' bands, earlier rows in ``out``) before the
    output folder is created or changed. ``keep_finetuned``: the ``finetune`` protocol's FT_DIRs are kept in
    ``out/finetuned_<encoder>_<budget>_seed<seed>`` (usable by ``predict``) instead of being deleted."""
    out = Path(out)
    inputs = {"images folder": images, "labels": labels, **class_inputs(data),
              "recipe": None if isinstance(recipe, Recipe) else recipe,
              "encoder": options.pretrained}
    check_out_dir(out, command="compare", inputs=inputs, overwrite=overwrite, resume=True)
    with said_once():
        return _run_compare(options, out, inputs, images, labels, data, recipe, overrides, overwrite, strict, progress,
                            keep_finetuned)


def _run_compare(options: CompareOptions, out: Path, inputs: dict[str, Any], images: Any, labels: Any, data: Any,
                 recipe: Any, overrides: list[str] | None, overwrite: bool, strict: bool, progress: bool,
                 keep_finetuned: bool) -> CompareResult:
    with stops_as(_preparing):  # a stop before the first run: one line and 143 / 130
        recipe_obj, task = _load_task(options, recipe_path(options, recipe), overrides, images, labels, data, strict)
        check_class_weights(recipe_obj.finetune.class_weights, len(task.class_names))
        check_trainer_settings(recipe_obj)  # its fine-tunes' (``none`` is always fine-tuned), said before the runs
        loaded = load_sources(options, recipe_obj, task)
        warn_fixed_windows(overrides, loaded)
        warn_other_architectures(loaded)
        sources = {s.name: s for s in loaded}
        splits = [make_split(task, recipe_obj, b, s, options.split) for b in options.budgets for s in options.seeds]
        jobs = plan(options, task, splits)
        check_memory(jobs, splits, task, sources, recipe_obj)
        record = settings_record(task, options.split, "per_class" if options.budgets[0].per_class else "fraction")
        for split in splits:
            if split.test.size == 0:
                raise ConfigError(f"budget {split.budget.slug} (seed {split.seed}) trains on every labelled "
                                  f"{task.unit} and leaves none to test; give smaller budgets.")
        weights = encoders_record(sources)
        nones = none_sources(sources[NONE], options.seeds, recipe_obj.train.seed, out, reuse=not overwrite)
        if not overwrite:
            _check_resumed(out, recipe_obj, record)
            weights = check_encoders_unchanged(out / "encoders.json", weights)
            for split in splits:
                check_saved_selection(task, out, split)
        results = ResultsFile(out / "results.csv") if not overwrite else None
        warn_notes(splits)
        held_out, repeated = held_out_lines(splits, task) if options.split == "images" else ([], None)
        if repeated:  # before the runs: a user may rather choose other seeds
            log.warning("warning: %s", repeated)
        prepare_out_dir(out, command="compare", inputs=inputs, overwrite=overwrite, resume=True)
        results = results or ResultsFile(out / "results.csv")
        save_recipe(recipe_obj, out / "config.yaml")
        atomic_write_text(out / "compare.json", record)
        atomic_write_text(out / "encoders.json", json.dumps(weights, indent=1, sort_keys=True))
        for split in splits:
            save_split(task, out, split)
        for seed, none in nones.items():
            save_none(none, none_dir(out, seed), recipe_obj)
        device = resolve_device("cpu" if recipe_obj.train.accelerator == "cpu" else "auto")
        for name, s in sources.items():
            if name != NONE:  # the template of the per-seed nones computes nothing
                s.encoder.to(device)
    run_inputs = {"images": images, "labels": labels, "data": data, "split": options.split}
    keep = out if keep_finetuned else None
    done = execute(jobs, splits, task, sources, nones, recipe_obj, results, run_inputs, strict, progress, keep,
                   device, known=list(weights), stale=[out / "summary.md", out / "curve.png"])
    metric = headline_metric(task)
    others = other_architectures(pretrained(results.rows), sources[NONE].encoder.config,
                                 {name: s.encoder.config for name, s in sources.items()})
    every = with_earlier_splits(out, splits, results.rows)  # budgets of earlier compares into the folder too
    write_summary(out / "summary.md", results.rows, metric, options.split, task.unit, task.background is not None,
                  held_out + (["", repeated] if repeated else []), others, shortfalls(every), task.counted,
                  pooled=task.files is not None and any(np.unique(task.files[s.test]).size > 1 for s in splits))
    write_curve(out / "curve.png", results.rows, metric, short_budgets(every), task.counted)
    return CompareResult(out, results.rows, metric, table(results.rows, metric), done, others)
