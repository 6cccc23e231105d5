"""Frame preprocessing: dark, bad and hot pixels, zingers, crop and binning, rejections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workers.errors import DataError
from workers.job import Preprocessing
from workers.stream.preprocess import Preprocessor, Rejected, build_preprocessor, remove_zingers


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


def test_a_job_spec_builds_its_preprocessor_and_bad_files_are_refused(tmp_path: Path) -> None:
    dark = np.full((10, 12), 2.0)
    bad = np.zeros((10, 12), np.uint32)
    bad[5, 6] = 1
    np.save(tmp_path / "dark.npy", dark)
    np.save(tmp_path / "bad.npy", bad)
    spec = Preprocessing(size=8, binning=2, dark=str(tmp_path / "dark.npy"), bad_pixels=str(tmp_path / "bad.npy"))
    pre = build_preprocessor(spec)
    assert pre.size == 8 and pre.binning == 2 and not pre.valid[5, 6] and pre.valid.sum() == 119
    np.testing.assert_array_equal(pre.dark, dark)
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match="junk.npy: dark: not a readable"):
        build_preprocessor(Preprocessing(dark=str(tmp_path / "junk.npy")))
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    with pytest.raises(DataError, match="expected a finite 2-D array"):
        build_preprocessor(Preprocessing(bad_pixels=str(tmp_path / "cube.npy")))


def test_a_mask_that_does_not_fit_the_detector_rejects_frames() -> None:
    pre = Preprocessor(valid=np.ones((5, 5), bool))
    with pytest.raises(Rejected) as err:
        pre(np.zeros((8, 8), np.uint16))
    assert err.value.reason == "shape" and "valid-pixel mask" in str(err.value)


@pytest.mark.parametrize("hot", [None, 1000.0])  # the raw-count path, and the float path (a correction is set)
def test_counts_above_the_saturation_value_reject_the_frame(hot: float | None) -> None:
    """Above 100 in a valid pixel of the window: rejected; in a bad pixel, outside the crop, or at the dtype's
    largest value (a detector's invalid-pixel marker): not."""
    valid = np.ones((8, 8), bool)
    valid[2, 2] = False
    pre = Preprocessor(valid=valid, size=6, saturation=100, hot=hot)
    frame = np.full((8, 8), 7, np.uint16)
    frame[2, 2], frame[0, 0], frame[4, 4] = 5000, 5000, 65535
    assert pre(frame).shape == (6, 6)
    frame[3, 5] = 101
    with pytest.raises(Rejected) as err:
        pre(frame)
    assert err.value.reason == "saturation" and "1 pixels above" in str(err.value)
