"""The package version, at the bottom of the layout so that any module can record it (exports, output folders)."""

__version__ = "0.1.0"
