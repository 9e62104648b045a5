"""``finetune segment``: a pretrained encoder (or none) + a few labelled pixels/voxels → a segmentation model,
evaluated on every labelled position it did not train on."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from geomed_ssl.checkpoint import save_model
from geomed_ssl.config import Recipe, as_recipe, as_tuple, spatial_dims
from geomed_ssl.config.loading import warn_pretrain_only
from geomed_ssl.data.catalog import reported_already, scan
from geomed_ssl.data.labelled import warn_sided_flips
from geomed_ssl.finetune.fit import (FinetuneResult, check_trainer_settings, class_weights_from_counts, data_meta,
                                     encoder_and_stats, finetune_inputs, fit_supervised, from_scratch, no_model,
                                     not_evaluated, save_recipe, seed_new_head, with_encoder_naming)
from geomed_ssl.labels.pairs import label_colors, label_grounds, label_sources, read_label_pairs
from geomed_ssl.finetune.probe import fit_probe_model
from geomed_ssl.labels.sampling import BUDGET_NOTE, select_labels, training_area_maps
from geomed_ssl.finetune.seg_data import SparseLabelDataset
from geomed_ssl.errors import ConfigError, DataError
from geomed_ssl.files.listing import content_key
from geomed_ssl.models.device import resolve_device
from geomed_ssl.models.model_data import naming_hint, note_encoder_naming
from geomed_ssl.models.seg_decoder import SegmentationModel
from geomed_ssl.models.probe import check_class_weights
from geomed_ssl.outdirs import check_out_dir, prepare_out_dir
from geomed_ssl.process import keeps_process_state, stops_as

log = logging.getLogger("geomed_ssl")


def default_layers(depth: int) -> list[int]:
    """Three taps at 1/4, 1/2 and 3/4 of the depth (MONAI UNETR's 3, 6, 9 for 12 blocks); the decoder also reads
    the encoder's normed final output."""
    return sorted({max(0, min(depth - 1, round(depth * f))) for f in (0.25, 0.5, 0.75)})


def _train(enc: Any, recipe: Recipe, selection: Any, records: list[Any], stats: Any, window: tuple[int, ...],
           allowed: list[np.ndarray] | None, out: Path, progress: bool) -> SegmentationModel:
    """The UNETR or linear head (and the encoder unless frozen) trained on windows around the training pixels."""
    layers = recipe.finetune.layers if recipe.finetune.layers is not None else default_layers(enc.config.depth)
    k = len(selection.classes)
    seed_new_head(recipe)
    model = SegmentationModel(enc, k, layers, feature_size=recipe.finetune.feature_size, head=recipe.finetune.head)
    targets = [selection.target(i, "train").astype(np.int16) for i in range(len(records))]
    dataset = SparseLabelDataset(records, targets, stats, recipe.data, window, seed=recipe.labels.seed,
                                 allowed=allowed, aug_cfg=recipe.augment)
    counts = np.bincount(selection.class_map.encode(selection.train_value), minlength=k)
    fit_supervised(model, dataset, recipe, k, out, class_weights_from_counts(counts, recipe.finetune.class_weights),
                   progress=progress)
    return model


def training_window(recipe: Recipe, encoder: str | Path | None) -> list[int]:
    """The window a segmentation fine-tune trains on: ``finetune.window``, else the encoder's, else (``none``)
    ``data.patch_size``."""
    from geomed_ssl.checkpoint import read_encoder_config

    nd = spatial_dims(recipe.data)
    if recipe.finetune.window:
        return list(as_tuple(recipe.finetune.window, nd, "finetune.window"))
    own = list(as_tuple(recipe.data.patch_size, nd, "data.patch_size"))
    if encoder is None or str(encoder).lower() == "none":
        return own
    window = [int(n) for n in read_encoder_config(encoder)[0].img_size]
    if len(window) != nd:  # before the images are scanned with the encoder's naming (a 2D sensor's for volumes)
        data = {2: "rasters", 3: "volumes"}
        raise ConfigError(f"encoder '{encoder}' is {len(window)}D ({data[len(window)]}) but data.kind is "
                          f"'{recipe.data.kind}' ({data[nd]} are to be fine-tuned): give an encoder pretrained on "
                          f"{data[nd]}, or --encoder none.")
    return window


@keeps_process_state
def finetune_segment(recipe: Recipe | str | Path | None, encoder: str | Path | None, images: str | Path,
                     labels: str | Path | None, out_dir: str | Path, *, overrides: list[str] | None = None,
                     overwrite: bool = False, progress: bool = True, strict: bool = False) -> FinetuneResult:
    """Fine-tune a UNETR-style segmentation model with the labels the ``labels`` section selects, then evaluate
    on the held-out labelled positions. Writes the FT_DIR described in docs/cli.md. ``strict``: problem files and
    band names assigned by position are errors (else skipped / warned about)."""
    from geomed_ssl.finetune.evaluate import evaluate_segmentation
    from geomed_ssl.finetune.trained import geo_grid, untested_by_earlier_fine_tune

    out = Path(out_dir)
    inputs = finetune_inputs(recipe, encoder, images=images, labels=labels)
    check_out_dir(out, command="finetune", inputs=inputs, overwrite=overwrite)  # FT_DIR is made once all is valid
    warn_pretrain_only(overrides, "finetune")
    recipe, naming = with_encoder_naming(as_recipe(recipe, overrides), encoder, overrides)
    window = training_window(recipe, encoder)
    try:
        catalog = scan(images, dataclasses.replace(recipe.data, patch_size=window),
                       strict=strict, names_by_position="error" if strict else "warn")  # too small: for that window
    except DataError as err:
        raise naming_hint(err, naming) from None
    if not reported_already():  # (the demo's probe: its pretraining listed the files)
        log.info(catalog.summary())
    note_encoder_naming(catalog.records, naming)
    catalog.warn_problems()
    lab = recipe.labels
    pairs, arrays, masks = read_label_pairs(catalog.records, labels, lab, recipe.data)
    grounds = label_grounds(pairs, arrays)  # copies of one label map beside each date: one ground
    selection = select_labels(arrays, masks, lab, paths=[os.path.abspath(p) for _, p in pairs],  # evaluate finds them
                              sources=label_sources([p for _, p in pairs], recipe.data), grounds=grounds)
    selection.images = [os.path.abspath(r.path) for r, _ in pairs]  # evaluate finds them with an edited label copy
    trained = set(np.unique(selection.train_file).tolist())  # and a renamed copy of an image and its label file
    selection.copies = [content_key([p, *(r.paths or [r.path])]) if i in trained else ""
                        for i, (r, p) in enumerate(pairs)]
    selection.geo = [geo_grid(r) if i in trained else None for i, (r, _) in enumerate(pairs)]
    untested_by_earlier_fine_tune(encoder, selection, recipe.data, [[p, *(r.paths or [r.path])] for r, p in pairs],
                                  [geo_grid(r) for r, _ in pairs])
    log.info(selection.summary(notes=False))
    for note in selection.notes:  # a budget short of what was asked: a warning, kept under --quiet, as compare says it
        log.warning("warning: %s", note, extra={BUDGET_NOTE: True})
    if untrained := selection.untrained():
        log.warning(f"warning: no training label for {', '.join(untrained)}: the model scores them but its output "
                    "for them is untrained, so its maps may still show them by chance; label more of them (half of "
                    "a class's labels stay for testing), or merge them into another class with labels.remap.")
    warn_sided_flips(recipe, arrays, masks, selection.classes)
    enc, stats, source, catalog = encoder_and_stats(encoder, recipe, catalog)
    recipe = from_scratch(recipe, encoder)
    by_path = {r.path: r for r in catalog.records}
    check_trainer_settings(recipe)
    check_class_weights(recipe.finetune.class_weights, len(selection.classes))  # before FT_DIR is made
    prepare_out_dir(out, command="finetune", inputs=inputs, overwrite=overwrite)
    save_recipe(recipe, out / "config.yaml")
    selection.save_npz(out / "labels_used.npz")
    window = tuple(window)  # encoder_and_stats refused an encoder of the other dimensionality
    records = [by_path[r.path] for r, _ in pairs]  # read as the encoder needs
    allowed = training_area_maps(arrays, masks, lab, grounds)
    if recipe.finetune.head == "probe":
        with stops_as(no_model(out)):
            model = fit_probe_model(enc, recipe, records, selection, stats, allowed)
    else:
        model = _train(enc, recipe, selection, records, stats, window, allowed, out, progress)
    head = {"kind": model.head, "layers": list(model.layers), "feature_size": recipe.finetune.feature_size}
    if model.head == "probe":
        knn = recipe.finetune.probe == "knn"
        head.update(probe=recipe.finetune.probe, memory=int(model.decoder.memory.shape[0]) if knn else 0)
    colors = ((label_colors([p for _, p in pairs], selection.classes) if not recipe.labels.remap else None)
              or [None] * len(selection.classes))  # a land-cover map's palette, for the class maps predict writes
    meta = {"task": "segment", "head": head,
            "classes": [{"index": i, "value": v, "name": n} | ({"color": c} if c else {})
                        for i, (v, n, c) in enumerate(zip(selection.classes, selection.class_names, colors))],
            "window": list(window), "encoder_source": source, "data": data_meta(recipe.data)}
    with stops_as(no_model(out)):
        meta = save_model(model, out / "model", meta)
    model.to(resolve_device("cpu" if recipe.train.accelerator == "cpu" else "auto"))  # whole-image evaluation
    scored_by = ["--images", images, *(["--labels", labels] if labels is not None else [])]
    with stops_as(not_evaluated(out, scored_by)):
        metrics = evaluate_segmentation(model, meta, records, arrays, selection, out, recipe.data,
                                        check_ranges=False)  # said when training began
    return FinetuneResult(out, metrics, selection)
