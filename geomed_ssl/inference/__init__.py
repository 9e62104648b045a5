"""Whole-scene and whole-volume prediction: files listed and named, windows blended, georeferenced writers."""
