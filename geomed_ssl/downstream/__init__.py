"""Downstream use of a pretrained encoder: attention maps, fine-tuning, prediction, embeddings."""
