"""The contract every self-supervised method follows; the trainer knows nothing method-specific."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from geomed_ssl.config import MethodConfig
from geomed_ssl.models.encoder import EncoderConfig, ViTEncoder


@dataclass
class MethodOutput:
    """A training step's loss (scalar, with grad) and detached scalars to log."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class SSLMethod(nn.Module):
    """Base of all methods: owns its encoder(s), heads and loss.

    Subclasses set ``name`` and ``view_kind`` ("mae" | "dino") and implement ``training_loss``; all randomness
    of a step comes from the ``generator`` passed in, so a resumed run replays exactly.
    """

    name: ClassVar[str] = ""
    view_kind: ClassVar[str] = "mae"

    def __init__(self, encoder_cfg: EncoderConfig, method_cfg: MethodConfig, max_steps: int) -> None:
        super().__init__()
        self.encoder_cfg = encoder_cfg
        self.method_cfg = method_cfg
        self.max_steps = max_steps

    def training_loss(self, batch: dict[str, Any], step: int, generator: torch.Generator) -> MethodOutput:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Update state after the optimiser step (EMA teachers, centres, schedules). Default: nothing."""

    def export_encoder(self) -> ViTEncoder:
        """The encoder to keep for downstream use."""
        encoder = getattr(self, "encoder", None)
        if not isinstance(encoder, ViTEncoder):
            raise NotImplementedError(f"{type(self).__name__} must implement export_encoder().")
        return encoder

    def no_weight_decay(self) -> set[str]:
        """Full names of the tokens and position embeddings in every submodule that lists them."""
        names: set[str] = set()
        for prefix, module in self.named_modules():
            if module is not self and callable(getattr(module, "no_weight_decay", None)):
                names |= {f"{prefix}.{n}" for n in module.no_weight_decay()}
        return names
