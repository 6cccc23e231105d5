"""Frame preprocessing: dark, bad and hot pixels, zingers, crop and binning, rejections."""

from __future__ import annotations

import numpy as np
import pytest

from workers.stream.preprocess import Preprocessor, Rejected, remove_zingers


def test_dark_mask_hot_crop_and_bin() -> None:
    frame = np.full((10, 12), 5, np.uint16)
    frame[4, 5] = 60000  # hot
    dark = np.full((10, 12), 2.0, np.float32)
    valid = np.ones((10, 12), bool)
    valid[5, 6] = False
    pre = Preprocessor(dark=dark, valid=valid, hot=1000, size=8, binning=2)
    out = pre(frame)
    assert out.shape == (4, 4) and out.dtype == np.float32
    # the crop is rows 1..8, cols 2..9: the hot pixel (in binned pixel (1, 1)) takes its neighbours' value,
    # the bad one (in (2, 2)) is zeroed and masked
    assert out[2, 2] == 3 * 3 and (np.delete(out.ravel(), [10]) == 4 * 3).all()
    mask = pre.mask((10, 12))
    assert mask is not None and mask.shape == (4, 4) and not mask[2, 2] and mask.sum() == 15
    assert pre.output_size((10, 12)) == 4


def test_zingers_are_replaced_by_their_neighbours_median() -> None:
    frame = np.full((8, 8), 20.0, np.float32)
    frame[3, 3] = 5000
    frame[6, 1] = 25  # a real, modest excess stays
    out = remove_zingers(frame, factor=10)
    assert out[3, 3] == 20 and out[6, 1] == 25


def test_unusable_frames_are_rejected_with_a_reason() -> None:
    with pytest.raises(Rejected) as err:
        Preprocessor()(np.array([[1.0, np.nan], [0, 1]], np.float32))
    assert err.value.reason == "non-finite"
    with pytest.raises(Rejected) as err:
        Preprocessor()(np.array([[1, -3], [0, 1]], np.int16))
    assert err.value.reason == "negative"
    with pytest.raises(Rejected) as err:
        Preprocessor(size=16)(np.zeros((8, 8), np.uint16))
    assert err.value.reason == "shape"
