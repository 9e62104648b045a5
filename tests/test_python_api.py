"""The commands called from Python, as a notebook calls them: a ``Recipe`` object takes overrides like a path does,
the documented entry points check what they are given, and a call leaves the process as it found it."""

from __future__ import annotations

import logging
import os
import random
import signal
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from geomed_ssl.compare.options import Budget, CompareOptions
from geomed_ssl.config import Recipe, as_recipe, load_recipe
from geomed_ssl.errors import ConfigError, RunStopped
from geomed_ssl.process import ProcessState, keeps_process_state
from tests.conftest import TINY, write_class_folders, write_geotiff

RECIPE = "recipes/mae_sentinel2.yaml"
RUN = [*TINY, "data.sensor=null", "data.patch_size=16", "train.max_steps=3", "train.checkpoint_every=1"]


def draws() -> tuple[float, float, float]:
    """One number from each global generator (Python, NumPy, torch)."""
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_a_recipe_object_takes_overrides_and_is_never_changed() -> None:
    recipe = load_recipe(RECIPE, ["train.max_steps=7"])
    longer = as_recipe(recipe, ["train.max_steps=9"])
    assert longer.train.max_steps == 9 and recipe.train.max_steps == 7
    assert as_recipe(recipe) == recipe and as_recipe(recipe) is not recipe
    with pytest.raises(ConfigError, match="train.max_steps"):
        as_recipe(recipe, ["train.max_steps=0"])


def test_a_recipe_object_for_classification_takes_the_classification_head() -> None:
    made = Recipe()  # a segmentation recipe: its null head resolved to unetr
    assert made.finetune.head == "unetr"
    assert as_recipe(made, task="classify").finetune.head == "linear"
    assert as_recipe(load_recipe(None, ["finetune.head=linear"]), task="classify").finetune.head == "linear"
    with pytest.raises(ConfigError, match="finetune.head for task 'classify'"):
        as_recipe(load_recipe(None, ["finetune.head=probe"]), task="classify")


def test_pretrain_applies_overrides_to_a_recipe_object(raster_dir: Path, tmp_path: Path) -> None:
    from geomed_ssl.train.pretrain import pretrain

    recipe = load_recipe(RECIPE, RUN)
    result = pretrain(recipe, raster_dir, tmp_path / "run", overrides=["train.max_steps=2"], progress=False)
    assert result.steps == 2 and recipe.train.max_steps == 3
    assert "catalog" not in repr(result) and len(repr(result)) < 400  # a notebook shows it


def test_classify_takes_a_recipe_object_with_overrides(tmp_path: Path) -> None:
    from geomed_ssl.finetune.classify import finetune_classify

    data = write_class_folders(tmp_path / "classes", ["Forest", "River"], per_class=4)
    recipe = load_recipe(RECIPE, [*TINY, "data.sensor=null", "data.patch_size=16", "finetune.max_steps=2",
                                  "finetune.freeze_encoder=true"])
    result = finetune_classify(recipe, None, data, tmp_path / "ft", overrides=["labels.per_class=2"], progress=False)
    assert result.out_dir == tmp_path / "ft" and (tmp_path / "ft" / "metrics.json").is_file()


def test_a_call_leaves_random_generators_environment_filters_levels_and_handlers_as_it_found_them(
        raster_dir: Path, tmp_path: Path) -> None:
    from geomed_ssl.train.pretrain import pretrain

    seed_all(123)
    expected = draws()
    seed_all(123)
    before_env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "OMP_NUM_THREADS")}
    before_filters, threads = list(warnings.filters), torch.get_num_threads()
    before_level = logging.getLogger("lightning.pytorch").level
    before_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    pretrain(RECIPE, raster_dir, tmp_path / "run", overrides=RUN, progress=False)

    assert draws() == expected  # the run's seeding (Lightning's seed_everything, a reseed per step) is undone
    assert {k: os.environ.get(k) for k in before_env} == before_env
    assert warnings.filters == before_filters and torch.get_num_threads() == threads
    assert logging.getLogger("lightning.pytorch").level == before_level
    assert {s: signal.getsignal(s) for s in before_handlers} == before_handlers


def test_keeps_process_state_also_when_the_call_fails() -> None:
    @keeps_process_state
    def changes_everything() -> None:
        L.seed_everything(7, workers=True, verbose=False)
        warnings.filterwarnings("ignore", message="something")
        logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # what Lightning does when it aborts
        raise ValueError("failed")

    seed_all(5)
    expected = draws()
    seed_all(5)
    state = ProcessState()
    with pytest.raises(ValueError):
        changes_everything()
    assert draws() == expected
    assert "PL_GLOBAL_SEED" not in os.environ or os.environ["PL_GLOBAL_SEED"] == state.env["PL_GLOBAL_SEED"]
    assert logging.getLogger("lightning.fabric").level == state.levels["lightning.fabric"]
    assert signal.getsignal(signal.SIGINT) == state.handlers[signal.SIGINT]
    assert not any(f[1] is not None and f[1].pattern == "something" for f in warnings.filters)


class SecondCtrlC(L.Callback):
    """Two SIGINTs at one step: the first asks for a stop after the step, the second aborts at once."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)


def test_a_second_ctrl_c_in_pretrain_is_run_stopped_not_an_exit(raster_dir: Path, tmp_path: Path) -> None:
    from geomed_ssl.train.pretrain import pretrain

    handler = signal.getsignal(signal.SIGINT)
    run = tmp_path / "run"
    with pytest.raises(RunStopped, match="aborted by a second Ctrl-C at step 2") as stopped:
        pretrain(RECIPE, raster_dir, run, overrides=[*RUN, "train.max_steps=5"], progress=False,
                 callbacks=[SecondCtrlC()])
    assert stopped.value.signal == "SIGINT" and "--resume" in str(stopped.value)
    assert signal.getsignal(signal.SIGINT) == handler  # Ctrl-C works in the notebook afterwards
    assert pretrain(None, raster_dir, run, resume=True, progress=False).steps == 5


def test_compare_options_made_in_python_are_checked_as_the_command_line_checks_them(tmp_path: Path) -> None:
    options = CompareOptions([str(tmp_path)], [Budget(per_class=5), Budget(per_class=2)], [1, 0, 1])
    assert CompareOptions({"none"}, {Budget(per_class=2)}, range(2)).seeds == [0, 1]  # any collection but a string
    assert options.encoders == [str(tmp_path), "none"]  # random init is always the reference
    assert options.budgets == [Budget(per_class=2), Budget(per_class=5)] and options.seeds == [1, 0]
    bad = [
        (dict(protocols=["linaer"]), r"protocols \(--protocol\): unknown name 'linaer'"),
        (dict(baselines=["forest"]), "unknown name 'forest'"),
        (dict(split="blockz"), r"split \(--split\) 'blockz'"),
        (dict(budgets=[Budget(per_class=0)]), "whole number >= 1"),
        (dict(budgets=[Budget(per_class=2), Budget(fraction=0.1)]), "not both"),
        (dict(seeds=[-1]), "--seeds"),
        (dict(encoders=[str(tmp_path / "missing")]), "does not exist"),
        (dict(encoders="none"), r"encoders is a list, e.g. \['runs/a', 'none'\]; got 'none'"),  # not letter by letter
        (dict(seeds=0), "seeds is a list"),
        (dict(seeds=np.array(0)), "seeds is a list"),
        (dict(seeds=torch.tensor(0)), "seeds is a list"),
        (dict(encoders={"none", str(tmp_path)}), "encoders is a list"),  # a set: which encoder is first would vary
        (dict(budgets=[2]), r"label budget 2: give each as Budget\(per_class=K\)"),
    ]
    for change, message in bad:
        kwargs = {"encoders": ["none"], "budgets": [Budget(per_class=2)], "seeds": [0], **change}
        with pytest.raises(ConfigError, match=message):
            CompareOptions(**kwargs)


def test_run_compare_refuses_a_bad_protocol_before_it_makes_the_output_folder(tmp_path: Path) -> None:
    from geomed_ssl.compare.run import run_compare

    data = write_class_folders(tmp_path / "classes", ["Forest", "River"], per_class=3)
    with pytest.raises(ConfigError):
        run_compare(CompareOptions(["none"], [Budget(per_class=1)], [0], protocols=["linaer"]), out=tmp_path / "cmp",
                    data=data)
    assert not (tmp_path / "cmp").exists()


def test_methods_text_refuses_an_unknown_name_and_takes_one_name() -> None:
    from geomed_ssl.methods.catalog import methods_text

    with pytest.raises(ConfigError, match="'maee' is unknown"):
        methods_text(["maee"])
    shown = methods_text("vicreg_dense")
    assert shown.startswith("vicreg_dense") and "\nvicreg  (" not in shown


def test_scan_without_a_data_section_reads_rasters_with_the_defaults(raster_dir: Path) -> None:
    from geomed_ssl.data.catalog import scan

    catalog = scan(raster_dir)
    assert len(catalog.records) == 6  # the 1-band mask is set apart: its band count differs
    assert [Path(p.path).name for p in catalog.problems] == ["scene_0_mask.tif"]


def test_every_other_command_function_leaves_the_generators_as_found_and_its_folder_free(
        raster_dir: Path, tmp_path: Path) -> None:
    """export, attention, embed, cluster, similar, predict and evaluate build models (whose weight init draws from
    torch's generator) or cluster with seeds: a notebook that seeded its own experiments finds its draws unchanged,
    and the output folder's lock let go (another process may write there once the call returns)."""
    from geomed_ssl import export_timm
    from geomed_ssl.embeddings.cluster import cluster_embeddings
    from geomed_ssl.embeddings.extract import embed_folder
    from geomed_ssl.embeddings.search import find_similar
    from geomed_ssl.finetune.evaluate import evaluate_dir
    from geomed_ssl.inference.finetuned import predict_dir
    from geomed_ssl.outlocks import _HELD
    from geomed_ssl.train.pretrain import pretrain
    from geomed_ssl.viz.attention import attention_for_file
    from tests.inference.test_finetuned import make_ft_dir

    run = tmp_path / "run"
    pretrain(RECIPE, raster_dir, run, overrides=[*RUN, "train.max_steps=1"], progress=False)
    ft = make_ft_dir(tmp_path / "model")
    scene = raster_dir / "scene_0.tif"
    labels = tmp_path / "labels"
    labels.mkdir()
    write_geotiff(labels / "scene_0.tif", np.ones((1, 48, 48), np.uint8))
    calls = {
        "export": lambda: export_timm(run, tmp_path / "timm"),
        "attention": lambda: attention_for_file(run, scene, tmp_path / "attention.png"),
        "embed": lambda: embed_folder(run, raster_dir, tmp_path / "emb", progress=False),
        "cluster": lambda: cluster_embeddings(tmp_path / "emb", tmp_path / "clusters", k=2),
        "similar": lambda: find_similar(tmp_path / "emb", scene, top=2),
        "predict": lambda: predict_dir(ft, scene, tmp_path / "maps"),
        "evaluate": lambda: evaluate_dir(ft, images=scene, labels=labels / "scene_0.tif", out=tmp_path / "eval"),
    }
    for name, call in calls.items():
        seed_all(321)
        expected = draws()
        seed_all(321)
        call()
        assert draws() == expected, name
        assert not _HELD, (name, list(_HELD))


def test_predict_dir_with_no_input_says_so(tmp_path: Path) -> None:
    from geomed_ssl.errors import DataError
    from geomed_ssl.inference.finetuned import predict_dir

    with pytest.raises(DataError, match="no input to predict"):
        predict_dir(tmp_path / "ft", [], tmp_path / "maps")
    assert not (tmp_path / "maps").exists()


def test_band_names_given_as_one_string_are_refused_not_read_letter_by_letter() -> None:
    """predict_dir / evaluate's band_names="B01,B02" named seven bands (B, 0, 1, ',', ...) and failed far away."""
    from geomed_ssl.errors import ConfigError
    from geomed_ssl.inference.finetuned import with_data

    with pytest.raises(ConfigError, match=r"band_names is a list of band names, e.g. \['B01,B02'\]"):
        with_data({}, None, "B01,B02")
