"""The samples every encoder and baseline shares: train and test disjoint, blocks keep training features (and the
propagation graph's nodes) out of test blocks, rare classes warned about once."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from geomed_ssl.compare.baselines import RandomConv, conv_points, rf_points
from geomed_ssl.models.probe import encoder_points
from geomed_ssl.compare.options import Budget
from geomed_ssl.compare.task import load_segment_task, make_split, warn_notes
from geomed_ssl.config import load_recipe
from tests.compare.conftest import labelled_scene

# block size 8: the encoder's 16-pixel windows span blocks
RECIPE = ["data.sensor=null", "data.stats_windows=16", "data.patch_size=16", "labels.block_size=8"]


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory):
    images, labels = labelled_scene(tmp_path_factory.mktemp("task"))
    recipe = load_recipe("recipes/mae_sentinel2.yaml", RECIPE)
    return recipe, load_segment_task(recipe, images, labels, strict=False)


@pytest.mark.parametrize("split", ["random", "blocks"])
@pytest.mark.parametrize("budget", [Budget(per_class=5), Budget(fraction=0.05)])
def test_train_and_test_are_disjoint_and_test_is_every_other_eligible_label(task, split: str, budget: Budget) -> None:
    recipe, t = task
    s = make_split(t, recipe, budget, 1, split)
    assert s.train.size and s.test.size and np.intersect1d(s.train, s.test).size == 0
    if split == "random":
        assert s.train.size + s.test.size == t.values.size  # test = every labelled pixel not trained on
    else:
        inside = s.allowed[0].reshape(-1)[t.flats]
        assert inside[s.train].all() and not inside[s.test].any()  # training blocks vs test blocks


def test_same_seed_gives_the_same_split_and_another_seed_another(task) -> None:
    recipe, t = task
    a, b, c = (make_split(t, recipe, Budget(per_class=5), seed, "blocks") for seed in (0, 0, 1))
    assert np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)
    assert not np.array_equal(a.train, c.train)


def point_functions():
    import torch

    from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

    torch.manual_seed(0)
    enc = ViTEncoder(EncoderConfig(in_chans=4, spatial_dims=2, img_size=(16, 16), patch_size=(4, 4), embed_dim=32,
                                   depth=2, num_heads=2, band_names=["B1", "B2", "B3", "B4"]))
    mean, comps = np.zeros(4, np.float32), np.eye(4, dtype=np.float32)
    return {"encoder": encoder_points(enc.eval(), [0, 1]), "random_conv": conv_points(RandomConv(4, 2)),
            "rf": rf_points(mean, comps)}


@pytest.mark.parametrize("name", ["encoder", "random_conv", "rf"])
def test_blocks_training_features_never_see_test_block_pixels(task, name: str) -> None:
    recipe, t = task
    s = make_split(t, recipe, Budget(per_class=5), 0, "blocks")
    fn = point_functions()[name]
    allowed = s.allowed[0]
    points = np.stack(np.unravel_index(t.flats[s.train], t.shapes[0]), axis=1)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, *t.shapes[0])).astype(np.float32)
    changed = image.copy()
    changed[:, ~allowed] = rng.normal(size=(4, int((~allowed).sum()))) * 5  # other test-block pixels
    assert np.allclose(fn(image, points, allowed), fn(changed, points, allowed), atol=1e-5)
    assert not np.allclose(fn(image, points, None), fn(changed, points, None), atol=1e-5)  # the full view sees them


def test_blocks_propagation_nodes_lie_in_training_blocks_and_see_only_them(task) -> None:
    from geomed_ssl.compare.features import SegmentFeatures

    recipe, t = task
    s = make_split(t, recipe, Budget(per_class=5), 0, "blocks")
    calls = []

    def fn(image: np.ndarray, points: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        calls.append((points, allowed))
        return np.zeros((points.shape[0], 2), np.float32)

    feats = SegmentFeatures(t, lambda i: np.zeros((4, *t.shapes[0]), np.float32), fn)
    assert feats.nodes(50, 0, s.allowed).shape == (50, 2)
    points, allowed = calls[-1]
    assert allowed is s.allowed[0] and s.allowed[0][tuple(points.T)].all()
    assert feats.nodes(10**6, 0).shape[0] == int(np.prod(t.shapes[0]))  # random split: every pixel, full view
    assert calls[-1][1] is None


def test_a_class_with_fewer_labels_than_the_budget_is_warned_about_once(task, caplog) -> None:
    recipe, t = task
    splits = [make_split(t, recipe, Budget(per_class=k), seed, "random") for k in (5, 5000, 6000) for seed in (0, 1)]
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_notes(splits)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == len(t.class_names)  # every class has < 10000 labels: one line each, not one per split
    assert all("took" in line and line.endswith("; short at k6000 too") for line in lines)


def test_shortfalls_of_budgets_an_earlier_compare_ran_are_read_from_its_selections(task, tmp_path) -> None:
    """A folder resumed with other budgets still reports the earlier ones' rows, so it says their shortfalls too."""
    from geomed_ssl.compare.task import save_split, short_budgets, shortfalls, with_earlier_splits

    recipe, t = task
    earlier = make_split(t, recipe, Budget(per_class=6000), 0, "random")
    save_split(t, tmp_path, earlier)
    now = [make_split(t, recipe, Budget(per_class=1), 0, "random")]
    rows = [{"labels_per_class": k, "label_fraction": "", "seed": "0"} for k in ("1", "6000", "7000")]
    every = with_earlier_splits(tmp_path, now, rows)  # k7000 has no saved selection: nothing to say of it
    assert [(s.budget.slug, s.seed) for s in every] == [("k1", 0), ("k6000", 0)]
    assert short_budgets(every) == {6000.0} and shortfalls(every) == shortfalls([earlier])


def test_two_fraction_budgets_never_share_a_results_key_or_selection_file() -> None:
    from geomed_ssl.compare.options import parse_budgets

    budgets = parse_budgets(None, "0.1234561,0.1234564,0.01")
    assert len({b.slug for b in budgets}) == 3 and len({b.cells for b in budgets}) == 3
    assert Budget(fraction=0.01).cells == ("", "0.01") and Budget(fraction=0.01).slug == "f0.01"  # as before
    assert Budget(fraction=1.0).cells == ("", "1") and Budget(fraction=1e-05).slug == "f1e-05"


def test_a_window_override_with_a_pretrained_encoder_is_warned_about(caplog) -> None:
    from geomed_ssl.compare.sources import EncoderSource, warn_fixed_windows
    from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder

    enc = ViTEncoder(EncoderConfig(in_chans=4, spatial_dims=2, img_size=(16, 16), patch_size=(4, 4), embed_dim=32,
                                   depth=2, num_heads=2))
    run = EncoderSource("runs/a", enc, None, [])
    none = EncoderSource("none", enc, None, [])
    with caplog.at_level(logging.WARNING, logger="geomed_ssl"):
        warn_fixed_windows(["train.seed=1"], [run, none])
        warn_fixed_windows(["data.patch_size=24"], [none])  # none alone takes the recipe's window: no warning
        assert not caplog.records
        warn_fixed_windows(["data.patch_size = 24"], [run, none])
    assert len(caplog.records) == 1 and "windows of its own size ('runs/a' 16x16)" in caplog.text


def test_rows_of_wholly_allowed_images_reuse_the_full_view(task) -> None:
    from geomed_ssl.compare.features import SegmentFeatures

    recipe, t = task
    calls = []

    def fn(image: np.ndarray, points: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        calls.append(allowed)
        return points.astype(np.float32)

    feats = SegmentFeatures(t, lambda i: np.zeros((4, *t.shapes[0]), np.float32), fn)
    rows = np.arange(0, t.values.size, 7)
    full = feats.features(rows)
    whole = [np.ones(t.shapes[0], bool)]  # the images split's map of a training image
    assert np.array_equal(feats.features(rows, whole), full) and calls == [None]  # computed once, full view
    part = [np.arange(np.prod(t.shapes[0])).reshape(t.shapes[0]) % 2 == 0]
    feats.features(rows, part)
    assert calls[-1] is part[0]  # a blanked view is computed anew


def test_held_out_images_are_named_by_their_subject_folder_when_every_file_has_one_name() -> None:
    from types import SimpleNamespace

    from geomed_ssl.compare.task import Split, held_out_lines

    records = [SimpleNamespace(path=f"/data/{g}/pat{i}/flair.nii.gz") for i, g in enumerate(["a", "a", "b"])]
    task = SimpleNamespace(records=records, files=np.array([0, 0, 1, 2, 2]))
    splits = [Split(Budget(per_class=1), seed, np.array([0]), np.array(test), []) for seed, test in
              ((0, [2, 3, 4]), (0, [2, 3, 4]), (1, [0, 1]))]
    assert held_out_lines(splits, task) == (["- seed 0: a/pat1, b/pat2", "- seed 1: a/pat0"], None)


def test_held_out_cases_of_one_folder_are_named_by_their_case() -> None:
    """nnU-Net's imagesTr: every case sits in one folder, so the folder alone would name them all '.'."""
    from types import SimpleNamespace

    from geomed_ssl.compare.task import Split, held_out_lines

    records = [SimpleNamespace(path=f"/d/imagesTr/case_{i}_0000.nii.gz", case=f"case_{i}",
                               paths=[f"/d/imagesTr/case_{i}_0000.nii.gz", f"/d/imagesTr/case_{i}_0001.nii.gz"])
               for i in range(3)]
    task = SimpleNamespace(records=records, files=np.array([0, 1, 2]))
    splits = [Split(Budget(per_class=1), 0, np.array([0]), np.array([1, 2]), [])]
    assert held_out_lines(splits, task) == (["- seed 0: case_1, case_2"], None)


@pytest.mark.parametrize("protocol", ["linear", "propagate"])
def test_frozen_scores_train_on_features_that_never_saw_test_blocks(task, protocol: str) -> None:
    """Each point function keeps to ``allowed``; this checks the protocol hands it the split's map: the classifier's
    training rows (and propagate's nodes) from the test-blocks-blanked view, the test rows from the full view."""
    from geomed_ssl.compare.features import SegmentFeatures
    from geomed_ssl.compare.run import frozen_scores

    recipe, t = task
    s = make_split(t, recipe, Budget(per_class=5), 0, "blocks")
    views = []

    def fn(image: np.ndarray, points: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        views.append(allowed)
        return np.random.default_rng(len(views)).normal(size=(points.shape[0], 3)).astype(np.float32)

    feats = SegmentFeatures(t, lambda i: np.zeros((4, *t.shapes[0]), np.float32), fn)
    frozen_scores(feats, t, s, protocol, recipe)
    blanked = [v for v in views if v is not None]
    assert len(blanked) == (2 if protocol == "propagate" else 1) and all(v is s.allowed[0] for v in blanked)
    assert sum(v is None for v in views) == 1  # the test rows


def test_a_warning_every_fine_tune_of_a_compare_repeats_is_shown_once(caplog) -> None:
    """Each fine-tune warned about the same file's value range in training and again in its evaluation: 61 copies
    in a default compare, burying the one line that mattered."""
    from geomed_ssl.compare.tuned import _SAID, _quiet

    log = logging.getLogger("geomed_ssl")
    token = _SAID.set(set())  # as execute sets it around the runs
    with caplog.at_level(logging.INFO, logger="geomed_ssl"):
        for _ in range(3):  # three fine-tunes
            with _quiet():
                log.warning("warning: the value range of 'a.tif' is far from the model's training statistics")
                log.info("step 1/5")
        with _quiet():
            log.warning("warning: another")
        _SAID.reset(token)
        log.warning("warning: another")  # after the compare: said again
    assert [r.getMessage() for r in caplog.records] == [
        "warning: the value range of 'a.tif' is far from the model's training statistics", "warning: another",
        "warning: another"]


def test_held_out_lines_name_seeds_that_repeat_one_split() -> None:
    """With three subjects, seeds 0-3 of the images split can hold out the same one: their rows are one split
    repeated, which the spread over seeds does not show."""
    from types import SimpleNamespace

    from geomed_ssl.compare.task import held_out_lines

    records = [SimpleNamespace(path=f"/d/sub-0{i}/anat/t1.nii.gz", paths=[], case=None) for i in range(3)]
    task = SimpleNamespace(records=records, files=np.repeat(np.arange(3), 4))
    tests = {0: [8, 9, 10, 11], 1: [8, 9, 10, 11], 2: [0, 1, 2, 3], 3: [8, 9, 10, 11]}  # rows of each seed's test image
    splits = [SimpleNamespace(seed=s, test=np.array(rows)) for s, rows in tests.items()]
    lines, repeated = held_out_lines(splits, task)
    assert lines == [f"- seed {s}: sub-0{i}/anat" for s, i in ((0, 2), (1, 2), (2, 0), (3, 2))]
    assert repeated.startswith("Seeds 0, 1, 3 hold out the same images")
    assert held_out_lines(splits[1:3], task)[1] is None
