"""Where ``compare``'s rows come from: the recipe (by default the first RUN_DIR's), the encoders (loaded and
band-checked against the data before anything is written) and ``none``, the first encoder's architecture at
random initialisation (a new one per label seed) with the same normalisation statistics."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from geomed_ssl.checkpoint import load_encoder, read_encoder_config, save_encoder
from geomed_ssl.compare.options import NONE, CompareOptions
from geomed_ssl.compare.task import Task
from geomed_ssl.config import CLS_HEADS, SEG_HEADS, Recipe, as_recipe, sets_key
from geomed_ssl.config.loading import override_list, warn_pretrain_only
from geomed_ssl.config.sections import section_dict
from geomed_ssl.data.stats import BandStats
from geomed_ssl.errors import ConfigError, DataError, GeomedError
from geomed_ssl.finetune.fit import RANDOM_INIT, encoder_and_stats
from geomed_ssl.methods.base import mix_seed
from geomed_ssl.models.encoder import ViTEncoder
from geomed_ssl.outdirs import same_place

log = logging.getLogger("geomed_ssl")


@dataclass
class EncoderSource:
    """One encoder as compare uses it: the module, its statistics and the task's records read as it needs."""

    name: str  # as given on the command line, or "none"
    encoder: ViTEncoder
    stats: BandStats
    records: list[Any]  # the task's records (same order), bands picked / ordered for this encoder
    path: str | None = None  # what `finetune` loads it from (none: the export in CMP_DIR/encoder_none_seed<seed>)


def recipe_path(options: CompareOptions, recipe: Recipe | str | Path | None) -> Recipe | Path:
    """``--recipe`` (from Python a path or a ``Recipe``), else the ``config.yaml`` of the first RUN_DIR (beside an
    exported ``encoder/`` too)."""
    if isinstance(recipe, Recipe):
        return recipe
    if recipe is not None:
        return Path(recipe)
    for enc in options.pretrained:
        for folder in (Path(enc), Path(enc).parent):
            if (folder / "config.yaml").is_file():
                return folder / "config.yaml"
    first = options.pretrained[0] if options.pretrained else None
    where = f"the encoder '{first}' has no config.yaml beside it" if first else "only `none` is given"
    raise ConfigError(f"{where}; give the recipe with --recipe RECIPE (the one the encoders were pretrained with).")


OWN_OPTIONS = {"labels.split": "--split", "labels.per_class": "--labels-per-class",
               "labels.fraction": "--label-fraction"}  # recipe keys compare's options set for each run


def load_compare_recipe(path: Recipe | Path, overrides: list[str] | None, task_kind: str) -> Recipe:
    """The recipe for ``task_kind`` (segment / classify, from the labels given). A pretraining run's config.yaml
    names a head for its own default task (a UNETR decoder for segmentation); when that head does not suit this task
    and no ``--set finetune.head`` says otherwise, the task's first head is used and said so."""
    overrides = override_list(overrides)
    warn_pretrain_only(overrides, "compare")
    for key, option in OWN_OPTIONS.items():
        if sets_key(overrides, key):  # each run sets it from compare's own option: a --set would be dropped
            raise ConfigError(f"compare sets {key} for each run from {option}; give {option} instead of --set "
                              f"{key}=....")
    heads = SEG_HEADS if task_kind == "segment" else CLS_HEADS
    if not sets_key(overrides, "finetune.head"):
        head = as_recipe(path, overrides).finetune.head
        if head not in heads:
            where = "the recipe" if isinstance(path, Recipe) else f"{path}"
            log.info(f"compare: {where}'s finetune.head '{head}' is not a {task_kind} head; using '{heads[0]}' "
                     f"(--set finetune.head=... to choose: {', '.join(heads)}).")
            overrides.append(f"finetune.head={heads[0]}")
    return as_recipe(path, [*overrides, f"finetune.task={task_kind}"])


def _task_records(task: Task, catalog: Any) -> list[Any]:
    by_path = {r.path: r for r in catalog.records}
    return [by_path[r.path] for r in task.records]


def load_sources(options: CompareOptions, recipe: Recipe, task: Task) -> list[EncoderSource]:
    """Every encoder of ``options`` loaded as ``finetune`` loads it (band rule, dimensionality, value ranges
    checked; a mismatch is the usual one-line error), ``none`` last: the first one's architecture without weights
    (``meta`` tensors), the template of :func:`none_sources`."""
    sources: list[EncoderSource] = []
    for name in options.pretrained:
        refuse_trained_on_these_labels(name, task)
        enc, stats, _, catalog = encoder_and_stats(name, recipe, task.catalog)
        sources.append(EncoderSource(name, enc.eval(), stats, _task_records(task, catalog), name))
    if sources:
        first = sources[0]
        sources.append(EncoderSource(NONE, random_like(first.encoder), first.stats, first.records))
    else:
        enc, stats, _, catalog = encoder_and_stats(None, recipe, task.catalog)
        sources.append(EncoderSource(NONE, enc.eval(), stats, _task_records(task, catalog)))
    order = {n: i for i, n in enumerate(options.encoders)}
    return sorted(sources, key=lambda s: order[s.name])


def refuse_trained_on_these_labels(name: str, task: Task) -> None:
    """An encoder that is a fine-tune of these labels (its ``labels_used.npz`` names one of the task's label files
    or images) is refused: its rows would score positions it was trained on, as test."""
    from geomed_ssl.checkpoint import fine_tune_of
    from geomed_ssl.finetune.trained import geo_grid, trained_among

    earlier = fine_tune_of(name)
    if earlier is None:
        return
    images = [r.paths or [r.path] for r in task.records]  # byte copies of its training files count too
    copies = [[p, *i] for p, i in zip(task.label_paths, images)] if task.kind == "segment" else images
    places = ([geo_grid(r) for r in task.records], task.shapes) if task.kind == "segment" else None
    if shared := trained_among(earlier, [*task.label_paths, *(r.path for r in task.records)], copies, places):
        raise ConfigError(f"encoder '{name}' is a fine-tune trained on labels of this task (e.g. '{shared[0]}', in its "
                          "labels_used.npz): its rows would score what it was trained on. Compare the pretraining run "
                          "it was fine-tuned from, or give labels it did not train on.")


# encoder settings that leave the network a probe reads as it is: statistics, pixel size, training-only settings, and
# the bands' names and wavelengths (compare meets them to the data's by name: two runs on differently named or
# ordered bands are one network)
ARCHITECTURE_FREE = ("stats", "scale", "drop_path", "band_names", "wavelengths", "bandwidths")


def architecture(config: Any) -> dict[str, Any]:
    """What makes two encoders one architecture: their ``EncoderConfig`` but for :data:`ARCHITECTURE_FREE`."""
    return {k: v for k, v in config.to_dict().items() if k not in ARCHITECTURE_FREE}


def other_architectures(names: Sequence[str], template: Any, loaded: dict[str, Any] | None = None) -> list[str]:
    """The encoders among ``names`` (as given: RUN_DIRs) whose architecture is not ``template``'s (``none``'s, the
    first encoder's): their difference with ``none`` is not pretraining's alone. Their configs: ``loaded`` (this
    run's), else read from disk (an earlier run's rows); one that cannot be read any more (moved since) is left
    out."""
    others = []
    for name in names:
        try:
            config = (loaded or {}).get(name) or read_encoder_config(name)[0]
        except (GeomedError, OSError, ValueError):
            continue
        if architecture(config) != architecture(template):
            others.append(name)
    return others


def warn_other_architectures(sources: list[EncoderSource]) -> None:
    """A warning when an encoder after the first is another architecture than ``none`` (the first one's)."""
    loaded = {s.name: s.encoder.config for s in sources}
    others = other_architectures([name for name in loaded if name != NONE], loaded[NONE], loaded)
    if others:
        log.warning(f"warning: {', '.join(repr(o) for o in others)} {'is' if len(others) == 1 else 'are'} another "
                    "architecture than the first encoder, whose random initialisation is `none`: "
                    f"{'its' if len(others) == 1 else 'their'} difference with `none` mixes architecture and "
                    "pretraining (marked so in the summary). To measure what pretraining gives "
                    f"{'it' if len(others) == 1 else 'each'}, run a compare with it first.")


def warn_fixed_windows(overrides: list[str] | None, sources: list[EncoderSource]) -> None:
    """A warning when ``--set data.patch_size`` is given with a pretrained encoder: its windows are its own."""
    if not sets_key(overrides, "data.patch_size"):
        return
    sizes = [f"'{s.name}' {'x'.join(str(v) for v in s.encoder.config.img_size)}" for s in sources if s.name != NONE]
    if sizes:
        log.warning(f"warning: --set data.patch_size does not change a pretrained encoder's windows: every protocol "
                    f"reads each encoder (and none, the first one's architecture) in windows of its own size "
                    f"({', '.join(sizes)}), as predict does (the fine-tune: finetune.window when set). To score "
                    "other windows, pretrain with that data.patch_size.")


def random_like(encoder: ViTEncoder, seed: int | None = None) -> ViTEncoder:
    """``encoder``'s architecture and data settings at a random initialisation drawn from ``seed``, in eval mode;
    ``seed`` None: without weights (``meta`` tensors), a template whose architecture is all that is read."""
    if seed is None:
        with torch.device("meta"):
            new = ViTEncoder(dataclasses.replace(encoder.config))
    else:
        torch.manual_seed(seed)
        new = ViTEncoder(dataclasses.replace(encoder.config))
    new.data_settings = getattr(encoder, "data_settings", None)
    return new.eval()


NONE_DIR = "encoder_none_seed"


def none_dir(out: Path, seed: int) -> Path:
    """``CMP_DIR/encoder_none_seed<seed>``: the random initialisation that label seed ``seed``'s rows use."""
    return out / f"{NONE_DIR}{seed}"


def none_sources(template: EncoderSource, seeds: Sequence[int], train_seed: int, out: Path, reuse: bool
                 ) -> dict[int, EncoderSource]:
    """``none`` for each label seed: the template's architecture and statistics at a random initialisation drawn
    from (``train.seed``, seed), so the paired differences with ``none`` spread over initialisations as well as
    samples; with ``reuse``, the weights an earlier run saved in the folder (:func:`reuse_none`)."""
    nones: dict[int, EncoderSource] = {}
    if reuse:  # every seed's, also those not asked for now: the folder's rows of all seeds pool into one `none`
        for folder in sorted(out.glob(f"{NONE_DIR}*")):
            check_none_like(template.encoder, folder)
    for seed in seeds:
        nones[seed] = EncoderSource(NONE, random_like(template.encoder, mix_seed(train_seed, seed)), template.stats,
                                    template.records)
        if reuse:
            reuse_none(nones[seed], none_dir(out, seed))
    return nones


def save_none(source: EncoderSource, folder: Path, recipe: Recipe) -> None:
    """``CMP_DIR/encoder_none_seed<seed>``: a random-init encoder, so the ``finetune`` protocol starts from exactly
    it."""
    source.path = str(folder)
    if not (folder / "config.json").is_file():
        save_encoder(source.encoder, folder, {"method": RANDOM_INIT,
                                              "recipe": {"data": section_dict(recipe.data)}})


def reuse_none(source: EncoderSource, folder: Path) -> None:
    """Take the weights of an earlier run's ``CMP_DIR/encoder_none_seed<seed>`` (when there is one), so every row
    of that seed, frozen or fine-tuned, before or after a resume (or a torch upgrade), compares with one random
    initialisation; a ``DataError`` when it was built for another architecture or other statistics than the first
    encoder gives now (its rows would pair with another reference)."""
    if not (folder / "config.json").is_file():
        return
    check_none_like(source.encoder, folder)
    source.encoder.load_state_dict(load_encoder(folder).state_dict())


def check_none_like(encoder: ViTEncoder, folder: Path) -> None:
    """A ``DataError`` when the random initialisation saved in ``folder`` (``CMP_DIR/encoder_none_seed<seed>``) was
    built for another architecture or other statistics than ``encoder``, the first encoder given now."""
    if not (folder / "config.json").is_file():
        return
    cfg, _ = read_encoder_config(folder)
    if cfg.to_dict() != encoder.config.to_dict():
        raise DataError(f"'{folder}' (the random initialisation this folder's rows compare with) was made for "
                        "another architecture or other normalisation statistics than the first encoder given now "
                        "has; list the same first encoder as before, or use another --out (or --overwrite).")


def weights_digest(encoder: ViTEncoder) -> str:
    """SHA-256 of the encoder's weights (names, shapes, dtypes and values), whatever file they came from."""
    h = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def encoders_record(sources: dict[str, EncoderSource]) -> dict[str, str]:
    """``encoders.json``: the weights digest of every pretrained encoder whose rows the folder holds."""
    return {name: weights_digest(s.encoder) for name, s in sources.items() if name != NONE}


def check_encoders_unchanged(path: Path, record: dict[str, str]) -> dict[str, str]:
    """Refuse to add to rows made from other weights under the same name (a RUN_DIR pretrained again since), or
    from the same weights under another name: the same folder (one encoder spelt two ways: a relative name is read
    from the working folder), or one whose earlier folder is gone (moved or renamed since); the record to save: the
    earlier one's encoders with this run's."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        earlier = None  # a folder from before encoders.json, or none yet
    if not isinstance(earlier, dict):
        return dict(record)
    twins = [(name, old) for name, digest in record.items() if name not in earlier
             for old, before in earlier.items() if before == digest]
    for name, old in twins:  # its rows would stand twice in the table under two names
        if same_place(old, name):  # run and /abs/run
            raise ConfigError(f"encoder '{name}' holds the same weights as '{old}', whose rows are in "
                              f"'{path.parent / 'results.csv'}'; give it as '{old}', as before (rows are named by the "
                              "encoder as given).")
        if not Path(old).exists():  # run moved or renamed to run2: every row would be computed again
            raise ConfigError(f"encoder '{name}' holds the same weights as '{old}', whose rows are in "
                              f"'{path.parent / 'results.csv'}' but which is not found from here (moved or renamed, or "
                              "a relative name given from another working folder?); under the new name its rows would "
                              f"stand twice in the table: give it as '{old}' from where it was given (or put it back), "
                              "continue into a new --out, or pass --overwrite to start again.")
    changed = [name for name, digest in record.items() if earlier.get(name, digest) != digest]
    if changed:
        raise ConfigError(f"'{changed[0]}' is not the encoder its rows in '{path.parent / 'results.csv'}' were "
                          "computed with (its weights changed since: pretrained again?); choose another --out, or "
                          "pass --overwrite to start again.")
    return {**earlier, **record}
