"""DeepCluster-v2: the memory bank, its clustering into pseudo-labels, and the loss against the official formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geomed_ssl.methods.kmeans import kmeans, sample_centroids
from geomed_ssl.methods.losses.deepcluster import IGNORE, DeepClusterMemory, deepcluster_loss


def _fill(mem: DeepClusterMemory, n: int, batch: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx, emb = torch.arange(n), torch.randn(mem.n_views, n, dim, generator=g)
    for s in range(0, n, batch):
        mem.add(idx[s : s + batch], emb[:, s : s + batch])
    return idx, F.normalize(emb, dim=-1)


def test_memory_keeps_normalised_embeddings_with_their_indices() -> None:
    mem = DeepClusterMemory(size=32, dim=8, n_prototypes=[4], dataset_size=100)
    idx, emb = _fill(mem, 24, batch=8, dim=8)
    assert len(mem) == 24
    assert torch.equal(mem.indices.oldest_first(), idx)
    torch.testing.assert_close(mem.embeddings.oldest_first(), emb.transpose(0, 1))


def test_cluster_labels_every_sample_in_memory_as_kmeans_does_per_head() -> None:
    mem = DeepClusterMemory(size=64, dim=8, n_prototypes=[5, 7, 3], dataset_size=100, n_views=2,
                            kmeans_iterations=4)
    idx, emb = _fill(mem, 60, batch=12, dim=8, seed=1)
    centroids = mem.cluster(torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    for h, k in enumerate([5, 7, 3]):
        x = emb[h % 2]  # head h clusters view h % V
        want = kmeans(x, sample_centroids(x, k, g), 4, spherical=True)
        torch.testing.assert_close(centroids[h], want.centroids)
        assert torch.equal(mem.assignments[h, idx], want.labels)
    assert (mem.assignments[:, 60:] == IGNORE).all()  # never seen
    assert torch.equal(mem.targets(torch.tensor([3, 70])), mem.assignments[:, [3, 70]])


def test_sample_seen_twice_takes_the_label_of_its_newest_embedding() -> None:
    mem = DeepClusterMemory(size=8, dim=2, n_prototypes=[2], dataset_size=10, n_views=1, kmeans_iterations=5)
    east = torch.tensor([[1.0, 0.1], [1.0, -0.1]])
    west = torch.tensor([[-1.0, 0.1], [-1.0, -0.1]])
    mem.add(torch.tensor([0, 1, 2, 3]), torch.cat([east, west])[None])
    mem.add(torch.tensor([0]), torch.tensor([[[-1.0, 0.0]]]))  # sample 0 moved west
    mem.cluster(torch.Generator().manual_seed(0))
    labels = mem.assignments[0]
    assert labels[1] != labels[2]  # east and west were told apart
    assert labels[0] == labels[2]


def test_cluster_refuses_more_prototypes_than_samples() -> None:
    mem = DeepClusterMemory(size=16, dim=4, n_prototypes=[10], dataset_size=20)
    _fill(mem, 6, batch=6, dim=4)
    with pytest.raises(ValueError, match="6 samples, fewer than the 10 prototypes"):
        mem.cluster()


def test_memory_state_dict_round_trip_gives_the_same_assignments() -> None:
    mem = DeepClusterMemory(size=32, dim=4, n_prototypes=[3], dataset_size=40)
    _fill(mem, 20, batch=5, dim=4, seed=2)
    mem.cluster(torch.Generator().manual_seed(0))
    copy = DeepClusterMemory(size=32, dim=4, n_prototypes=[3], dataset_size=40)
    copy.load_state_dict(mem.state_dict())
    assert torch.equal(copy.assignments, mem.assignments) and len(copy) == 20
    again = copy.cluster(torch.Generator().manual_seed(1))[0]
    assert torch.equal(again, mem.cluster(torch.Generator().manual_seed(1))[0])


def _official_loss(output: list[torch.Tensor], assignments: list[torch.Tensor], idx: torch.Tensor, n_crops: int,
                   temperature: float) -> torch.Tensor:
    # main_deepclusterv2.py, train():
    #   loss = 0
    #   for h in range(len(args.nmb_prototypes)):
    #       scores = output[h] / args.temperature
    #       targets = assignments[h][idx].repeat(sum(args.nmb_crops))
    #       loss += cross_entropy(scores, targets)       # nn.CrossEntropyLoss(ignore_index=-100)
    #   loss /= len(args.nmb_prototypes)
    loss = 0
    for h in range(len(output)):
        scores = output[h] / temperature
        targets = assignments[h][idx].repeat(n_crops)
        loss += torch.nn.CrossEntropyLoss(ignore_index=-100)(scores, targets)
    return loss / len(output)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
@pytest.mark.parametrize("n_crops", [2, 8])
def test_loss_matches_official_formula(temperature: float, n_crops: int) -> None:
    g = torch.Generator().manual_seed(n_crops)
    b, sizes = 6, [5, 9]
    assignments = [torch.randint(0, k, (30,), generator=g) for k in sizes]
    assignments[1][[2, 7]] = IGNORE  # not clustered yet
    idx = torch.tensor([0, 2, 7, 11, 20, 29])
    output = [torch.randn(n_crops * b, k, generator=g) for k in sizes]  # crop-major, as the official model
    targets = torch.stack([a[idx] for a in assignments])  # (H, B)
    got = deepcluster_loss([o.reshape(n_crops, b, -1) for o in output], targets, temperature)
    torch.testing.assert_close(got, _official_loss(output, assignments, idx, n_crops, temperature))


def test_loss_without_any_label_is_zero_and_keeps_the_graph() -> None:
    scores = torch.randn(2, 4, 5, requires_grad=True)
    loss = deepcluster_loss([scores], torch.full((1, 4), IGNORE), 0.1)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(scores.grad, torch.zeros_like(scores))


def test_prototypes_stay_the_kmeans_centroids_through_optimiser_steps() -> None:
    """As in the official DeepCluster-v2 (prototypes frozen for every iteration): an AdamW step with weight decay
    moves the projector but never the prototypes off the centroids that give the labels."""
    from geomed_ssl.methods import METHODS
    from geomed_ssl.models.encoder import EncoderConfig
    from geomed_ssl.train.module import param_groups

    torch.manual_seed(0)
    enc = EncoderConfig(in_chans=3, img_size=(8, 8), patch_size=(4, 4), embed_dim=16, depth=1, num_heads=2)
    method = METHODS["deepcluster"](enc, {"proj_hidden_dim": 16, "proj_dim": 8, "n_prototypes": 3, "heads": 1,
                                          "memory_size": 8}, max_steps=10)
    opt = torch.optim.AdamW(param_groups(method, 0.5, method.no_weight_decay()), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        views = [torch.randn(8, 3, 8, 8, generator=g) for _ in range(2)]
        out = method.training_loss({"views": {"global": views, "local": []}, "index": torch.arange(8)}, step, g)
        opt.zero_grad()
        out.loss.backward()
        method.before_optimizer_step(step)
        projector_before = [p.detach().clone() for p in method.projector.parameters()]
        opt.step()
        method.after_step(step)
        assert int(method.clustered_at) == 0 and out.loss > 0
        weights = torch.cat([p.detach() for p in method.prototypes.parameters()])
        torch.testing.assert_close(weights, method.centroids[0])
        assert any(not torch.equal(a, b) for a, b in zip(projector_before, method.projector.parameters()))
