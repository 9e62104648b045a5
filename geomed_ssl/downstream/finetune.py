"""Old path of :func:`geomed_ssl.finetune.segment.finetune_segment` (see :mod:`geomed_ssl.downstream`)."""

from geomed_ssl.finetune.segment import finetune_segment

__all__ = ["finetune_segment"]
