"""Old path of :func:`geomed_ssl.embeddings.search.find_similar` (see :mod:`geomed_ssl.downstream`)."""

from geomed_ssl.embeddings.search import find_similar

__all__ = ["find_similar"]
