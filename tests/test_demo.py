"""``geomed-ssl demo`` on the bundled sample: pretrained vs random init vs random forest on the same pixels, the
curve, the table with an honest winner, and the predicted map."""

from __future__ import annotations

import csv
from pathlib import Path

from typer.testing import CliRunner

from geomed_ssl.cli import app
from geomed_ssl.demo import verdict

runner = CliRunner()


def row(encoder: str, protocol: str, oa: float, k: int = 5, seed: int = 0) -> dict[str, str]:
    return {"encoder": encoder, "labels_per_class": str(k), "label_fraction": "", "seed": str(seed),
            "protocol": protocol, "oa": str(oa), "aa": "", "kappa": "", "miou": "", "dice": "", "seconds": "1"}


def small_graph(monkeypatch) -> None:
    """The demo's propagate probe on 2,000 sampled pixels instead of all 21,025 (its graph and its predict cost
    most of a 2-step demo)."""
    from geomed_ssl.demo import DEMO_RECIPE

    monkeypatch.setitem(DEMO_RECIPE["finetune"], "probe_nodes", 2000)


def test_demo_compares_pretrained_random_init_and_forest_on_bundled_sample_and_replaces_its_folder_next_time(
        tmp_path: Path, monkeypatch) -> None:
    small_graph(monkeypatch)
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--steps", "2", "--finetune-steps", "2"])
    assert result.exit_code == 0, result.output
    for name in ("| pretrained | linear", "| pretrained | knn", "| pretrained | propagate", "| random init | finetune",
                 "| random forest | forest", "Highest mean:"):
        assert name in result.output
    with (out / "compare" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    # 2 budgets x 1 seed x (pretrained linear + knn + propagate, none linear + knn + propagate + finetune, rf)
    assert len(rows) == 16 and {r["labels_per_class"] for r in rows} == {"2", "5"}
    assert (out / "compare" / "curve.png").stat().st_size > 0
    assert (out / "prediction" / "indian_pines_pred.tif").is_file()
    assert (out / "prediction" / "indian_pines_pred.png").is_file()
    from geomed_ssl import load_encoder

    enc = load_encoder(out / "pretrain")
    assert enc.config.in_chans == 200
    assert enc.config.wavelengths is not None and abs(enc.config.wavelengths[0] - 0.40002) < 1e-4
    # the next run replaces the folder (one demo run fewer than a test of its own: each costs ~17 s)
    (out / "compare" / "results.csv").write_text("stale\n")
    args = ["demo", "--out", str(out), "--steps", "1", "--finetune-steps", "1", "--labels-per-class", "1"]
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "stale" not in (out / "compare" / "results.csv").read_text()


def test_demo_pretrains_the_shipped_hyperspectral_recipe_configuration() -> None:
    from geomed_ssl.config import load_recipe, recipe_from_dict
    from geomed_ssl.demo import DEMO_RECIPE

    shipped = load_recipe(Path(__file__).parents[1] / "recipes" / "mae_hyperspectral.yaml")
    demo = recipe_from_dict({k: dict(v) for k, v in DEMO_RECIPE.items()}, "demo recipe")
    for section in ("model", "method", "augment"):
        assert getattr(demo, section) == getattr(shipped, section), section
    for key in ("patch_size", "global_crop_size"):
        assert getattr(demo.data, key) == getattr(shipped.data, key)
    for key in ("batch_size", "base_lr", "weight_decay", "betas", "grad_clip"):
        assert getattr(demo.train, key) == getattr(shipped.train, key)
    for key in ("head", "probe", "max_steps", "batch_size", "base_lr", "loss"):
        assert getattr(demo.finetune, key) == getattr(shipped.finetune, key)


def test_verdict_names_random_init_when_it_beats_the_pretrained_encoder() -> None:
    rows = [row("RUN", "linear", 0.60), row("RUN", "finetune", 0.65), row("none", "finetune", 0.70),
            row("none", "linear", 0.40), row("rf", "forest", 0.55), row("RUN", "linear", 0.99, k=2)]
    line = verdict(rows, "oa", "RUN", 5)
    assert "Highest mean: random init." in line and "does not pay off" in line
    assert line.index("random init 0.700 (finetune)") < line.index("pretrained 0.650 (finetune)")


def test_verdict_names_the_pretrained_encoder_when_it_wins() -> None:
    rows = [row("RUN", "linear", 0.80), row("none", "finetune", 0.70), row("rf", "forest", 0.55)]
    line = verdict(rows, "oa", "RUN", 5)
    assert "Highest mean: pretrained." in line and "does not pay off" not in line


def test_verdict_calls_a_lead_below_the_printed_precision_a_tie() -> None:
    rows = [row("RUN", "propagate", 0.682368), row("none", "propagate", 0.682270), row("rf", "forest", 0.55)]
    line = verdict(rows, "oa", "RUN", 5)
    assert line.endswith("Highest mean: pretrained and random init, level at 0.682.")  # level: nothing to add


def test_verdict_draws_no_conclusion_from_a_small_lead_of_one_label_draw() -> None:
    """0.701 against 0.700 on one draw is no finding either way; over several draws the margin is compare's to give."""
    for mine, theirs in ((0.700, 0.701), (0.711, 0.700)):
        line = verdict([row("RUN", "linear", mine), row("none", "finetune", theirs)], "oa", "RUN", 5)
        assert "can turn with the next draw" in line and "does not pay off" not in line
    def two(mine, theirs):
        return verdict([row("RUN", "linear", v, seed=s) for s, v in enumerate(mine)]
                       + [row("none", "linear", v, seed=s) for s, v in enumerate(theirs)], "oa", "RUN", 5)

    assert "does not pay off" in two((0.70, 0.70), (0.76, 0.76))  # 0.06 on both draws: settled
    small = two((0.700, 0.690), (0.705, 0.693))  # 0.004 over two draws is no firmer than over one
    assert "Over 2 label draws a lead of 0.004 (under 0.021) can turn" in small and "does not pay off" not in small
    split = two((0.80, 0.70), (0.70, 0.72))  # ahead by 0.04 on average, behind on one draw
    assert "(not on every draw)" in split and "Highest mean: pretrained." in split


def test_a_demo_stopped_during_pretraining_compares_nothing_and_exits_with_the_signal(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    import geomed_ssl.train.pretrain as pretraining

    def stopped(recipe, data, out, **kwargs):  # what a SIGTERM at step 3 leaves: a saved run, stopped early
        return pretraining.RunResult(run_dir=Path(out), encoder_dir=Path(out) / "encoder", steps=3, catalog=None,
                                     stopped="SIGTERM")

    called: list[str] = []
    monkeypatch.setattr(pretraining, "pretrain", stopped)
    monkeypatch.setattr("geomed_ssl.compare.run.run_compare", lambda *a, **k: called.append("compare"))
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--steps", "5"])
    assert result.exit_code == 143 and "stopped during pretraining at step 3 (SIGTERM)" in result.output
    assert called == [] and not (tmp_path / "demo" / "compare").exists()


def test_verdict_reads_each_contender_at_the_tables_starred_protocol() -> None:
    """The starred protocol is the best over every budget; the line does not pick another one per budget."""
    rows = [row("RUN", "linear", 0.70), row("RUN", "linear", 0.60, k=2), row("RUN", "knn", 0.62),
            row("RUN", "knn", 0.65, k=2), row("none", "finetune", 0.50, k=2), row("none", "finetune", 0.50)]
    line = verdict(rows, "oa", "RUN", 2)
    assert "pretrained 0.600 (linear)" in line and "(knn)" not in line and "picked on these test numbers" in line
