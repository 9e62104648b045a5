"""The data tests' sample-making fixtures, shared with the tests of what a model is fed."""

from tests.data.conftest import make_nii, make_tif, shared_data  # noqa: F401  (fixtures)
