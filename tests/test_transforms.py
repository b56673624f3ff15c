"""eris.data.transforms: flips rewrite the phrase, letterbox keeps the aspect."""

import numpy as np
import pytest

from eris.data.transforms import letterbox, random_scale_pad_flip


def _scene():
    image = np.zeros((60, 80, 3), np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[20:30, 5:15] = True  # target on the left
    image[mask] = 255
    return image, mask


def test_flip_mirrors_mask_and_rewrites_left_right():
    image, mask = _scene()
    rng = np.random.default_rng(0)
    out_img, out_mask, phrase = random_scale_pad_flip(image, mask, "the leftmost square on the left", 96, rng,
                                                      scale_range=(1.0, 1.0), flip_p=1.0)
    assert phrase == "the rightmost square on the right"
    cols = np.nonzero(out_mask.any(0))[0]
    assert cols.min() > 96 / 2  # the target now sits on the right
    assert out_img[out_mask].mean() > 200 and out_img[~out_mask].mean() < 10  # image flipped with the mask
    _, kept_mask, kept = random_scale_pad_flip(image, mask, "the leftmost square", 96, rng, (1.0, 1.0), flip_p=0.0)
    assert kept == "the leftmost square" and np.nonzero(kept_mask.any(0))[0].max() < 48


def test_scaled_sample_fits_the_canvas_and_keeps_the_target():
    image, mask = _scene()
    for seed in range(10):
        out_img, out_mask, _ = random_scale_pad_flip(image, mask, "x", 64, np.random.default_rng(seed), (0.6, 1.0))
        assert out_img.shape == (64, 64, 3) and out_mask.shape == (64, 64)
        assert out_mask.sum() >= 0.3 * 100 * (64 * 0.6 / 80) ** 2


def test_crop_keeps_the_target_and_needs_permission():
    image, mask = _scene()
    with pytest.raises(ValueError, match="crop"):
        random_scale_pad_flip(image, mask, "x", 48, np.random.default_rng(0), (1.2, 1.2))
    for seed in range(10):
        _, out_mask, _ = random_scale_pad_flip(image, mask, "x", 48, np.random.default_rng(seed), (1.2, 1.2),
                                               flip_p=0.0, crop=True)
        assert out_mask.sum() == pytest.approx(100 * (57.6 / 80) ** 2, rel=0.25)


def test_letterbox_4_3_runs_at_640x480():
    padded, box = letterbox(np.zeros((300, 400, 3), np.uint8), 640)
    assert padded.shape == (480, 640, 3) and box.resized_hw == (480, 640) and box.orig_hw == (300, 400)
    padded, box = letterbox(np.zeros((360, 641, 3), np.uint8), 640)
    assert box.resized_hw == (359, 640) and padded.shape == (384, 640, 3)
