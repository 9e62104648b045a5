"""What the clustering methods (SwAV, DeepCluster-v2) share: multi-crop views (two global crops plus
``data.n_local_crops`` local crops), one pass of each crop size through the encoder, a projector over all crops at
once (one BatchNorm batch), L2-normalised embeddings scored against :class:`Prototypes`, and the rule for the
data-dependent number of prototypes (``auto``: capped by the data, logged; an explicit count above the data's
distinct windows refused).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from geomed_ssl.views.builder import ViewSpec
from geomed_ssl.errors import ConfigError
from geomed_ssl.methods.base import MethodContext
from geomed_ssl.methods.siamese import TwoViewMethod, zero_invalid

MAX_AUTO_PROTOTYPES = 3000  # SwAV's and DeepCluster-v2's ImageNet count
AUTO_SAMPLES_PER_PROTOTYPE = 4


def auto_prototypes(samples: int) -> int:
    """``auto`` prototypes for data of ``samples`` distinct windows: a quarter of them, at least 2, at most 3000."""
    return max(2, min(MAX_AUTO_PROTOTYPES, samples // AUTO_SAMPLES_PER_PROTOTYPE))


def check_prototypes(n_prototypes: int | str, source: str, context: MethodContext) -> None:
    """Refuse an explicit prototype count above the data's distinct windows (clusters the data cannot fill)."""
    if isinstance(n_prototypes, int) and context.samples is not None and n_prototypes > context.samples:
        raise ConfigError(f"{source}: method.n_prototypes {n_prototypes} is more than the data's {context.samples} "
                          f"distinct windows, so some prototypes could never hold a window; use n_prototypes: auto "
                          f"or at most {context.samples}.")


def prototypes_note(n: int, samples: int) -> str:
    return (f"method.n_prototypes auto: {n} prototypes (a quarter of the data's {samples} distinct windows, between 2 "
            f"and {MAX_AUTO_PROTOTYPES}).")


class PrototypeSettings:
    """What SwAV's and DeepCluster's settings share about their ``n_prototypes`` (an int or ``auto``)."""

    n_prototypes: int | str

    def resolve_prototypes(self, context: MethodContext) -> list[str]:
        """Fit an ``auto`` count to the scanned data (its note for the log; none when nothing was fitted)."""
        if self.n_prototypes != "auto" or context.samples is None:
            return []
        self.n_prototypes = auto_prototypes(context.samples)
        return [prototypes_note(self.n_prototypes, context.samples)]

    def prototype_count(self) -> int:
        """The prototypes (per head) to build (``auto`` before the data is known: the largest)."""
        return self.n_prototypes if isinstance(self.n_prototypes, int) else MAX_AUTO_PROTOTYPES


class MultiCropMethod(TwoViewMethod):
    """Base of the clustering methods: :meth:`crops` and :meth:`embed` over two global and N local crops."""

    views = ViewSpec(crops=2, local_crops=True)

    @staticmethod
    def crops(batch: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        """The global crops (2 x (B, C, *G), nodata set to 0) and the local crops (N x (B, C, *L))."""
        views, valid = batch["views"], batch.get("valid") or {}
        valid_g = list(valid.get("global") or [None] * len(views["global"]))
        valid_l = list(valid.get("local") or [None] * len(views.get("local", [])))
        globals_ = [zero_invalid(x, v) for x, v in zip(views["global"], valid_g)]
        locals_ = [zero_invalid(x, v) for x, v in zip(views.get("local", []), valid_l) if torch.is_tensor(x)]
        return globals_, locals_

    def embed(self, globals_: list[Tensor], locals_: list[Tensor]) -> Tensor:
        """L2-normalised projections of every crop, crop-major: (2 + N, B, P); one encoder pass per crop size and
        one projector pass over all crops."""
        cls = [self.represent(self.encoder, torch.cat(globals_))]  # (2B, D)
        if locals_:
            cls.append(self.represent(self.encoder, torch.cat(locals_)))  # (N*B, D)
        z = self.projector(torch.cat(cls))  # ((2 + N) * B, P)
        return F.normalize(z, dim=-1).unflatten(0, (len(globals_) + len(locals_), -1))
