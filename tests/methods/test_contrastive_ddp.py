"""Methods under DDP: 2 processes (gloo, CPU) with half of a global batch each give the loss and the gradients of one
process on the whole batch. SimCLR: negatives gathered with gradients from every rank, BatchNorm over the global
batch, DDP's gradient average. SwAV: Sinkhorn codes over the global batch (sums all-reduced), multi-crop, and with a
full queue (the same on every rank: it enters Sinkhorn's batch once, not once per rank). MoCo v3: keys gathered
from every rank. Barlow Twins: the cross-correlation of the global batch. DINO: multi-crop, the teacher's centring,
KoLeo's neighbours. MSN: each sample's own mask, Sinkhorn-balanced targets and ME-MAX's mean prediction over the
global batch. DeepCluster-v2: every rank's embeddings in the memory bank, the same k-means centroids on every rank.
I-JEPA: the context trimmed to the global batch's fewest tokens, nodata tokens counted over every rank."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from geomed_ssl.methods import METHODS, SSLMethod
from geomed_ssl.models.encoder import EncoderConfig

ENC = EncoderConfig(in_chans=3, img_size=(8, 8), patch_size=(4, 4), embed_dim=16, depth=1, num_heads=2)
SETTINGS = {
    "simclr": {"proj_hidden_dim": 16, "proj_dim": 8, "temperature": 0.3},
    "swav": {"proj_hidden_dim": 16, "proj_dim": 8, "n_prototypes": 5, "freeze_prototypes_steps": 0},
    "swav_queue": {"proj_hidden_dim": 16, "proj_dim": 8, "n_prototypes": 5, "freeze_prototypes_steps": 0,
                   "queue_size": 5},  # not a multiple of the 2 ranks: their shares differ in size
    "deepcluster": {"proj_hidden_dim": 16, "proj_dim": 8, "n_prototypes": 3, "heads": 2, "memory_size": 16},
    "moco_v3": {"proj_hidden_dim": 16, "proj_dim": 8},
    "barlow_twins": {"proj_hidden_dim": 16, "proj_dim": 8},
    "dino": {"head_hidden_dim": 16, "head_bottleneck_dim": 8, "out_dim": 12, "koleo_loss_weight": 0.1},
    "msn": {"proj_hidden_dim": 16, "proj_dim": 8, "n_prototypes": 6, "mask_ratio": 0.3},
}
BATCH, WORLD, LOCALS = 8, 2, 2


def method_name(name: str) -> str:
    return {"swav_queue": "swav"}.get(name, name)


def global_batch(name: str) -> dict:
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(BATCH, 3, 8, 8, generator=g) for _ in range(2)]
    crops = METHODS[method_name(name)].views.local_crops
    local = [torch.randn(BATCH, 3, 4, 4, generator=g) for _ in range(LOCALS)] if crops else []
    return {"views": {"global": views, "local": local}, "index": torch.arange(BATCH)}


def part(batch: dict, rank: int) -> dict:
    rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    return {"views": {k: [v[rows] for v in crops] for k, crops in batch["views"].items()},
            "index": batch["index"][rows]}


def loss_and_grads(method: SSLMethod, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = method.training_loss(batch, 0, torch.Generator().manual_seed(2))
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


def build(name: str) -> SSLMethod:
    torch.manual_seed(0)
    method = METHODS[method_name(name)](ENC, SETTINGS[name], max_steps=10)
    queue = getattr(method, "queue", None)
    if queue is not None:  # full, as after earlier steps: every rank's rows, so the same on every rank
        queue.enqueue(torch.randn(queue.size, *queue.row_shape, generator=torch.Generator().manual_seed(3)),
                      gather=False)
        assert queue.is_full
    return method


def worker(rank: int, folder: str) -> None:
    """Every case in one pair of processes (each spawn costs seconds of imports)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["TEST_DDP_PORT"])
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        for name in SETTINGS:
            save_mean(*loss_and_grads(build(name), part(global_batch(name), rank)), rank, Path(folder) / f"{name}.pt")
        save_mean(*ijepa_step(rank), rank, Path(folder) / "ijepa.pt")
        loss, accuracy = beit_step(rank)
        both = torch.stack([loss, accuracy]).detach()
        dist.all_reduce(both)  # the training loop logs the mean over ranks
        if rank == 0:
            torch.save(both / WORLD, Path(folder) / "beit.pt")
    finally:
        dist.destroy_process_group()


def save_mean(loss: torch.Tensor, grads: dict[str, torch.Tensor], rank: int, path: Path) -> None:
    """What DistributedDataParallel trains with, the mean over ranks of the loss and gradients, saved by rank 0."""
    dist.all_reduce(loss)
    for g in grads.values():
        dist.all_reduce(g)
        g /= WORLD
    if rank == 0:
        torch.save({"loss": loss / WORLD, "grads": grads}, path)


def beit_step(rank: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """BEiT's loss and masked-token accuracy on the global batch (``rank`` None) or a rank's half, with nodata in
    rank 1's rows only, so the ranks' valid-token counts differ."""
    g = torch.Generator().manual_seed(5)
    image = torch.randn(BATCH, 3, 8, 8, generator=g)
    valid = torch.ones(BATCH, 8, 8, dtype=torch.bool)
    valid[BATCH // 2:, :, :6] = False
    mask = torch.rand(BATCH, 4, generator=g) < 0.6
    torch.manual_seed(0)
    method = METHODS["beit"](ENC, {"codebook_size": 4}, max_steps=10)
    method.tokenizer.fit(torch.randn(64, 48, generator=g), torch.Generator().manual_seed(6), max_samples=64)
    if rank is not None:
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        image, valid, mask = image[rows], valid[rows], mask[rows]
    return method(image * valid[:, None], valid, mask)


def ijepa_case(rank: int | None) -> tuple[SSLMethod, dict]:
    """I-JEPA and the global batch (``rank`` None) or a rank's half; nodata in rank 1's rows only, so the ranks'
    valid target tokens differ, and (with these seeds) the ranks' fewest context tokens differ too (13 and 14)."""
    g = torch.Generator().manual_seed(7)
    image = torch.randn(BATCH, 3, 20, 20, generator=g)
    valid = torch.ones(BATCH, 20, 20, dtype=torch.bool)
    valid[BATCH // 2:, :, :6] = False
    torch.manual_seed(0)
    enc = EncoderConfig(in_chans=3, img_size=(20, 20), patch_size=(4, 4), embed_dim=16, depth=1, num_heads=2)
    method = METHODS["ijepa"](enc, {"num_targets": 3, "predictor_depth": 1, "predictor_num_heads": 2,
                                    "predictor_dim": 8}, max_steps=10)
    batch = {"image": image, "valid": valid, "index": torch.arange(BATCH)}
    if rank is not None:
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        batch = {k: v[rows] for k, v in batch.items()}
    return method, batch


def ijepa_step(rank: int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return loss_and_grads(*ijepa_case(rank))


def free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    os.environ["TEST_DDP_PORT"] = free_port()
    mp.spawn(worker, args=(str(folder),), nprocs=WORLD, join=True)
    return folder


@pytest.mark.parametrize("name", list(SETTINGS))
def test_two_processes_give_the_loss_and_gradients_of_one_process_on_the_global_batch(name: str,
                                                                                       two_processes: Path) -> None:
    ddp = torch.load(two_processes / f"{name}.pt", weights_only=True)
    loss, grads = loss_and_grads(build(name), global_batch(name))
    assert loss > 0
    torch.testing.assert_close(ddp["loss"], loss, rtol=1e-5, atol=1e-6)
    assert ddp["grads"].keys() == grads.keys() and len(grads) > 10
    for key, g in grads.items():  # the projector's BatchNorms, the prototypes and the encoder included
        scale = max(1.0, float(g.abs().max()))  # float rounding grows with the tensor's largest entry
        torch.testing.assert_close(ddp["grads"][key], g, rtol=1e-4, atol=1e-6 * scale, msg=key)


def test_ijepa_on_two_processes_gives_the_loss_and_gradients_of_one_process(two_processes: Path) -> None:
    """Each rank alone would trim its context to its own fewest tokens; under DDP both trim to the global fewest."""
    own = [ijepa_case(r)[0].masks(ijepa_case(r)[1], (5, 5), torch.Generator().manual_seed(2))[1].shape[1]
           for r in range(WORLD)]
    assert own[0] != own[1], own  # the case exercises the all-reduce of the trim
    ddp = torch.load(two_processes / "ijepa.pt", weights_only=True)
    loss, grads = ijepa_step(None)
    torch.testing.assert_close(ddp["loss"], loss, rtol=1e-5, atol=1e-6)
    assert ddp["grads"].keys() == grads.keys() and any(k.startswith("predictor.") for k in grads)
    for key, g in grads.items():
        torch.testing.assert_close(ddp["grads"][key], g, rtol=1e-4, atol=1e-6 * max(1.0, float(g.abs().max())),
                                   msg=key)


def test_beit_logs_the_global_batchs_loss_and_token_accuracy(two_processes: Path) -> None:
    """The ranks hold different numbers of valid tokens: the mean over ranks of their logged values must still be
    the global batch's (a mean of per-rank ratios is not)."""
    ddp = torch.load(two_processes / "beit.pt", weights_only=True)
    loss, accuracy = beit_step(None)
    torch.testing.assert_close(ddp, torch.stack([loss, accuracy]).detach(), rtol=1e-5, atol=1e-6)
