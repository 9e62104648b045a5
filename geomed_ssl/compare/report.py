"""What ``compare`` shows: the table of mean ± std per encoder / protocol / budget, the paired difference of each
pretrained encoder against random initialisation and of every encoder against the strongest baseline, with 95 %
t-intervals (``summary.md``), and the curve."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Collection, Sequence

import numpy as np

from geomed_ssl.compare.options import fraction_text
from geomed_ssl.compare.results import Row
from geomed_ssl.outfiles import atomic_write_text, save_figure

NONE = "none"
BASELINE_NAMES = ("rf", "random_conv", "band_stats")


def budget_of(row: Row) -> float:
    return float(row["labels_per_class"] or row["label_fraction"])


def budget_label(rows: Sequence[Row], counted: str = "labels") -> str:
    """The budget axis' name; ``counted``: what a budget per class counts ("subjects" where a subject's volumes are
    one unit of the split)."""
    return f"{counted} per class" if any(r["labels_per_class"] for r in rows) else "label fraction"


def grouped(rows: Sequence[Row], metric: str) -> dict[tuple[str, str], dict[float, dict[int, float]]]:
    """{(encoder, protocol): {budget: {seed: metric}}} (rows whose metric is blank left out), each encoder's
    protocols together in the order the rows give them, the baselines last (the fine-tunes, run last, would
    otherwise sit below them)."""
    out: dict[tuple[str, str], dict[float, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r[metric] != "":
            out[(r["encoder"], r["protocol"])][budget_of(r)][int(r["seed"])] = float(r[metric])
    order = {e: (e in BASELINE_NAMES, i) for i, e in enumerate(dict.fromkeys(r["encoder"] for r in rows))}
    return dict(sorted(out.items(), key=lambda item: order[item[0][0]]))


def best_protocols(groups: dict[tuple[str, str], dict[float, dict[int, float]]]) -> dict[str, str]:
    """Per encoder, the protocol with the highest mean over the (budget, seed) cells all its protocols share; where
    they share none (rows of two compares into one folder), over the budgets they share, each protocol's seeds
    there; where they share no budget either, over each protocol's own cells. So a protocol run at one more, easier
    budget is not favoured while a fair ranking exists."""
    cells: dict[str, list[set[tuple[float, int]]]] = defaultdict(list)
    for (enc, _), by_budget in groups.items():
        cells[enc].append({(b, s) for b, seeds in by_budget.items() for s in seeds})
    best: dict[str, tuple[float, str]] = {}
    for (enc, proto), by_budget in groups.items():
        shared = set.intersection(*cells[enc])
        budgets = set.intersection(*({b for b, _ in c} for c in cells[enc]))
        mean = float(np.mean([v for b, seeds in by_budget.items() for s, v in seeds.items()
                              if (b, s) in shared or (not shared and (not budgets or b in budgets))]))
        if enc not in best or mean > best[enc][0]:
            best[enc] = (mean, proto)
    return {enc: proto for enc, (_, proto) in best.items()}


def mean_std(values: Sequence[float], of: int = 0) -> str:
    """"mean ± sample std"; one value alone (no spread to estimate from one seed); "-" for none; with fewer values
    than ``of`` (seeds the other cells have), how many it holds, e.g. "0.650 ± 0.071 (2 seeds)"."""
    if not values:
        return "-"
    text = f"{values[0]:.3f}" if len(values) == 1 else f"{np.mean(values):.3f} ± {float(np.std(values, ddof=1)):.3f}"
    if len(values) < of:
        text += f" ({len(values)} seed{'s' if len(values) > 1 else ''})"
    return text


def spread_label(seeds: Sequence[int]) -> str:
    """What the table's cells are: "mean ± std over seeds", or with one seed "one label draw (seed N)"."""
    return "mean ± std over seeds" if len(seeds) > 1 else f"one label draw (seed {seeds[0]})"


def t_interval(diffs: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the 95 % t-interval of the mean of ``diffs`` (nan bounds with one value)."""
    from scipy import stats

    d = np.asarray(diffs, float)
    mean = float(d.mean())
    if d.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return mean, mean - half, mean + half


def table(rows: Sequence[Row], metric: str) -> str:
    """Markdown table: one line per encoder / protocol, one column per budget, mean ± std over seeds."""
    groups = grouped(rows, metric)
    budgets = sorted({b for g in groups.values() for b in g})
    best = best_protocols(groups)
    most = max((len(seeds) for g in groups.values() for seeds in g.values()), default=0)
    head = "| encoder | protocol | " + " | ".join(fraction_text(b) for b in budgets) + " |"
    lines = [head, "|" + "---|" * (len(budgets) + 2)]
    for (enc, proto), by_budget in groups.items():
        mark = " *" if best.get(enc) == proto else ""
        cells = [mean_std(list(by_budget.get(b, {}).values()), most) for b in budgets]
        lines.append(f"| {enc} | {proto}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SAME_EACH_SEED = "none: the same each seed"  # a t-interval of no width (a small test set's scores move in steps)


def paired_cells(mine: dict[int, float], theirs: dict[int, float]) -> str | None:
    """"difference | 95 % CI | seeds" of ``mine`` − ``theirs`` over the seeds both have (None when they share none):
    the mean of the per-seed differences and its t-interval ("-" with one seed), clipped to the [-1, 1] a difference
    of fractions can take; where every seed differs by the same amount the interval has no width and is not shown
    (:data:`SAME_EACH_SEED`): it would read as a certainty that a few seeds cannot give."""
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        return None
    diffs = [mine[s] - theirs[s] for s in seeds]
    mean, lo, hi = t_interval(diffs)
    if math.isnan(lo):
        ci = "-"
    elif max(diffs) - min(diffs) <= 2.5e-6:  # results.csv keeps 6 decimals: equal differences may differ by 2e-6
        ci = SAME_EACH_SEED
    else:
        ci = f"[{max(lo, -1.0):+.3f}, {min(hi, 1.0):+.3f}]"
    return f"{mean:+.3f} | {ci} | {len(seeds)}"


def pretrained(rows: Sequence[Row]) -> list[str]:
    """The encoders of ``rows`` that are neither ``none`` nor a baseline, in order of appearance."""
    return [e for e in dict.fromkeys(r["encoder"] for r in rows) if e != NONE and e not in BASELINE_NAMES]


def paired_lines(rows: Sequence[Row], metric: str, others: Sequence[str] = ()) -> list[str]:
    """Per pretrained encoder and budget: pretrained − none, per seed, for each protocol both have and for the
    best protocols, as mean [95 % CI] (n seeds); the encoders of ``others`` (another architecture than none's)
    marked so."""
    groups = grouped(rows, metric)
    best = best_protocols(groups)
    encoders = [e for e in pretrained(rows) if any(enc == e for enc, _ in groups)]
    if NONE not in best:
        return ["No `none` rows yet: nothing to pair with."]
    lines = ["| encoder | protocol (vs none) | budget | difference | 95 % CI | seeds |", "|---|---|---|---|---|---|"]
    for enc in encoders:
        pairs = [(p, p) for (e, p) in groups if e == enc and (NONE, p) in groups]
        pairs.append((best[enc], best[NONE]))
        for mine, theirs in dict.fromkeys(pairs):
            a, b = groups[(enc, mine)], groups[(NONE, theirs)]
            label = mine if mine == theirs else f"best: {mine} vs {theirs}"
            for budget in sorted(set(a) & set(b)):
                name = f"{enc} (other architecture)" if enc in others else enc
                cells = paired_cells(a[budget], b[budget]) or "no seed in common (compares of other seeds) | - | 0"
                lines.append(f"| {name} | {label} | {fraction_text(budget)} | {cells} |")
    return lines


def baseline_lines(rows: Sequence[Row], metric: str) -> list[str]:
    """Per encoder (its best protocol; ``none`` included) and budget: the encoder − the strongest baseline there,
    per seed, as mean [95 % CI] (n seeds); empty without baselines. The strongest: :func:`strongest`."""
    groups = grouped(rows, metric)
    best = best_protocols(groups)
    baselines = [key for key in groups if key[0] in BASELINE_NAMES]
    encoders = [e for e in dict.fromkeys(enc for enc, _ in groups) if e not in BASELINE_NAMES]
    if not baselines or not encoders:
        return []
    lines = ["| encoder | protocol | strongest baseline | budget | difference | 95 % CI | seeds |",
             "|---|---|---|---|---|---|---|"]
    for enc in sorted(encoders, key=lambda e: e == NONE):
        mine = groups[(enc, best[enc])]
        for budget in sorted(mine):
            if (key := strongest(mine[budget], baselines, groups, budget)) is None:
                if any(budget in groups[b] for b in baselines):  # scored, by compares of other seeds
                    lines.append(f"| {enc} | {best[enc]} | - | {fraction_text(budget)} | no seed in common "
                                 "(compares of other seeds) | - | 0 |")
                continue
            if cells := paired_cells(mine[budget], groups[key][budget]):
                lines.append(f"| {enc} | {best[enc]} | {key[0]} ({key[1]}) | {fraction_text(budget)} | {cells} |")
    return lines


def strongest(mine: dict[int, float], baselines: Sequence[tuple[str, str]], groups: dict, budget: float
              ) -> tuple[str, str] | None:
    """The (baseline, protocol) with the highest mean at ``budget`` over the seeds of ``mine`` that every baseline
    sharing any of them has (all on equal terms; a folder's rows can come from compares with other seeds); where
    they have none in common, the one sharing the most seeds, then the highest mean over them. Non-finite scores
    are left out. None when no baseline shares a seed."""
    scored = {}
    for key in baselines:
        theirs = {seed: v for seed, v in (groups[key].get(budget) or {}).items() if math.isfinite(v)}
        if any(seed in theirs for seed in mine):
            scored[key] = theirs
    if not scored:
        return None
    common = [seed for seed in mine if all(seed in theirs for theirs in scored.values())]

    def rank(key: tuple[str, str]) -> tuple[int, float, tuple[str, str]]:
        seeds = common or [seed for seed in mine if seed in scored[key]]
        return (len(seeds), float(np.mean([scored[key][seed] for seed in seeds])), key)

    return max(scored, key=rank)


def summary_text(rows: Sequence[Row], metric: str, split: str, unit: str, background: bool = False,
                 held_out: Sequence[str] = (), others: Sequence[str] = (), short: Sequence[str] = (),
                 counted: str = "labels", pooled: bool = False) -> str:
    """``summary.md``; ``background``: the volumes' ``dice`` leaves out label value 0 (said in the text);
    ``held_out``: the lines naming each seed's test images (``images`` split); ``others``: the encoders of another
    architecture than ``none``'s (:func:`paired_lines`); ``short``: the classes a budget's draws left short of it
    (:func:`geomed_ssl.compare.task.shortfalls`); ``counted``: see :func:`budget_label`; ``pooled``: the metric
    pools several images' positions (said in the text)."""
    fore = " (mean over the classes other than the background, label value 0)" if background else ""
    against = baseline_lines(rows, metric)
    return "\n".join([
        "# geomed-ssl compare", "",
        f"Metric: {metric}{fore} on the test {unit}s of each run"
        + (", pooled over its test images (not a mean of each image's: `evaluate` writes those in images.csv)"
           if pooled and unit != "image" else "") + f"; {split} split; "
        f"{budget_label(rows, counted)} across, mean ± std over seeds (sample std; one seed: its value). `*`: the "
        "encoder's best protocol (its line in curve.png), the highest mean on these test samples: the 'best' rows "
        "below are picked on the numbers they report, so they lean optimistic; to report a margin, fix the protocol "
        "on other seeds first.", "",
        table(rows, metric), "",
        *(["`propagate` is transductive: its graph holds the images' unlabelled " + unit + "s, test ones included "
           "(never their labels), as when you map the scene you labelled; on other images it is the linear head "
           "fitted on this graph. With the blocks / images split its graph stays inside the training blocks / "
           "images.", ""]
          if any(r["protocol"] == "propagate" for r in rows) else []),
        *(["## Pretrained − random initialisation (paired by seed)", "",
           "Difference of the metric between each pretrained encoder and `none` (same architecture, random "
           "weights) on the same training and test samples, per seed; mean and 95 % t-interval over seeds. `none` "
           "is a new random initialisation for each seed (drawn from `train.seed` and the seed, kept in "
           "`encoder_none_seed<seed>/`), so the interval spreads over initialisations as well as samples. The "
           "pretrained encoder is one pretraining run: compare several before relying on a small margin. The "
           "interval comes from a t with one degree of freedom fewer than the seeds: from 2 seeds its half-width is 9 "
           "times the differences' standard deviation and it says little, from 5 seeds 1.2 times. It rests on the "
           "differences being roughly normal, which a few seeds cannot show: without that assumption (a sign test) "
           "n seeds that all agree in sign give a two-sided p of 2^(1-n), 0.25 for 3 seeds and 0.0625 for 5; 6 are "
           f"the fewest that can reach 5 %. `{SAME_EACH_SEED}`: every seed gave the same difference, so the "
           "t-interval has no width; read it as the sign test does. Each table holds many intervals (budgets x "
           "protocols), so expect some to leave 0 out by chance."
           + (" `none` is the first encoder's architecture: for an encoder marked \"other architecture\" the "
              "difference mixes architecture and pretraining; compare it first in a compare of its own to measure "
              "its pretraining." if others else ""), "",
           *paired_lines(rows, metric, others), ""] if pretrained(rows) else []),
        *(["## Against the strongest baseline (paired by seed)", "",
           "Difference between each encoder's best protocol and, at each budget, the baseline with the highest mean "
           "over the seeds they all share with the encoder (the hardest of them to beat), on the same training and "
           f"test samples, per seed; mean and 95 % t-interval over seeds (`{SAME_EACH_SEED}`: every seed gave the "
           "same difference, and the interval, of no width, says nothing).", "",
           *against, ""] if against else []),
        *(["## Budgets not met", "", "Where a class has too few labels for a budget it takes what exists (half of "
           "them, the rest kept to test), so that budget's points hold fewer labels than they say (marked † in "
           "curve.png):", "", *[f"- {line}" for line in short], ""] if short else []),
        *(["## Held-out images", "", "The images whose labelled " + unit + "s each seed tests on (no label of theirs "
           "trains); the others give the training labels.", "", *held_out, ""] if held_out else []),
    ])


def write_summary(path: Path, rows: Sequence[Row], metric: str, split: str, unit: str, background: bool = False,
                  held_out: Sequence[str] = (), others: Sequence[str] = (), short: Sequence[str] = (),
                  counted: str = "labels", pooled: bool = False) -> None:
    atomic_write_text(path, summary_text(rows, metric, split, unit, background, held_out, others, short, counted,
                                         pooled))


def short_name(encoder: str) -> str:
    """An encoder path as a legend shows it: its last two parts."""
    parts = Path(encoder).parts
    return encoder if len(parts) <= 2 else str(Path(*parts[-2:]))


def write_curve(path: Path, rows: Sequence[Row], metric: str, short: Collection[float] = (),
                counted: str = "labels") -> None:
    """``curve.png``: metric vs budget (log axis), one line per encoder / baseline at its best protocol, mean
    over seeds with a ± std band (kept inside [0, 1]); the budgets of ``short`` (some class had fewer labels than
    they ask) marked † on the axis; ``counted``: see :func:`budget_label`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = grouped(rows, metric)
    best = best_protocols(groups)
    fig = Figure(figsize=(7.5, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for enc, proto in best.items():
        by_budget = groups[(enc, proto)]
        xs = sorted(by_budget)
        means = np.array([np.mean(list(by_budget[x].values())) for x in xs])
        sds = np.array([np.std(list(by_budget[x].values()), ddof=1) if len(by_budget[x]) > 1 else 0.0 for x in xs])
        style = "--" if enc in ("rf", "random_conv", "band_stats") else ("-." if enc == NONE else "-")
        line = ax.plot(xs, means, style, marker="o", label=f"{short_name(enc)} ({proto})")[0]
        ax.fill_between(xs, np.clip(means - sds, 0, 1), np.clip(means + sds, 0, 1), color=line.get_color(),
                        alpha=0.15)
    ax.set_xscale("log")
    ticks = sorted({b for g in groups.values() for b in g})
    ax.set_xticks(ticks, labels=[fraction_text(b) + (" †" if b in short else "") for b in ticks])
    ax.minorticks_off()
    ax.set_xlabel(budget_label(rows, counted))
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    seeds = {seed for g in groups.values() for by_seed in g.values() for seed in by_seed}
    spread = "mean ± std over seeds" if len(seeds) > 1 else "one label draw: no spread shown"
    ax.set_title(f"label efficiency ({metric}, {spread})\neach line at its best protocol, picked on these test numbers"
                 + ("; †: some class had fewer labels (summary.md)" if short else ""), fontsize=10)
    save_figure(fig, path)
