"""Old path of :func:`geomed_ssl.finetune.classify.finetune_classify` (see :mod:`geomed_ssl.downstream`)."""

from geomed_ssl.finetune.classify import finetune_classify

__all__ = ["finetune_classify"]
