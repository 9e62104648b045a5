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


def test_weighted_cross_entropy_is_pytorchs_mean_and_zero_on_a_batch_of_zero_weight_classes() -> None:
    """finetune.class_weights [0, 0, 1]: a batch holding only the first two classes made 0 / 0 and stopped the
    fine-tune with "the loss became nan ... lower finetune.base_lr", neither of which was at fault."""
    from geomed_ssl.models.probe import check_class_weights
    from geomed_ssl.errors import ConfigError
    from geomed_ssl.train.supervised import weighted_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = IGNORE
    w = torch.tensor([0.5, 2.0, 1.0])
    torch.testing.assert_close(weighted_cross_entropy(logits, target, w),
                               F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE))
    torch.testing.assert_close(weighted_cross_entropy(logits, target, None),
                               F.cross_entropy(logits, target, ignore_index=IGNORE))
    only_unweighted = torch.where(target == 2, 0, target)  # classes 0 and 1 and IGNORE only
    loss = weighted_cross_entropy(logits, only_unweighted, torch.tensor([0.0, 0.0, 1.0]))
    loss.backward()
    assert float(loss) == 0.0 and torch.isfinite(logits.grad).all()
    assert float(weighted_cross_entropy(logits, torch.full_like(target, IGNORE), None)) == 0.0
    with pytest.raises(ConfigError, match=r"class_weights \[0, 0, 0\]: every class weighs 0"):
        check_class_weights([0, 0, 0], 3)
    check_class_weights([0, 0, 1], 3)
