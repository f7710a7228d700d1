"""SSIM and MS-SSIM, masked, 2D / 3D / batches of slices, equal to scikit-image (1e-15 measured).

Why written by hand rather than calling scikit-image or MONAI:
- masks: the field's official numbers average the SSIM *map* inside a mask after a border crop, so the
  map (or its masked sum) is needed, for SSIM and at every scale of MS-SSIM;
- 3D speed: scikit-image filters whole float64 volumes with one thread and allocates full-size
  arrays for every moment (3.9-10.5 s for 256^3 on the shared machine); streaming cache-sized float64
  slabs, each cropped to the mask's extent, measured 10.6-13.4x faster with a body mask and the same
  values (docs/BENCHMARKS.md, benchmarks/bench_ssim.py);
- batches: per-slice presets need one SSIM per slice of a (B, H, W) stack in one call, and tensors on
  a GPU should stay there.

Definition (scikit-image ``structural_similarity``, Wang et al. 2004): with local (uniform or Gaussian
weighted) means mu, variances s^2 and covariance s_xy over a window,
``SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))``,
``C1 = (K1 L)^2, C2 = (K2 L)^2`` with L the data range. The mean is taken over the *valid interior*:
scikit-image crops ``(win - 1) // 2`` voxels from every border; we compute only that interior
("valid" filtering), so padding never enters. Float64 throughout: the variances are differences of
large numbers (HU^2), which float32 would get wrong by ~1e-4 in SSIM.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medtrans.errors import MedtransError
from medtrans.metrics._common import ArrayLike, check_data_range, check_mask, check_pair, reference_range

WANG_MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_CPU_CHUNK_VOXELS = 1 << 17  # in-plane voxels x slices per slab: keeps the float64 moments in cache
_CPU_THREADS = 1  # torch intra-op threads while streaming
_CPU_WORKERS = min(2, os.cpu_count() or 1)  # concurrent slab streams (Python threads)


@dataclass(frozen=True)
class Window:
    """A separable window: ``size`` taps per axis, ``weights`` (normalised) or None for uniform."""

    size: int
    weights: tuple[float, ...] | None

    @property
    def pad(self) -> int:
        return (self.size - 1) // 2

    def cov_norm(self, dims: int, sample: bool) -> float:
        """Variance factor: N / (N - 1) for the sample covariance over N = size^dims taps, else 1."""
        n = self.size**dims
        return n / (n - 1) if sample else 1.0


def make_window(gaussian_weights: bool = False, win_size: int | None = None, sigma: float = 1.5) -> Window:
    """scikit-image's windows: uniform 7 by default; Gaussian sigma with truncate 3.5 (11 taps at 1.5)."""
    if gaussian_weights:
        if sigma <= 0:
            raise MedtransError(None, f"sigma must be > 0, got {sigma}", "use sigma=1.5 (Wang et al.)")
        radius = int(3.5 * sigma + 0.5)  # as scipy.ndimage.gaussian_filter with truncate=3.5
        if win_size is not None and win_size != 2 * radius + 1:
            raise MedtransError(
                None,
                f"win_size {win_size} does not match the Gaussian's {2 * radius + 1} taps",
                "leave win_size unset with gaussian_weights=True",
            )
        x = np.arange(-radius, radius + 1, dtype=np.float64)
        phi = np.exp(-0.5 * x * x / (sigma * sigma))
        return Window(2 * radius + 1, tuple(float(v) for v in phi / phi.sum()))
    size = 7 if win_size is None else int(win_size)
    if size < 3 or size % 2 == 0:
        raise MedtransError(None, f"win_size must be an odd number >= 3, got {win_size}", "use 7 or 11")
    return Window(size, None)


def _box_sum(q: torch.Tensor, dim: int, size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Unnormalised window sum of ``size`` taps along ``dim`` (valid part) by doubling: sums of 2, 4, 8 …
    neighbours combined by the binary digits of ``size`` (4 additions for 7 taps instead of 6)."""
    n_out = q.shape[dim] - size + 1
    powers = {1: q}
    width = 1
    while width * 2 <= size:
        prev = powers[width]
        n = prev.shape[dim] - width
        powers[width * 2] = prev.narrow(dim, 0, n) + prev.narrow(dim, width, n)
        width *= 2
    parts, offset = [], 0
    for width in sorted(powers, reverse=True):
        if size - offset >= width:
            parts.append(powers[width].narrow(dim, offset, n_out))
            offset += width
    out = torch.add(parts[0], parts[1], out=out) if len(parts) > 1 else torch.mul(parts[0], 1.0, out=out)
    for part in parts[2:]:
        out.add_(part)
    return out


def _filter_valid(q: torch.Tensor, dim: int, window: Window, out: torch.Tensor | None = None) -> torch.Tensor:
    """Window sum along ``dim`` without padding (length n - size + 1), into ``out`` if given.

    Uniform windows are left unnormalised (the caller divides once by size^d); Gaussian weights are
    normalised already.
    """
    if window.weights is None:
        return _box_sum(q, dim, window.size, out)
    n_out = q.shape[dim] - window.size + 1
    out = torch.mul(q.narrow(dim, 0, n_out), window.weights[0], out=out)
    for k in range(1, window.size):
        out.add_(q.narrow(dim, k, n_out), alpha=window.weights[k])
    return out


def _slab_moments(x: torch.Tensor, y: torch.Tensor, window: Window, along0: bool) -> torch.Tensor:
    """(5, c, H', W') local means of x, y, x^2, y^2, xy for c output slices of a slab.

    With ``along0`` the slab holds c + size - 1 input slices of a volume and axis 0 is filtered first,
    straight from the input views (products of overlapping slices are recomputed: cheaper than
    carrying filtered slices between slabs); otherwise the slices are independent 2D images.
    """
    c = x.shape[0] - window.size + 1 if along0 else x.shape[0]
    q = torch.empty((5, c, *x.shape[1:]), dtype=x.dtype, device=x.device)
    for i in range(5):
        src = (x, y)[i] if i < 2 else (x * x if i == 2 else y * y if i == 3 else x * y)
        if along0:
            _filter_valid(src, 0, window, out=q[i])
        else:
            q[i].copy_(src)
    moments = _filter_valid(_filter_valid(q, 2, window), 3, window)
    if window.weights is None:
        moments.mul_(1.0 / window.size ** (3 if along0 else 2))
    return moments


def _chunk(shape: tuple[int, ...], device: torch.device) -> int:
    if device.type != "cpu":
        return shape[0]
    return max(1, _CPU_CHUNK_VOXELS // (shape[1] * shape[2]))


@contextmanager
def _threads(device: torch.device) -> Iterator[None]:
    """One intra-op thread while streaming: slabs are cache-sized, too small for an OpenMP fan-out to pay,
    and on a shared machine its barriers made two threads 5-20x slower than one (measured here). Cores
    are used instead by independent slab streams (``_CPU_WORKERS``), which never wait for each other."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(_CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


MapFn = Callable[[torch.Tensor], torch.Tensor]


def ssim_map_fn(data_range: float, cov_norm: float, k1: float = 0.01, k2: float = 0.03) -> MapFn:
    """Moments (5, ...) -> SSIM map, scikit-image's formula term by term (in place on the moments)."""
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2

    def fn(m: torch.Tensor) -> torch.Tensor:
        ux, uy, uxx, uyy, uxy = m.unbind(0)
        uxy.sub_(ux * uy).mul_(cov_norm).mul_(2).add_(c2)  # A2 = 2 vxy + C2
        uxx.sub_(ux * ux).mul_(cov_norm)  # vx
        uyy.sub_(uy * uy).mul_(cov_norm)  # vy
        uxx.add_(uyy).add_(c2)  # B2 = vx + vy + C2
        a1 = ux * uy
        a1.mul_(2).add_(c1)
        ux.mul_(ux).add_(uy * uy).add_(c1)  # B1
        return a1.mul_(uxy).div_(ux.mul_(uxx))

    return fn


def lcs_map_fn(
    data_range: float,
    cov_norm: float,
    lum_w: float,
    con_w: float,
    str_w: float,
    k1: float = 0.01,
    k2: float = 0.03,
) -> MapFn:
    """Moments -> L^a C^b S^c with each term clipped at 0 and C3 = C2 / 2 (SynthRAD2025's per-scale map)."""
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    c3 = c2 / 2

    def fn(m: torch.Tensor) -> torch.Tensor:
        ux, uy, uxx, uyy, uxy = m.unbind(0)
        vx = (uxx - ux * ux).mul_(cov_norm)
        vy = (uyy - uy * uy).mul_(cov_norm)
        vxy = (uxy - ux * uy).mul_(cov_norm)
        sx, sy = vx.clamp(min=0).sqrt_(), vy.clamp(min=0).sqrt_()
        lum = ((2 * ux * uy + c1) / (ux * ux + uy * uy + c1)).clamp_(min=0)
        con = ((2 * sx * sy + c2) / (vx + vy + c2)).clamp_(min=0)
        struct = ((vxy + c3) / (sx * sy + c3)).clamp_(min=0)
        return lum.pow_(lum_w).mul_(con.pow_(con_w)).mul_(struct.pow_(str_w))

    return fn


def _crop_interior(t: torch.Tensor, pad: int, first: int) -> torch.Tensor:
    """Drop ``pad`` voxels from both ends of every axis from ``first`` on (skimage's ``crop``)."""
    index = [slice(None)] * first + [slice(pad, s - pad) for s in t.shape[first:]]
    return t[tuple(index)]


def _extent(projection: torch.Tensor) -> tuple[int, int] | None:
    """First and one-past-last True index of a (slices, n) projection, over all its slices."""
    hits = torch.nonzero(projection.any(dim=0)).flatten()
    return (int(hits[0]), int(hits[-1]) + 1) if hits.numel() else None


def map_reduce(
    p: torch.Tensor,
    r: torch.Tensor,
    m: torch.Tensor | None,
    window: Window,
    map_fn: MapFn,
    *,
    batch: bool,
    full: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Masked sums and counts of a windowed map over the valid interior, per slice (batch) or in total.

    ``p, r``: (H, W), (B, H, W) with ``batch`` or (X, Y, Z). ``m``: boolean mask of the same shape or None.
    Returns (sums, counts, map or None); the map covers the valid interior only. The images are streamed
    in slabs along the first axis; with a mask (and no map wanted) each slab is cropped in-plane to the
    mask's extent and slabs without mask voxels are skipped, which leaves the masked sums unchanged.
    """
    first = 1 if batch else 0
    if any(s < window.size for s in p.shape[first:]):
        raise MedtransError(
            None,
            f"image {tuple(p.shape[first:])} is smaller than the {window.size}-voxel window",
            "use a smaller win_size or evaluate on larger images",
        )
    volume = p.dim() == 3 and not batch
    if p.dim() == 2:
        p, r = p[None], r[None]
        m = None if m is None else m[None]
    pad, extra = window.pad, (window.size - 1 if volume else 0)
    mi = None if m is None else _crop_interior(m, pad, 0 if volume else 1)
    n_out = p.shape[0] - extra
    sums = torch.zeros(1 if volume else n_out, dtype=torch.float64, device=p.device)
    counts = torch.zeros_like(sums)
    step = _chunk(tuple(p.shape), p.device)
    crop = mi is not None and not full
    rows_any = cols_any = None
    if crop:  # the mask's in-plane extent per output slice, computed once
        as_bytes = mi.view(torch.uint8)  # amax over bytes is 3-5x faster than any() over bools here
        rows_any, cols_any = as_bytes.amax(dim=2) > 0, as_bytes.amax(dim=1) > 0

    def slab(start: int) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
        """(start, masked map or None when the slab holds no mask voxel, mask block or None)."""
        stop = min(start + step, n_out)
        xs, ys = p[start : stop + extra], r[start : stop + extra]
        block = None if mi is None else mi[start:stop]
        if crop:
            rows, cols = _extent(rows_any[start:stop]), _extent(cols_any[start:stop])
            if rows is None or cols is None:
                return start, None, None
            (y0, y1), (x0, x1) = rows, cols
            block = block[:, y0:y1, x0:x1]
            xs, ys = xs[:, y0 : y1 + 2 * pad, x0 : x1 + 2 * pad], ys[:, y0 : y1 + 2 * pad, x0 : x1 + 2 * pad]
        return start, map_fn(_slab_moments(xs, ys, window, volume)), block

    def run(starts: list[int]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Reduce a worker's slabs: its maps (when wanted) and its share of the sums and counts."""
        maps, total, count = [], torch.zeros_like(sums), torch.zeros_like(counts)
        for start, smap, block in map(slab, starts):
            if smap is None:
                continue
            if full:
                maps.append(smap.clone())
            if block is not None:
                smap.mul_(block)
            if volume:
                total += smap.sum()
                count += smap.numel() if block is None else block.sum()
            else:
                c = smap.shape[0]
                total[start : start + c] = smap.sum(dim=(1, 2))
                count[start : start + c] = smap[0].numel() if block is None else block.sum(dim=(1, 2))
        return maps, total, count

    starts = list(range(0, n_out, step))
    workers = 1 if full or p.device.type != "cpu" else max(1, min(_CPU_WORKERS, len(starts)))
    with _threads(p.device):
        if workers == 1:
            parts = [run(starts)]
        else:  # torch releases the GIL inside ops: one single-threaded stream per core, no barriers
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(run, [starts[i::workers] for i in range(workers)]))
    for _, total, count in parts:
        sums += total
        counts += count
    full_map = torch.cat(parts[0][0], 0) if full else None
    return sums, counts, full_map


def _prepare(pred, ref, mask, data_range, batch: bool):
    p, r = check_pair(pred, ref)
    if p.dim() not in ((3,) if batch else (2, 3)):
        raise MedtransError(
            None,
            f"SSIM needs {'a (B, H, W) stack' if batch else '2D or 3D images'}, got shape {tuple(p.shape)}",
            "squeeze singleton axes or pass batch=True",
        )
    m = check_mask(mask, tuple(p.shape), p.device)
    dr = check_data_range(reference_range(r) if data_range is None else data_range)
    if not batch and p.dim() == 3 and p.shape.count(1) == 1:
        # a 2D image stored as a volume (X x Y x 1, as NIfTI and medtrans.io keep slices) is 2D
        flat = [s for s in p.shape if s != 1]
        p, r = p.reshape(flat), r.reshape(flat)
        m = None if m is None else m.reshape(flat)
    return p, r, m, dr


def _out_map(full_map: torch.Tensor, like: ArrayLike, squeeze: bool):
    out = full_map[0] if squeeze else full_map
    return out if isinstance(like, torch.Tensor) else out.cpu().numpy()


def ssim(
    pred: ArrayLike,
    ref: ArrayLike,
    *,
    data_range: float | None = None,
    mask: ArrayLike | None = None,
    win_size: int | None = None,
    gaussian_weights: bool = False,
    sigma: float = 1.5,
    use_sample_covariance: bool = True,
    k1: float = 0.01,
    k2: float = 0.03,
    batch: bool = False,
    full: bool = False,
):
    """Mean SSIM over the valid interior (inside ``mask`` if given); defaults are scikit-image's.

    - ``data_range``: default max - min of the reference (scikit-image would refuse float input).
    - window: uniform ``win_size`` (7) or ``gaussian_weights`` with ``sigma`` (1.5 -> 11 taps);
      ``use_sample_covariance`` (True, scikit-image's default; False with Gaussian 1.5 = Wang et al.).
    - ``mask``: only map voxels inside the mask are averaged (the window still sees outside values).
    - ``batch``: ``pred``/``ref`` are (B, H, W) stacks of 2D slices; returns a float64 numpy array of
      per-slice SSIM (NaN for a slice with no masked voxel in its interior).
    - ``full``: also return the SSIM map of the valid interior (numpy, or a tensor for tensor input).
    """
    p, r, m, dr = _prepare(pred, ref, mask, data_range, batch)
    window = make_window(gaussian_weights, win_size, sigma)
    cov_norm = window.cov_norm(p.dim() - (1 if batch else 0), use_sample_covariance)
    sums, counts, smap = map_reduce(
        p, r, m, window, ssim_map_fn(dr, cov_norm, k1, k2), batch=batch, full=full
    )
    if batch:
        values = (sums / counts).cpu().numpy()
    else:
        if float(counts[0]) == 0:
            raise MedtransError(
                None,
                "mask has no voxel inside the valid interior of the SSIM map",
                f"the mask must reach at least {window.pad} voxels away from the image border",
            )
        values = float(sums[0] / counts[0])
    if full:
        return values, _out_map(smap, ref, p.dim() == 2)
    return values


def _downsample(x: torch.Tensor) -> torch.Tensor:
    """SynthRAD2025's step: 2^d box mean of each voxel with its predecessors (zero before index 0), then
    every second voxel; equal to ``fftconvolve(x, ones(2,..)/2^d, 'same')[::2, ...]``."""
    pool = F.avg_pool3d if x.dim() == 3 else F.avg_pool2d
    padded = F.pad(x[None, None], (1, 0) * x.dim())
    return pool(padded, kernel_size=2, stride=2)[0, 0]


def min_ms_ssim_size(levels: int, win_size: int) -> int:
    """Smallest axis length that still holds one window after ``levels - 1`` halvings (97 for 5, 7)."""
    n = win_size
    for _ in range(levels - 1):
        n = 2 * n - 1
    return n


def ms_ssim(
    pred: ArrayLike,
    ref: ArrayLike,
    *,
    data_range: float | None = None,
    mask: ArrayLike | None = None,
    weights: tuple[float, ...] = WANG_MS_WEIGHTS,
    luminance: str = "last",
    pad_small: bool = True,
    win_size: int | None = None,
    gaussian_weights: bool = False,
    sigma: float = 1.5,
    use_sample_covariance: bool = True,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Masked multi-scale SSIM (2D/3D), SynthRAD2025's form ``prod_j clip(mean_mask(L^a C^w S^w), 0, 1)``.

    At scale j the map ``L^a_j C^w_j S^w_j`` (each term clipped at 0, C3 = C2/2) is averaged over the
    mask inside the valid interior; between scales images go through a 2^d box mean and subsampling
    by 2 (mask: subsampling only). ``luminance``: "last" (Wang et al. 2003: a = w at the last scale
    only), "none" (a = 0 everywhere), or "all" (a = w at every scale: what SynthRAD2025's official
    code executes, since its None check that would select the last-scale-only list runs after the
    luminance weights were already set to the scale weights). ``pad_small``:
    edge-pad each axis symmetrically to the smallest size that survives all scales (97 for 5 scales and
    a 7-window, as SynthRAD2025 does); otherwise smaller images are an error.
    """
    if luminance not in ("last", "none", "all"):
        raise MedtransError(
            None,
            f"luminance must be 'last', 'none' or 'all', got {luminance!r}",
            "use 'last' (Wang) or 'all' (SynthRAD2025 official)",
        )
    p, r, m, dr = _prepare(pred, ref, mask, data_range, batch=False)
    window = make_window(gaussian_weights, win_size, sigma)
    cov_norm = window.cov_norm(p.dim(), use_sample_covariance)
    levels = len(weights)
    need = min_ms_ssim_size(levels, window.size)
    if m is None:
        m = torch.ones_like(p, dtype=torch.bool)
    if any(s < need for s in p.shape):
        if not pad_small:
            raise MedtransError(
                None,
                f"image {tuple(p.shape)} is too small for {levels} scales (each axis >= {need})",
                "pass pad_small=True or use fewer scales",
            )
        pads = [(max(0, (need - s) // 2), max(0, need - s - (need - s) // 2)) for s in p.shape]
        flat = [v for pair in reversed(pads) for v in pair]
        p, r = (F.pad(t[None, None], flat, mode="replicate")[0, 0] for t in (p, r))
        m = F.pad(m[None, None].to(torch.float64), flat, mode="replicate")[0, 0] > 0
    result = 1.0
    for level, w in enumerate(weights):
        lum = w if luminance == "all" or (luminance == "last" and level == levels - 1) else 0.0
        fn = lcs_map_fn(dr, cov_norm, lum, w, w, k1, k2)
        sums, counts, _ = map_reduce(p, r, m, window, fn, batch=False, full=False)
        if float(counts[0]) == 0:
            raise MedtransError(
                None,
                f"mask has no voxel inside the valid interior at MS-SSIM scale {level + 1}",
                "use a larger mask, fewer scales or a smaller window",
            )
        result *= min(max(float(sums[0] / counts[0]), 0.0), 1.0)
        if level < levels - 1:
            p, r = _downsample(p), _downsample(r)
            m = m[tuple(slice(None, None, 2) for _ in range(m.dim()))]
    return result
