"""Two gloo processes on CPU give the loss and gradients of one process on the concatenated global batch.

One spawn runs every case (the spawn is the slow part); each test checks one case. Each case runs a tiny DDP-wrapped
linear "encoder" on its rank's half of the batch; the reference runs the same case in this process on the whole batch,
where every collective is a no-op. DDP averages gradients over ranks, which is what makes the gathered gradient
(summed over ranks for the local rows) exact; the naive gather (the own slice only) is shown to be wrong.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from geomed_ssl.methods import distributed as D
from geomed_ssl.methods.kmeans import kmeans
from geomed_ssl.methods.losses import contrastive
from geomed_ssl.methods.losses.contrastive import QueueInfoNCELoss, moco_v3_contrastive, nt_xent_loss
from geomed_ssl.methods.losses.deepcluster import DeepClusterMemory
from geomed_ssl.methods.losses.redundancy import barlow_twins_loss, vicreg_loss
from geomed_ssl.methods.losses.swav import swav_loss

WORLD, B, D_IN, D_OUT, K = 2, 4, 5, 6, 7  # ranks, samples per rank, encoder in/out dims, prototypes

Result = dict[str, Tensor]


def _inputs() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    n = WORLD * B
    return {
        "x0": torch.randn(n, D_IN, generator=g), "x1": torch.randn(n, D_IN, generator=g),
        "x2": torch.randn(n, D_IN, generator=g), "keys": torch.randn(n, D_OUT, generator=g),
        "w": torch.randn(D_OUT, D_IN, generator=g) * 0.5, "b": torch.randn(D_OUT, generator=g) * 0.1,
        "protos": F.normalize(torch.randn(K, D_OUT, generator=g), dim=1),
        "queue": F.normalize(torch.randn(3 * n, D_OUT, generator=g), dim=1),
        "points": torch.randn(6 * n, 3, generator=g, dtype=torch.float64),
    }


def _local(t: Tensor, rank: int, world: int) -> Tensor:
    per = t.shape[0] // world
    return t[rank * per : (rank + 1) * per]


def _encoder(data: dict[str, Tensor], world: int) -> nn.Module:
    net = nn.Linear(D_IN, D_OUT)
    with torch.no_grad():
        net.weight.copy_(data["w"])
        net.bias.copy_(data["b"])
    return nn.parallel.DistributedDataParallel(net) if world > 1 else net


def _embed(data: dict[str, Tensor], rank: int, world: int, names: tuple[str, ...]) -> tuple[nn.Module, list[Tensor]]:
    """One forward of the (DDP) encoder over every view's local rows: the views' embeddings (b, D_OUT) each."""
    net = _encoder(data, world)
    z = net(torch.cat([_local(data[n], rank, world) for n in names]))
    return net, list(z.chunk(len(names)))


def _backward(net: nn.Module, loss: Tensor) -> Result:
    loss.backward()
    inner = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
    return {"loss": loss.detach(), "grad_w": inner.weight.grad.clone(), "grad_b": inner.bias.grad.clone()}


def case_nt_xent(data: dict[str, Tensor], rank: int, world: int) -> Result:
    net, (z0, z1) = _embed(data, rank, world, ("x0", "x1"))
    return _backward(net, nt_xent_loss(z0, z1, temperature=0.3))


def _naive_gather(x: Tensor) -> Tensor:
    """all_gather, then the local tensor put back in its slot: the local rows get only this rank's gradient."""
    if not D.is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def case_nt_xent_naive_gather(data: dict[str, Tensor], rank: int, world: int) -> Result:
    saved, contrastive.gather = contrastive.gather, _naive_gather
    try:
        return case_nt_xent(data, rank, world)
    finally:
        contrastive.gather = saved


def case_moco_v3(data: dict[str, Tensor], rank: int, world: int) -> Result:
    net, (q,) = _embed(data, rank, world, ("x0",))
    return _backward(net, moco_v3_contrastive(q, _local(data["keys"], rank, world), temperature=0.2))


def case_barlow_twins(data: dict[str, Tensor], rank: int, world: int) -> Result:
    net, (z0, z1) = _embed(data, rank, world, ("x0", "x1"))
    return _backward(net, barlow_twins_loss(z0, z1))


def case_vicreg(data: dict[str, Tensor], rank: int, world: int) -> Result:
    net, (z0, z1) = _embed(data, rank, world, ("x0", "x1"))
    return _backward(net, vicreg_loss(z0, z1))


def case_swav(data: dict[str, Tensor], rank: int, world: int) -> Result:
    net, views = _embed(data, rank, world, ("x0", "x1", "x2"))
    scores = [F.normalize(z, dim=1) @ data["protos"].t() for z in views]  # 2 global crops and 1 local
    return _backward(net, swav_loss(scores[:2], scores[2:], temperature=0.1))


def case_koleo(data: dict[str, Tensor], rank: int, world: int) -> Result:
    from geomed_ssl.methods.dino_losses import KoLeoLoss

    net, (z,) = _embed(data, rank, world, ("x0",))  # a row's nearest neighbour may sit on the other rank
    return _backward(net, KoLeoLoss()(z))


def case_queue(data: dict[str, Tensor], rank: int, world: int) -> Result:
    loss_fn = QueueInfoNCELoss(queue_size=data["queue"].shape[0], dim=D_OUT, temperature=0.2)
    loss_fn.queue.rows.copy_(data["queue"])
    net, (q,) = _embed(data, rank, world, ("x0",))
    out = _backward(net, loss_fn(q, _local(data["keys"], rank, world)))
    loss_fn(q.detach(), _local(data["x1"] @ data["w"].t(), rank, world))  # a second step's keys
    return {**out, "queue": loss_fn.queue.rows.clone(), "ptr": loss_fn.queue.ptr.clone()}


def case_global_batchnorm(data: dict[str, Tensor], rank: int, world: int) -> Result:
    from geomed_ssl.methods.projection import GlobalBatchNorm1d

    net, (z,) = _embed(data, rank, world, ("x0",))  # the projection heads' BatchNorm: statistics of both ranks
    bn = GlobalBatchNorm1d(D_OUT).train()
    return _backward(net, ((bn(z) - _local(data["keys"], rank, world)) ** 2).mean())


def case_kmeans(data: dict[str, Tensor], rank: int, world: int) -> Result:
    x = _local(data["points"], rank, world)  # each rank holds a shard of the data
    result = kmeans(x, data["points"][:4], iterations=5, spherical=False, distributed=world > 1)
    return {"centroids": result.centroids, "labels": result.labels}


def case_deepcluster_memory(data: dict[str, Tensor], rank: int, world: int) -> Result:
    mem = DeepClusterMemory(size=64, dim=3, n_prototypes=[3, 4], dataset_size=100, n_views=2, kmeans_iterations=3)
    points = data["points"].float()  # (48, 3)
    for step in range(2):
        rows = points[step * 24 : (step + 1) * 24]  # a global batch of 24 = 2 views x 12 samples
        idx = torch.arange(step * 12, (step + 1) * 12)
        mem.add(_local(idx, rank, world), torch.stack([_local(rows[:12], rank, world), _local(rows[12:], rank, world)]))
    centroids = mem.cluster(torch.Generator().manual_seed(rank))  # ranks draw differently; rank 0's draw is used
    return {"memory": mem.embeddings.rows.clone(), "assignments": mem.assignments.clone(), "c0": centroids[0]}


def case_deepcluster_recluster(data: dict[str, Tensor], rank: int, world: int) -> Result:
    """Every rank holds the same memory, but a GPU's k-means rounds differently on each: rank 1's memory is nudged
    here to stand for that; every rank must still end with rank 0's centroids in its prototypes."""
    from geomed_ssl.methods.deepcluster import DeepCluster
    from geomed_ssl.models.encoder_config import EncoderConfig

    enc = EncoderConfig(in_chans=2, img_size=(8, 8), patch_size=(4, 4), embed_dim=16, depth=1, num_heads=2)
    method = DeepCluster(enc, {"n_prototypes": 3, "memory_size": 24, "heads": 2, "proj_hidden_dim": 8,
                               "proj_dim": 3, "kmeans_iterations": 3})
    rows = F.normalize(data["points"].float()[:24], dim=1)  # (24, 3)
    method.memory.enqueue(torch.stack([rows, rows.flip(0)], 1) + 1e-3 * rank, gather=False)
    method.recluster(step=0, generator=torch.Generator().manual_seed(0))
    return {"centroids": method.centroids.clone(),
            "prototypes": torch.stack([p.detach().clone() for p in method.prototypes.parameters()])}


def case_collapse_monitor(data: dict[str, Tensor], rank: int, world: int) -> Result:
    from geomed_ssl.methods.monitor import CollapseMonitor

    z = _local(data["keys"], rank, world)
    z = z * (1 + rank)  # the ranks' halves differ in spread (normalised: only their directions count)
    logs = CollapseMonitor("test")(z, step=0)
    return {"embedding_std": logs["embedding_std"], "collapse": logs["collapse"]}


def case_dino_monitor(data: dict[str, Tensor], rank: int, world: int) -> Result:
    from types import SimpleNamespace

    from geomed_ssl.methods.dino import DINO

    sharpness = 1 + 3 * (torch.arange(WORLD * B) >= B).float()[:, None]  # rank 1's half is 4x sharper
    logits = _local(data["keys"] * sharpness, rank, world)
    logs = DINO._monitor(SimpleNamespace(_last_warning=-(10**9)), logits, (logits / 0.5).softmax(-1),
                         torch.tensor(2.0), step=0)
    return {k: logs[k] for k in ("teacher_entropy", "teacher_std", "kl_teacher_student", "collapse")}


CASES: dict[str, Callable[[dict[str, Tensor], int, int], Result]] = {
    "nt_xent": case_nt_xent, "nt_xent_naive_gather": case_nt_xent_naive_gather, "moco_v3": case_moco_v3,
    "barlow_twins": case_barlow_twins, "vicreg": case_vicreg, "swav": case_swav, "koleo": case_koleo,
    "queue": case_queue, "global_batchnorm": case_global_batchnorm,
    "kmeans": case_kmeans, "deepcluster_memory": case_deepcluster_memory,
    "deepcluster_recluster": case_deepcluster_recluster, "collapse_monitor": case_collapse_monitor,
    "dino_monitor": case_dino_monitor,
}


def _worker(rank: int, world: int, work: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{work}/rendezvous", rank=rank, world_size=world)
    try:
        data = torch.load(f"{work}/inputs.pt", weights_only=True)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            results: dict[str, Any] = {name: case(data, rank, world) for name, case in CASES.items()}
        results["warnings"] = [str(w.message) for w in seen]
        torch.save(results, f"{work}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("gloo")
    data = _inputs()
    torch.save(data, work / "inputs.pt")
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        mp.spawn(_worker, args=(WORLD, str(work)), nprocs=WORLD, join=True)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    ranks = [torch.load(Path(work) / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    reference = {name: case(data, 0, 1) for name, case in CASES.items()}
    return {"ranks": ranks, "reference": reference}


def _check_loss_and_grads(runs: dict[str, Any], name: str) -> None:
    ranks, ref = [r[name] for r in runs["ranks"]], runs["reference"][name]
    # DDP logs and optimises the mean of the per-rank losses; its gradients are the same on every rank
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), ref["loss"], rtol=1e-5, atol=1e-6)
    for r in ranks:
        torch.testing.assert_close(r["grad_w"], ref["grad_w"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(r["grad_b"], ref["grad_b"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["nt_xent", "moco_v3", "barlow_twins", "vicreg", "swav", "koleo", "queue",
                                  "global_batchnorm"])
def test_two_ranks_give_the_single_process_loss_and_gradients(runs: dict[str, Any], name: str) -> None:
    _check_loss_and_grads(runs, name)


def test_the_collectives_warn_nothing_on_any_rank(runs: dict[str, Any]) -> None:
    """torch's differentiable all_reduce is deprecated and warned at every step of a BatchNorm-head method."""
    assert [r["warnings"] for r in runs["ranks"]] == [[]] * WORLD


def test_naive_gather_loses_the_other_ranks_gradient(runs: dict[str, Any]) -> None:
    ranks, ref = [r["nt_xent_naive_gather"] for r in runs["ranks"]], runs["reference"]["nt_xent_naive_gather"]
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), ref["loss"])  # forward is right
    assert not torch.allclose(ranks[0]["grad_w"], ref["grad_w"], rtol=1e-3, atol=1e-5)  # gradient is not


def test_every_rank_holds_the_single_process_queue(runs: dict[str, Any]) -> None:
    ref = runs["reference"]["queue"]
    for r in runs["ranks"]:
        torch.testing.assert_close(r["queue"]["queue"], ref["queue"])
        assert int(r["queue"]["ptr"]) == int(ref["ptr"])


def test_sharded_kmeans_equals_kmeans_on_all_the_data(runs: dict[str, Any]) -> None:
    ref = runs["reference"]["kmeans"]
    for rank, r in enumerate(runs["ranks"]):
        torch.testing.assert_close(r["kmeans"]["centroids"], ref["centroids"])
        assert torch.equal(r["kmeans"]["labels"], _local(ref["labels"], rank, WORLD))


def test_deepcluster_memory_and_assignments_agree_across_ranks(runs: dict[str, Any]) -> None:
    ref = runs["reference"]["deepcluster_memory"]  # one process, generator seed 0 (rank 0's)
    for r in runs["ranks"]:
        got = r["deepcluster_memory"]
        torch.testing.assert_close(got["memory"], ref["memory"])
        assert torch.equal(got["assignments"], ref["assignments"])
        torch.testing.assert_close(got["c0"], ref["c0"])


def test_deepcluster_prototypes_are_rank_0s_kmeans_fit_on_every_rank(runs: dict[str, Any]) -> None:
    ref = runs["reference"]["deepcluster_recluster"]  # one process: rank 0's memory
    for r in runs["ranks"]:
        assert torch.equal(r["deepcluster_recluster"]["centroids"], ref["centroids"])
        assert torch.equal(r["deepcluster_recluster"]["prototypes"], ref["prototypes"])


def test_every_rank_logs_the_global_batchs_embedding_spread(runs: dict[str, Any]) -> None:
    """``embedding_std`` / ``collapse`` are the global batch's on every rank (not each rank's half, averaged)."""
    ref = runs["reference"]["collapse_monitor"]
    for r in runs["ranks"]:
        torch.testing.assert_close(r["collapse_monitor"]["embedding_std"], ref["embedding_std"])
        assert float(r["collapse_monitor"]["collapse"]) == float(ref["collapse"])


def test_every_rank_logs_the_global_batchs_dino_teacher_monitors(runs: dict[str, Any]) -> None:
    """DINO's ``teacher_entropy`` / ``teacher_std`` (and the collapse flag they set) are the global batch's."""
    ref = runs["reference"]["dino_monitor"]
    for r in runs["ranks"]:
        for key in ("teacher_entropy", "teacher_std", "kl_teacher_student", "collapse"):
            torch.testing.assert_close(r["dino_monitor"][key], ref[key], rtol=1e-5, atol=1e-7)
