"""SimCLR under DDP: 2 processes (gloo, CPU) with half of a global batch each give the loss and the gradients of one
process on the whole batch: negatives gathered with gradients from every rank, BatchNorm over the global batch, and
DDP's gradient average."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from geomed_ssl.methods.simclr import SimCLR
from geomed_ssl.models.encoder import EncoderConfig

ENC = EncoderConfig(in_chans=3, img_size=(8, 8), patch_size=(4, 4), embed_dim=16, depth=1, num_heads=2)
SETTINGS = {"proj_hidden_dim": 16, "proj_dim": 8, "temperature": 0.3}
BATCH, WORLD = 8, 2


def global_batch() -> dict:
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(BATCH, 3, 8, 8, generator=g) for _ in range(2)]
    return {"views": {"global": views, "local": []}, "index": torch.arange(BATCH)}


def loss_and_grads(method: SimCLR, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = method.training_loss(batch, 0, torch.Generator().manual_seed(2))
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


def build() -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(ENC, SETTINGS, max_steps=10)


def worker(rank: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["TEST_DDP_PORT"])
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        method = build()
        full = global_batch()
        part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        local = {"views": {"global": [v[part] for v in full["views"]["global"]], "local": []},
                 "index": full["index"][part]}
        loss, grads = loss_and_grads(method, local)
        dist.all_reduce(loss)
        for g in grads.values():  # what DistributedDataParallel does: the mean of the ranks' gradients
            dist.all_reduce(g)
            g /= WORLD
        if rank == 0:
            torch.save({"loss": loss / WORLD, "grads": grads}, Path(folder) / "ddp.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_two_processes_give_the_loss_and_gradients_of_one_process_on_the_global_batch(tmp_path: Path) -> None:
    os.environ["TEST_DDP_PORT"] = free_port()
    mp.spawn(worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    loss, grads = loss_and_grads(build(), global_batch())
    torch.testing.assert_close(ddp["loss"], loss, rtol=1e-5, atol=1e-6)
    assert ddp["grads"].keys() == grads.keys() and len(grads) > 10
    for name, g in grads.items():  # the projector's BatchNorms and the encoder included
        torch.testing.assert_close(ddp["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
