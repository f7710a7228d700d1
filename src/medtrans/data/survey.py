"""What ``medtrans info DATASET_ROOT`` prints: layout, subjects, modalities, geometry, every problem."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np

from medtrans.data.layouts import Dataset, open_dataset


def header_geometry(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, affine) from the file header only, without reading the voxels.

    NIfTI through nibabel; MHA/MHD/NRRD through SimpleITK's image information (LPS turned into RAS).
    """
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        img = nib.load(str(path))
        return tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, dtype=np.float64)
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = tuple(int(n) for n in reader.GetSize())[:3]
    spacing = np.asarray(reader.GetSpacing()[:3], dtype=np.float64)
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(reader.GetOrigin()[:3], dtype=np.float64)
    flip = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = flip @ direction * spacing
    affine[:3, 3] = flip @ origin
    return size, affine


def _spacing(affine: np.ndarray) -> tuple[float, ...]:
    return tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))


def _fmt(values: tuple[float, ...], digits: int = 2) -> str:
    return "×".join(f"{v:.{digits}f}".rstrip("0").rstrip(".") for v in values)


def geometry_problems(dataset: Dataset) -> tuple[dict[str, list[tuple]], list[str]]:
    """Per-modality (shape, spacing) lists and the problems found in headers.

    A subject whose modalities (or mask) are not on one grid (shape and affine within 0.01 mm) is a
    problem worth knowing: the plan resamples them onto the target's grid.
    """
    per_modality: dict[str, list[tuple]] = defaultdict(list)
    problems: list[str] = []
    for s in dataset.subjects:
        grids = {}
        files = dict(s.images)
        if s.mask is not None:
            files["mask"] = s.mask
        for name, path in files.items():
            try:
                shape, affine = header_geometry(path)
            except Exception as err:  # any unreadable header is reported, not raised
                problems.append(f"{s.id}: cannot read {path.name} ({type(err).__name__}: {err})")
                continue
            grids[name] = (shape, affine)
            if name != "mask":
                per_modality[name].append((shape, _spacing(affine)))
        if grids:
            ref_name, (ref_shape, ref_aff) = next(iter(grids.items()))
            off = [n for n, (sh, aff) in grids.items()
                   if sh != ref_shape or not np.allclose(aff, ref_aff, atol=1e-2)]
            if off:
                desc = ", ".join(f"{n} {'x'.join(map(str, grids[n][0]))}" for n in [ref_name, *off])
                problems.append(f"{s.id}: modalities on different grids ({desc})")
    return per_modality, problems


def dataset_report(root: Path, layout: str | None = None) -> str:
    """The text ``medtrans info DATASET_ROOT`` prints."""
    dataset = open_dataset(root, layout=layout)
    per_modality, header_problems = geometry_problems(dataset)
    problems = dataset.problems + header_problems
    counts = Counter(m for s in dataset.subjects for m in s.images)
    n_mask = sum(s.mask is not None for s in dataset.subjects)
    n_labels = sum(s.labels is not None for s in dataset.subjects)
    ids = dataset.ids
    lines = [
        f"dataset   {Path(root)}",
        f"layout    {dataset.layout}",
        f"subjects  {len(ids)} ({', '.join(ids[:5])}{', …' if len(ids) > 5 else ''})",
        f"masks     {n_mask}/{len(ids)}   labels {n_labels}/{len(ids)}",
        "modalities:",
    ]
    for m in sorted(counts):
        geo = per_modality.get(m, [])
        shapes = Counter("x".join(map(str, g[0])) for g in geo)
        spacings = np.array([g[1] for g in geo]) if geo else np.zeros((0, 3))
        shape_txt = ", ".join(f"{k} ({v})" for k, v in shapes.most_common(3))
        if len(shapes) > 3:
            shape_txt += f", … {len(shapes)} shapes"
        low = _fmt(tuple(spacings.min(0))) if len(spacings) else "?"
        high = _fmt(tuple(spacings.max(0))) if len(spacings) else "?"
        sp_txt = f"{low} mm" if low == high else f"{low} – {high} mm"
        lines.append(f"  {m:<6} {counts[m]:>4} subjects   shape {shape_txt or '?'}   spacing {sp_txt}")
    lines.append(f"problems  {len(problems)}")
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)
