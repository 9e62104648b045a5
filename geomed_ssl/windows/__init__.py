"""Where windows lie in a scene or volume (``tiling``: the grid of origins, blending weights) and how arrays are cut
or padded to them (``crops``); numpy only, below every package that reads data."""
