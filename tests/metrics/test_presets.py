"""Each preset equals an independent plain numpy + scikit-image transcription of its published recipe."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import uniform_filter
from scipy.signal import fftconvolve
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.util import crop

from medtrans.errors import MedtransError
from medtrans.metrics import evaluate_pair
from medtrans.metrics.presets import PRESETS

LO, HI = -1024.0, 3000.0


def _ct_case(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A body-like HU phantom (air, fat, soft tissue, bone above 3000 HU to exercise clipping), a
    synthetic CT with errors and out-of-range values, and a body mask around the centre."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    ct = np.full(shape, -1000.0)
    ct[radius < 0.85] = -90.0
    ct[radius < 0.7] = 40.0
    ct[(radius < 0.25) & (grids[0] > 0)] = 3400.0
    ct += rng.normal(0, 15, shape)
    sct = ct + 60.0 * grids[1] + rng.normal(0, 40, shape)
    sct[0, 0, 0] = -3000.0
    mask = (radius < 0.8).astype(np.uint8)
    return sct, ct, mask


def _reference_synthrad2023(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    m = np.where(mask > 0, 1.0, 0.0)
    mae = np.sum(np.abs(ct * m - sct * m)) / m.sum()
    ct_c, sct_c = np.clip(ct, LO, HI), np.clip(sct, LO, HI)
    psnr = peak_signal_noise_ratio(ct_c[m == 1], sct_c[m == 1], data_range=HI - LO)
    ct_s = np.where(m == 0, LO, ct_c) - LO
    sct_s = np.where(m == 0, LO, sct_c) - LO
    _, smap = structural_similarity(ct_s, sct_s, data_range=HI - LO, full=True)
    ssim = crop(smap, 3)[crop(m, 3).astype(bool)].mean(dtype=np.float64)
    return {"mae": mae, "psnr": psnr, "ssim": ssim}


def _ssim_at_scale(im1: np.ndarray, im2: np.ndarray, lum_w: float, w: float, data_range: float) -> np.ndarray:
    """The official per-scale map: uniform 7^3, sample covariance, L^a C^w S^w with clipped terms."""
    np_ = 7**im1.ndim
    cov_norm = np_ / (np_ - 1)
    ux, uy = uniform_filter(im1, 7), uniform_filter(im2, 7)
    uxx, uyy, uxy = uniform_filter(im1 * im1, 7), uniform_filter(im2 * im2, 7), uniform_filter(im1 * im2, 7)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    sx, sy = np.clip(vx, 0, None) ** 0.5, np.clip(vy, 0, None) ** 0.5
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    c3 = c2 / 2
    lum = np.clip((2 * ux * uy + c1) / (ux * ux + uy * uy + c1), 0, None)
    con = np.clip((2 * sx * sy + c2) / (vx + vy + c2), 0, None)
    struct = np.clip((vxy + c3) / (sx * sy + c3), 0, None)
    return (lum**lum_w) * (con**w) * (struct**w)


def _reference_synthrad2025(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    gt = np.where(mask == 0, -1024, gt)
    pred = np.where(mask == 0, -1024, pred)
    m = np.where(mask > 0, 1.0, 0.0)
    mae = np.sum(np.abs(gt * m - pred * m)) / m.sum()
    gt_c, pred_c = np.clip(gt, LO, HI), np.clip(pred, LO, HI)
    psnr = peak_signal_noise_ratio(gt_c[m == 1], pred_c[m == 1], data_range=HI - LO)
    # masked MS-SSIM
    g = np.where(m == 0, LO, gt_c) - LO
    p = np.where(m == 0, LO, pred_c) - LO
    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
    luminance = np.array([0, 0, 0, 0, 0, 0.1333])  # as published: one entry longer than the scales
    pads = [(max((97 - d) // 2, 0), max(97 - d - (97 - d) // 2, 0)) for d in g.shape]
    g, p, mm = (np.pad(a, pads, mode="edge") for a in (g, p, m))
    values = []
    for level in range(5):
        smap = _ssim_at_scale(g, p, luminance[level], weights[level], HI - LO)
        values.append(crop(smap, 3)[crop(mm, 3).astype(bool)].mean(dtype=np.float64))
        box = np.ones((2, 2, 2)) / 8
        g, p = (fftconvolve(a, box, mode="same") for a in (g, p))
        g, p, mm = (a[::2, ::2, ::2] for a in (g, p, mm))
    ms = np.prod([np.clip(v, 0, 1) for v in values])
    return {"mae": mae, "psnr": psnr, "ms_ssim": ms}


def _reference_icon(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """SelfRDB's compute_metrics: mask, |x| / slice mean, per-slice PSNR/SSIM (data_range gt.max()),
    SSIM x100, nanmean over the slices of one subject; slices are the last axis."""
    gt_s, pred_s, m_s = (np.moveaxis(a, -1, 0) for a in (gt, pred, mask.astype(np.float64)))
    gt_s, pred_s = gt_s * m_s, pred_s * m_s
    with np.errstate(invalid="ignore", divide="ignore"):
        gt_s = np.abs(gt_s) / np.abs(gt_s).mean(axis=(-1, -2), keepdims=True)
        pred_s = np.abs(pred_s) / np.abs(pred_s).mean(axis=(-1, -2), keepdims=True)
    psnrs, ssims = [], []
    for g, p in zip(gt_s, pred_s, strict=True):
        if np.isnan(g).any():
            psnrs.append(np.nan)
            ssims.append(np.nan)
            continue
        psnrs.append(peak_signal_noise_ratio(g, p, data_range=g.max()))
        ssims.append(structural_similarity(g, p, data_range=g.max()) * 100)
    return {"psnr": np.nanmean(psnrs), "ssim_pct": np.nanmean(ssims)}


@pytest.mark.parametrize("shape", [(24, 20, 18), (40, 34, 30)])
def test_synthrad2023_equals_reference(shape):
    sct, ct, mask = _ct_case(shape, 1)
    ours = evaluate_pair(sct, ct, mask, preset="synthrad2023")
    expected = _reference_synthrad2023(ct, sct, mask)
    assert ours.keys() == expected.keys()
    for key in expected:
        assert abs(ours[key] - expected[key]) <= 1e-6, key


@pytest.mark.parametrize("shape", [(30, 26, 22), (101, 20, 16)])
def test_synthrad2025_equals_reference_below_and_above_97(shape):
    sct, ct, mask = _ct_case(shape, 2)
    ours = evaluate_pair(sct, ct, mask, preset="synthrad2025")
    expected = _reference_synthrad2025(ct, sct, mask)
    assert ours.keys() == expected.keys()
    for key in expected:
        assert abs(ours[key] - expected[key]) <= 1e-6, key
    assert 0.0 < ours["ms_ssim"] < 1.0


def test_icon_equals_reference_with_empty_slices():
    rng = np.random.default_rng(3)
    gt = np.zeros((40, 36, 9))
    gt[3:37, 3:33] = rng.random((34, 30, 9)) * 0.3 + 0.5  # head on a zero background
    pred = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1)
    mask = np.zeros(gt.shape, bool)
    mask[5:35, 4:30, 1:8] = True  # first and last slices lie outside the mask: skipped
    ours = evaluate_pair(pred, gt, mask, preset="icon")
    expected = _reference_icon(gt, pred, mask)
    for key in expected:
        assert abs(ours[key] - expected[key]) <= 1e-6, key
    # [-1, 1] input is mapped to [0, 1] first, as in the original code
    assert evaluate_pair(pred * 2 - 1, gt * 2 - 1, mask, preset="icon")["psnr"] == pytest.approx(ours["psnr"])


def test_default_preset_values_and_conventions():
    sct, ct, mask = _ct_case((24, 24, 24), 4)
    ours = evaluate_pair(sct, ct, mask)
    m = mask > 0
    assert ours["mae"] == pytest.approx(np.abs(sct - ct)[m].mean(), abs=1e-9)
    dr = ct.max() - ct.min()
    assert ours["psnr"] == pytest.approx(peak_signal_noise_ratio(ct[m], sct[m], data_range=dr), abs=1e-9)
    _, smap = structural_similarity(
        ct, sct, data_range=dr, full=True, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ours["ssim"] == pytest.approx(crop(smap, 5)[crop(m, 5)].mean(), abs=1e-9)
    for preset in PRESETS.values():
        assert preset.conventions and preset.summary and preset.expects
    # a 2D image stored with a singleton axis is scored in 2D
    flat = evaluate_pair(sct[:, :, 12:13], ct[:, :, 12:13])
    assert flat["ssim"] == pytest.approx(
        structural_similarity(
            ct[:, :, 12],
            sct[:, :, 12],
            data_range=ct[:, :, 12].max() - ct[:, :, 12].min(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        ),
        abs=1e-9,
    )


def test_preset_range_errors():
    rng = np.random.default_rng(5)
    unit = rng.random((20, 20, 20))
    with pytest.raises(MedtransError, match="expects CT in HU"):
        evaluate_pair(unit, unit, preset="synthrad2023")
    with pytest.raises(MedtransError, match="expects CT in HU"):
        evaluate_pair(unit, unit, preset="synthrad2025")
    sct, ct, _ = _ct_case((20, 20, 20), 6)
    with pytest.raises(MedtransError, match="scaled to"):
        evaluate_pair(sct, ct, preset="icon")
    with pytest.raises(MedtransError, match="unknown metric preset"):
        evaluate_pair(ct, ct, preset="brats")


def test_fid_window_is_part_of_the_preset():
    from medtrans.metrics.presets import PRESETS

    assert PRESETS["synthrad2023"].fid_window == PRESETS["synthrad2025"].fid_window == (-1024.0, 3000.0)
    assert PRESETS["icon"].fid_window == (0.0, 1.0)
    assert PRESETS["default"].fid_window is None  # no unit to assume: the evaluator asks for --fid-range
