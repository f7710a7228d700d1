"""Registration of each source onto the target, alignment QA, and N4 bias-field correction (SimpleITK).

Paired training assumes a source voxel sits on the same anatomy as its target voxel. The plan's
``registration`` block makes ``PreparedCache`` register every source (and the mask) onto the target's
model-space grid: rigid or affine, mutual information across modality families (MR↔CT, MR↔PET) and
correlation between MR contrasts, on a coarse-to-fine pyramid, with a fixed sampling seed so the same
plan always gives the same transform. Each pair gets QA numbers before and after: normalised mutual
information (and, for MR↔MR, the correlation) inside the mask, how far the transform moved the mask,
and a *shift probe*: whether moving the aligned source by one voxel along any axis raises NMI (it does
when a misalignment of half a voxel or more is left). A pair is flagged when the probe finds such a
shift, when NMI stays below ``min_nmi``, or when the transform moved more than ``max_motion_mm`` /
``max_rotation_deg`` (a registration that ran away).

Transforms are 4x4 RAS matrices mapping a target (fixed) world point to the source (moving) world
point that shows the same anatomy: what ``io.geometry.resample_like(..., transform=)`` takes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from medtrans.data.modalities import family
from medtrans.errors import MedtransError
from medtrans.io import Volume
from medtrans.io._common import LPS
from medtrans.io.itk import to_sitk

KINDS = ("none", "rigid", "affine")
METRICS = ("auto", "mi", "correlation")
#: every key of the plan's ``registration`` block, with its default
DEFAULTS: dict[str, Any] = {
    "kind": "rigid",
    "metric": "auto",  # auto: correlation within one MR weighting, mutual information otherwise
    "shrink": [4, 2, 1],  # pyramid levels (downsampling factors), coarse to fine
    "iterations": 200,  # per level, at most
    "sampling": 0.25,  # fraction of voxels the metric samples (random, seeded) …
    "max_samples": 50000,  # … but no more than this many per pyramid level (the cost at full size)
    "seed": 0,
    "mask": "source",  # the dataset mask lies in the first source's frame ("source") or the target's
    "max_motion_mm": 20.0,  # flag: mean displacement of the mask larger than this
    "max_rotation_deg": 15.0,  # flag: rotation larger than this
    "min_nmi": 1.0,  # flag: NMI after registration below this (1.0, the minimum, turns it off)
}
#: N4: "auto" shrinks by the largest factor (≤ 4) that leaves 24 voxels along the smallest axis: on
#: the 64×64×48 phantom a 16-voxel fit (factor 3) left most of the field (CV 0.114 → 0.087), factor 2
#: removed it (→ 0.047)
N4_DEFAULTS: dict[str, Any] = {"shrink": "auto", "iterations": [50, 50, 30], "control_points": 4}
QA_COLUMNS = ("subject", "source", "target", "metric", "nmi_before", "nmi_after", "ncc_before", "ncc_after",
              "motion_mm", "rotation_deg", "probe_gain", "flagged", "reason")
_BINS = 32


def settings(block: dict[str, Any] | None) -> dict[str, Any] | None:
    """The plan's ``registration`` block with defaults filled in (None stays None: no registration, no QA)."""
    if block is None:
        return None
    return {**DEFAULTS, **block}


def problems(block: Any) -> list[str]:
    """What is wrong with a ``registration`` block, one phrase each."""
    if not isinstance(block, dict):
        return ["'registration' must be an object such as {\"kind\": \"rigid\"}"]
    errs = [f"'registration.{k}' is not a known key" for k in sorted(set(block) - set(DEFAULTS))]
    full = settings(block)
    if full["kind"] not in KINDS:
        errs.append(f"'registration.kind' must be one of {', '.join(KINDS)}")
    if full["metric"] not in METRICS:
        errs.append(f"'registration.metric' must be one of {', '.join(METRICS)}")
    if full["mask"] not in ("source", "target"):
        errs.append("'registration.mask' must be source or target")
    shrink = full["shrink"]
    if not (isinstance(shrink, list) and shrink and all(isinstance(s, int) and s >= 1 for s in shrink)):
        errs.append("'registration.shrink' must be a list of integers ≥ 1")
    if not (0 < float(full["sampling"]) <= 1):
        errs.append("'registration.sampling' must be in (0, 1]")
    return errs


def n4_problems(block: Any) -> list[str]:
    if not isinstance(block, dict):
        return ["'bias_correction' must map MR modalities to N4 settings, e.g. {\"t1\": {}}"]
    errs = []
    for m, opts in block.items():
        if family(m) != "mr":
            errs.append(f"'bias_correction.{m}': N4 is for MR modalities")
        elif not isinstance(opts, dict) or set(opts) - set(N4_DEFAULTS):
            errs.append(f"'bias_correction.{m}' takes only {', '.join(N4_DEFAULTS)}")
    return errs


#: MR pairs with one weighting, whose intensities are related linearly enough for correlation
_SAME_WEIGHTING = ({"t1", "t1ce"},)


def metric_for(source: str, target: str, choice: str = "auto") -> str:
    """``mi`` or ``correlation``: correlation for two MR images of one weighting (T1 and T1ce, or the
    same contrast twice), mutual information otherwise. T1 against T2 is not linear (CSF, fat and
    white matter swap order): on the misaligned phantom correlation left 1.3–1.9 mm of error where
    mutual information left 0.6–1.1 mm (64×64×48, same settings, no N4)."""
    if choice != "auto":
        return choice
    pair = {source, target}
    same = source == target or any(pair <= group for group in _SAME_WEIGHTING)
    return "correlation" if same and family(source) == "mr" else "mi"


# ---------------------------------------------------------------------------------------------- ITK
def _image(volume: Volume) -> tuple[sitk.Image, int]:
    """Float32 ITK image; a single slice (k size 1) becomes a 2D image so 2D data registers in-plane."""
    img = to_sitk(np.asarray(volume.array, np.float32), volume.affine)
    if img.GetSize()[2] == 1:
        return img[:, :, 0], 2
    return img, 3


def _matrix(transform: sitk.Transform, dim: int) -> np.ndarray:
    """4x4 RAS matrix of an affine ITK transform (probed at the origin and the unit vectors);
    a 2D transform leaves the slice coordinate alone."""
    origin = np.array(transform.TransformPoint([0.0] * dim))
    lps = np.eye(4)
    lps[:dim, 3] = origin
    for axis in range(dim):
        lps[:dim, axis] = np.array(transform.TransformPoint([float(v) for v in np.eye(dim)[axis]])) - origin
    return LPS @ lps @ LPS


def register(fixed: Volume, moving: Volume, kind: str = "rigid", metric: str = "mi",
             options: dict[str, Any] | None = None, fixed_mask: Volume | None = None) -> np.ndarray:
    """4x4 RAS transform (fixed world → moving world) that aligns ``moving`` to ``fixed``.

    Starts from the headers (identity in world space, rotations about the fixed image's centre) and
    refines on a pyramid with regular-step gradient descent, steps scaled by physical shift.
    """
    opts = {**DEFAULTS, **(options or {})}
    f_img, dim = _image(fixed)
    m_img, m_dim = _image(moving)
    if dim != m_dim:
        raise MedtransError(moving.meta.get("source"), "one image is a single slice and the other is not",
                            "register 2D with 2D and 3D with 3D images")
    size = np.array(f_img.GetSize())
    centre = f_img.TransformContinuousIndexToPhysicalPoint([float(v) for v in (size - 1) / 2])
    initial = (sitk.Euler3DTransform() if dim == 3 else sitk.Euler2DTransform()) if kind == "rigid" \
        else sitk.AffineTransform(dim)
    initial.SetCenter(centre)
    method = sitk.ImageRegistrationMethod()
    if metric == "mi":
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=_BINS)
    else:
        method.SetMetricAsCorrelation()
    # no level coarser than 8 voxels along the smallest axis
    shrink = [s for s in opts["shrink"] if size.min() // s >= 8] or [1]
    method.SetMetricSamplingStrategy(method.RANDOM)
    fractions = [min(float(opts["sampling"]), float(opts["max_samples"]) / float(np.prod(size // s)))
                 for s in shrink]
    # ITK reads seed 0 as "seed from the wall clock" (sitkWallClock): shift by one to stay reproducible
    method.SetMetricSamplingPercentagePerLevel(fractions, int(opts["seed"]) + 1)
    if fixed_mask is not None:
        method.SetMetricFixedMask(_image(fixed_mask)[0] > 0.5)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-4, numberOfIterations=int(opts["iterations"]),
        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel([max(0.0, (s - 1) / 2.0) for s in shrink])
    method.SetInitialTransform(initial, inPlace=False)
    try:
        result = method.Execute(f_img, m_img)
    except RuntimeError as err:
        raise MedtransError(moving.meta.get("source"), f"registration failed ({str(err).strip()[-200:]})",
                            "check that the images overlap in world space, or set registration.kind none",
                            ) from err
    return _matrix(result, dim)


def n4(volume: Volume, options: dict[str, Any] | None = None) -> Volume:
    """``volume`` divided by the N4 bias field (fitted on a shrunk copy inside an Otsu head mask).

    Deterministic: training (``PreparedCache``) and prediction (``Plan.to_model_space``) both call
    this on the original image, so a source is corrected the same way in both.
    """
    opts = {**N4_DEFAULTS, **(options or {})}
    img, dim = _image(volume)
    mask = sitk.OtsuThreshold(img, 0, 1, 200)
    size = img.GetSize()
    shrink = max(1, min(4, min(size) // 24)) if opts["shrink"] == "auto" else int(opts["shrink"])
    factors = [shrink if n >= 4 * shrink else 1 for n in size]
    small, small_mask = sitk.Shrink(img, factors), sitk.Shrink(mask, factors)
    n4f = sitk.N4BiasFieldCorrectionImageFilter()
    n4f.SetMaximumNumberOfIterations([int(i) for i in opts["iterations"]])
    n4f.SetNumberOfControlPoints([int(opts["control_points"])] * dim)
    n4f.Execute(small, small_mask)
    log_field = sitk.GetArrayFromImage(n4f.GetLogBiasFieldAsImage(img))
    field = np.exp(np.transpose(log_field, tuple(range(dim))[::-1])).astype(np.float32)
    if dim == 2:
        field = field[:, :, None]
    corrected = np.asarray(volume.array, np.float32) / field
    return Volume(corrected, volume.affine.copy(), {**volume.meta, "bias_corrected": "n4"})


# ---------------------------------------------------------------------------------------------- QA
def nmi(a: np.ndarray, b: np.ndarray, bins: int = _BINS) -> float:
    """Studholme's normalised mutual information (H(A) + H(B)) / H(A, B): 1 independent, 2 identical."""
    def edges(x: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(x, [0.5, 99.5])
        return np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)

    joint, _, _ = np.histogram2d(np.clip(a, *edges(a)[[0, -1]]), np.clip(b, *edges(b)[[0, -1]]),
                                 bins=(edges(a), edges(b)))
    p = joint / max(joint.sum(), 1.0)

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return (entropy(p.sum(1)) + entropy(p.sum(0))) / max(entropy(p.ravel()), 1e-12)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two sets of voxel values."""
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-12))


def probe_gain(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> float:
    """Largest NMI gain from shifting ``source`` by one voxel along any axis (≤ 0 when aligned).

    Hand-written (a few ``np.roll``) because no library offers this check; axes of size 1 are skipped.
    """
    base = nmi(target[mask], source[mask])
    gains = [nmi(target[mask], np.roll(source, step, axis=axis)[mask]) - base
             for axis in range(source.ndim) if source.shape[axis] > 1 for step in (-1, 1)]
    return max(gains) if gains else 0.0


def motion(matrix: np.ndarray, points: np.ndarray) -> tuple[float, float]:
    """(mean displacement in mm of ``points`` (N, 3 world mm), rotation angle in degrees) of a transform."""
    moved = points @ matrix[:3, :3].T + matrix[:3, 3]
    shift = float(np.linalg.norm(moved - points, axis=1).mean()) if len(points) else 0.0
    u, _, vt = np.linalg.svd(matrix[:3, :3])
    rot = u @ vt
    angle = float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1.0, 1.0))))
    return shift, angle


def target_registration_error(estimate: np.ndarray, truth: np.ndarray, points: np.ndarray) -> float:
    """Mean distance (mm) between where two transforms send ``points`` (N, 3 world mm)."""
    a = points @ estimate[:3, :3].T + estimate[:3, 3]
    b = points @ truth[:3, :3].T + truth[:3, 3]
    return float(np.linalg.norm(a - b, axis=1).mean())


def world_points(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World mm (N, 3) of the voxels where ``mask`` is set."""
    ijk = np.argwhere(mask).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def qa_row(subject: str, source: str, target: str, metric: str, target_arr: np.ndarray,
           before: np.ndarray, after: np.ndarray, mask: np.ndarray, matrix: np.ndarray,
           points: np.ndarray, opts: dict[str, Any]) -> dict[str, Any]:
    """One line of ``alignment.csv``: the numbers before and after, and whether the pair is flagged."""
    inside = mask > 0
    if not inside.any():
        inside = np.ones_like(inside)
    t = target_arr[inside]
    mr_pair = family(source) == family(target) == "mr"
    shift, angle = motion(matrix, points)
    row = {"subject": subject, "source": source, "target": target, "metric": metric,
           "nmi_before": nmi(t, before[inside]), "nmi_after": nmi(t, after[inside]),
           "ncc_before": ncc(t, before[inside]) if mr_pair else None,
           "ncc_after": ncc(t, after[inside]) if mr_pair else None,
           "motion_mm": shift, "rotation_deg": angle, "probe_gain": probe_gain(target_arr, after, inside)}
    reasons = []
    if row["probe_gain"] > 0:
        reasons.append("a one-voxel shift raises NMI")
    if row["nmi_after"] < float(opts["min_nmi"]):
        reasons.append(f"NMI below {opts['min_nmi']}")
    if shift > float(opts["max_motion_mm"]):
        reasons.append(f"moved {shift:.1f} mm > {opts['max_motion_mm']}")
    if angle > float(opts["max_rotation_deg"]):
        reasons.append(f"rotated {angle:.1f}° > {opts['max_rotation_deg']}")
    row["flagged"] = bool(reasons)
    row["reason"] = "; ".join(reasons)
    return row


def write_csv(rows: list[dict[str, Any]], path: Any) -> None:
    """``alignment.csv`` (atomic): one row per (subject, source) pair, in QA_COLUMNS order."""
    import csv
    import io

    from medtrans.atomic import write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=QA_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else ("" if v is None else v))
                         for k, v in row.items()})
    write_text(path, buf.getvalue())


def read_csv(path: Any) -> list[dict[str, Any]]:
    import csv

    with open(path, newline="") as fh:
        return [{**r, "flagged": r["flagged"] == "True"} for r in csv.DictReader(fh)]


def worst_pairs(rows: list[dict[str, Any]], n: int = 5) -> list[str]:
    """Flagged pairs first, then the lowest NMI after registration: one readable line each."""
    ranked = sorted(rows, key=lambda r: (not r["flagged"], float(r["nmi_after"])))[:n]
    return [f"{r['subject']} {r['source']}→{r['target']}: NMI {float(r['nmi_before']):.3f} → "
            f"{float(r['nmi_after']):.3f}, moved {float(r['motion_mm']):.1f} mm / "
            f"{float(r['rotation_deg']):.1f}°" + (f"  FLAGGED ({r['reason']})" if r["flagged"] else "")
            for r in ranked]
