"""The start-of-run checks of a schedule: one warning line when a run cannot learn much (and one when gradient
accumulation cannot give a batch-comparing method the batch it seems to).

Two mistakes make a short run barely move while looking normal: a warmup at least as long as the run (the rate
never reaches its peak; with ``warmup_steps = 2 * max_steps`` it tops out at half of it), and a peak rate far too
small for AdamW. AdamW moves each weight by about the learning rate per step whatever the gradient's scale, so below
``MIN_PEAK_LR`` (1e-5) a run of a few hundred or thousand steps shifts weights initialised at ~0.02 by at most
~0.01: the loss stays where it started. The pretraining rate is ``train.base_lr * effective batch / 256``, so a
recipe sized for batch 64 run at batch 2 lands there (1.5e-4 * 2 / 256 = 1.2e-6). A third spends most of a run
below its peak: a warmup over half of it, as a recipe's warmup left as it is when ``--set train.max_steps``
shortens the run.
"""

from __future__ import annotations

import logging

from geomed_ssl.once import said_set

log = logging.getLogger("geomed_ssl")
_SAID = said_set()

MIN_PEAK_LR = 1e-5  # AdamW: a peak rate below this barely moves the weights in a short run (see the module docstring)


def reached_lr(peak_lr: float, warmup_steps: int, max_steps: int) -> float:
    """The highest rate the schedule (linear warmup from 0, then cosine) reaches within ``max_steps`` steps."""
    if warmup_steps <= 0 or warmup_steps <= max_steps - 1:
        return float(peak_lr)
    return float(peak_lr) * max_steps / warmup_steps


def schedule_problem(peak_lr: float, warmup_steps: int, max_steps: int, section: str, how: str = "",
                     min_lr: float = 0.0) -> str | None:
    """One line naming what is wrong with the schedule of ``section`` (``train`` or ``finetune``) and the fix, or
    None when it can learn. ``how`` says how the peak rate was made (e.g. "train.base_lr 1.5e-04 x batch 2 / 256");
    ``min_lr``: the rate the cosine decays to (absolute, while the peak scales with the batch)."""
    problems = []
    if min_lr > peak_lr:
        problems.append(f"{section}.min_lr {min_lr:.2g} is above the peak rate {peak_lr:.2g}: after the warmup the "
                        "'decay' climbs to it")
    if warmup_steps >= max_steps:
        problems.append(f"{section}.warmup_steps {warmup_steps} >= {section}.max_steps {max_steps}: the rate never "
                        f"finishes warming up (it tops out at {reached_lr(peak_lr, warmup_steps, max_steps):.2g})")
    elif 2 * warmup_steps > max_steps:
        problems.append(f"{section}.warmup_steps {warmup_steps} is over half of {section}.max_steps {max_steps}: most "
                        "of the run is spent below its peak rate")
    if peak_lr < MIN_PEAK_LR:
        source = f" ({how})" if how else ""
        problems.append(f"the peak learning rate {peak_lr:.2g}{source} is below {MIN_PEAK_LR:g}, too small for AdamW "
                        "to move the weights much")
    if not problems:
        return None
    fixes = []
    if min_lr > peak_lr:
        fixes.append(f"set {section}.min_lr below the peak, e.g. a tenth of it ({peak_lr / 10:.2g})")
    if 2 * warmup_steps > max_steps:
        fixes.append(f"set {section}.warmup_steps to about 10 % of max_steps (e.g. {max(1, max_steps // 10)})")
    if peak_lr < MIN_PEAK_LR:
        fixes.append(f"raise {section}.base_lr" + (" (the rate scales with the batch size)" if section == "train"
                                                   else ""))
    learn = "this run will barely learn" if warmup_steps >= max_steps or peak_lr < MIN_PEAK_LR else \
        "the schedule is not what the recipe meant"
    return f"warning: {'; and '.join(problems)}; {learn}. Fix: {' and '.join(fixes)}."


def warn_schedule(peak_lr: float, warmup_steps: int, max_steps: int, section: str, how: str = "",
                  min_lr: float = 0.0) -> str | None:
    """Log :func:`schedule_problem`'s line (once, at the start of a run) and return it; None when all is well."""
    line = schedule_problem(peak_lr, warmup_steps, max_steps, section, how, min_lr)
    if line and line not in _SAID:  # once a command: compare fine-tunes many times with one schedule
        _SAID.add(line)
        log.warning(line)
    return line


def warn_accumulation(method_name: str, compares_batch: bool, batch_size: int, accumulate: int) -> str | None:
    """Log, once, that gradient accumulation does not enlarge the batch a batch-comparing method's loss sees (see
    ``SSLMethod.compares_batch``) and return the line; None when accumulation is off or changes nothing."""
    if accumulate <= 1 or not compares_batch:
        return None
    line = (f"warning: train.accumulate_grad_batches={accumulate} with method '{method_name}': its loss compares "
            f"the samples of a batch (negatives, BatchNorm or batch statistics) and compares each micro-batch of "
            f"{batch_size} on its own, so accumulation averages the gradients but the loss never sees a batch of "
            f"{batch_size * accumulate}. For a larger compared batch raise train.batch_size or add devices (the "
            f"batch is compared across devices).")
    log.warning(line)
    return line
