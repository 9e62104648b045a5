"""The fine-tuning loss: each of finetune.loss ce, dice and ce+dice trains exactly the terms it names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geomed_ssl.config import FinetuneConfig
from geomed_ssl.data.labelled import IGNORE
from geomed_ssl.train.supervised import SupervisedModule, sparse_dice_loss


def loss_of(kind: str) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = IGNORE  # sparse labels
    module = SupervisedModule(torch.nn.Identity(), FinetuneConfig(loss=kind), 3, [])
    total, logs = module.loss(logits, target)
    return total, logs, logits, target


@pytest.mark.parametrize("kind, terms", [("ce", {"ce"}), ("dice", {"dice"}), ("ce+dice", {"ce", "dice"})])
def test_each_loss_setting_trains_exactly_the_terms_it_names(kind: str, terms: set) -> None:
    total, logs, logits, target = loss_of(kind)
    assert set(logs) == terms
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE)
    dice = sparse_dice_loss(logits, target, 3)
    want = (ce if "ce" in terms else 0.0) + (dice if "dice" in terms else 0.0)
    torch.testing.assert_close(total, torch.as_tensor(want))
