"""Cutting arrays: boxes padded outside the array, centred crops to a size or to the token patch."""

from __future__ import annotations

import numpy as np

from geomed_ssl.windows.crops import centre_crop, crop_to_patch, pad_crop, pad_to_patch


def test_pad_crop_wholly_outside_is_all_fill():
    out = pad_crop(np.ones((1, 4, 4, 4), np.float32), (10, 0, 0), (2, 2, 2), np.nan, np.float32)
    assert out.shape == (1, 2, 2, 2) and np.isnan(out).all()


def test_pad_crop_keeps_leading_axes_and_dtype_and_pads_the_part_outside():
    labels = np.arange(12, dtype=np.int16).reshape(3, 4)
    out = pad_crop(labels, (-1, 2), (3, 3), -1)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, [[-1, -1, -1], [2, 3, -1], [6, 7, -1]])
    bands = np.stack([labels, labels + 100]).astype(np.uint16)  # (C, H, W): the band axis is kept
    np.testing.assert_array_equal(pad_crop(bands, (1, 1), (2, 2), 0, np.float32)[1], [[105, 106], [109, 110]])


def test_centre_crop_cuts_only_axes_larger_than_the_size():
    image = np.arange(2 * 7 * 4).reshape(2, 7, 4)
    out = centre_crop(image, (4, 6))
    assert out.shape == (2, 4, 4)
    np.testing.assert_array_equal(out, image[:, 1:5, :])


def test_crop_to_patch_centres_the_largest_multiple_of_the_patch():
    image = np.arange(11 * 9, dtype=np.float32).reshape(1, 11, 9)
    out = crop_to_patch(image, (4, 4))
    np.testing.assert_array_equal(out, image[:, 1:9, 0:8])


def test_a_side_shorter_than_one_token_is_kept_whole_then_padded_to_one_token_marked_not_valid():
    image = np.arange(3 * 18, dtype=np.float32).reshape(1, 3, 18) + 1
    cropped = crop_to_patch(image, (4, 4))
    np.testing.assert_array_equal(cropped, image[:, :, 1:17])  # 3 rows kept, 18 columns cut to 16
    padded, valid = pad_to_patch(cropped, np.ones(cropped.shape[1:], bool), (4, 4))
    assert padded.shape == (1, 4, 16) and valid.shape == (4, 16)
    np.testing.assert_array_equal(padded[:, :3], cropped)  # 1 row to add: after the image (the extra half)
    assert not padded[:, 3].any() and not valid[3].any() and valid[:3].all()
    padded, valid = pad_to_patch(np.ones((2, 1, 8, 8)), np.ones((1, 8, 8), bool), (4, 4, 4))  # one slice of a volume
    assert padded.shape == (2, 4, 8, 8) and valid[:, 0, 0].tolist() == [False, True, False, False]
