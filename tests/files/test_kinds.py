"""Which kind of input a file is, and the refusal of a file of the other kind than a model reads."""

from __future__ import annotations

import pytest

from geomed_ssl.files.kinds import check_input_kind, input_kind
from geomed_ssl.errors import DataError


def test_kind_comes_from_the_file_name():
    assert [input_kind(p) for p in ("a.tif", "B.TIFF", "ct.nii", "ct.nii.gz", "folder", "notes.txt")] == \
        ["raster", "raster", "volume", "volume", None, None]


def test_a_file_of_the_other_kind_is_refused_naming_both_kinds():
    check_input_kind("scene.tif", "raster", "this model")
    check_input_kind("folder", "volume", "this model")  # a folder's files are checked one by one
    with pytest.raises(DataError, match="'ct.nii.gz' is a NIfTI volume but this model was trained on 2D GeoTIFF"):
        check_input_kind("ct.nii.gz", "raster", "this model")
