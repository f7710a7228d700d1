"""A physics-based multi-modal phantom: a ground truth to train and test on, offline.

Anatomy is a set of tissue *fractions* per voxel (partial volume), painted from smooth analytic
shapes (``brain``, ``pelvis``) or from the ICBM152 grey/white-matter maps that nilearn ships
(``mni``). Per voxel, proton density and relaxation rates are mixed from the tissues (fast exchange,
rates weighted by each tissue's share of the protons); MR images come from the spin-echo and
inversion-recovery signal equations with a smooth bias field and Rician noise; CT mixes Hounsfield
units linearly (attenuation is linear in the fractions) and adds Gaussian noise; PET blurs an uptake
map with the scanner's point-spread function and draws Poisson counts. Low-dose versions keep the
noise-free image of the same subject and only draw more noise. Every number lives in the tables
below and goes into ``dataset.json``.

Speed: smooth random fields are drawn on a coarse control grid and upsampled by three small matrix
products (separable Gaussian interpolation), which is much cheaper than ``scipy.ndimage.zoom`` with
splines on a full grid; small structures are painted inside their bounding box only.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from medtrans.atomic import write_json

ANATOMIES = ("brain", "pelvis", "mni")
MODALITIES = ("t1", "t2", "pd", "flair", "t1ce", "ct", "cbct", "pet", "ldct", "ldpet")
LABELS = ("background", "air", "fat", "muscle", "bone", "marrow", "csf", "gm", "wm", "lesion", "urine")
UNITS = {"ct": "HU", "cbct": "HU", "ldct": "HU", "pet": "SUV", "ldpet": "SUV"}

#: per tissue: (low, high) of a uniform draw per subject. T1/T2 in ms (1.5 T), PD relative to water,
#: CT in HU, FDG uptake relative to white matter, gadolinium concentration in mM (for t1ce).
TISSUES: dict[str, dict[str, tuple[float, float]]] = {
    "background": {"t1": (1000, 1000), "t2": (1, 1), "pd": (0, 0), "hu": (-1000, -1000), "fdg": (0, 0),
                   "gd": (0, 0)},
    "air": {"t1": (1000, 1000), "t2": (1, 1), "pd": (0, 0), "hu": (-1000, -1000), "fdg": (0, 0),
            "gd": (0, 0)},
    "fat": {"t1": (250, 380), "t2": (60, 80), "pd": (0.88, 0.92), "hu": (-100, -80), "fdg": (0.25, 0.35),
            "gd": (0.01, 0.03)},
    "muscle": {"t1": (900, 1300), "t2": (30, 50), "pd": (0.68, 0.72), "hu": (40, 60), "fdg": (0.4, 0.6),
               "gd": (0.05, 0.1)},
    "bone": {"t1": (220, 280), "t2": (0.5, 1.0), "pd": (0.04, 0.06), "hu": (1200, 1800), "fdg": (0.1, 0.1),
             "gd": (0, 0)},
    "marrow": {"t1": (350, 500), "t2": (60, 90), "pd": (0.8, 0.9), "hu": (150, 350), "fdg": (0.6, 0.9),
               "gd": (0.02, 0.04)},
    "csf": {"t1": (3500, 4500), "t2": (1500, 2200), "pd": (1.0, 1.0), "hu": (0, 15), "fdg": (0, 0),
            "gd": (0, 0)},
    "gm": {"t1": (950, 1200), "t2": (90, 110), "pd": (0.75, 0.8), "hu": (35, 45), "fdg": (2.5, 3.0),
           "gd": (0, 0)},
    "wm": {"t1": (600, 800), "t2": (70, 80), "pd": (0.65, 0.7), "hu": (25, 30), "fdg": (1.0, 1.0),
           "gd": (0, 0)},
    "lesion": {"t1": (1200, 1600), "t2": (120, 250), "pd": (0.8, 0.9), "hu": (30, 60), "fdg": (3.0, 6.0),
               "gd": (0.3, 0.6)},
    "urine": {"t1": (2500, 3500), "t2": (1000, 1800), "pd": (1.0, 1.0), "hu": (0, 15), "fdg": (8.0, 15.0),
              "gd": (0, 0)},
}

#: MR protocols (ms): spin echo unless TI is given (inversion recovery); t1ce = T1w after gadolinium
SEQUENCES: dict[str, dict[str, float]] = {
    "t1": {"tr": 500, "te": 15}, "t2": {"tr": 4000, "te": 100}, "pd": {"tr": 3000, "te": 15},
    "flair": {"tr": 9000, "ti": 2500, "te": 100}, "t1ce": {"tr": 500, "te": 15},
}
GD_RELAXIVITY = 4.5e-3  # r1 per ms per mM (about 4.5 /s/mM for gadolinium chelates)

#: scanner settings drawn per subject (uniform ranges); doses are fractions of the standard dose
SCANNER: dict[str, tuple[float, float]] = {
    "mr_noise": (0.01, 0.03),  # Rician sigma as a fraction of the 99th percentile signal
    "mr_bias": (0.08, 0.2),  # log-amplitude of the smooth multiplicative bias field
    "mr_gain": (800, 1250),  # scanner units per unit signal
    "ct_noise": (8, 15),  # HU, standard dose
    "ct_psf": (0.5, 0.7),  # Gaussian sigma in voxels
    "ldct_dose": (0.25, 0.25),  # noise sigma grows as 1/sqrt(dose)
    "cbct_noise": (30, 45),  # HU
    "cbct_cupping": (30, 80),  # HU darker at the centre of the field of view
    "cbct_shading": (20, 50),  # HU amplitude of a smooth additive field
    "cbct_gain": (0.95, 1.05),
    "cbct_offset": (-30, 30),  # HU
    "cbct_fov": (0.75, 0.9),  # field-of-view radius as a fraction of the half in-plane extent
    "pet_fwhm": (5.0, 7.0),  # mm, point-spread function
    "pet_counts": (30, 30),  # mean expected counts per body voxel at standard dose
    "pet_suv": (2.5, 4.0),  # SUV of white matter (scales the relative uptakes)
    "ldpet_dose": (0.1, 0.1),
}

#: field of view in mm per anatomy; the voxel size is isotropic, chosen so the FOV fits the grid
FOV = {"brain": (240.0, 240.0, 180.0), "pelvis": (400.0, 300.0, 240.0), "mni": (200.0, 232.0, 190.0)}
MNI_CENTRE = np.array([0.0, -18.0, 12.0])  # brain centre in template world mm


@dataclass(frozen=True)
class PhantomSpec:
    """What to simulate: anatomy, grid, modalities and the seed that makes it reproducible."""

    anatomy: str = "brain"
    size: tuple[int, int, int] = (128, 128, 96)
    modalities: tuple[str, ...] = MODALITIES
    seed: int = 0
    #: (mm, degrees): each modality after the first is moved by a random rigid transform up to this size
    misalign: tuple[float, float] = (0.0, 0.0)
    #: voxel size in mm; None: the largest that fits the anatomy's FOV in ``size``. Given, the grid is a
    #: block of the FOV around its centre (e.g. a slab of axial slices at full resolution, cheaper)
    voxel_mm: float | None = None

    @property
    def spacing(self) -> float:
        if self.voxel_mm is not None:
            return float(self.voxel_mm)
        fov = FOV[self.anatomy]
        if self.size[2] == 1:
            return max(fov[0] / self.size[0], fov[1] / self.size[1])
        return max(f / n for f, n in zip(fov, self.size, strict=True))

    @property
    def affine(self) -> np.ndarray:
        """RAS affine with the grid centre at world (0, 0, 0)."""
        aff = np.diag([self.spacing] * 3 + [1.0])
        aff[:3, 3] = -self.spacing * (np.asarray(self.size) - 1) / 2.0
        return aff


@dataclass
class Subject:
    """One simulated subject: images by modality, tissue labels, body mask and every parameter.

    ``truth`` holds each modality's noise-free signal (MR also without its bias field), in the same
    units and grid: what a perfect model could predict, to score against beside the acquired image.
    """

    images: dict[str, np.ndarray]
    labels: np.ndarray
    mask: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    truth: dict[str, np.ndarray] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- fields
@functools.lru_cache(maxsize=64)
def _interp_matrix(n_out: int, n_ctrl: int) -> np.ndarray:
    """(n_out, n_ctrl) Gaussian interpolation weights, rows summing to 1."""
    pos = (np.arange(n_out) + 0.5) / n_out * n_ctrl - 0.5
    w = np.exp(-0.5 * ((pos[:, None] - np.arange(n_ctrl)[None, :]) / 0.75) ** 2)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: Sequence[int], wavelength: float,
                 spacing: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field with features about ``wavelength`` mm across."""
    ctrl = [max(2, int(np.ceil(n * spacing / wavelength)) + 1) for n in shape]
    g = rng.standard_normal(ctrl).astype(np.float32)
    wx, wy, wz = (_interp_matrix(n, c) for n, c in zip(shape, ctrl, strict=True))
    a = np.tensordot(wx, g, axes=(1, 0))  # (nx, cy, cz)
    a = np.tensordot(a, wy, axes=(1, 1))  # (nx, cz, ny)
    out = np.tensordot(a, wz, axes=(1, 1))  # (nx, ny, nz)
    sub = out[::3, ::3, ::3]
    return (out - sub.mean()) / max(float(sub.std()), 1e-6)


def _ramp(d: np.ndarray, width: float) -> np.ndarray:
    """Fraction inside for a signed distance ``d`` (mm, positive inside): partial volume over one voxel."""
    return np.clip(0.5 + d / width, 0.0, 1.0).astype(np.float32, copy=False)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


class Canvas:
    """Tissue fractions on the grid (they always sum to 1) and the subject's local coordinates."""

    def __init__(self, spec: PhantomSpec, rotation: np.ndarray, centre: np.ndarray) -> None:
        self.shape = tuple(spec.size)
        self.h = spec.spacing
        self.rotation = rotation
        self.centre = centre
        self.affine = spec.affine
        ijk = [np.arange(n, dtype=np.float32) for n in self.shape]
        world = [self.affine[a, a] * ijk[a] + self.affine[a, 3] for a in range(3)]
        grids = np.meshgrid(*world, indexing="ij", copy=False)
        rel = [g - np.float32(c) for g, c in zip(grids, centre, strict=True)]
        # local = R^T (world - centre): the subject's own axes
        self.local = [sum(np.float32(rotation[b, a]) * rel[b] for b in range(3)) for a in range(3)]
        self.fractions: dict[str, np.ndarray] = {"background": np.ones(self.shape, np.float32)}

    def paint(self, tissue: str, inside: np.ndarray, where: tuple[slice, ...] = ()) -> None:
        """Put ``tissue`` over everything painted before, in proportion ``inside`` (0..1)."""
        keep = 1.0 - inside
        for arr in self.fractions.values():
            arr[where] *= keep
        if tissue not in self.fractions:
            self.fractions[tissue] = np.zeros(self.shape, np.float32)
        self.fractions[tissue][where] += inside

    def box(self, centre_local: Sequence[float], radius: float) -> tuple[slice, ...]:
        """Voxel slices that hold a ball of ``radius`` mm around a point in local coordinates."""
        world = self.centre + self.rotation @ np.asarray(centre_local, dtype=np.float64)
        ijk = (world - self.affine[:3, 3]) / self.h
        r = radius / self.h + 2
        return tuple(slice(max(0, int(np.floor(c - r))), max(0, min(n, int(np.ceil(c + r)) + 1)))
                     for c, n in zip(ijk, self.shape, strict=True))

    def ellipsoid(self, tissue: str, centre: Sequence[float], semi: Sequence[float],
                  shell: float = 0.0) -> None:
        """Paint an ellipsoid (local mm); ``shell`` > 0 paints only the part deeper than ``shell`` mm."""
        where = self.box(centre, max(semi))
        if any(s.stop <= s.start for s in where):
            return
        r = np.sqrt(sum(((self.local[a][where] - centre[a]) / semi[a]) ** 2 for a in range(3)))
        depth = (1.0 - r) * float(np.cbrt(np.prod(semi))) - shell
        self.paint(tissue, _ramp(depth, self.h), where)

    def labels(self) -> np.ndarray:
        names = list(self.fractions)
        stack = np.stack([self.fractions[n] for n in names])
        lut = np.array([LABELS.index(n) for n in names], dtype=np.uint8)
        return lut[np.argmax(stack, axis=0)]


# ---------------------------------------------------------------------------------------------- anatomy
def _lesions(canvas: Canvas, rng: np.random.Generator, count: int) -> list[dict[str, Any]]:
    """Lesions centred in deep white matter (so each slice of a 2D phantom can hold one too)."""
    wm = canvas.fractions.get("wm")
    if wm is None:
        return []
    candidates = np.flatnonzero(wm.ravel() > 0.95)
    out = []
    for _ in range(count):
        if candidates.size == 0:
            break
        flat = int(candidates[rng.integers(candidates.size)])
        idx = np.unravel_index(flat, canvas.shape)
        centre = [float(canvas.local[a][idx]) for a in range(3)]
        semi = [float(v) for v in rng.uniform(4.0, 11.0, 3)]
        canvas.ellipsoid("lesion", centre, semi)
        out.append({"centre_mm": [round(c, 2) for c in centre], "semi_axes_mm": [round(s, 2) for s in semi]})
    return out


def _brain(spec: PhantomSpec, rng: np.random.Generator) -> tuple[Canvas, dict[str, Any]]:
    """Procedural head: scalp fat, skull with diploë, CSF, folded cortex, WM, deep GM, ventricles,
    sinuses (air in bone) below the frontal lobe, lesions."""
    centre = np.array([0.0, 0.0, -12.0]) + rng.uniform(-4, 4, 3)
    canvas = Canvas(spec, _rotation(rng, 6.0), centre)
    h = canvas.h
    lx, ly, lz = canvas.local
    scale = rng.uniform(0.92, 1.06) * rng.uniform(0.97, 1.03, 3)
    semi = np.array([74.0, 94.0, 88.0]) * scale
    shape_f = smooth_field(rng, canvas.shape, 80.0, h)
    r = np.sqrt((lx / semi[0]) ** 2 + (ly / semi[1]) ** 2 + (lz / semi[2]) ** 2) * (1 + 0.03 * shape_f)
    depth = (1.0 - r) * float(np.cbrt(np.prod(semi)))  # mm below the scalp surface
    t_scalp = rng.uniform(4.0, 7.0)
    t_skull = rng.uniform(5.0, 8.0) + 1.0 * smooth_field(rng, canvas.shape, 60.0, h)
    t_csf = rng.uniform(2.0, 4.0)
    t_gm = rng.uniform(3.5, 5.0)  # apparent thickness along the depth axis, folding included
    fold_depth = rng.uniform(9.0, 14.0)
    base = -38.0 + rng.uniform(-4, 4) + 0.2 * ly  # skull base plane (local z), higher in front
    t_base = rng.uniform(5.0, 8.0)
    inner = t_scalp + t_skull  # depth of the inner skull table
    canvas.paint("fat", _ramp(depth, h))
    canvas.paint("bone", _ramp(depth - t_scalp, h))
    diploe = np.minimum(depth - t_scalp - 0.35 * t_skull, inner - 0.35 * t_skull - depth)
    canvas.paint("marrow", _ramp(np.where(t_skull > 5.5, diploe, -h), h))  # only where the skull is thick
    canvas.paint("muscle", _ramp(np.minimum(depth - inner, base - lz), h))
    above = lz - base - t_base
    canvas.paint("csf", _ramp(np.minimum(depth - inner, above), h))
    # sulci follow the zero lines of a smooth random field: narrow CSF clefts fold_depth deep; the
    # white-matter surface dips under a wider band, so grey matter lines both walls of each sulcus
    folds = smooth_field(rng, canvas.shape, 16.0, h)
    top = inner + t_csf
    cleft = np.exp(-((folds / 0.12) ** 2))
    under = np.exp(-((folds / 0.45) ** 2))
    canvas.paint("gm", _ramp(np.minimum(depth - top - fold_depth * cleft, above - t_csf), h))
    wm_depth = depth - top - t_gm - fold_depth * under
    canvas.paint("wm", _ramp(np.minimum(wm_depth, above - t_csf - t_gm - 3.0), h))
    thal = scale * np.array([rng.uniform(8, 10), rng.uniform(12, 15), rng.uniform(7, 9)])
    for side in (-1, 1):
        canvas.ellipsoid("gm", [side * 11 * scale[0], -12 * scale[1], 4 * scale[2]], thal)
    vent = scale * np.array([rng.uniform(4, 8), rng.uniform(18, 26), rng.uniform(7, 11)])
    spread = rng.uniform(7, 10)
    for side in (-1, 1):
        canvas.ellipsoid("csf", [side * spread * scale[0], -2 * scale[1], 14 * scale[2]], vent)
    lesions = _lesions(canvas, rng, int(rng.integers(1, 4)))
    # frontal sinus in the skull, maxillary sinuses below the skull base: bone walls, air inside
    sinuses = [([0.0, semi[1] - t_scalp - 6.0, -20.0], [12.0, 5.0, 8.0])]
    sinuses += [([side * 24.0, 50.0 * scale[1], -62.0], [13.0, 17.0, 15.0]) for side in (-1, 1)]
    for c, s in sinuses:
        s = np.asarray(s) * rng.uniform(0.8, 1.2)
        canvas.ellipsoid("bone", c, s + 2.0)
        canvas.ellipsoid("air", c, s)
    params = {"head_semi_axes_mm": semi.round(2).tolist(), "scalp_mm": round(t_scalp, 2),
              "skull_mean_mm": round(float(t_skull.mean()), 2), "csf_mm": round(t_csf, 2),
              "cortex_mm": round(t_gm, 2), "fold_depth_mm": round(fold_depth, 2),
              "ventricle_semi_axes_mm": vent.round(2).tolist(), "lesions": lesions}
    return canvas, params


def _pelvis(spec: PhantomSpec, rng: np.random.Generator) -> tuple[Canvas, dict[str, Any]]:
    """Procedural pelvis: body outline, fat, muscle, pelvic ring, sacrum, femora, bladder, rectal gas."""
    centre = np.array([0.0, 0.0, 0.0]) + rng.uniform(-5, 5, 3)
    canvas = Canvas(spec, _rotation(rng, 3.0), centre)
    h = canvas.h
    lx, ly, lz = canvas.local
    s = rng.uniform(0.9, 1.1)
    a, b = rng.uniform(150, 185) * s, rng.uniform(100, 125) * s
    body_f = smooth_field(rng, canvas.shape, 120.0, h)
    r = np.sqrt((lx / a) ** 2 + (ly / b) ** 2) * (1 + 0.04 * body_f)
    depth = (1.0 - r) * np.sqrt(a * b)
    t_fat = rng.uniform(12, 35) + 5.0 * smooth_field(rng, canvas.shape, 100.0, h)
    canvas.paint("fat", _ramp(depth, h))
    canvas.paint("muscle", _ramp(depth - t_fat, h))
    # pelvic ring: an elliptic shell that flares upwards (iliac wings) and closes in front only low down
    ring_a, ring_b, y0 = 100.0 * s, 72.0 * s, -5.0
    flare = ring_a + 0.25 * np.clip(lz + 40.0, 0, None)
    rr = np.sqrt((lx / flare) ** 2 + ((ly - y0) / ring_b) ** 2)
    half_t = rng.uniform(5.0, 8.0)
    shell = half_t - np.abs(rr - 1.0) * np.sqrt(flare * ring_b)
    low = _ramp(-10.0 - lz, h)
    open_front = low + (1 - low) * _ramp(y0 + 0.2 * ring_b - ly, h)
    extent = np.minimum(lz + 55.0, 85.0 - lz)
    canvas.paint("bone", _ramp(np.minimum(shell, extent), h) * open_front)
    cortex = max(3.0, 1.5 * h)  # cortical bone at least 1.5 voxels thick, so it is visible on CT
    canvas.paint("marrow", _ramp(np.minimum(shell - cortex, extent - cortex), h) * open_front)
    sacrum_c, sacrum_s = [0.0, y0 - ring_b - 12.0, 25.0], np.array([40.0, 16.0, 50.0]) * s
    canvas.ellipsoid("bone", sacrum_c, sacrum_s)
    canvas.ellipsoid("marrow", sacrum_c, sacrum_s, shell=cortex)
    r_head = rng.uniform(22, 26) * s
    x_head = 0.95 * ring_a
    for side in (-1, 1):
        parts = [([side * x_head, y0 + 5, -45.0], [r_head] * 3),
                 ([side * (x_head + 28), y0 + 5, -62.0], [26.0, 13.0, 13.0]),
                 ([side * (x_head + 38), y0 + 5, -140.0], [14.0, 14.0, 75.0])]
        for c, semi in parts:
            canvas.ellipsoid("bone", c, semi)
            canvas.ellipsoid("marrow", c, semi, shell=cortex)
    bladder_c = [0.0, y0 + 0.4 * ring_b, -10.0 + rng.uniform(-5, 5)]
    bladder_s = np.array([rng.uniform(35, 55), rng.uniform(28, 40), rng.uniform(28, 45)]) * s
    canvas.ellipsoid("muscle", bladder_c, bladder_s + 3.0)
    canvas.ellipsoid("urine", bladder_c, bladder_s)
    rectum_c, rectum_s = [0.0, y0 - 0.55 * ring_b, -15.0], np.array([17.0, 16.0, 45.0]) * s
    canvas.ellipsoid("muscle", rectum_c, rectum_s)
    gas_r = rng.uniform(5, 12)
    gas_c = [rng.uniform(-4, 4), rectum_c[1] + 4.0, -15.0 + rng.uniform(-20, 20)]
    canvas.ellipsoid("air", gas_c, [gas_r, gas_r * 0.8, gas_r * 1.5])
    params = {"body_semi_axes_mm": [round(a, 2), round(b, 2)], "fat_mm": round(float(t_fat.mean()), 2),
              "femoral_head_radius_mm": round(r_head, 2), "bladder_semi_axes_mm": bladder_s.round(2).tolist(),
              "rectal_gas_radius_mm": round(gas_r, 2)}
    return canvas, params


@functools.lru_cache(maxsize=1)
def _mni_maps() -> tuple[np.ndarray, np.ndarray]:
    """ICBM152 2009a GM, WM, brain and outside-distance maps, read from nilearn's installed files.

    Loaded with nibabel from the package folder (nilearn's loaders are not called, so nothing can be
    downloaded); padded by 40 mm so skull and scalp fit around the brain.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("nilearn is needed for the mni anatomy (pip install nilearn)")
    folder = Path(spec.origin).parent / "datasets" / "data"
    stem = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
    imgs = {k: nib.load(str(folder / stem.format(k))) for k in ("gm", "wm", "t1")}
    pad = 40
    gm, wm, t1 = (np.pad(np.asarray(imgs[k].dataobj, dtype=np.float32) / 255.0, pad)
                  for k in ("gm", "wm", "t1"))
    brain = ndimage.binary_closing(t1 > 0.02, iterations=2)
    outside = ndimage.distance_transform_edt(~brain).astype(np.float32)  # 1 mm voxels
    maps = np.stack([gm, wm, brain.astype(np.float32), outside])
    affine = imgs["gm"].affine.copy()
    affine[:3, 3] -= pad * np.diag(affine)[:3]
    return maps, affine


def _mni(spec: PhantomSpec, rng: np.random.Generator) -> tuple[Canvas, dict[str, Any]]:
    """Real anatomy: ICBM152 GM/WM under a random affine and smooth deformation; CSF = brain − GM − WM
    plus a subarachnoid layer; skull (with diploë) and scalp grown outwards from the brain."""
    maps, tpl_affine = _mni_maps()
    canvas = Canvas(spec, np.eye(3), np.zeros(3))
    h = canvas.h
    rotation = _rotation(rng, 6.0)
    scale = rng.uniform(0.92, 1.08, 3)
    shift = rng.uniform(-4, 4, 3)
    amp = rng.uniform(2.0, 4.0)
    pts = np.stack([c.ravel() for c in canvas.local])  # world mm of the output grid
    disp = np.stack([amp * smooth_field(rng, canvas.shape, 50.0, h).ravel() for _ in range(3)])
    tpl_world = (rotation @ (pts / scale[:, None])) + MNI_CENTRE[:, None] + shift[:, None] + disp
    inv = np.linalg.inv(tpl_affine)
    ijk = inv[:3, :3] @ tpl_world + inv[:3, 3:4]
    out = [ndimage.map_coordinates(m, ijk, order=1, mode="nearest").reshape(canvas.shape) for m in maps]
    gm, wm, brain, outside = out
    t_csf, t_skull, t_scalp = rng.uniform(1.5, 3.0), rng.uniform(5.0, 8.0), rng.uniform(4.0, 7.0)
    d_head = t_csf + t_skull + t_scalp - outside  # mm below the scalp surface, about
    canvas.paint("fat", _ramp(d_head, h))
    canvas.paint("bone", _ramp(d_head - t_scalp, h))
    if t_skull > 5.5:
        canvas.paint("marrow", _ramp(np.minimum(d_head - t_scalp - 0.35 * t_skull, 0.65 * t_skull - d_head
                                                + t_scalp), h))
    canvas.paint("csf", _ramp(t_csf - outside, h))
    canvas.paint("csf", brain)
    total = np.maximum(gm + wm, 1e-6)
    tissue = np.clip(gm + wm, 0, 1) * brain
    canvas.paint("gm", tissue * gm / total)
    canvas.fractions["wm"] = np.zeros(canvas.shape, np.float32)
    # white matter takes its share of the tissue from the other fractions, keeping the sum at 1
    wm_part = tissue * wm / total
    others = sum(v for k, v in canvas.fractions.items() if k != "gm")
    scale_others = np.where(others > 0, (others - wm_part) / np.maximum(others, 1e-6), 0).astype(np.float32)
    for k, v in canvas.fractions.items():
        if k != "gm":
            v *= scale_others
    canvas.fractions["wm"] += wm_part
    lesions = _lesions(canvas, rng, int(rng.integers(1, 4)))
    params = {"template": "ICBM152 2009a (nilearn)", "scale": scale.round(4).tolist(),
              "shift_mm": shift.round(2).tolist(), "deformation_mm": round(amp, 2), "csf_mm": round(t_csf, 2),
              "skull_mm": round(t_skull, 2), "scalp_mm": round(t_scalp, 2), "lesions": lesions}
    return canvas, params


_ANATOMY = {"brain": _brain, "pelvis": _pelvis, "mni": _mni}


# ---------------------------------------------------------------------------------------------- physics
def _draw(rng: np.random.Generator, table: dict[str, tuple[float, float]]) -> dict[str, float]:
    return {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in table.items()}


def _mix(fractions: dict[str, np.ndarray], tissue: dict[str, dict[str, float]], key: str,
         weight: str | None = None) -> np.ndarray:
    """Σ_k f_k · w_k · value_k over the tissues (w = ``weight`` parameter, or 1)."""
    out = np.zeros(next(iter(fractions.values())).shape, np.float32)
    for name, f in fractions.items():
        p = tissue[name]
        value = p[key] * (p[weight] if weight else 1.0)
        if value:
            out += np.float32(value) * f
    return out


def _rician(rng: np.random.Generator, clean: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise of ``sigma`` in both channels (in place)."""
    real = rng.standard_normal(clean.shape, dtype=np.float32)
    real *= np.float32(sigma)
    real += clean
    real *= real
    imag = rng.standard_normal(clean.shape, dtype=np.float32)
    imag *= np.float32(sigma)
    imag *= imag
    real += imag
    return np.sqrt(real, out=real)


def _mr(rng: np.random.Generator, name: str, pd: np.ndarray, r1: np.ndarray, r2: np.ndarray,
        scanner: dict[str, float], h: float) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(acquired image, noise- and bias-free signal in the same units, protocol and scanner values)."""
    seq = SEQUENCES[name]
    recovery = np.exp(-np.float32(seq["tr"]) * r1)
    if "ti" in seq:
        longitudinal = np.abs(1.0 - 2.0 * np.exp(-np.float32(seq["ti"]) * r1) + recovery)
    else:
        longitudinal = 1.0 - recovery
    clean = pd * longitudinal * np.exp(-np.float32(seq["te"]) * r2)
    truth = clean.copy()
    bias_amp = rng.uniform(*SCANNER["mr_bias"])
    clean *= np.exp(np.float32(bias_amp) * smooth_field(rng, pd.shape, 150.0, h))
    noise = rng.uniform(*SCANNER["mr_noise"])
    ref = float(np.percentile(clean[::2, ::2, ::2], 99))
    gain = rng.uniform(*SCANNER["mr_gain"])
    # stored as integers, as scanners do (the noise is many integer steps wide)
    image = np.rint(_rician(rng, clean, noise * ref) * np.float32(gain)).astype(np.int16)
    truth *= np.float32(gain)
    return image, truth, {**seq, "bias_log_amplitude": round(bias_amp, 4), "noise_fraction": round(noise, 4),
                   "gain": round(gain, 2)}


def _hu(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), -1024, 3071).astype(np.int16)


def _pet_counts(rng: np.random.Generator, activity: np.ndarray, per_unit: float) -> np.ndarray:
    """Poisson counts of the blurred activity, back in SUV, with a light reconstruction filter."""
    counts = rng.poisson(activity * np.float32(per_unit)).astype(np.float32) / np.float32(per_unit)
    return ndimage.gaussian_filter(counts, sigma=_sigma(0.8, activity.shape))


def _sigma(voxels: float, shape: Sequence[int]) -> tuple[float, ...]:
    """Gaussian sigma per axis, none across a single-slice axis."""
    return tuple(voxels if n > 1 else 0.0 for n in shape)


def simulate(spec: PhantomSpec, index: int) -> Subject:
    """Subject ``index`` of the phantom ``spec``: the same (seed, index) always gives the same subject.

    Each modality has its own random stream, so asking for fewer modalities does not change the
    images of those that are simulated.
    """
    if spec.anatomy not in _ANATOMY:
        raise ValueError(f"unknown anatomy {spec.anatomy!r}; choose one of {', '.join(ANATOMIES)}")
    rng = np.random.default_rng([spec.seed, index, 0])
    tissue = {name: _draw(rng, table) for name, table in TISSUES.items()}
    canvas, anatomy = _ANATOMY[spec.anatomy](spec, rng)
    fr, h, shape = canvas.fractions, canvas.h, canvas.shape
    scanner: dict[str, Any] = {}
    images: dict[str, np.ndarray] = {}
    truth: dict[str, np.ndarray] = {}
    wanted = set(spec.modalities)

    def stream(name: str) -> np.random.Generator:
        return np.random.default_rng([spec.seed, index, 1 + MODALITIES.index(name)])

    if wanted & set(SEQUENCES):
        pd = _mix(fr, tissue, "pd")
        safe = np.maximum(pd, 1e-6)
        rates = {k: {"r1": 1.0 / p["t1"], "r1ce": 1.0 / p["t1"] + GD_RELAXIVITY * p["gd"],
                     "r2": 1.0 / p["t2"], "pd": p["pd"]} for k, p in tissue.items()}
        r2 = _mix(fr, rates, "r2", "pd") / safe  # proton-weighted rates, shared by every sequence
        r1 = {key: _mix(fr, rates, key, "pd") / safe
              for key in {"r1ce" if m == "t1ce" else "r1" for m in SEQUENCES if m in wanted}}
        for name in [m for m in SEQUENCES if m in wanted]:
            r1_name = r1["r1ce" if name == "t1ce" else "r1"]
            images[name], truth[name], scanner[name] = _mr(stream(name), name, pd, r1_name, r2, SCANNER, h)
    if wanted & {"ct", "ldct", "cbct"}:
        texture = smooth_field(np.random.default_rng([spec.seed, index, 100]), shape, 6.0, h)
        clean = _mix(fr, tissue, "hu") + texture * (150.0 * fr.get("bone", 0.0) + 5.0)
        base = stream("ct")  # ct and ldct share the scanner: same sigma and PSF, their own noise
        sigma, psf = base.uniform(*SCANNER["ct_noise"]), base.uniform(*SCANNER["ct_psf"])
        blurred = ndimage.gaussian_filter(clean, sigma=_sigma(psf, shape))
        for name, dose in (("ct", 1.0), ("ldct", SCANNER["ldct_dose"][0])):
            if name in wanted:
                noise = sigma / np.sqrt(dose)
                r = base if name == "ct" else stream(name)
                images[name] = _hu(blurred + r.standard_normal(shape, dtype=np.float32) * np.float32(noise))
                truth[name] = np.clip(blurred, -1024, 3071).astype(np.float32)
                scanner[name] = {"noise_hu": round(noise, 3), "psf_voxels": round(psf, 3), "dose": dose}
        if "cbct" in wanted:
            r = stream("cbct")
            p = {k: float(r.uniform(*SCANNER[f"cbct_{k}"]))
                 for k in ("noise", "cupping", "shading", "gain", "offset", "fov")}
            blurred = ndimage.gaussian_filter(clean, sigma=_sigma(1.0, shape))
            ii, jj = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape[:2]], indexing="ij")
            radial = (ii ** 2 + jj ** 2)[:, :, None]
            body = 1.0 - fr["background"]
            clean_cbct = (p["gain"] * blurred + p["offset"]
                          - p["cupping"] * (1 - np.clip(radial, 0, 1)) * body
                          + p["shading"] * smooth_field(r, shape, 120.0, h) * body)
            img = clean_cbct + r.standard_normal(shape, dtype=np.float32) * np.float32(p["noise"])
            outside = np.broadcast_to(radial > p["fov"] ** 2, shape).copy()
            if shape[2] > 4:
                cut = max(1, int(round(0.06 * shape[2])))
                outside[:, :, :cut] = True
                outside[:, :, -cut:] = True
            img[outside] = -1000.0
            clean_cbct[outside] = -1000.0
            images["cbct"] = _hu(img)
            truth["cbct"] = np.clip(clean_cbct, -1024, 3071).astype(np.float32)
            scanner["cbct"] = {k: round(v, 4) for k, v in p.items()}
    if wanted & {"pet", "ldpet"}:
        r = stream("pet")
        suv = r.uniform(*SCANNER["pet_suv"])
        fwhm = r.uniform(*SCANNER["pet_fwhm"])
        activity = _mix(fr, tissue, "fdg") * np.float32(suv)
        activity *= 1.0 + 0.1 * smooth_field(r, shape, 20.0, h)
        activity = np.maximum(ndimage.gaussian_filter(activity, sigma=_sigma(fwhm / 2.355 / h, shape)), 0)
        body = fr["background"] < 0.5
        per_unit = SCANNER["pet_counts"][0] / max(float(activity[body].mean()) if body.any() else 1.0, 1e-6)
        for name, dose in (("pet", 1.0), ("ldpet", SCANNER["ldpet_dose"][0])):
            if name in wanted:
                draw = stream(name) if name == "ldpet" else r
                images[name] = _pet_counts(draw, activity, per_unit * dose)
                truth[name] = ndimage.gaussian_filter(activity, sigma=_sigma(0.8, shape)).astype(np.float32)
                scanner[name] = {"suv_wm": round(suv, 4), "psf_fwhm_mm": round(fwhm, 3), "dose": dose,
                                 "counts_per_suv": round(per_unit * dose, 4)}
    mask = (fr["background"] < 0.5).astype(np.uint8)
    params = {"tissues": {k: {p: round(v, 4) for p, v in t.items()} for k, t in tissue.items() if k in fr},
              "anatomy": anatomy, "scanner": scanner}
    return Subject(images=images, labels=canvas.labels(), mask=mask, params=params, truth=truth)


# ---------------------------------------------------------------------------------------------- writing
DESCRIPTIONS = {
    "t1": "T1-weighted spin echo", "t2": "T2-weighted spin echo", "pd": "proton-density-weighted spin echo",
    "flair": "FLAIR (inversion recovery, CSF nulled)", "t1ce": "T1-weighted spin echo after gadolinium",
    "ct": "CT in HU", "ldct": "low-dose CT (same subject, more noise)",
    "cbct": "cone-beam CT: more noise, shading, cupping, limited field of view",
    "pet": "FDG-like PET (point-spread blur, Poisson counts)", "ldpet": "low-count PET (same subject)",
}


TRUTH_FOLDER = "truth"  # <subject>/truth/<modality>.nii.gz: the noise- and bias-free signal


def misalignment(spec: PhantomSpec, index: int, modality: str) -> np.ndarray:
    """4x4 RAS rigid motion of ``modality`` for subject ``index``: it maps a point of the reference
    (first) modality's anatomy, in world mm, to where that anatomy lies in this modality's image.

    Translation of a random direction and 0.5–1 × ``misalign[0]`` mm, rotation about a random axis
    through the grid centre by 0.5–1 × ``misalign[1]`` degrees (in-plane only for a 2D phantom).
    """
    from scipy.spatial.transform import Rotation

    mm, deg = spec.misalign
    rng = np.random.default_rng([spec.seed, index, 200 + MODALITIES.index(modality)])
    flat = spec.size[2] == 1
    shift, axis = rng.standard_normal(3), rng.standard_normal(3)
    if flat:
        shift[2], axis[:] = 0.0, (0.0, 0.0, 1.0)
    shift *= mm * rng.uniform(0.5, 1.0) / max(np.linalg.norm(shift), 1e-9)
    angle = np.deg2rad(deg * rng.uniform(0.5, 1.0)) * rng.choice([-1.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()
    matrix[:3, 3] = shift
    return matrix


def _moved(array: np.ndarray, affine: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """``array`` with its anatomy moved by ``motion`` on the same grid (linear; integers stay integers)."""
    from medtrans.io import Volume
    from medtrans.io.geometry import resample_like

    vol = Volume(array, affine)
    out = np.asarray(resample_like(vol, vol, order=1, transform=np.linalg.inv(motion)).array)
    return np.rint(out).astype(array.dtype) if np.issubdtype(array.dtype, np.integer) else out


def subject_id(index: int, total: int) -> str:
    return f"sub-{index:0{max(3, len(str(total - 1)))}d}"


def _write_subject(task: tuple[PhantomSpec, int, int, str]) -> tuple[str, dict[str, Any]]:
    """Simulate and write one subject (runs in a worker process)."""
    from medtrans.io import Volume, save

    spec, index, total, out = task
    sid = subject_id(index, total)
    subject = simulate(spec, index)
    folder = Path(out) / sid
    affine = spec.affine
    moved = {}
    if any(spec.misalign):
        moved = {m: misalignment(spec, index, m) for m in spec.modalities[1:]}
        subject.params["misalignment"] = {
            m: {"matrix": mat.round(6).tolist(), "translation_mm": mat[:3, 3].round(4).tolist(),
                "rotation_deg": round(float(np.rad2deg(np.arccos(np.clip((np.trace(mat[:3, :3]) - 1) / 2,
                                                                           -1, 1)))), 4)}
            for m, mat in moved.items()}
    for name, array in subject.images.items():
        meta = {"modality": name, "units": UNITS.get(name, "a.u."), "source": "medtrans phantom"}
        clean = subject.truth[name]
        if name in moved:
            array, clean = _moved(array, affine, moved[name]), _moved(clean, affine, moved[name])
        save(Volume(array, affine, meta), folder / f"{name}.nii.gz")
        save(Volume(clean, affine, {**meta, "truth": "noise-free"}), folder / TRUTH_FOLDER / f"{name}.nii.gz")
    save(Volume(subject.mask, affine, {"modality": "mask", "units": "label"}), folder / "mask.nii.gz")
    save(Volume(subject.labels, affine, {"modality": "labels", "units": "label"}), folder / "labels.nii.gz")
    return sid, subject.params


def dataset_description(spec: PhantomSpec, dims: int, subjects: dict[str, Any]) -> dict[str, Any]:
    """``dataset.json``: what each file holds and every simulation parameter, global and per subject."""
    return {
        "name": f"medtrans phantom ({spec.anatomy})",
        "generator": "medtrans phantom",
        "layout": "generic",
        "anatomy": spec.anatomy,
        "dims": dims,
        "size": list(spec.size),
        "spacing_mm": [round(spec.spacing, 6)] * 3,
        "seed": spec.seed,
        "modalities": {m: {"units": UNITS.get(m, "a.u."), "description": DESCRIPTIONS[m]}
                       for m in spec.modalities},
        "mask": "mask.nii.gz: 1 inside the body (head or pelvis), 0 outside",
        "truth": {"folder": TRUTH_FOLDER, "files": f"<subject>/{TRUTH_FOLDER}/<modality>.nii.gz",
                  "description": "each modality's signal without noise (MR also without its bias field), "
                                 "same grid, affine and units as the acquired image"},
        "misalignment": ({"reference": spec.modalities[0], "max_mm": spec.misalign[0],
                          "max_deg": spec.misalign[1],
                          "matrix": "4x4 RAS: a point of the reference modality's anatomy (world mm) to "
                                    "where it lies in this modality's image; mask and labels stay with "
                                    "the reference"} if any(spec.misalign) else None),
        "labels": {str(i): name for i, name in enumerate(LABELS)},
        "tissue_ranges": {k: {p: list(v) for p, v in t.items()} for k, t in TISSUES.items()},
        "sequences_ms": SEQUENCES,
        "gadolinium_r1_per_ms_per_mM": GD_RELAXIVITY,
        "scanner_ranges": {k: list(v) for k, v in SCANNER.items()},
        "field_of_view_mm": [round(n * spec.spacing, 6) for n in spec.size] if spec.voxel_mm
        else list(FOV[spec.anatomy]),
        "subjects": subjects,
    }


def write_phantom(out: Path, spec: PhantomSpec, subjects: int, dims: int = 3, workers: int = 1,
                  progress: Any = None) -> Path:
    """Write ``subjects`` simulated subjects in the generic layout under ``out``; returns ``out``.

    ``workers`` > 1 simulates subjects in parallel processes; files are identical either way.
    """
    from concurrent.futures import ProcessPoolExecutor
    from contextlib import ExitStack

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(spec, i, subjects, str(out)) for i in range(subjects)]
    params: dict[str, Any] = {}
    with ExitStack() as stack:
        mapper = map
        if workers > 1 and subjects > 1:
            mapper = stack.enter_context(ProcessPoolExecutor(max_workers=min(workers, subjects))).map
        for sid, p in mapper(_write_subject, tasks):
            params[sid] = p
            if progress:
                progress(sid)
    write_json(out / "dataset.json", dataset_description(spec, dims, params))
    return out
