"""The DINO projection head: MLP -> bottleneck -> L2 normalise -> weight-normalised prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DINOHead(nn.Module):
    """``nlayers``-layer MLP (GELU, hidden ``hidden_dim``) to ``bottleneck_dim``, L2 normalisation, then a
    weight-normalised linear layer to ``out_dim`` prototypes (official DINO ``DINOHead``).

    The last layer stores the direction ``last_layer.weight`` (v) and the per-prototype gain ``last_layer_g`` (g,
    fixed to 1 and not trained when ``norm_last_layer``), computing ``W = g * v / ||v||`` row-wise, like
    ``weight_norm`` without its deprecation and DDP quirks.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        # created after apply(): keeps nn.Linear's default init for v, as the official head
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.last_layer_g = nn.Parameter(torch.ones(out_dim), requires_grad=not norm_last_layer)  # (K,)
        self.out_dim = out_dim

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def last_layer_weight(self) -> Tensor:
        """The effective prototypes ``(K, bottleneck)``."""
        v = self.last_layer.weight
        return self.last_layer_g[:, None] * v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-12)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (..., in_dim) -> logits (..., out_dim)."""
        z = F.normalize(self.mlp(x), dim=-1, p=2)  # (..., bottleneck)
        return F.linear(z, self.last_layer_weight())

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The parameters frozen during the first ``freeze_last_layer_steps`` steps."""
        return [self.last_layer.weight, self.last_layer_g]
