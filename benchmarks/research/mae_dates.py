"""MAE across dates on a stack of dates of one ground (the Sentinel-2 tile's five): the encoder sees one date's
visible patches and the loss reconstructs the masked patches of another date on the same grid (chosen per sample
from (seed, index), as ``data.date_pairs`` chooses them), so the tokens must carry what a place looks like in other
seasons. ``plain`` is the same run as ordinary MAE. Research only: it patches ``PretrainDataset.__getitem__`` and
``MAE.forward_loss`` in this process (both dates go through the view as one stack, so they share every crop and
flip). Score the run with ``geomed-ssl compare RUN none ...`` (selection seeds).

    python benchmarks/research/mae_dates.py OUT temporal|plain STEPS --data DATES_DIR [--set key=value ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from geomed_ssl.methods import mae
from geomed_ssl.train.pretrain import pretrain
from geomed_ssl.views import datasets

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "mae_sentinel2.yaml"
SMALL = ["data.patch_size=32", "model.patch_size=2", "model.embed_dim=64", "model.depth=3", "model.num_heads=4",
         "model.mlp_ratio=2.0", "method.decoder_embed_dim=64", "method.decoder_depth=1", "train.batch_size=16",
         "train.base_lr=0.016", "train.warmup_steps=100", "train.checkpoint_every=100000", "train.preview_every=0",
         "data.num_workers=0"]


def item_across_dates(self: datasets.PretrainDataset, i: int) -> dict:
    """The window at one date as ``image``, the same window at another date as ``target`` (the dataset's own
    ``_other_date``; itself when the file has no other date on its grid or the other date is mostly nodata there)."""
    i = int(i)
    if not getattr(self, "_mates_for_mae", False):  # the dataset fills its mates only for pair views: once, here
        self.mates, self._mates_for_mae = datasets.same_grid_mates(self.records), True
    fi, g_rng = self._pick_file(i // self.group)
    record = self.records[fi]
    image, valid, box = self._draw(record, g_rng, i)
    other = self._other_date(fi, box, i) or (image, valid)
    c = image.shape[0]
    both = np.concatenate([image, other[0]]).astype(np.float32)
    sample = self.view(both, valid & other[1], datasets._rng(self.seed, datasets.TAG_VIEW, i))
    sample["target"], sample["image"] = sample["image"][c:], sample["image"][:c]
    sample["meta"] = self._meta(record, box)
    sample["index"] = torch.tensor(i)
    return sample


def patch_mae_targets() -> None:
    """MAE's loss reads ``batch["target"]`` in place of the input when the batch has one."""
    training_loss, forward_loss = mae.MAE.training_loss, mae.MAE.forward_loss

    def loss_with_target(self, batch, step, generator):
        self._target = batch.get("target")
        try:
            return training_loss(self, batch, step, generator)
        finally:
            self._target = None

    def forward_loss_on_target(self, image, pred, mask, valid, units=None):
        target = getattr(self, "_target", None)
        return forward_loss(self, image if target is None else target, pred, mask, valid, units)

    mae.MAE.training_loss, mae.MAE.forward_loss = loss_with_target, forward_loss_on_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("mode", choices=("temporal", "plain"))
    ap.add_argument("steps", type=int)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    if args.mode == "temporal":
        datasets.PretrainDataset.__getitem__ = item_across_dates
        patch_mae_targets()
    pretrain(str(RECIPE), args.data, args.out, overwrite=True, progress=False,
             overrides=SMALL + [f"train.max_steps={args.steps}"] + args.sets)


if __name__ == "__main__":
    main()
