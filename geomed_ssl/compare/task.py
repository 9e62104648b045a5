"""The labelled data ``compare`` scores every encoder on, read once: a table of labelled samples (pixels / voxels
of label maps, or class-folder images) and, per (budget, seed), the same training and test rows for everyone.

Selections come from the ``finetune`` sampling functions with the same settings, so the ``finetune`` protocol
(which samples again inside ``finetune segment`` / ``classify``) trains and tests on exactly these rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from geomed_ssl.compare.options import Budget
from geomed_ssl.finetune.metrics import background_index
from geomed_ssl.config import Recipe
from geomed_ssl.data.catalog import Catalog, scan
from geomed_ssl.files.listing import file_stamps
from geomed_ssl.errors import DataError
from geomed_ssl.finetune.classify import save_selection
from geomed_ssl.labels.classes import scan_classes
from geomed_ssl.labels.pairs import label_grounds, label_sources, read_label_pairs
from geomed_ssl.windows.splits import label_groups
from geomed_ssl.labels.draws import ClassMap, labelled_pixels, unique_ints
from geomed_ssl.labels.sampling import LabelSelection, select_labels, split_images, training_area_maps
from geomed_ssl.labels.subjects import grouped, subject_units

log = logging.getLogger("geomed_ssl")


@dataclass
class Split:
    """Training and test rows of the task's sample table (sorted, disjoint) for one (budget, seed)."""

    budget: Budget
    seed: int
    train: np.ndarray  # (Ntr,) int64
    test: np.ndarray  # (Nte,) int64
    notes: list[str]
    selection: Any = None  # the LabelSelection (segmentation) it was made from
    allowed: list[np.ndarray] | None = None  # blocks / images split: per image, True where it trains


@dataclass
class Task:
    """What is classified: ``segment`` (labelled pixels / voxels of label maps) or ``classify`` (images).

    ``values`` (N,) are the class indices 0..K-1 of the sample table; segmentation rows are (file, flat index)
    positions of the label arrays, in ``labelled_pixels`` order."""

    kind: str  # "segment" | "classify"
    catalog: Catalog
    records: list[Any]  # one per image (segment: per labelled image), in file order
    values: np.ndarray  # (N,) int64 class index
    class_names: list[str]
    spatial_dims: int
    files: np.ndarray | None = None  # segment: (N,) int32 image of each row
    flats: np.ndarray | None = None  # segment: (N,) int64 flat position in its image
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # segment: label array shapes (reader grid)
    arrays: list[np.ndarray] = field(default_factory=list)  # segment: label values per image
    masks: list[np.ndarray] = field(default_factory=list)  # segment: labelled mask per image
    label_paths: list[str] = field(default_factory=list)
    class_map: ClassMap | None = None
    sources: list[Any] = field(default_factory=list)  # segment: label_sources (copies of one voxel are one place)
    grounds: list[str] | None = None  # segment: label_grounds (copies of one label map beside each date: one ground)
    units: np.ndarray | None = None  # classify, volumes: subject_units (a subject's sequences train or test together)

    @property
    def counted(self) -> str:
        """What a budget per class counts: "labelled voxels" (pixels), "labelled images", or "subjects" where some
        subject's volumes are one unit."""
        return "subjects" if grouped(self.units) else f"labelled {self.unit}s"

    @property
    def background(self) -> int | None:
        """The class index a volume's ``dice`` leaves out (label value 0), if any (see ``background_index``)."""
        if self.kind != "segment" or self.class_map is None:
            return None
        return background_index(self.class_map.values, self.spatial_dims)

    @property
    def unit(self) -> str:
        return "image" if self.kind == "classify" else ("voxel" if self.spatial_dims == 3 else "pixel")

    def rows(self, selection: LabelSelection, which: str) -> np.ndarray:
        """Table rows of the ``which`` ("train" | "test") positions of a segmentation selection."""
        offsets = np.concatenate([[0], np.cumsum([int(np.prod(s)) for s in self.shapes])[:-1]]).astype(np.int64)
        table = offsets[self.files] + self.flats  # sorted: files ascending, flats ascending within a file
        keys = offsets[getattr(selection, f"{which}_file")] + getattr(selection, f"{which}_index")
        return np.searchsorted(table, np.sort(keys)).astype(np.int64)


def load_segment_task(recipe: Recipe, images: str | Path, labels: str | Path | None, strict: bool,
                      window: list[int] | None = None) -> Task:
    """Scan the images, pair and read their labels (grids checked), and build the table of labelled positions.
    ``window``: the fine-tunes' training window, which the images' sizes are checked against (default: the
    recipe's ``data.patch_size``)."""
    data = recipe.data if window is None else dataclasses.replace(recipe.data, patch_size=window)
    catalog = scan(images, data, strict=strict, names_by_position="error" if strict else "warn")
    catalog.warn_problems()
    pairs, arrays, masks = read_label_pairs(catalog.records, labels, recipe.labels, recipe.data)
    files, flats, vals = labelled_pixels(arrays, masks)
    nd = 3 if recipe.data.kind == "volume" else 2
    if vals.size == 0:
        raise DataError(f"no labelled {'voxels' if nd == 3 else 'pixels'} in the label files of '{labels}'; check "
                        "labels.ignore_value and the label files' nodata.")
    cmap = ClassMap.build(unique_ints(vals), recipe.labels.class_names)
    return Task("segment", catalog, [r for r, _ in pairs], cmap.encode(vals), list(cmap.names), nd, files, flats,
                [tuple(a.shape) for a in arrays], arrays, masks, [p for _, p in pairs], cmap,
                label_sources([p for _, p in pairs], recipe.data), label_grounds(pairs, arrays))


def load_classify_task(recipe: Recipe, data: str | Path, strict: bool) -> Task:
    """Scan a classification dataset (class folders, or a classes CSV): one row per image."""
    records, labels, names = scan_classes(data, recipe.data, strict=strict)
    catalog = Catalog(records=records, problems=[], kind=recipe.data.kind, band_names=records[0].band_names,
                      wavelengths=records[0].wavelengths, bandwidths=records[0].bandwidths)
    nd = 3 if recipe.data.kind == "volume" else 2
    units = subject_units([r.path for r in records], labels, names) if nd == 3 else None
    return Task("classify", catalog, records, labels, names, nd, units=units)


def labels_config(recipe: Recipe, budget: Budget, seed: int, split: str) -> Any:
    """The recipe's ``labels`` section for one run: this budget, seed and split."""
    return dataclasses.replace(recipe.labels, per_class=budget.per_class, fraction=budget.fraction, seed=seed,
                               split=split)


def make_split(task: Task, recipe: Recipe, budget: Budget, seed: int, split: str) -> Split:
    """The training and test rows of one (budget, seed), drawn as ``finetune`` draws them."""
    if task.kind == "classify":
        train, test, notes = split_images(task.values, budget.per_class, budget.fraction, seed, task.class_names,
                                          recipe.labels.test_fraction, task.units)
        return Split(budget, seed, train, test, notes)
    lab = labels_config(recipe, budget, seed, split)
    selection = select_labels(task.arrays, task.masks, lab, paths=task.label_paths, sources=task.sources,
                              grounds=task.grounds)
    allowed = training_area_maps(task.arrays, task.masks, lab, task.grounds or task.label_paths)
    return Split(budget, seed, task.rows(selection, "train"), task.rows(selection, "test"), selection.notes,
                 selection, allowed)


def selection_path(folder: Path, split: Split) -> Path:
    return folder / "selections" / f"{split.budget.slug}_seed{split.seed}.npz"


def _saved_rows(task: Task, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if task.kind == "segment":
        sel = LabelSelection.load_npz(path)
        return task.rows(sel, "train"), task.rows(sel, "test")
    with np.load(path, allow_pickle=False) as z:
        return np.sort(z["train_index"]), np.sort(z["test_index"])


def check_saved_selection(task: Task, folder: Path, split: Split) -> None:
    """A DataError when ``folder`` holds another selection for this (budget, seed): the labels, the split or the
    sampling changed since those rows were scored."""
    path = selection_path(folder, split)
    if not path.is_file():
        return
    try:
        train, test = _saved_rows(task, path)
    except (DataError, KeyError, ValueError, IndexError):
        train, test = np.zeros(0), np.zeros(0)
    if not (np.array_equal(train, split.train) and np.array_equal(test, split.test)):
        if (task.counted == "subjects" and all(np.all(a < len(task.units)) for a in (train, test))
                and set(task.units[train.astype(int)]) & set(task.units[test.astype(int)])):
            raise DataError(f"'{path}' holds draws an older geomed-ssl made, which split a subject's volumes "
                            "between training and test (its rows scored subjects they trained on); choose another "
                            "--out, or pass --overwrite to start again.")
        raise DataError(f"'{path}' holds other training / test {task.unit}s than this command draws for "
                        f"{split.budget.slug} seed {split.seed} (the labels, the images or labels.* settings "
                        "changed); choose another --out, or pass --overwrite to start again.")


def save_split(task: Task, folder: Path, split: Split) -> None:
    """``selections/<budget>_seed<seed>.npz``: the rows every encoder and baseline used (written once)."""
    path = selection_path(folder, split)
    if path.is_file():
        return
    path.parent.mkdir(exist_ok=True)
    if task.kind == "segment":
        split.selection.save_npz(path)
    else:
        save_selection(path, [r.path for r in task.records], task.values, split.train, split.test,
                       task.class_names, split.notes)


def held_out_lines(splits: list[Split], task: Task) -> tuple[list[str], str | None]:
    """``summary.md``'s list of the images each seed holds out (``images`` split; the same for every budget), and a
    line naming seeds that hold out the same images, if any (with few images a seed often repeats another's split)."""
    paths = [str(r.path) for r in task.records]
    stacked = any(len(getattr(r, "paths", [])) > 1 for r in task.records)  # data.channels: a sample is a folder
    if stacked or len({os.path.basename(p) for p in paths}) == 1 < len(paths):  # a folder per subject: name it
        cases = [getattr(r, "case", None) for r in task.records]  # a case of a folder of several: folder/case
        paths = [os.path.join(os.path.dirname(p), c) if c else os.path.dirname(p) for p, c in zip(paths, cases)]
    common = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    lines, seen, alike = [], set(), {}
    for split in splits:
        if split.seed in seen:
            continue
        seen.add(split.seed)
        names = [os.path.relpath(paths[f], common) for f in np.unique(task.files[split.test])]
        lines.append(f"- seed {split.seed}: {', '.join(names)}")
        alike.setdefault(tuple(names), []).append(str(split.seed))
    repeated = [seeds for seeds in alike.values() if len(seeds) > 1]
    return lines, ("Seeds " + "; ".join(", ".join(s) for s in repeated) + " hold out the same images: their rows "
                   "repeat one split of the images (only the labels drawn in it differ), so the spread and the "
                   "intervals over them leave out how the scores move with the held-out subjects or scenes. With few "
                   "images there are few ways to hold out half: choose seeds whose held-out images differ (listed "
                   "under Held-out images in summary.md).") if repeated else None


def shortfalls(splits: list[Split]) -> list[str]:
    """Each class that got fewer labels than a budget asks for, once: the first note about it, and the other budgets
    whose draws say something of it too (a larger budget falls further short)."""
    first: dict[str, tuple[str, Split]] = {}
    also: dict[str, list[str]] = {}
    for split in splits:
        for note in split.notes:
            name = note.split(":", 1)[0]
            if name not in first:
                first[name], also[name] = (note, split), []
            elif split.budget.slug not in (first[name][1].budget.slug, *also[name]):
                also[name].append(split.budget.slug)
    return [f"{note} ({split.budget.slug}, seed {split.seed})"
            + (f"; short at {', '.join(also[name])} too" if also[name] else "")
            for name, (note, split) in first.items()]


def short_budgets(splits: list[Split]) -> set[float]:
    """The budgets (labels per class, or fractions) at which a draw left some class short of what they ask."""
    return {split.budget.x for split in splits if split.notes}


def with_earlier_splits(folder: Path, splits: list[Split], rows: Sequence[dict[str, str]]) -> list[Split]:
    """``splits`` and, for each other (budget, seed) of ``rows`` (an earlier compare into ``folder``), its saved
    selection's notes (a ``Split`` without samples), so summary.md and curve.png say every budget's shortfalls."""
    have = {(split.budget.slug, split.seed) for split in splits}
    out = list(splits)
    for row in rows:
        budget = (Budget(per_class=int(row["labels_per_class"])) if row["labels_per_class"]
                  else Budget(fraction=float(row["label_fraction"])))
        split = Split(budget, int(row["seed"]), np.zeros(0, np.int64), np.zeros(0, np.int64), [])
        if (budget.slug, split.seed) in have:
            continue
        have.add((budget.slug, split.seed))
        try:
            with np.load(selection_path(folder, split), allow_pickle=False) as z:
                split.notes = [str(n) for n in json.loads(str(z["meta"])).get("notes", [])]
        except (OSError, KeyError, ValueError):
            continue  # no selection saved for it: nothing to say
        out.append(split)
    return out


def warn_notes(splits: list[Split]) -> None:
    """:func:`shortfalls`, as warnings."""
    for line in shortfalls(splits):
        log.warning("warning: %s", line)


# The rules the rows were made by, recorded so a compare never mixes rows of two of them: 2 = the logistic
# regression weighs samples by finetune.class_weights (2026-12-03; folders without it were fitted balanced); 3 = a
# volume's dice leaves out the background (label value 0; before, every class); 4 (class folders) = an image's
# features hold the encoder's normed CLS token beside its pooled blocks (2026-12-03).
PROBE_RULES = {"segment": 3, "classify": 4}
NONE_FINETUNE = "every block at the full rate"  # since 2026-12-07 (finetune.fit.from_scratch); before, layer decay


def data_signature(task: Task) -> dict[str, Any]:
    """What the rows were computed from beyond the paths: a digest of the labels as read (values at the labelled
    positions) and each image file's size and modification time, so data changed in place is not mixed in."""
    h = hashlib.sha256()
    if task.kind == "segment":
        for values, mask in zip(task.arrays, task.masks):
            h.update(np.ascontiguousarray(mask).tobytes())
            h.update(np.ascontiguousarray(values[mask], dtype=np.int64).tobytes())
    else:
        h.update(np.ascontiguousarray(task.values, dtype=np.int64).tobytes())
    paths = sorted({p for r in task.records for p in r.paths})
    return {"labels_sha256": h.hexdigest(), "image_files": [[p, *s] for p, s in zip(paths, file_stamps(paths))]}


def settings_record(task: Task, split: str, budget_kind: str) -> str:
    """``compare.json``: what a resumed compare must share with the rows already in results.csv."""
    grouped = {}
    if task.grounds is not None:  # copies of one label map grouped as one ground (since 2026-12-05): the draws
        # differ from a folder that took them apart, so such a folder is refused, not continued
        by_content = label_groups(task.grounds, len(task.grounds))
        if not np.array_equal(by_content, label_groups(task.label_paths, len(task.label_paths))):
            grouped = {"grounds": by_content.tolist()}
    return json.dumps({"task": task.kind, "split": split, "budget": budget_kind, "classes": task.class_names,
                       "label_files": task.label_paths, "images": [r.path for r in task.records],
                       "probe_rules": PROBE_RULES[task.kind], "none": "one initialisation per seed",
                       "none_finetune": NONE_FINETUNE,
                       **grouped, **data_signature(task)}, indent=1) + "\n"
