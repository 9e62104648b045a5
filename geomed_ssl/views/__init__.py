"""What a model is fed: the training windows of a catalog (``datasets``) and the views a method asks of each
(``builder``: one view builder for 2D and 3D, ``multicrop``, band-safe ``augment``); below it, ``data/`` turns
files into arrays."""
