"""``finetune classify``: folder-per-class images (EuroSAT style), k labelled images per class, a linear probe, an
MLP head or a full fine-tune; evaluated on every image it did not train on."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from geomed_ssl.checkpoint import fine_tune_of, save_model
from geomed_ssl.config import Recipe, as_recipe
from geomed_ssl.config.loading import warn_pretrain_only
from geomed_ssl.data.catalog import Catalog
from geomed_ssl.data.labelled import ImageDataset
from geomed_ssl.errors import ConfigError, DataError
from geomed_ssl.models.model_data import naming_hint, note_encoder_naming
from geomed_ssl.finetune.fit import (FinetuneResult, check_trainer_settings, class_weights_from_counts, data_meta,
                                     encoder_and_stats, finetune_inputs, fit_supervised, from_scratch, no_model,
                                     not_evaluated, save_recipe, seed_new_head, with_encoder_naming)
from geomed_ssl.files.listing import content_key
from geomed_ssl.labels.classes import class_inputs, image_name, scan_classes
from geomed_ssl.labels.sampling import BUDGET_NOTE, split_images
from geomed_ssl.labels.subjects import grouped, subject_units
from geomed_ssl.finetune.trained import untested_images
from geomed_ssl.finetune.metrics import classification_metrics, confusion_matrix, write_metrics
from geomed_ssl.models.cls_heads import ClassificationModel
from geomed_ssl.models.device import model_device
from geomed_ssl.models.probe import check_class_weights
from geomed_ssl.outdirs import check_out_dir, prepare_out_dir
from geomed_ssl.outfiles import atomic_path
from geomed_ssl.process import keeps_process_state, stops_as

log = logging.getLogger("geomed_ssl")


class Repeat(Dataset):
    """Index ``i`` → image ``order[i % n]`` with a seeded shuffle per pass: an endless stream for step-based
    training. ``base`` is read at ``image + len(base) * pass`` (an ``ImageDataset`` reads the image modulo its
    length and seeds its augmentation by that index), so each pass augments an image anew."""

    def __init__(self, base: Dataset, indices: np.ndarray, seed: int):
        self.base, self.indices, self.seed = base, np.asarray(indices), seed

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self.indices)
        order = np.random.default_rng([self.seed, i // n]).permutation(n)
        return self.base[int(self.indices[order[i % n]]) + len(self.base) * (i // n)]


def extract_features(model: ClassificationModel, dataset: ImageDataset, indices: np.ndarray, batch: int = 32,
                     ) -> torch.Tensor:
    """Pooled frozen-encoder features (N, D) of ``indices`` (images of one size are batched together)."""
    feats = []
    model.eval()
    device = model_device(model)
    with torch.no_grad():
        for start in range(0, len(indices), batch):
            images = [dataset.image(int(i))[0] for i in indices[start:start + batch]]
            if len({im.shape for im in images}) == 1:
                feats.append(model.features(torch.from_numpy(np.stack(images)).to(device)).cpu())
            else:
                feats += [model.features(torch.from_numpy(im)[None].to(device)).cpu() for im in images]
    return torch.cat(feats)


def train_probe(model: ClassificationModel, feats: torch.Tensor, labels: torch.Tensor, recipe: Recipe,
                weights: torch.Tensor | None) -> None:
    """Train only the head on cached features (full batch AdamW, warmup + cosine)."""
    from geomed_ssl.train.module import warmup_cosine

    from geomed_ssl.config.lr_check import warn_schedule

    f = recipe.finetune
    warn_schedule(f.base_lr, f.warmup_steps, f.max_steps, "finetune")
    torch.manual_seed(recipe.labels.seed)
    head = model.head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=f.base_lr, weight_decay=f.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, f.warmup_steps, f.max_steps))
    for _ in range(f.max_steps):
        loss = torch.nn.functional.cross_entropy(head(feats), labels, weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    head.eval()


def save_selection(path: Path, paths: Sequence[str], labels: np.ndarray, train: np.ndarray, test: np.ndarray,
                   names: Sequence[str], notes: Sequence[str], earlier: Path | None = None,
                   copies: Sequence[str] | None = None) -> None:
    """``labels_used.npz`` of a classifier; ``earlier`` the fine-tune folder whose model's encoder was the start
    (evaluate scores that fine-tune's trained images apart too); ``copies``: per image, the
    ``files.listing.content_key`` of a training image's files ("" for the others: evaluate finds renamed copies)."""
    meta = {"version": 1, "task": "classify", "class_names": list(names), "notes": list(notes), "paths": list(paths),
            **({"copies": list(copies)} if copies is not None else {})}
    if earlier is not None:
        meta["encoder_fine_tune"] = str(earlier.resolve())
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, meta=np.array(json.dumps(meta)), labels=labels, train_index=train, test_index=test)


@keeps_process_state
def finetune_classify(recipe: Recipe | str | Path | None, encoder: str | Path | None, data: str | Path,
                      out_dir: str | Path, *, overrides: list[str] | None = None, overwrite: bool = False,
                      progress: bool = True, strict: bool = False) -> FinetuneResult:
    """Train a classifier with the images the ``labels`` section selects per class (``data``: class folders, or a
    classes CSV: :func:`~geomed_ssl.labels.classes.scan_classes`); evaluate on the rest.
    ``strict``: problem files and band names assigned by position are errors (else skipped / warned about)."""
    inputs = {**finetune_inputs(recipe, encoder), **class_inputs(data)}
    check_out_dir(out_dir, command="finetune", inputs=inputs, overwrite=overwrite)  # FT_DIR is made once all is valid
    warn_pretrain_only(overrides, "finetune")
    recipe, naming = with_encoder_naming(as_recipe(recipe, overrides, task="classify"), encoder, overrides)
    f, lab = recipe.finetune, recipe.labels
    if lab.class_names:
        log.warning("warning: labels.class_names names the values of label maps; class folders (or a classes CSV) "
                    "name their classes, so it is not used here.")
    if lab.split != "random":
        raise ConfigError(f"labels.split {lab.split} is for label maps (finetune segment); classification data is "
                          "split by image already: leave labels.split at random.")
    out = Path(out_dir)
    try:
        records, labels, names = scan_classes(data, recipe.data, strict=strict)
    except DataError as err:
        raise naming_hint(err, naming) from None
    note_encoder_naming(records, naming)
    units = subject_units([r.path for r in records], labels, names) if recipe.data.kind == "volume" else None
    train, test, notes = split_images(labels, lab.per_class, lab.fraction, lab.seed, names, lab.test_fraction, units)
    earlier = fine_tune_of(encoder)  # a fine-tune folder as the encoder: what trained it is no test
    test = untested_images(earlier, [r.path for r in records], test, [r.paths or [r.path] for r in records])
    for note in notes:  # a budget short of what was asked: a warning, kept under --quiet, as compare says it
        log.warning("warning: %s", note, extra={BUDGET_NOTE: True})
    if len(train) < 2:
        raise DataError(f"{len(train)} training image(s) under '{data}': a classifier needs at least two (each "
                        "class keeps half its images for testing); give more images per class or raise "
                        "--labels-per-class / --label-fraction.")
    if f.head == "linear" and not (f.freeze_encoder and not f.unfreeze_after_steps) and f.batch_size < 2:
        raise ConfigError("finetune.batch_size must be at least 2 to train the linear head (its BatchNorm "
                          f"normalises over the batch), got {f.batch_size}.")
    untrained = [n for n, c in zip(names, np.bincount(labels[train], minlength=len(names))) if c == 0]
    if untrained:
        unit = "subjects" if grouped(units) else "images"
        log.warning(f"warning: no training image for class(es) {', '.join(untrained)} (a class needs at least two "
                    f"{unit}: half stay for testing); its output for them is untrained, so it may still give them by "
                    f"chance: add {unit} to their folders.")
    catalog = Catalog(records=records, problems=[], kind=recipe.data.kind, band_names=records[0].band_names,
                      wavelengths=records[0].wavelengths, bandwidths=records[0].bandwidths)
    enc, stats, source, catalog = encoder_and_stats(encoder, recipe, catalog)
    recipe = from_scratch(recipe, encoder)
    records = catalog.records  # read as the encoder needs (same order)
    check_trainer_settings(recipe)
    check_class_weights(f.class_weights, len(names))  # before FT_DIR is made
    prepare_out_dir(out, command="finetune", inputs=inputs, overwrite=overwrite)
    save_recipe(recipe, out / "config.yaml")
    trained = set(train.tolist())
    copies = [content_key(r.paths or [r.path]) if i in trained else "" for i, r in enumerate(records)]
    save_selection(out / "labels_used.npz", [r.path for r in records], labels, train, test, names, notes, earlier,
                   copies)
    seed_new_head(recipe)
    model = ClassificationModel(enc, len(names), head=f.head, pool=f.pool)
    dataset = ImageDataset(records, labels, stats, recipe.data, enc.config.patch_size)
    counts = np.bincount(labels[train], minlength=len(names))
    weights = class_weights_from_counts(counts, f.class_weights)
    if f.freeze_encoder and not f.unfreeze_after_steps:
        model.encoder.requires_grad_(False)
        with stops_as(no_model(out)):
            feats = extract_features(model, dataset, train)
            train_probe(model, feats, torch.from_numpy(labels[train]), recipe, weights)
        mode = f"{f.head} probe on frozen features"
    else:
        stream = Repeat(ImageDataset(records, labels, stats, recipe.data, enc.config.patch_size, augment=True,
                                     seed=lab.seed, size=common_size(dataset, train), aug_cfg=recipe.augment),
                        train, lab.seed)
        fit_supervised(model, stream, recipe, len(names), out, weights, progress=progress)
        mode = ("full fine-tune" if not f.freeze_encoder
                else f"{f.head} head, encoder unfrozen after {f.unfreeze_after_steps} steps")
    model.eval()
    meta = {"task": "classify", "head": {"kind": f.head, "pool": f.pool, "mode": mode},
            "classes": [{"index": i, "value": i, "name": n} for i, n in enumerate(names)],
            "window": list(enc.config.img_size), "encoder_source": source, "data": data_meta(recipe.data)}
    with stops_as(no_model(out)):
        meta = save_model(model, out / "model", meta)
    with stops_as(not_evaluated(out, ["--data", data])):
        metrics = evaluate_images(model, dataset, labels, {"train": train, "test": test}, names, out, notes)
    return FinetuneResult(out, metrics, None)


def common_size(dataset: ImageDataset, indices: np.ndarray) -> tuple[int, ...] | None:
    """The per-axis smallest shape of the training images as read (volumes resampled) when they differ, else None:
    each training step then sees a crop of that size of every image, so images of several sizes share a batch
    (evaluation and probes read the whole images). An image with a side under half the median of the others (a
    thick-slice scan among thin-slice ones) is left out of that minimum and padded to it instead, with a warning:
    it would shrink every training crop to its size."""
    shapes = [dataset.image(int(i))[0].shape[1:] for i in indices]
    if len(set(shapes)) < 2:
        return None
    sides = np.asarray(shapes)
    small = [k for k, s in enumerate(shapes) if any(s < np.median(np.delete(sides, k, axis=0), axis=0) / 2)]
    if len(small) == len(shapes):  # no typical size to pad to
        small = []
    size = tuple(map(min, zip(*[s for k, s in enumerate(shapes) if k not in small])))
    if small:
        log.warning("warning: %d training image(s) are under half the others' size along a side (e.g. '%s': %s as "
                    "read); they are padded to the %s crop the other training images are cut to.", len(small),
                    dataset.records[int(indices[small[0]])].path, "x".join(map(str, shapes[small[0]])),
                    "x".join(map(str, size)))
    log.info("note: the %d training images come in %d sizes; each training step sees a %s crop of them (the "
             "smallest size), evaluation the whole images.", len(indices), len(set(shapes)), "x".join(map(str, size)))
    return size


def predict_images(model: ClassificationModel, dataset: ImageDataset, indices: np.ndarray) -> np.ndarray:
    feats = extract_features(model, dataset, indices)
    with torch.no_grad():
        return model.head(feats.to(model_device(model))).argmax(1).cpu().numpy()


def evaluate_images(model: ClassificationModel, dataset: ImageDataset, labels: np.ndarray,
                    splits: dict[str, np.ndarray], names: Sequence[str], out: Path,
                    notes: Sequence[str] = ()) -> dict[str, Any]:
    """Metrics per split; ``metrics.json``, ``confusion.png`` (test split) and ``images.csv`` (each image's split,
    class and predicted class: which ones were missed) in ``out``."""
    results: dict[str, Any] = {"classes": [{"value": i, "name": n} for i, n in enumerate(names)], "notes": list(notes)}
    rows = []
    for which, idx in splits.items():
        pred = predict_images(model, dataset, idx) if len(idx) else np.zeros(0, int)
        cm = confusion_matrix(labels[idx], pred, len(names))
        results[which] = {**classification_metrics(cm), "n": int(len(idx))}
        if which == "test":
            results[which]["confusion"] = cm.tolist()
        records = [dataset.records[i] for i in idx]
        rows += [(image_name(r), which, names[t], names[q])
                 for r, t, q in zip(records, labels[idx], pred)]
    write_metrics(out, results, names, [("file", "split", "class", "predicted"),
                                        *sorted(rows, key=lambda row: (row[1] != "test", row[0]))])
    return results
