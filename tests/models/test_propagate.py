"""The ``propagate`` probe: labels spread along a k-NN graph of unlabelled samples (a class's few labels reach
its whole cluster, where a probe of the labels alone gets much of it wrong), then a linear probe on every node; and
the graph's nodes are drawn as said; the classes' shares are estimated on the nodes, not taken from the labels."""

from __future__ import annotations

import numpy as np
import pytest

from geomed_ssl.models.probe import fit_probe, predict_probe
from geomed_ssl.models.propagate import knn_graph, prior_shift, propagate_labels, propagated, sample_nodes


def two_arcs(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two opposite arcs of the unit circle (label 0: angles a..a+pi-0.4, label 1: the same + pi), jittered; the
    first two points (labels 0, 1) sit at an end of each arc, where the nearest of them is the wrong one for about
    40 % of the points (a = pi/4 - 0.05: both axes of the two points spread alike, so standardising keeps angles)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = np.pi / 4 - 0.05
    t = a + rng.uniform(0, np.pi - 0.4, n) + np.pi * y
    t[:2], y[:2] = [a + 0.05, a + np.pi + 0.05], [0, 1]
    r = rng.normal(1, 0.02, n)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1).astype(np.float32), y


def test_graph_is_symmetric_normalised_and_has_no_self_loops() -> None:
    x, _ = two_arcs(100)
    s = knn_graph(x, k=5)
    dense = s.toarray()
    assert np.allclose(dense, dense.T) and np.all(np.diag(dense) == 0)
    assert ((dense > 0).sum(1) >= 5).all()
    assert np.abs(np.linalg.eigvalsh(dense)).max() <= 1 + 1e-6  # D^-1/2 W D^-1/2: spectrum within [-1, 1]


def test_one_label_per_arc_reaches_the_whole_arc_where_probes_of_the_labels_do_not() -> None:
    x, y = two_arcs(200)  # 100 points an arc: the labels cross it within the 50 iterations
    train = np.array([0, 1])
    scores = propagate_labels(x, train, y[train], 2)
    assert (scores.argmax(1) == y).mean() > 0.95
    x_all, labels = propagated(x[train], y[train], x, 2)
    assert len(x_all) == 2 + len(x) and (labels[:2] == y[train]).all() and (labels[2:] == y).mean() > 0.95
    state = fit_probe("propagate", x[train], y[train], 2, x)
    assert set(state) == {"mean", "std", "weight", "bias"}  # a linear probe: as small and fast as linear's
    new, y_new = two_arcs(300, seed=1)  # unseen samples
    assert (predict_probe(state, new, 2) == y_new).mean() > 0.95
    for kind in ("knn", "linear"):  # what the unlabelled samples added
        assert (predict_probe(fit_probe(kind, x[train], y[train], 2), new, 2) == y_new).mean() < 0.7, kind


def test_prior_shift_recovers_the_scenes_class_shares_from_balanced_labels() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(4000) < 0.2).astype(int)  # the scene: 80 % class 0
    x = rng.normal(y * 1.5, 1.0)  # two overlapping 1-D Gaussians
    lik = np.stack([np.exp(-x ** 2 / 2), np.exp(-(x - 1.5) ** 2 / 2)], 1)  # posteriors under equal shares
    post, shares = prior_shift(lik, np.array([0.5, 0.5]))
    assert shares == pytest.approx([0.8, 0.2], abs=0.03)
    assert (post.argmax(1) == y).mean() > (lik.argmax(1) == y).mean() + 0.05  # the Bayes rule under the true shares
    faint = lik.copy()
    faint[y == 1] *= 1e-26  # nodes the propagation barely reached count as whole nodes
    assert prior_shift(faint, np.array([0.5, 0.5]))[1] == pytest.approx(shares)
    same, kept = prior_shift(lik, np.array([0.8, 0.2]), iterations=0)  # no iteration: the scores as posteriors
    assert kept == pytest.approx([0.8, 0.2]) and np.allclose(same.sum(1), 1)


def test_propagated_classes_follow_the_estimated_shares_on_an_imbalanced_scene() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(3000) < 0.15).astype(int)  # 85 % class 0, overlapping clusters
    x = rng.normal(0, 1, (3000, 4)).astype(np.float32)
    x[:, 0] += 1.6 * y
    train = np.concatenate([np.flatnonzero(y == 0)[:5], np.flatnonzero(y == 1)[:5]])  # 5 labels per class
    nodes = np.setdiff1d(np.arange(3000), train)
    _, est = propagated(x[train], y[train], x[nodes], 2)
    _, plain = propagated(x[train], y[train], x[nodes], 2, shares="labels")
    acc_est, acc_plain = (est[10:] == y[nodes]).mean(), (plain[10:] == y[nodes]).mean()
    assert acc_est > acc_plain + 0.03 and (est[10:] == 1).mean() < (plain[10:] == 1).mean()
    with pytest.raises(ValueError, match="shares"):
        propagated(x[train], y[train], x[nodes], 2, shares="uniform")
    few = nodes[:150]  # < 100 unlabelled nodes per class: too few for a stable estimate, the labels' shares stay
    assert np.array_equal(propagated(x[train], y[train], x[few], 2)[1],
                          propagated(x[train], y[train], x[few], 2, shares="labels")[1])


def test_nodes_no_label_reaches_are_left_out_not_given_class_0() -> None:
    rng = np.random.default_rng(0)
    far = rng.normal([0.0, 0.0, 50.0], 0.1, size=(30, 3)).astype(np.float32)  # its own component of the graph
    x, y = two_arcs(200)
    x3 = np.concatenate([x, np.zeros((len(x), 1), np.float32)], 1)
    x_all, labels = propagated(x3[:2], y[:2], np.concatenate([x3, far]), 2)
    assert len(x_all) == 2 + len(x3) and np.array_equal(x_all[-1], x3[-1])  # the far cluster is gone


def test_without_unlabelled_nodes_it_is_the_linear_probe_of_the_training_samples() -> None:
    x, y = two_arcs(60)
    got, want = fit_probe("propagate", x[:20], y[:20], 2), fit_probe("linear", x[:20], y[:20], 2)
    assert all(np.allclose(got[k], want[k]) for k in want)


def test_nodes_are_every_pixel_under_the_cap_else_a_seeded_sample_inside_allowed() -> None:
    shapes = [(10, 10), (5, 8)]
    every = sample_nodes(shapes, 1000, seed=0)
    assert [p.tolist() for p in every] == [list(range(100)), list(range(40))]
    a, b = sample_nodes(shapes, 50, seed=3), sample_nodes(shapes, 50, seed=3)
    assert sum(p.size for p in a) == 50 and all(np.array_equal(p, q) for p, q in zip(a, b))
    assert all(np.all(np.diff(p) > 0) for p in a) and a[1].max() < 40
    allowed = [np.zeros((10, 10), bool), np.ones((5, 8), bool)]
    allowed[0][:3] = True
    inside = sample_nodes(shapes, 40, seed=0, allowed=allowed)
    assert sum(p.size for p in inside) == 40 and inside[0].max() < 30
    assert [p.size for p in sample_nodes(shapes, 1000, seed=0, allowed=allowed)] == [30, 40]


@pytest.mark.parametrize("n", [1, 2])
def test_tiny_graphs_do_not_fail(n: int) -> None:
    x = np.eye(3, dtype=np.float32)[:n]
    assert propagate_labels(x, np.array([0]), np.array([1]), 2).argmax(1)[0] == 1


def test_knn_votes_in_chunks_equal_one_pass() -> None:  # (the knn probe's memory can be large)
    import torch

    from geomed_ssl.models.probe import knn_scores

    g = torch.Generator().manual_seed(0)
    z, memory = torch.randn(50, 6, generator=g), torch.randn(30, 6, generator=g)
    labels = torch.randint(0, 3, (30,), generator=g)
    memory[4] = z[9]  # an exact match outvotes the others
    one = knn_scores(z, memory, labels, 3, chunk=1000)
    assert torch.allclose(knn_scores(z, memory, labels, 3, chunk=7), one, rtol=1e-5)  # BLAS blocking aside
    assert one[9].argmax() == labels[4] and one[9].sum() == 1
