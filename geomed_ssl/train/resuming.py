"""What a pretraining run goes on with: its recipe (a new run's checked whole, a resumed run's as it was started:
its ``config.yaml``, else its checkpoint's, with this command's ``--set`` values), the schedule clock of a resumed
run, the checkpoint another rank chose, and the refusal of a resume whose method no longer fits its checkpoint."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from geomed_ssl.config import Recipe, as_recipe, load_recipe, recipe_with_overrides, spatial_dims
from geomed_ssl.errors import ConfigError, GeomedError
from geomed_ssl.methods import method_class, method_settings, with_method_settings
from geomed_ssl.methods.schedules import ScheduleClock
from geomed_ssl.train.checkpointing import (ResumePoint, find_resume_checkpoint, kept_as_started, read_checkpoint_info,
                                            resume_changes, resume_misfit)
from geomed_ssl.train.module import param_groups
from geomed_ssl.views.builder import build_views

log = logging.getLogger("geomed_ssl")


def resolve_recipe(recipe: Recipe | str | Path | None, out: Path, overrides: list[str] | None,
                   resume: bool) -> Recipe:
    """The run's recipe, read only and checked whole (the method's settings included): a resumed run continues with
    the ``config.yaml`` it was started with (plus any overrides, e.g. more steps)."""
    if not resume:
        source = "recipe" if isinstance(recipe, Recipe) else str(recipe or "defaults")
        return check_views(with_method_settings(as_recipe(recipe, overrides), source))
    saved = out / "config.yaml"
    if not saved.is_file():
        if not out.is_dir() or not any(out.iterdir()):
            raise GeomedError(f"--resume: there is no run in '{out}' to continue; start it without --resume.")
        return recipe_from_checkpoint(out, overrides)
    resumed = with_method_settings(load_recipe(saved, overrides), str(saved), saved=True)
    note_unread_recipe(recipe, saved, overrides)
    return kept_as_started(resumed, saved_settings(saved), overrides)


def saved_settings(path: Path) -> dict[str, Any] | None:
    """The recipe dict of a run's ``config.yaml`` as written (no defaults filled in); None when unreadable (it was
    read whole a moment before)."""
    import yaml

    from geomed_ssl.config.loading import RecipeLoader

    try:
        raw = yaml.load(path.read_text(), Loader=RecipeLoader) or {}
    except (OSError, yaml.YAMLError):
        return None
    return raw if isinstance(raw, dict) else None


def recipe_from_checkpoint(out: Path, overrides: list[str] | None) -> Recipe:
    """A resumed run whose ``config.yaml`` is gone: its recipe as its newest readable checkpoint holds it (written
    back as config.yaml when the run goes on), with a warning; none readable: an error that names the way out."""
    try:
        point = find_resume_checkpoint(out, announce=False)
    except GeomedError as err:
        raise GeomedError(f"--resume: '{out / 'config.yaml'}' is missing and {str(err).removeprefix('--resume: ')}")
    raw = point.info.get("recipe")
    if not isinstance(raw, dict):
        raise GeomedError(f"--resume: '{out / 'config.yaml'}' is missing and the checkpoint '{point.path}' holds no "
                          "recipe; start again with --overwrite (replaces the run) or choose another --out.")
    log.warning(f"warning: --resume: '{out / 'config.yaml'}' is missing; the run's recipe is read from its checkpoint "
                f"'{point.path.name}' (step {point.step}) and written back.")
    source = f"the recipe in {point.path}"
    resumed = with_method_settings(recipe_with_overrides(raw, overrides, source), source, saved=True)
    return kept_as_started(resumed, raw, overrides)


def check_views(recipe: Recipe) -> Recipe:
    """``recipe``, after its method's views are built once from it alone, so that what they refuse (crops that do
    not fit the window, date pairs for a method of one view) is refused before the data is scanned and its
    statistics computed; the spectral shift, which needs the bands' wavelengths, is checked with the data."""
    cls = method_class(recipe.method.name)
    augment = replace(recipe.augment, spectral_shift_p=0.0) if recipe.augment is not None else None
    build_views(cls.views_for(method_settings(recipe.method)), recipe.data, spatial_dims(recipe.data), augment,
                patch_size=recipe.model.patch_size)
    return recipe


def note_unread_recipe(recipe: Recipe | str | Path | None, saved: Path, overrides: list[str] | None = None) -> None:
    """A note when ``--resume`` is given a RECIPE whose settings differ from the run's own ``config.yaml`` (or that
    cannot be read): it is not read again, so an edit there does not apply (``--set`` changes a setting). Both are
    compared with this command's ``overrides`` applied, so the --set values the run was started with, given again,
    are no difference."""
    if recipe is None or isinstance(recipe, Recipe):
        return
    from geomed_ssl.train.checkpointing import flat_settings

    given = None
    for sets in (overrides, None):  # --set values the recipe cannot take: compare without them
        try:
            given, overrides = flat_settings(load_recipe(recipe, sets).to_dict()), sets
            break
        except GeomedError:
            continue
    if given is not None:
        kept = flat_settings(load_recipe(saved, overrides).to_dict())
        differ = [k for k in sorted(given) if k in kept and given[k] != kept[k] and given[k] not in (None, "auto")]
        if not differ:
            return
        what = (f"it differs in {', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''}: values set with --set "
                "when the run started, or edits since")
    else:
        what = "it cannot be read"
    log.info(f"note: --resume continues with the run's own {saved}; the recipe '{recipe}' given is not read again "
             f"({what}): change a setting of the resumed run with --set key=value.")


def resumed_clock(point: ResumePoint, max_steps: int, min_lr: float = 0.0, warmup_steps: int = 0) -> ScheduleClock:
    """The schedule clock of a run resumed from ``point`` that now ends at ``max_steps`` (see ScheduleClock);
    ``min_lr``: the resumed recipe's final rate, where a finished schedule stays (``warmup_steps``: one that ended
    inside its warmup stays at the rate it had reached)."""
    saved = point.info.get("schedule")
    clock = ScheduleClock.from_dict(saved) if saved else ScheduleClock(int(point.info["recipe"]["train"]["max_steps"]))
    new = clock.resumed(point.step, max_steps)
    planned = int(point.info["recipe"]["train"]["max_steps"])
    if point.step >= max_steps and max_steps == planned:
        log.info(f"note: the run already finished its {max_steps} steps (checkpoint at step {point.step}), so nothing "
                 f"is trained; to train longer, resume with --set train.max_steps=N (N > {point.step}).")
    elif point.step >= max_steps:
        log.info(f"note: the checkpoint is at step {point.step} of the {planned} the run was set for, and "
                 f"train.max_steps is now {max_steps}, so nothing is trained and the encoder stays at step "
                 f"{point.step}; to train on, resume with --set train.max_steps=N (N > {point.step}).")
    elif max_steps != clock.end:
        if clock(point.step) >= clock.total and warmup_steps >= clock.total:
            log.warning(f"the run ended inside its warmup (train.warmup_steps {warmup_steps} >= its {clock.total} "
                        f"steps): its {max_steps - point.step} extra steps run at the rate it had reached, constant; "
                        "to train on a full schedule, start a run with train.warmup_steps about 10 % of "
                        "train.max_steps.")
        elif clock(point.step) >= clock.total:
            log.warning(f"the run finished its schedules at step {point.step} (lr at train.min_lr): its "
                        f"{max_steps - point.step} extra steps run at their final values"
                        + (", and with train.min_lr 0 they change no weight; to train on, resume with --set "
                           "train.min_lr=... (e.g. a tenth of the peak rate) or start a longer run."
                           if not min_lr else "."))
        else:
            log.info(f"train.max_steps {clock.end} -> {max_steps}: the rest of the schedules (lr, and DINO's) "
                     f"stretches over steps {point.step}..{max_steps}, continuing from where it is.")
    return new


def resume_point(path: Path) -> ResumePoint:
    """The checkpoint another rank chose, read on this one."""
    try:
        return ResumePoint(path, *read_checkpoint_info(path))
    except (GeomedError, OSError) as reason:
        raise GeomedError(f"--resume: rank 0 continues from '{path}', which this rank cannot read ({reason}); "
                          "every rank must see the run folder on shared storage.") from None


def refuse_misfit(path: Path, method: Any, recipe: Recipe, overrides: list[str] | None = None) -> list[str]:
    """Refuse, in words, to resume from the checkpoint at ``path`` with a method (built from the recipe with this
    resume's ``--set`` values) whose weights or trainable groups no longer match it; else the settings that train
    otherwise from it on (:func:`resume_changes`)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    groups = param_groups(method, recipe.train.weight_decay, method.no_weight_decay())
    state = {f"method.{k}": v for k, v in method.state_dict().items()}  # PretrainModule holds only the method
    misfit = resume_misfit(checkpoint, state, [len(g["params"]) for g in groups], recipe.to_dict())
    if misfit:
        raise ConfigError(misfit)
    return resume_changes(checkpoint, recipe.to_dict(), overrides)


def warn_changed_settings(point: ResumePoint, changes: list[str]) -> None:
    """One warning (in log.txt too) naming what a resume changed: the run no longer replays an uninterrupted one,
    and the settings its first steps ran with are kept as ``config-until-step-NNNNNN.yaml``."""
    shown = ", ".join(changes[:6]) + (f" (and {len(changes) - 6} more)" if len(changes) > 6 else "")
    log.warning(f"warning: --resume from step {point.step} changes {shown}: the steps from {point.step + 1} on train "
                "with them, so the run no longer replays an uninterrupted one; the settings of the steps before are "
                f"kept as config-until-step-{point.step:06d}.yaml.")
