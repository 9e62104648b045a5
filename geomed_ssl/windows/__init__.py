"""Where windows lie in a scene or volume (``tiling``: the grid of origins, blending weights), how arrays are cut
or padded to them (``crops``) and which labelled positions train or test beyond a random draw (``splits``: blocks,
whole images); numpy only, below every package that reads data."""
