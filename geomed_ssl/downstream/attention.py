"""Old path of :func:`geomed_ssl.viz.attention.attention_for_file` (see :mod:`geomed_ssl.downstream`)."""

from geomed_ssl.viz.attention import attention_for_file

__all__ = ["attention_for_file"]
