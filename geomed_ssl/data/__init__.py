"""Data: catalog, band profiles, statistics, readers, views and datasets."""
