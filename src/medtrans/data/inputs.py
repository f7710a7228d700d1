"""Finding a user's input images on disk: what ``predict`` translates and what ``evaluate`` pairs.

- ``resolve_inputs`` / ``collect_inputs``: which files of an image file, subject folder, DICOM series
  folder or dataset root feed a model with given source modalities;
- ``image_folder`` / ``match_subjects``: subject id -> image for a folder of predictions or references,
  and the pairing of predictions with references, masks, a second model and noise-free truths.

One place, so that ``predict``, ``evaluate`` and ``report`` find the same files the same way; image file
endings come from ``medtrans.io.IMAGE_SUFFIXES``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtrans.data.modalities import canonical, is_known
from medtrans.errors import MedtransError
from medtrans.io.suffixes import IMAGE_SUFFIXES, split_image_name

#: sub-folder of a subject holding the noise- and bias-free images of a simulation (the phantom)
TRUTH_FOLDER = "truth"


def image_stem(name: str) -> str | None:
    """The file name without its image extension; None when it is not an image file name."""
    parts = split_image_name(name)
    return parts[0] if parts else None


def is_dicom(path: Path) -> bool:
    from medtrans.io.dicom import is_dicom_file  # lazy: finding files stays free of pydicom

    return path.suffix.lower() == ".dcm" or is_dicom_file(path)


def has_dicom(folder: Path) -> bool:
    """Whether ``folder`` directly holds DICOM files (a series folder)."""
    return any(p.is_file() and is_dicom(p) for p in folder.iterdir())


def find_modality(folder: Path, modality: str) -> Path | None:
    """``<modality>.<ext>`` or a ``<modality>/`` DICOM folder, any spelling of the name (T1w, t1n …)."""
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and canonical(entry.name) == canonical(modality):
            return entry
        stem = image_stem(entry.name)
        if entry.is_file() and stem is not None and canonical(stem) == canonical(modality):
            return entry
    return None


def resolve_inputs(path: Path, modalities: Sequence[str],
                   optional: bool = False) -> tuple[str, dict[str, Path], bool]:
    """Which files of ``path`` feed the model: (subject id, modality → path, input is DICOM).

    ``path`` is an image file (single-source models), a DICOM series folder (single-source), or a
    subject folder holding ``<modality>.<ext>`` files or ``<modality>/`` DICOM folders. ``optional``
    (runs trained with source dropout): a subject folder holding some of the modalities is enough.
    """
    path = Path(path)
    if not path.exists():
        raise MedtransError(path, "input does not exist", "give an image file, a subject folder or a "
                            "DICOM series folder")
    single = modalities[0] if len(modalities) == 1 else None
    if path.is_file():
        stem = image_stem(path.name)
        if stem is None:
            raise MedtransError(path, "not an image file", f"give a file ending in one of "
                                f"{', '.join(IMAGE_SUFFIXES)}, a subject folder or a DICOM folder")
        if single is None:
            raise MedtransError(path, f"the model needs {', '.join(modalities)} but got one file",
                                f"give a subject folder with {', '.join(m + '.nii.gz' for m in modalities)}")
        if is_known(stem):  # <subject>/<modality>.nii.gz: the folder names the subject
            if canonical(stem) != canonical(single):
                raise MedtransError(path, f"the file name says {canonical(stem)} but the model translates "
                                    f"{single}", f"give the {single} image")
            stem = path.parent.name
        return stem, {single: path}, is_dicom(path)
    found = {m: p for m in modalities if (p := find_modality(path, m)) is not None}
    if len(found) == len(modalities) or (optional and found):
        return path.name, found, all(p.is_dir() or p.suffix.lower() == ".dcm" for p in found.values())
    if has_dicom(path):
        if single is None:
            raise MedtransError(path, f"a single DICOM series but the model needs {', '.join(modalities)}",
                                f"give a subject folder with one sub-folder per modality: "
                                f"{', '.join(m + '/' for m in modalities)}")
        return path.name, {single: path}, True
    missing = [m for m in modalities if m not in found]
    raise MedtransError(path, f"missing modality {', '.join(missing)} (the model needs "
                        f"{', '.join(modalities)})", f"add {', '.join(m + '.nii.gz' for m in missing)} "
                        "to the subject folder")


def collect_inputs(paths: Iterable[str | os.PathLike], modalities: Sequence[str],
                   optional: bool = False) -> list[tuple[str, dict[str, Path], bool]]:
    """:func:`resolve_inputs` for every path; a dataset root (a folder of subject folders) stands for
    all its subjects that hold every needed modality (any of them when ``optional``)."""
    found = []
    need = any if optional else all
    for path in map(Path, paths):
        try:
            found.append(resolve_inputs(path, modalities, optional))
        except MedtransError:
            folders = sorted(d for d in path.iterdir() if d.is_dir()) if path.is_dir() else []
            subjects = [d for d in folders if need(find_modality(d, m) is not None for m in modalities)]
            if not subjects:
                raise
            found.extend(resolve_inputs(d, modalities, optional) for d in subjects)
    return found


def refuse_synthetic(volume: Any, path: Path, role: str, allow: bool) -> None:
    """A synthetic image (SYNTHETIC marking) may not stand for an acquisition unless the user says so."""
    marking = volume.meta.get("synthetic")
    if marking and not allow:
        raise MedtransError(path, f"the {role} is marked synthetic ({marking[:80]}), not an acquisition",
                            f"give the acquired {role}, or pass --allow-synthetic to use it anyway")


def _input_folders(paths: Iterable[Path]) -> dict[Path, bool]:
    """Folder -> whether outputs inside it are refused too: every folder given or found, and the
    subject folder of a ``<modality>.<ext>`` file (True); the folder that merely holds another image
    file refuses only being the output folder itself (False)."""
    found: dict[Path, bool] = {}
    for p in paths:
        stem = None if p.is_dir() else image_stem(p.name)
        folder = (p if p.is_dir() else p.parent).resolve()
        found[folder] = found.get(folder, False) or p.is_dir() or (stem is not None and is_known(stem))
    return found


def check_output_folder(out_dir: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output path that is a file, or a folder that is or lies inside an input folder (the
    synthetic series would land beside the acquisition), with a suggested path."""
    if out_dir.exists() and not out_dir.is_dir():
        suggestion = out_dir.with_name(out_dir.name + "-synthetic")
        raise MedtransError(out_dir, "-o is an existing file, not a folder",
                            f"give a folder for the outputs, e.g. -o {suggestion}")
    out = out_dir.resolve()
    for folder, inside in sorted(_input_folders(inputs).items()):
        if out == folder or (inside and folder in out.parents):
            suggestion = folder.parent / f"{folder.name}-synthetic"
            raise MedtransError(out_dir, f"the output folder is or lies inside the input folder {folder}",
                                f"write the synthetic images outside the inputs, e.g. -o {suggestion}")


def check_sources(volumes: dict[str, Any], paths: dict[str, Path], allow_synthetic: bool) -> None:
    """One subject's sources are fit to translate: not marked synthetic (unless allowed) and, with
    several modalities, overlapping the first one's field of view."""
    for modality, volume in volumes.items():
        refuse_synthetic(volume, paths[modality], f"{modality} source", allow_synthetic)
    first_name, *others = list(volumes)
    lo, hi = _extent(volumes[first_name])
    for name in others:
        olo, ohi = _extent(volumes[name])
        if np.any(olo > hi) or np.any(ohi < lo):
            raise MedtransError(paths[name], f"does not overlap the {first_name} image "
                                f"{paths[first_name]} in patient space",
                                f"give the {name} image of the same subject and session")


def _extent(volume: Any) -> tuple[np.ndarray, np.ndarray]:
    """World (RAS mm) bounding box of a volume's voxel centres."""
    shape = np.asarray(volume.array.shape[:3]) - 1
    corners = np.array([[i, j, k, 1] for i in (0, shape[0]) for j in (0, shape[1]) for k in (0, shape[2])])
    world = corners @ np.asarray(volume.affine).T
    return world[:, :3].min(axis=0), world[:, :3].max(axis=0)


# ----------------------------------------------------------------------------------- evaluation


@dataclass
class SubjectPair:
    """One subject's files: prediction, reference, optional mask, second prediction and noise-free truth."""

    id: str
    pred: Path
    ref: Path
    mask: Path | None = None
    other: Path | None = None
    truth: Path | None = None
    std: Path | None = None  # the prediction's uncertainty map, ``<name>_<target>_std``


def split_uncertainty(found: dict[str, Path]) -> tuple[dict[str, Path], dict[str, Path]]:
    """(predictions, prediction name → its std map): ``<name>_<target>_std`` beside ``<name>`` is the
    uncertainty map ``medtrans predict`` writes, not a prediction of its own."""
    stds = {}
    for stem in list(found):
        parts = stem.rsplit("_", 2)
        if len(parts) == 3 and parts[2] == "std" and parts[0] in found:
            stds[parts[0]] = found.pop(stem)
    return found, stds


def image_folder(folder: Path) -> dict[str, Path]:
    """id -> image for a folder of ``<id>.<ext>`` files, ``<id>/`` folders holding one image, or
    ``<id>/`` DICOM series folders."""
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and (stem := image_stem(entry.name)) is not None:
            found[stem] = entry
        elif entry.is_dir():
            images = [f for f in sorted(entry.iterdir()) if f.is_file() and image_stem(f.name) is not None]
            if len(images) == 1:
                found[entry.name] = images[0]
            elif not images and has_dicom(entry):
                found[entry.name] = entry
    return found


def match_id(name: str, ids: list[str]) -> str | None:
    """The reference id for a prediction name: exact, else the longest id it starts with (``1BA001_sct``)."""
    if name in ids:
        return name
    hits = [i for i in ids if name.startswith(i) and name[len(i)] in "_-."]
    return max(hits, key=len) if hits else None


def _references(ref: Path, ref_modality: str | None, pred_modality: str | None):
    """(id -> reference image, id -> dataset mask, description, modality): a flat folder or a dataset."""
    from medtrans.data.layouts import open_dataset

    try:
        dataset = open_dataset(ref)
    except MedtransError:
        flat = image_folder(ref)
        if not flat:
            raise MedtransError(
                ref,
                "holds no reference images (no <subject>.nii.gz/.mha files and no known dataset layout)",
                "give a folder of <subject> images or a dataset root",
            ) from None
        return flat, {}, "folder", canonical(ref_modality) if ref_modality else pred_modality
    modalities = dataset.modalities
    if ref_modality is not None:
        chosen = canonical(ref_modality)
    elif pred_modality is not None and pred_modality in modalities:
        chosen = pred_modality
    elif len(modalities) == 1:
        chosen = modalities[0]
    else:
        raise MedtransError(
            ref,
            f"the dataset has several modalities ({', '.join(modalities)}) and the "
            "predictions do not say which they synthesise",
            "pass --ref-modality, e.g. ct",
        )
    images = {s.id: s.images[chosen] for s in dataset.subjects if chosen in s.images}
    if not images:
        raise MedtransError(
            ref,
            f"no subject has modality {chosen!r} (found {', '.join(modalities)})",
            "pass --ref-modality with one of these",
        )
    masks = {s.id: s.mask for s in dataset.subjects if s.mask is not None}
    return images, masks, f"dataset layout {dataset.layout}, modality {chosen}", chosen


def truth_image(reference: Path, root: Path, modality: str | None) -> Path | None:
    """``<subject>/truth/<modality>.<ext>`` beside a reference that lies in a subject folder, if any."""
    subject = reference.parent
    if modality is None or subject.resolve() == root.resolve():
        return None
    folder = subject / TRUTH_FOLDER
    if not folder.is_dir():
        return None
    return next((f for f in sorted(folder.iterdir()) if f.is_file() and (stem := image_stem(f.name))
                 and is_known(stem) and canonical(stem) == canonical(modality)), None)


def mask_folder(folder: Path, ids: list[str]) -> dict[str, Path]:
    """id -> mask from ``<id>.<ext>``, ``<id>_mask.<ext>`` (any suffix) or ``<id>/mask.<ext>``."""
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and (stem := image_stem(entry.name)) is not None:
            sid = match_id(stem, ids)
        elif entry.is_dir() and entry.name in ids:
            names = ("mask", entry.name)
            files = [f for f in sorted(entry.iterdir()) if (image_stem(f.name) or "").lower() in names]
            sid, entry = (entry.name, files[0]) if files else (None, entry)
        else:
            sid = None
        if sid is not None and sid not in found:
            found[sid] = entry
    return found


def target_modality(volume) -> str | None:
    """What a prediction synthesises: a ``target=<modality>`` in its SYNTHETIC marking, else its modality."""
    from medtrans.io.api import marked_target

    return marked_target(volume) or volume.modality


def match_subjects(
    pred: str | os.PathLike,
    ref: str | os.PathLike,
    *,
    mask: str | os.PathLike | None = None,
    compare: str | os.PathLike | None = None,
    ref_modality: str | None = None,
) -> tuple[list[SubjectPair], dict]:
    """Pair every prediction with its reference (and mask, second prediction, truth) by subject id."""
    from medtrans.io import load

    pred, ref = Path(pred), Path(ref)
    for path, role in ((pred, "predictions"), (ref, "references"), (mask, "masks"), (compare, "compare")):
        if path is not None and not Path(path).is_dir():
            raise MedtransError(path, f"is not a folder ({role})", f"give the folder that holds the {role}")
    preds, stds = split_uncertainty(image_folder(pred))
    if not preds:
        raise MedtransError(
            pred, "holds no prediction images", "give a folder of <subject>.nii.gz or .mha files"
        )
    first_modality = target_modality(load(next(iter(preds.values()))))
    refs, dataset_masks, ref_kind, modality = _references(ref, ref_modality, first_modality)
    ref_ids = sorted(refs)
    pairs, missing = [], []
    for name, path in preds.items():
        sid = match_id(name, ref_ids)
        if sid is None:
            missing.append(name)
        else:
            pairs.append(SubjectPair(sid, path, refs[sid], dataset_masks.get(sid),
                                     truth=truth_image(refs[sid], ref, modality), std=stds.get(name)))
    if missing:
        raise MedtransError(
            ref,
            f"no reference for prediction(s) {', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}",
            "name predictions <subject>.<ext> with the reference's subject ids",
        )
    ids = [p.id for p in pairs]
    if len(set(ids)) != len(ids):
        raise MedtransError(pred, "two predictions match the same subject", "keep one prediction per subject")
    if mask is not None:
        masks = mask_folder(Path(mask), ids)
        absent = [i for i in ids if i not in masks]
        if absent:
            raise MedtransError(
                mask,
                f"no mask for subject(s) {', '.join(absent[:10])}",
                "add <subject>.nii.gz masks, or leave out --mask",
            )
        for p in pairs:
            p.mask = masks[p.id]
    if compare is not None:
        others, _ = split_uncertainty(image_folder(Path(compare)))
        other_ids = {(match_id(n, ids) or n): path for n, path in others.items()}
        absent = [i for i in ids if i not in other_ids]
        if absent:
            raise MedtransError(
                compare,
                f"no comparison prediction for subject(s) {', '.join(absent[:10])}",
                "the paired test needs both models on the same subjects",
            )
        for p in pairs:
            p.other = other_ids[p.id]
    counts = {
        "subjects": len(pairs),
        "predictions": len(preds),
        "references": len(refs),
        "references_without_prediction": len(set(refs) - set(ids)),
        "masked_subjects": sum(p.mask is not None for p in pairs),
        "subjects_with_truth": sum(p.truth is not None for p in pairs),
        "uncertainty_maps": sum(p.std is not None for p in pairs),
    }
    return pairs, {"reference_source": ref_kind, **counts}
