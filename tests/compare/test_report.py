"""``summary.md``'s comparison with the strongest baseline: per budget the baseline with the highest mean, paired
by seed with each encoder's best protocol (``none`` included)."""

from __future__ import annotations

from geomed_ssl.compare.report import baseline_lines, paired_cells, paired_lines, summary_text
from geomed_ssl.compare.results import COLUMNS, Row

SCORES = {  # (encoder, protocol): {budget: [oa of seed 0, seed 1, seed 2]}
    ("run", "linear"): {1: [0.50, 0.60, 0.55], 5: [0.80, 0.82, 0.84]},
    ("run", "knn"): {1: [0.40, 0.40, 0.40], 5: [0.70, 0.70, 0.70]},
    ("none", "linear"): {1: [0.45, 0.45, 0.45], 5: [0.70, 0.72, 0.74]},
    ("rf", "forest"): {1: [0.40, 0.50, 0.45], 5: [0.75, 0.75, 0.75]},
    ("band_stats", "linear"): {1: [0.52, 0.52, 0.52], 5: [0.60, 0.60, 0.60]},
}


def rows(scores: dict = SCORES) -> list[Row]:
    out = []
    for (enc, proto), by_budget in scores.items():
        for budget, values in by_budget.items():
            for seed, v in enumerate(values):
                row = dict.fromkeys(COLUMNS, "")
                row.update(encoder=enc, labels_per_class=str(budget), seed=str(seed), protocol=proto, oa=str(v))
                out.append(row)
    return out


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("|").split("|")]


def test_each_budget_pairs_with_its_strongest_baseline() -> None:
    lines = [cells(line) for line in baseline_lines(rows(), "oa")[2:]]
    by = {(c[0], c[3]): c for c in lines}
    assert set(by) == {("run", "1"), ("run", "5"), ("none", "1"), ("none", "5")}
    assert [c[0] for c in lines] == ["run", "run", "none", "none"]  # pretrained encoders first
    # budget 1: band_stats' mean 0.52 beats rf's 0.45; budget 5: rf's 0.75 beats band_stats' 0.60
    assert by[("run", "1")][1:5] == ["linear", "band_stats (linear)", "1", "+0.030"]
    assert by[("run", "5")][1:5] == ["linear", "rf (forest)", "5", "+0.070"]
    assert by[("none", "5")][2:5] == ["rf (forest)", "5", "-0.030"]
    low, high = (float(v) for v in by[("run", "5")][5].strip("[]").split(","))
    assert low < 0.07 < high and by[("run", "5")][6] == "3"


def test_without_baselines_the_section_is_left_out() -> None:
    no_baselines = {k: v for k, v in SCORES.items() if k[0] in ("run", "none")}
    assert baseline_lines(rows(no_baselines), "oa") == []
    assert "strongest baseline" not in summary_text(rows(no_baselines), "oa", "random", "image")
    assert "## Against the strongest baseline" in summary_text(rows(), "oa", "random", "image")


def test_baselines_are_ranked_on_the_seeds_they_all_share_with_the_encoder() -> None:
    # an earlier compare into the folder scored rf on seeds 0 and 1 only; band_stats has all three
    table = rows({("run", "linear"): {5: [0.60, 0.60, 0.60]}, ("band_stats", "linear"): {5: [0.50, 0.50, 0.50]}})
    strong = rows({("rf", "forest"): {5: [0.95, 0.95]}})
    (line,) = [cells(line) for line in baseline_lines(table + strong, "oa")[2:] if line.startswith("| run")]
    assert line[2:5] == ["rf (forest)", "5", "-0.350"] and line[6] == "2"  # never the weaker one because rf lacks a seed
    # and a weak baseline with fewer seeds does not become the strongest either
    weak = rows({("rf", "forest"): {5: [0.10]}})
    (line,) = [cells(line) for line in baseline_lines(table + weak, "oa")[2:] if line.startswith("| run")]
    assert line[2:5] == ["band_stats (linear)", "5", "+0.100"] and line[6] == "3"
    # a non-finite score is left out, whatever the order of the rows
    nan = rows({("rf", "forest"): {5: [float("nan"), 0.10, 0.10]}})
    for order in (table + nan, nan + table):
        (line,) = [cells(line) for line in baseline_lines(order, "oa")[2:] if line.startswith("| run")]
        assert line[2:5] == ["band_stats (linear)", "5", "+0.100"]


def test_the_best_protocol_is_chosen_on_the_budgets_and_seeds_all_protocols_share() -> None:
    from geomed_ssl.compare.report import best_protocols, grouped

    scores = {("run", "knn"): {1: [0.70, 0.70, 0.70], 2: [0.66, 0.66, 0.66]},
              ("run", "linear"): {1: [0.68, 0.68, 0.68], 2: [0.64, 0.64, 0.64], 20: [0.95, 0.95, 0.95]}}
    assert best_protocols(grouped(rows(scores), "oa")) == {"run": "knn"}  # not linear for its one easy budget


def test_pretrained_minus_none_has_the_sign_of_pretrained_being_better() -> None:
    """The headline: "run" linear 0.80/0.82/0.84 against "none" linear 0.70/0.72/0.74 is +0.100 on every seed (an
    interval of no width, which three seeds cannot make a certainty of, is not shown)."""
    by = {tuple(c[:3]): c for c in map(cells, paired_lines(rows(), "oa")[2:])}
    assert by[("run", "linear", "5")][3:6] == ["+0.100", "none: the same each seed", "3"]


def test_the_interval_is_the_95_percent_t_interval_of_the_seed_differences() -> None:
    """Differences 0.05, 0.07, 0.09: mean 0.07, sample sd 0.02, t(0.975, 2 dof) 4.303: half-width 0.0497."""
    assert paired_cells({0: 0.85, 1: 0.87, 2: 0.89}, {0: 0.80, 1: 0.80, 2: 0.80}) == "+0.070 | [+0.020, +0.120] | 3"
    assert paired_cells({0: 0.85}, {0: 0.80}) == "+0.050 | - | 1"
    # two seeds far apart: t(0.975, 1 dof) = 12.7 stretches the interval past what a difference of fractions can be
    assert paired_cells({0: 0.9, 1: 0.1}, {0: 0.5, 1: 0.5}) == "+0.000 | [-1.000, +1.000] | 2"
    # results.csv keeps 6 decimals, so equal differences read back may differ in the last one
    assert paired_cells({0: 0.7, 1: 0.6, 2: 0.5}, {0: 0.599194, 1: 0.499193, 2: 0.399194}).endswith(
        "| none: the same each seed | 3")
    # a small test set moves in steps: 2 of 28 images worse on every seed is no certain -0.071
    assert paired_cells({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.5 + 2 / 28, 1: 0.6 + 2 / 28, 2: 0.7 + 2 / 28}) == (
        "-0.071 | none: the same each seed | 3")


def test_fraction_budgets_that_round_alike_keep_their_own_labels() -> None:
    from geomed_ssl.compare.report import table

    table_rows = []
    for fraction, v in (("0.1234561", 0.6), ("0.1234564", 0.7)):
        for (enc, proto), value in ((("run", "linear"), v), (("none", "linear"), 0.5)):
            row = dict.fromkeys(COLUMNS, "")
            row.update(encoder=enc, label_fraction=fraction, seed="0", protocol=proto, oa=str(value))
            table_rows.append(row)
    assert "| 0.1234561 | 0.1234564 |" in table(table_rows, "oa").splitlines()[0]
    budgets = [cells(line)[2] for line in paired_lines(table_rows, "oa")[2:]]
    assert budgets == ["0.1234561", "0.1234564"]


def test_protocols_that_share_no_cell_are_ranked_on_the_budgets_they_share() -> None:
    from geomed_ssl.compare.report import best_protocols, grouped

    # two compares into one folder: linear on seeds 0-2, knn on seeds 3-5; only knn ran the easy budget 20
    linear = rows({("run", "linear"): {1: [0.60, 0.60, 0.60]}})
    knn = [dict(r, seed=str(int(r["seed"]) + 3)) for r in rows({("run", "knn"): {1: [0.50] * 3, 20: [0.95] * 3}})]
    assert best_protocols(grouped(linear + knn, "oa")) == {"run": "linear"}


def test_a_pairing_without_a_seed_in_common_is_a_row_that_says_so() -> None:
    """Two compares into one folder (run: linear on seed 0, knn on seed 1; none: linear on seed 0): the best-vs-best
    row, knn vs linear, was left out without a word."""
    one = rows({("run", "linear"): {1: [0.60]}, ("none", "linear"): {1: [0.55]}})
    other = [dict(r, seed="1") for r in rows({("run", "knn"): {1: [0.70]}})]
    by = {tuple(c[:2]): c[3:] for c in map(cells, paired_lines(one + other, "oa")[2:])}
    assert by[("run", "linear")] == ["+0.050", "-", "1"]
    assert by[("run", "best: knn vs linear")] == ["no seed in common (compares of other seeds)", "-", "0"]
    forest = [dict(r, seed="7") for r in rows({("rf", "forest"): {1: [0.50]}})]  # a baseline of another seed
    said = {tuple(c[:2]): c[3:] for c in map(cells, baseline_lines(one + forest, "oa")[2:])}
    assert said[("run", "linear")] == ["1", "no seed in common (compares of other seeds)", "-", "0"]


def test_a_cell_with_fewer_seeds_than_the_others_says_how_many() -> None:
    from geomed_ssl.compare.report import table

    partial = rows({("run", "linear"): {1: [0.60, 0.70, 0.65]}, ("none", "linear"): {1: [0.60, 0.70]}})
    by = {tuple(c[:2]): c[2] for c in map(cells, table(partial, "oa").splitlines()[2:])}
    assert by[("run", "linear *")] == "0.650 ± 0.050"
    assert by[("none", "linear *")] == "0.650 ± 0.071 (2 seeds)"


def test_without_a_pretrained_encoder_the_paired_section_is_left_out() -> None:
    only_none = rows({("none", "linear"): {1: [0.5, 0.6]}, ("rf", "forest"): {1: [0.4, 0.5]}})
    assert "Pretrained − random initialisation" not in summary_text(only_none, "oa", "random", "pixel")
    assert "Pretrained − random initialisation" in summary_text(rows(), "oa", "random", "pixel")


def test_an_encoder_folder_named_like_a_baseline_is_refused_with_a_way_that_works(tmp_path, monkeypatch) -> None:
    import pytest

    from geomed_ssl.compare.options import check_encoders
    from geomed_ssl.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rf").mkdir()
    with pytest.raises(ConfigError, match="absolute path") as err:
        check_encoders(["./rf"])
    assert str(tmp_path / "rf") in str(err.value)
    assert check_encoders([str(tmp_path / "rf")]) == [str(tmp_path / "rf"), "none"]


def test_budgets_a_class_fell_short_of_are_listed_and_marked_on_the_curve(tmp_path, monkeypatch) -> None:
    """A class with fewer labels than asked trains on what exists: summary.md lists it, and curve.png marks the
    budget, so a point that says 5 per class but holds fewer is not read as 5."""
    import matplotlib.axes

    from geomed_ssl.compare.report import write_curve

    short = ["class 'Oats': took 3 of the 5 asked (k5, seed 0)"]
    text = summary_text(rows(), "oa", "random", "pixel", short=short)
    assert "## Budgets not met" in text and f"- {short[0]}" in text
    assert "Budgets not met" not in summary_text(rows(), "oa", "random", "pixel")
    seen, real = [], matplotlib.axes.Axes.set_xticks
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticks",
                        lambda self, ticks, labels=None, **kw: seen.append(list(labels)) or real(self, ticks, labels))
    write_curve(tmp_path / "curve.png", rows(), "oa", {5.0})
    assert seen == [["1", "5 †"]] and (tmp_path / "curve.png").stat().st_size > 0


def test_each_encoders_rows_stay_together_and_the_baselines_come_last() -> None:
    """The fine-tunes are run (and written) last; the table still shows them beside their encoder's probes."""
    from geomed_ssl.compare.report import table

    late = rows() + rows({("none", "finetune"): {1: [0.5, 0.5, 0.5], 5: [0.71, 0.71, 0.71]},
                          ("run", "finetune"): {1: [0.5, 0.5, 0.5], 5: [0.8, 0.8, 0.8]}})
    order = [tuple(cells(line)[:2]) for line in table(late, "oa").splitlines()[2:]]
    assert [(e, p.rstrip(" *")) for e, p in order] == [
        ("run", "linear"), ("run", "knn"), ("run", "finetune"), ("none", "linear"), ("none", "finetune"),
        ("rf", "forest"), ("band_stats", "linear")]
