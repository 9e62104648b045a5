"""Embeddings of a pretrained encoder: extracted per image, window or token into a table, mapped on the inputs'
grids, clustered and searched."""
