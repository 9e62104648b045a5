"""Bands by name: sensor profiles, names and wavelengths of a file's bands (``names``), and how a file's bands meet a
model's, reordered by name, extras dropped, missing ones refused (``conform``)."""
