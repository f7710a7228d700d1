"""Image-translation metrics: voxel-wise, structural (SSIM, MS-SSIM), official presets, distributions.

Functional metrics take numpy arrays or torch tensors (computed on the tensor's device, float64) and
return Python floats; every one takes an optional ``mask`` and, where a peak matters, ``data_range``.
"""

from medtrans.metrics.functional import mae, mse, ncc, nmse, psnr, rmse
from medtrans.metrics.presets import PRESETS, evaluate_pair
from medtrans.metrics.structural import ms_ssim, ssim

__all__ = ["PRESETS", "evaluate_pair", "mae", "ms_ssim", "mse", "ncc", "nmse", "psnr", "rmse", "ssim"]
