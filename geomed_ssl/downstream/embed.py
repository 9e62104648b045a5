"""Old path of :func:`geomed_ssl.embeddings.extract.embed_folder` (see :mod:`geomed_ssl.downstream`)."""

from geomed_ssl.embeddings.extract import embed_folder

__all__ = ["embed_folder"]
