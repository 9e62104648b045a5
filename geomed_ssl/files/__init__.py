"""The files of a data folder: listing, include / exclude globs, and the stacked samples data.channels groups."""
