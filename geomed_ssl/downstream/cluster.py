"""Old path of :func:`geomed_ssl.embeddings.cluster.cluster_embeddings` (see :mod:`geomed_ssl.downstream`)."""

from geomed_ssl.embeddings.cluster import cluster_embeddings

__all__ = ["cluster_embeddings"]
