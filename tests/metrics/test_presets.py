"""Each preset equals an independent plain numpy + scikit-image transcription of its published recipe."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, uniform_filter
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


def _degraded(ct: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """A blurred or shifted prediction: where the luminance readings of MS-SSIM differ most."""
    rng = np.random.default_rng(seed)
    if kind == "blurred":
        return gaussian_filter(ct, 1.5) + rng.normal(0, 20, ct.shape)
    return np.roll(ct, 2, axis=0) + 80.0 + rng.normal(0, 20, ct.shape)


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


def _reference_synthrad2025(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray, hi: float = HI
                            ) -> dict[str, float]:
    """The official metrics as executed; ``hi`` 3000 (metrics repository) or 3071 (container)."""
    gt = np.where(mask == 0, -1024, gt)
    pred = np.where(mask == 0, -1024, pred)
    m = np.where(mask > 0, 1.0, 0.0)
    mae = np.sum(np.abs(gt * m - pred * m)) / m.sum()
    gt_c, pred_c = np.clip(gt, LO, hi), np.clip(pred, LO, hi)
    psnr = peak_signal_noise_ratio(gt_c[m == 1], pred_c[m == 1], data_range=hi - LO)
    # masked MS-SSIM
    g = np.where(m == 0, LO, gt_c) - LO
    p = np.where(m == 0, LO, pred_c) - LO
    weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
    # as executed: the luminance weights are filled with the scale weights before the `is None` test
    # that would pick the last-scale-only list, so that list is never used
    luminance_weights = weights
    pads = [(max((97 - d) // 2, 0), max(97 - d - (97 - d) // 2, 0)) for d in g.shape]
    g, p, mm = (np.pad(a, pads, mode="edge") for a in (g, p, m))
    values = []
    for level in range(5):
        smap = _ssim_at_scale(g, p, luminance_weights[level], weights[level], hi - LO)
        values.append(crop(smap, 3)[crop(mm, 3).astype(bool)].mean(dtype=np.float64))
        box = np.ones((2, 2, 2)) / 8
        g, p = (fftconvolve(a, box, mode="same") for a in (g, p))
        g, p, mm = (a[::2, ::2, ::2] for a in (g, p, mm))
    ms = np.prod([np.clip(v, 0, 1) for v in values])
    return {"mae": mae, "psnr": psnr, "ms_ssim": ms}


def _to_unit(x: np.ndarray) -> np.ndarray:
    """icon-lab's step: [-1, 1] data mapped to [0, 1] and clipped; [0, 1] data left as it is."""
    return np.clip((x + 1) / 2, 0, 1) if x.min() < -0.1 else x


def _reference_icon(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """SelfRDB's compute_metrics: mask, |x| / slice mean, per-slice PSNR/SSIM (data_range gt.max()),
    SSIM x100, nanmean over the slices of one subject; slices are the last axis."""
    gt, pred = _to_unit(gt), _to_unit(pred)
    gt_s, pred_s, m_s = (np.moveaxis(a, -1, 0) for a in (gt, pred, mask.astype(np.float64)))
    gt_s, pred_s = gt_s * m_s, pred_s * m_s
    with np.errstate(invalid="ignore", divide="ignore"):
        gt_s = np.abs(gt_s) / np.abs(gt_s).mean(axis=(-1, -2), keepdims=True)
        pred_s = np.abs(pred_s) / np.abs(pred_s).mean(axis=(-1, -2), keepdims=True)
    psnrs, ssims = [], []
    for g, p in zip(gt_s, pred_s, strict=True):
        if np.isnan(g).any() or np.isnan(p).any():  # what skimage yields on NaN input, without warnings
            psnrs.append(np.nan)
            ssims.append(np.nan)
            continue
        psnrs.append(peak_signal_noise_ratio(g, p, data_range=g.max()))
        ssims.append(structural_similarity(g, p, data_range=g.max()) * 100)
    return {"psnr": np.nanmean(psnrs), "ssim_pct": np.nanmean(ssims)}


def _reference_syndiff(gts: list[np.ndarray], preds: list[np.ndarray]) -> float:
    """SynDiff's test script: every slice of every subject divided by its own max, PSNR with the
    prediction's max as data range, one mean over all slices pooled."""
    psnrs = []
    for gt, pred in zip(gts, preds, strict=True):
        for g, p in zip(np.moveaxis(_to_unit(gt), -1, 0), np.moveaxis(_to_unit(pred), -1, 0), strict=True):
            g, p = g / g.max(), p / p.max()
            psnrs.append(peak_signal_noise_ratio(g, p, data_range=p.max()))
    return float(np.mean(psnrs))


def _mr_case(shape: tuple[int, ...], seed: int, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A [0, 1] head on a zero background; the prediction blurred or shifted, with a slight overshoot
    above 1 and below 0 (where clamping [0, 1] data always would differ from the original)."""
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape)
    gt[3:-3, 3:-3] = rng.random((shape[0] - 6, shape[1] - 6, shape[2])) * 0.3 + 0.6
    gt = gaussian_filter(gt, (1, 1, 0))
    if kind == "blurred":
        pred = gaussian_filter(gt, (1.5, 1.5, 0)) * 1.35 - 0.01
    else:
        pred = np.roll(gt, 2, axis=0) * 1.3 + rng.normal(0, 0.03, shape)
    pred = np.clip(pred, -0.02, 1.02)
    mask = np.zeros(shape, bool)
    mask[5:-5, 4:-4, 1:-1] = True  # first and last slices lie outside the mask: skipped
    return gt, pred, mask


@pytest.mark.parametrize("shape", [(24, 20, 18), (40, 34, 30)])
def test_synthrad2023_equals_reference(shape):
    sct, ct, mask = _ct_case(shape, 1)
    ours = evaluate_pair(sct, ct, mask, preset="synthrad2023")
    expected = _reference_synthrad2023(ct, sct, mask)
    assert ours.keys() == expected.keys()
    for key in expected:
        assert abs(ours[key] - expected[key]) <= 1e-6, key


@pytest.mark.parametrize(
    ("shape", "kind"),
    [((30, 26, 22), "blurred"), ((101, 20, 16), "shifted"), ((99, 98, 100), "blurred"),
     ((98, 100, 99), "shifted")],
)
def test_synthrad2025_equals_official_code_as_executed(shape, kind):
    _, ct, mask = _ct_case(shape, 2)
    sct = _degraded(ct, kind, 3)
    for preset, hi in (("synthrad2025", 3000.0), ("synthrad2025_container", 3071.0)):
        ours = evaluate_pair(sct, ct, mask, preset=preset)
        expected = _reference_synthrad2025(ct, sct, mask, hi=hi)
        assert ours.keys() == expected.keys()
        for key in expected:
            assert abs(ours[key] - expected[key]) <= 1e-6, (preset, key)
        assert 0.0 < ours["ms_ssim"] < 1.0
    # the described variant (luminance at the last scale only) is a different number on such images
    from medtrans.metrics import ms_ssim

    g, p = (np.clip(np.where(mask > 0, a, LO), LO, HI) - LO for a in (ct, sct))
    described = ms_ssim(p, g, data_range=HI - LO, mask=mask, luminance="last")
    assert abs(described - evaluate_pair(sct, ct, mask, preset="synthrad2025")["ms_ssim"]) > 1e-5


@pytest.mark.parametrize(("shape", "kind"), [((40, 36, 9), "blurred"), ((34, 30, 7), "shifted")])
def test_icon_equals_selfrdb_compute_metrics(shape, kind):
    gt, pred, mask = _mr_case(shape, 3, kind)
    ours = evaluate_pair(pred, gt, mask, preset="icon")
    expected = _reference_icon(gt, pred, mask)
    for key in expected:
        assert abs(ours[key] - expected[key]) <= 1e-6, key
    # [-1, 1] input is mapped to [0, 1] and clipped first, as in the original code
    scaled = evaluate_pair(pred * 2 - 1, gt * 2 - 1, mask, preset="icon")
    expected_scaled = _reference_icon(gt * 2 - 1, pred * 2 - 1, mask)
    for key in expected:
        assert abs(scaled[key] - expected_scaled[key]) <= 1e-6, key
    assert abs(scaled["psnr"] - ours["psnr"]) > 1e-4  # the overshoot is clipped only in [-1, 1] data


def test_icon_drops_a_zero_prediction_slice_like_the_original():
    gt, pred, mask = _mr_case((30, 28, 8), 4, "blurred")
    pred[:, :, 3] = 0.0  # NaN in SelfRDB (0 / 0), dropped by its nanmean
    ours = evaluate_pair(pred, gt, mask, preset="icon")
    expected = _reference_icon(gt, pred, mask)
    for key in expected:
        assert abs(ours[key] - expected[key]) <= 1e-6, key
    with pytest.raises(MedtransError, match="every slice is zero"):
        evaluate_pair(np.zeros_like(pred), gt, mask, preset="icon")


def test_syndiff_equals_its_test_script_pooled_over_slices(tmp_path):
    import nibabel as nib

    from medtrans.engine.evaluator import evaluate

    cases = [_mr_case((30, 28, n), 5 + n, kind) for n, kind in ((6, "blurred"), (9, "shifted"))]
    gts, preds = [c[0] for c in cases], [c[1] for c in cases]
    per_subject = [evaluate_pair(p, g, preset="syndiff") for g, p in zip(gts, preds, strict=True)]
    assert [v["slices"] for v in per_subject] == [6.0, 9.0]
    for g, p, v in zip(gts, preds, per_subject, strict=True):
        assert v["psnr"] == pytest.approx(_reference_syndiff([g], [p]), abs=1e-9)
    # the evaluator reports the paper's pooled number beside the mean of subject means
    for folder, images in (("pred", preds), ("ref", gts)):
        (tmp_path / folder).mkdir()
        for i, image in enumerate(images):
            nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), tmp_path / folder / f"s{i}.nii.gz")
    summary = evaluate(tmp_path / "pred", tmp_path / "ref", preset="syndiff").summary
    f32 = [a.astype(np.float32).astype(np.float64) for a in (*gts, *preds)]
    pooled = _reference_syndiff(f32[:2], f32[2:])
    assert summary["pooled_over_slices"]["psnr"] == pytest.approx(pooled, abs=1e-6)
    assert abs(summary["metrics"]["psnr"]["mean"] - pooled) > 1e-3  # 6 vs 9 slices: the two differ


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
