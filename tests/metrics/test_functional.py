"""Voxel metrics and SSIM against scikit-image and analytic cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from medtrans.errors import MedtransError
from medtrans.metrics import mae, ms_ssim, mse, ncc, nmse, psnr, rmse, ssim

WANG = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}


def _structured(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth phantom (blobs + gradient) and a blurred, shifted, noisy copy of it."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    ref = 800.0 * (radius < 0.7) + 300.0 * (radius < 0.3) + 100.0 * grids[0] - 1000.0 * (radius >= 0.9)
    pred = 0.9 * ref + 40.0 + rng.normal(0, 30.0, shape)
    return pred, ref


@pytest.mark.parametrize("shape", [(48, 40), (20, 24, 22)])
@pytest.mark.parametrize("kind", ["random", "structured"])
@pytest.mark.parametrize("kwargs", [{}, WANG], ids=["skimage-default", "wang-gaussian"])
def test_ssim_equals_scikit_image(shape, kind, kwargs):
    if kind == "random":
        rng = np.random.default_rng(1)
        ref = rng.normal(size=shape)
        pred = ref + 0.5 * rng.normal(size=shape)
        dr = float(ref.max() - ref.min())
    else:
        pred, ref = _structured(shape, 2)
        dr = 4024.0
    expected, smap = structural_similarity(ref, pred, data_range=dr, full=True, **kwargs)
    value, ours = ssim(pred, ref, data_range=dr, full=True, **kwargs)
    assert abs(value - expected) <= 1e-6
    pad = 5 if kwargs else 3
    interior = smap[tuple(slice(pad, s - pad) for s in shape)]
    np.testing.assert_allclose(ours, interior, atol=1e-9)
    # masked: the mean of scikit-image's map over mask voxels of the cropped interior
    mask = np.random.default_rng(3).random(shape) > 0.4
    expected_masked = interior[mask[tuple(slice(pad, s - pad) for s in shape)]].mean()
    assert abs(ssim(pred, ref, data_range=dr, mask=mask, **kwargs) - expected_masked) <= 1e-6


def test_a_slice_stored_as_a_volume_is_scored_as_2d():
    rng = np.random.default_rng(4)
    ref = rng.random((40, 36))
    pred = ref + 0.1 * rng.random((40, 36))
    mask = np.zeros((40, 36), bool)
    mask[5:30, 8:33] = True
    expected = structural_similarity(pred, ref, data_range=1.0)
    assert abs(ssim(pred[..., None], ref[..., None], data_range=1.0) - expected) < 1e-12
    masked_2d = ssim(pred, ref, data_range=1.0, mask=mask)
    assert ssim(pred[:, None], ref[:, None], data_range=1.0, mask=mask[:, None]) == pytest.approx(masked_2d)


def test_ssim_batch_matches_per_slice_loop_and_torch_input():
    pred, ref = _structured((6, 32, 30), 4)
    values = ssim(pred, ref, data_range=4024.0, batch=True, **WANG)
    expected = [structural_similarity(ref[i], pred[i], data_range=4024.0, **WANG) for i in range(6)]
    np.testing.assert_allclose(values, expected, atol=1e-9)
    as_tensor = ssim(
        torch.from_numpy(pred).float(), torch.from_numpy(ref).float(), data_range=4024.0, batch=True, **WANG
    )
    expected32 = [
        structural_similarity(
            ref[i].astype(np.float32).astype(np.float64),
            pred[i].astype(np.float32).astype(np.float64),
            data_range=4024.0,
            **WANG,
        )
        for i in range(6)
    ]
    np.testing.assert_allclose(as_tensor, expected32, atol=1e-9)


def test_ssim_batch_mask_gives_nan_for_slices_without_mask():
    pred, ref = _structured((3, 24, 24), 5)
    mask = np.zeros(ref.shape, bool)
    mask[0, 5:15, 5:15] = True
    mask[2] = True
    values = ssim(pred, ref, data_range=4024.0, batch=True, mask=mask)
    assert math.isnan(values[1]) and not math.isnan(values[0]) and not math.isnan(values[2])


def test_psnr_and_voxel_metrics_equal_references():
    pred, ref = _structured((16, 18, 20), 6)
    assert (
        abs(psnr(pred, ref, data_range=4024.0) - peak_signal_noise_ratio(ref, pred, data_range=4024.0))
        <= 1e-6
    )
    # default data range is the reference's max - min
    assert abs(psnr(pred, ref) - peak_signal_noise_ratio(ref, pred, data_range=ref.max() - ref.min())) <= 1e-6
    assert abs(mse(pred, ref) - mean_squared_error(ref, pred)) <= 1e-9
    assert abs(rmse(pred, ref) - math.sqrt(mean_squared_error(ref, pred))) <= 1e-9
    assert abs(mae(pred, ref) - np.abs(pred - ref).mean()) <= 1e-9
    assert abs(nmse(pred, ref) - ((pred - ref) ** 2).sum() / (ref**2).sum()) <= 1e-12
    assert abs(ncc(pred, ref) - np.corrcoef(pred.ravel(), ref.ravel())[0, 1]) <= 1e-12


def test_analytic_cases():
    _, ref = _structured((20, 20, 20), 7)
    assert ssim(ref, ref, data_range=4024.0) == pytest.approx(1.0, abs=1e-12)
    assert ms_ssim(ref, ref, data_range=4024.0) == pytest.approx(1.0, abs=1e-12)
    assert mae(ref, ref) == 0.0
    assert psnr(ref, ref, data_range=4024.0) == math.inf
    assert mae(ref + 37.5, ref) == pytest.approx(37.5, abs=1e-9)
    assert rmse(ref - 12.0, ref) == pytest.approx(12.0, abs=1e-9)
    assert ncc(2.0 * ref + 5.0, ref) == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(ncc(np.full_like(ref, 3.0), ref))


def test_values_outside_the_mask_do_not_change_results():
    pred, ref = _structured((24, 24, 24), 8)
    mask = np.zeros(ref.shape, bool)
    mask[8:16, 8:16, 8:16] = True
    changed = pred.copy()
    changed[~mask] = 1e4  # wild values everywhere outside the mask
    for fn in (mae, mse, rmse, nmse, ncc):
        assert fn(changed, ref, mask=mask) == fn(pred, ref, mask=mask)
    assert psnr(changed, ref, data_range=4024.0, mask=mask) == psnr(pred, ref, data_range=4024.0, mask=mask)
    # SSIM's window reaches 3 voxels past the mask: changes beyond that reach leave it unchanged
    far = pred.copy()
    far[:4] = 1e4
    far[:, 20:] = -1e4
    assert ssim(far, ref, data_range=4024.0, mask=mask) == pytest.approx(
        ssim(pred, ref, data_range=4024.0, mask=mask), abs=1e-12
    )


def test_ms_ssim_pads_small_images_and_matches_manual_single_scale():
    pred, ref = _structured((30, 34), 9)
    value = ms_ssim(pred, ref, data_range=4024.0)
    assert 0.0 < value < 1.0
    with pytest.raises(MedtransError, match="too small"):
        ms_ssim(pred, ref, data_range=4024.0, pad_small=False)
    # one scale with weight 1 and luminance: plain SSIM (positive map), equal to scikit-image
    single = ms_ssim(pred, ref, data_range=4024.0, weights=(1.0,), luminance="last")
    assert single == pytest.approx(structural_similarity(ref, pred, data_range=4024.0), abs=1e-9)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda a, b: mae(a, b[:-1]), "shape"),
        (lambda a, b: psnr(a, b, data_range=0.0), "data_range"),
        (lambda a, b: psnr(a, b, data_range=-5.0), "data_range"),
        (lambda a, b: ssim(a, b, data_range=float("nan")), "data_range"),
        (lambda a, b: mae(a, b, mask=np.zeros(a.shape)), "mask is empty"),
        (lambda a, b: mae(a, b, mask=np.ones((3, 3))), "mask shape"),
        (lambda a, b: ssim(np.where(a > 0, np.nan, a), b, data_range=1.0), "NaN"),
        (lambda a, b: mae(a, np.full_like(b, np.inf)), "NaN or infinite"),
        (lambda a, b: psnr(a, np.zeros_like(b)), "constant"),
        (lambda a, b: ssim(a[:5, :5, :5], b[:5, :5, :5], data_range=1.0), "smaller than"),
        (lambda a, b: ssim(a, b, data_range=1.0, win_size=4), "odd"),
    ],
)
def test_bad_input_gives_clear_errors(call, message):
    pred, ref = _structured((12, 12, 12), 10)
    with pytest.raises(MedtransError, match=message):
        call(pred, ref)


def test_big_endian_and_read_only_arrays_are_accepted():
    pred, ref = _structured((12, 12, 12), 11)
    big = ref.astype(">f8")
    frozen = pred.copy()
    frozen.flags.writeable = False
    assert mae(frozen, big) == pytest.approx(np.abs(pred - ref).mean(), abs=1e-12)
    with pytest.raises(MedtransError, match="dtype"):
        mae(pred.astype(complex), ref)


def test_ms_ssim_luminance_options_and_torch_maps():
    _, ref = _structured((40, 36), 12)
    shifted = ref + 200.0  # a global offset: contrast and structure are blind to it (except where the
    # zero-padded first row of each downsampling step turns it into an edge), luminance is not
    values = {lum: ms_ssim(shifted, ref, data_range=4024.0, luminance=lum) for lum in ("none", "last", "all")}
    assert values["none"] > 0.99 and values["none"] > values["last"] > values["all"]
    with pytest.raises(MedtransError, match="luminance"):
        ms_ssim(shifted, ref, data_range=4024.0, luminance="first")
    pred, ref3 = _structured((14, 15, 16), 13)
    value, smap = ssim(torch.from_numpy(pred), torch.from_numpy(ref3), data_range=4024.0, full=True)
    assert isinstance(value, float) and isinstance(smap, torch.Tensor) and smap.shape == (8, 9, 10)
    assert value == pytest.approx(float(smap.mean()), abs=1e-12)
