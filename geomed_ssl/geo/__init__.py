"""What GDAL says about a raster beyond its pixels: which pixels are missing (masks, alpha bands, a stack's own
nodata; ``gdal_read``; and the values that mark them, for rasters and volumes alike: ``validity``), whether two
rasters share one pixel grid (``grids``), and whether a file just written reads back whole
(``gdal_read.check_written``). Below ``data/``, ``bands/`` and ``inference/``, which read and write through it."""
