"""Segmentation consistency: analytic Dice on phantoms with moved boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from medtrans.errors import MedtransError
from medtrans.metrics import psnr
from medtrans.metrics.segmentation import dice, gmm_1d, kmeans_1d, segmentation_consistency


def _phantom(shift: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Three tissues (100, 200, 300) in nested boxes inside a 40^2 x 10 volume; ``shift`` moves the
    inner box's boundary."""
    img = np.full((40, 40, 10), 100.0)
    outer = np.zeros(img.shape, bool)
    outer[8:32, 8:32] = True
    inner = np.zeros(img.shape, bool)
    inner[14 + shift : 26 + shift, 14:26] = True
    img[outer] = 200.0
    img[inner] = 300.0
    return img, [~outer & ~inner, outer & ~inner, inner]


def test_moved_boundary_gives_the_analytic_dice_while_psnr_stays_high():
    ref, tissues = _phantom()
    moved, moved_tissues = _phantom(shift=2)
    rng = np.random.default_rng(0)
    noisy_ref = ref + rng.normal(0, 5, ref.shape)
    out = segmentation_consistency(moved + rng.normal(0, 5, ref.shape), noisy_ref, n_classes=3)
    for k in range(3):
        assert out[f"dice_class{k + 1}"] == pytest.approx(dice(moved_tissues[k], tissues[k]), abs=1e-12)
    assert out["dice_mean"] == pytest.approx(
        np.mean([dice(a, b) for a, b in zip(moved_tissues, tissues, strict=True)])
    )
    assert out["dice_class3"] < 0.9 and psnr(moved, ref, data_range=200.0) > 15
    same = segmentation_consistency(noisy_ref, noisy_ref, n_classes=3, method="gmm")
    assert all(v == 1.0 for v in same.values())


def test_intensity_models_recover_class_means():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(m, 3, 500) for m in (10.0, 60.0, 140.0)])
    np.testing.assert_allclose(kmeans_1d(values, 3), [10, 60, 140], atol=1.0)
    weights, means, variances = gmm_1d(values, 3)
    np.testing.assert_allclose(means, [10, 60, 140], atol=1.0)
    np.testing.assert_allclose(weights, [1 / 3] * 3, atol=0.01)
    np.testing.assert_allclose(np.sqrt(variances), [3, 3, 3], atol=0.5)


def test_user_segmenter_and_mask():
    ref, tissues = _phantom()
    moved, moved_tissues = _phantom(shift=3)
    mask = np.zeros(ref.shape, bool)
    mask[:, :20] = True

    def threshold(image: np.ndarray) -> np.ndarray:
        return (image > 250).astype(np.int64) * 2

    out = segmentation_consistency(moved, ref, mask, segmenter=threshold)
    assert set(out) == {"dice_class2", "dice_mean"}
    assert out["dice_class2"] == pytest.approx(dice(moved_tissues[2] & mask, tissues[2] & mask))


def test_segmentation_errors():
    ref, _ = _phantom()
    with pytest.raises(MedtransError, match="n_classes"):
        segmentation_consistency(ref, ref, n_classes=1)
    with pytest.raises(MedtransError, match="distinct values"):
        segmentation_consistency(ref, ref, n_classes=5)
    with pytest.raises(MedtransError, match="unknown method"):
        segmentation_consistency(ref, ref, method="otsu")
    with pytest.raises(MedtransError, match="another shape"):
        segmentation_consistency(ref, ref, segmenter=lambda x: x[:-1])
