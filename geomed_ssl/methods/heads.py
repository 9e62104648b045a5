"""The DINO projection head: MLP -> bottleneck -> L2 normalise -> weight-normalised prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DINOHead(nn.Module):
    """``nlayers``-layer MLP (GELU, hidden ``hidden_dim``) to ``bottleneck_dim``, L2 normalisation, then a
    weight-normalised linear layer to ``out_dim`` prototypes (official DINO ``DINOHead``).

    The last layer is weight-normalised (:class:`WeightNormLinear`): direction ``original1`` (v) and per-prototype
    gain ``original0`` (g, fixed to 1 and not trained when ``norm_last_layer``), ``W = g * v / ||v||`` row-wise.
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
        # created after apply(): v keeps nn.Linear's default init, as the official head; g starts at 1
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        self.last_layer.parametrizations.weight.original0.requires_grad_(not norm_last_layer)
        self.out_dim = out_dim

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def last_layer_weight(self) -> Tensor:
        """The effective prototypes ``g * v / ||v||`` (K, bottleneck)."""
        return self.last_layer.weight

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (..., in_dim) -> logits (..., out_dim)."""
        z = F.normalize(self.mlp(x), dim=-1, p=2)  # (..., bottleneck)
        return self.last_layer(z)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The parameters frozen during the first ``freeze_last_layer_steps`` steps."""
        wn = self.last_layer.parametrizations.weight
        return [wn.original0, wn.original1]


class WeightNormLinear(nn.Module):
    """A linear layer without bias whose weight is ``g * v / ||v||`` row-wise (torch's fused ``_weight_norm``, as
    ``torch.nn.utils.parametrizations.weight_norm`` computes it), ``v`` initialised as ``nn.Linear``'s weight and
    ``g`` at 1. Its state-dict keys are that parametrisation's (``parametrizations.weight.original0`` = g,
    ``original1`` = v), so checkpoints made with it load. Unlike a parametrised module it pickles, which
    ``train.strategy=ddp_spawn`` needs (each worker process receives the method pickled), and it deep-copies."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        v = nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone()
        self.parametrizations = nn.Module()
        self.parametrizations.weight = nn.Module()
        self.parametrizations.weight.original0 = nn.Parameter(torch.ones(out_dim, 1))  # g (K, 1)
        self.parametrizations.weight.original1 = nn.Parameter(v)  # v (K, in_dim)

    @property
    def weight(self) -> Tensor:
        """``g * v / ||v||`` (out_dim, in_dim)."""
        wn = self.parametrizations.weight
        return torch._weight_norm(wn.original1, wn.original0, 0)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)
