"""Shared pieces of the classification pretext tasks (rotation, jigsaw, context prediction): their settings base,
an MLP head, the cross-entropy output with its accuracy, and the one-line refusal of volumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from geomed_ssl.config import MAX_EMBED_DIM, setting
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodContext, MethodOutput, MethodSettings


@dataclass
class PretextSettings(MethodSettings):
    """Keys every classification pretext task has."""

    head_hidden_dim: int = setting(256, "hidden width of the classification head (an MLP on the CLS tokens of the "
                                   "tiles or patches, concatenated)", bounds=f"[1, {MAX_EMBED_DIM}]")


def refuse_volumes(method: str, context: MethodContext, why: str, source: str) -> None:
    """A one-line ConfigError when the data are volumes: ``method`` is 2D-only because ``why``."""
    if context.spatial_dims == 3:
        from geomed_ssl.methods.registry import METHODS

        volumes = sorted(n for n, cls in METHODS.items() if "3D" in cls.card.dims and not n.startswith("_"))
        raise ConfigError(f"{source}: method '{method}' is 2D-only ({why}); for volumes use one of "
                          f"{', '.join(volumes)} (geomed-ssl methods says what each learns).")


def mlp_head(in_dim: int, hidden: int, classes: int) -> nn.Sequential:
    """Linear -> GELU -> Linear: (..., in_dim) -> (..., classes) logits."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, classes))


def classification_output(logits: torch.Tensor, labels: torch.Tensor) -> MethodOutput:
    """Cross-entropy of (B, K) logits against (B,) labels (a mean over the local batch, the same denominator on
    every rank), with ``accuracy`` logged."""
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits.float(), labels)
    accuracy = (logits.argmax(dim=-1) == labels).float().mean()
    return MethodOutput(loss=loss, logs={"task_loss": loss.detach(), "accuracy": accuracy.detach()})
