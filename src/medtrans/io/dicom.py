"""DICOM through pydicom: a folder holding one series, or one (possibly enhanced multi-frame) file.

Geometry: DICOM patient coordinates are LPS; medtrans affines are RAS (x and y negated). The voxel
array is indexed (i, j, k) = (column, row, slice), as nibabel/dcm2niix do, so a series and its NIfTI
conversion have the same affine. Slices are sorted by position along the slice normal, never by
InstanceNumber or file name.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from medtrans.errors import MedtransError
from medtrans.io._common import LPS, base_meta, modality_from_text
from medtrans.io.volume import SyntheticInfo, Volume

_MR_CONTRASTS = {"t1", "t2", "pd", "flair", "t1ce"}
_MODALITY_NAMES = {"CT": "ct", "MR": "mr", "PT": "pet", "NM": "nm", "US": "us"}
_SOP_CLASSES = {  # modality written -> (DICOM Modality, SOP Class UID)
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "OT": "1.2.840.10008.5.1.4.1.1.7",  # secondary capture
}
_MODALITY_TAG = {"ct": "CT", "cbct": "CT", "pet": "PT", "mr": "MR", "t1": "MR", "t2": "MR", "pd": "MR",
                 "flair": "MR", "t1ce": "MR"}
# Patient and study modules copied from a reference into a derived series (same patient, same study,
# same frame of reference: the synthetic image lies in the reference's patient coordinates).
_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight",
    "PatientSize", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription", "FrameOfReferenceUID", "PositionReferenceIndicator",
    "PatientPosition", "SpecificCharacterSet",
)


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble, whatever their name."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _corrupt(path: Path, err: Exception) -> MedtransError:
    return MedtransError(
        path, f"DICOM file is truncated or corrupt ({type(err).__name__}: {err})",
        "re-export the series from the PACS/scanner; check it opens in a DICOM viewer",
    )


def _read(path: Path, pixels: bool) -> Dataset:
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=not pixels)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as err:
        raise _corrupt(path, err) from err


# ---------------------------------------------------------------------------------------- reading
@dataclass
class _Slice:
    """One 2D frame with its geometry (LPS) and the values after the modality LUT."""

    position: np.ndarray
    row_cos: np.ndarray
    col_cos: np.ndarray
    spacing: tuple[float, float]  # (between rows, between columns) = PixelSpacing
    thickness: float | None
    pixels: np.ndarray  # (rows, columns), physical values
    origin: str  # file (and frame) for messages
    number: int | None  # InstanceNumber of a single-frame file (the series' own slice order)


def _item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """A functional-group item for one frame: per-frame first, then shared (enhanced multi-frame)."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        items = seq[index].get(sequence) if seq and len(seq) > index else None
        if items:
            return items[0]
    return None


def _floats(value: Any, count: int, path: str, tag: str) -> np.ndarray:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.array([])
    if out.size != count:
        raise MedtransError(path, f"{tag} is missing or malformed ({value!r})",
                            "this file has no usable geometry; re-export it with image plane tags")
    return out


def _frame_offset(ds: Dataset, frame: int, count: int, path: Path) -> float:
    """Distance (mm, along the slice normal) of a legacy multi-frame file's frame from the first.

    RT dose grids give ``GridFrameOffsetVector``: offsets relative to ImagePositionPatient (first entry
    0) or, in its older form, absolute positions along the normal (first entry = the first frame's):
    either way the distance is the entry minus the first. Other files give ``SpacingBetweenSlices``.
    """
    if "GridFrameOffsetVector" in ds:
        offsets = _floats(ds.GridFrameOffsetVector, count, path.name, "GridFrameOffsetVector")
        return float(offsets[frame] - offsets[0])
    return float(ds.SpacingBetweenSlices) * frame


def _frames(ds: Dataset, path: Path) -> list[_Slice]:
    """All frames of one file, each with its own position, orientation, spacing and rescale."""
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise MedtransError(path, f"colour DICOM ({ds.get('PhotometricInterpretation')}) is not a scan",
                            "medtrans reads greyscale CT/MR/PET images only")
    try:
        data = ds.pixel_array
    except Exception as err:  # pydicom raises many types for bad pixel data; all mean "unreadable"
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and syntax.is_compressed:
            raise MedtransError(
                path, f"pixel data compressed as '{syntax.name}' cannot be decoded here ({err})",
                "install a decoder (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or "
                "python-gdcm), or decompress the files first with `gdcmconv --raw` or `dcmdjpeg`",
            ) from err
        raise _corrupt(path, err) from err
    count = int(ds.get("NumberOfFrames", 1) or 1)
    data = data.reshape(count, int(ds.Rows), int(ds.Columns))
    frames = []
    for f in range(count):
        where = f"{path.name} frame {f + 1}" if count > 1 else path.name
        plane = _item(ds, f, "PlanePositionSequence")
        orient = _item(ds, f, "PlaneOrientationSequence")
        measures = _item(ds, f, "PixelMeasuresSequence")
        rescale = _item(ds, f, "PixelValueTransformationSequence")
        if plane is not None:
            position = _floats(plane.get("ImagePositionPatient"), 3, where, "ImagePositionPatient")
        elif count > 1 and "ImagePositionPatient" in ds and (
                "SpacingBetweenSlices" in ds or "GridFrameOffsetVector" in ds):
            position = None  # legacy multi-frame: stacked from the first position below
        else:
            position = _floats(ds.get("ImagePositionPatient"), 3, where, "ImagePositionPatient")
        iop = _floats((orient or ds).get("ImageOrientationPatient"), 6, where, "ImageOrientationPatient")
        spacing = _floats((measures or ds).get("PixelSpacing"), 2, where, "PixelSpacing")
        thickness = (measures or ds).get("SliceThickness")
        if position is None:
            normal = np.cross(iop[:3], iop[3:])
            start = _floats(ds.ImagePositionPatient, 3, where, "ImagePositionPatient")
            position = start + normal * _frame_offset(ds, f, count, path)
        if "DoseGridScaling" in ds and "RescaleSlope" not in ds:  # RT dose: stored value x scaling = dose
            values = data[f] * float(ds.DoseGridScaling)
        elif rescale is not None and "RescaleSlope" in rescale:
            values = data[f] * float(rescale.RescaleSlope) + float(rescale.get("RescaleIntercept", 0.0))
        else:
            values = apply_modality_lut(data[f], ds)
        frames.append(_Slice(position, iop[:3], iop[3:], (float(spacing[0]), float(spacing[1])),
                             float(thickness) if thickness not in (None, "") else None,
                             np.asarray(values, dtype=np.float32), where,
                             int(ds.InstanceNumber) if count == 1 and ds.get("InstanceNumber") else None))
    return frames


def _check_gaps(positions: np.ndarray, frames: list[_Slice], source: Path) -> float:
    """Uniform slice spacing or a MedtransError naming the gap; returns the spacing."""
    steps = np.abs(np.diff(positions))
    if np.any(steps < 1e-4):
        at = int(np.argmin(steps))
        same = int(np.sum(np.isclose(positions, positions[at], atol=1e-4)))
        raise MedtransError(
            source,
            f"{same} images share the slice position {positions[at]:.3f} mm ({frames[at].origin}, "
            f"{frames[at + 1].origin}): the series is 4D (echoes, phases or time points) or holds duplicates",
            "export one echo/phase/time point as its own series, or remove the duplicate files",
        )
    step = float(np.median(steps))
    tolerance = max(0.01, 0.01 * step)
    uneven = np.flatnonzero(np.abs(steps - step) > tolerance)
    if uneven.size:
        at = int(uneven[0])
        missing = steps[at] / step - 1
        hint = f"about {missing:.0f} slice(s) missing" if missing > 0.5 else "uneven slice spacing"
        raise MedtransError(
            source,
            f"slice gap between {frames[at].origin} at {positions[at]:.3f} mm and {frames[at + 1].origin} at "
            f"{positions[at + 1]:.3f} mm along the normal is {steps[at]:.3f} mm, elsewhere {step:.3f} mm "
            f"({hint}; {uneven.size} uneven step(s) in all)",
            "re-export the complete series, or resample it to even spacing in a DICOM tool first",
        )
    return step


def _stack(frames: list[_Slice], source: Path) -> tuple[np.ndarray, np.ndarray]:
    """Sort frames along the slice normal and build (array (i, j, k), RAS affine).

    The slice axis points along the normal unless the files' InstanceNumbers run the other way
    (then it follows them), so a series written from a volume reads back with that volume's affine.
    """
    first = frames[0]
    for f in frames[1:]:
        if not (np.allclose(f.row_cos, first.row_cos, atol=1e-4) and np.allclose(f.col_cos, first.col_cos,
                                                                                  atol=1e-4)):
            raise MedtransError(source, f"{f.origin} is oriented differently from {first.origin}",
                                "the folder mixes orientations (e.g. a localizer); keep one stack per folder")
        if f.pixels.shape != first.pixels.shape or not np.allclose(f.spacing, first.spacing, atol=1e-4):
            raise MedtransError(source, f"{f.origin} differs in size or pixel spacing from {first.origin}",
                                "keep one stack per folder")
    normal = np.cross(first.row_cos, first.col_cos)
    order = np.argsort([float(f.position @ normal) for f in frames], kind="stable")
    frames = [frames[i] for i in order]
    numbers = [f.number for f in frames]
    if len(frames) > 1 and None not in numbers and np.all(np.diff(numbers) < 0):
        frames.reverse()  # the series numbers its slices against the normal: keep its direction
    positions = np.array([float(f.position @ normal) for f in frames])
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = first.row_cos * first.spacing[1]  # i: along a row = next column
    affine_lps[:3, 1] = first.col_cos * first.spacing[0]  # j: down a column = next row
    if len(frames) > 1:
        _check_gaps(positions, frames, source)
        affine_lps[:3, 2] = (frames[-1].position - frames[0].position) / (len(frames) - 1)
    else:
        affine_lps[:3, 2] = normal * (first.thickness or 1.0)
    affine_lps[:3, 3] = frames[0].position
    array = np.stack([f.pixels.T for f in frames], axis=-1)
    return array, LPS @ affine_lps


def _volume(frames: list[_Slice], files: list[Path], header: Dataset, source: Path,
            modality: str | None) -> Volume:
    tag = str(header.get("Modality", "")).upper()
    description = str(header.get("SeriesDescription", ""))
    # "AX T2 FLAIR" -> flair; plain "mr" when it names no contrast. A SYNTHETIC series names its source
    # there too, so its modality comes from the target= of its marking instead (io.api.load).
    if modality is None and tag == "MR" and not description.startswith("SYNTHETIC"):
        named = modality_from_text(description)
        modality = named if named in _MR_CONTRASTS else None
    meta = base_meta(source, "dicom", modality or _MODALITY_NAMES.get(tag) or None)
    array, affine = _stack(frames, source)
    meta["dicom_reference"] = [str(p) for p in files]
    meta["series_uid"] = str(header.get("SeriesInstanceUID", ""))
    meta["series_description"] = str(header.get("SeriesDescription", ""))
    meta["dicom_modality"] = tag
    if tag == "RTDOSE" and str(header.get("DoseUnits", "")).upper() == "GY":
        meta["units"] = "Gy"  # values were multiplied by DoseGridScaling
    if description.startswith("SYNTHETIC"):
        meta["synthetic"] = str(header.get("ImageComments", "") or description)
    return Volume(array, affine, meta)


def read_file(path: Path, modality: str | None = None) -> Volume:
    """One file: a single slice (k = 1) or every frame of a multi-frame file, in spatial order."""
    ds = _read(path, pixels=True)
    if "PixelData" not in ds:
        raise MedtransError(path, "DICOM file holds no image (no PixelData)",
                            "pass an image file or the folder of the series")
    return _volume(_frames(ds, path), [path], ds, path, modality)


def _series_table(series: dict[str, list[tuple[Path, Dataset]]]) -> str:
    rows = []
    for uid, items in series.items():
        ds = items[0][1]
        description, kind = ds.get("SeriesDescription", ""), ds.get("Modality", "?")
        rows.append(f"{uid} '{description}' ({kind}, {len(items)} files)")
    return "; ".join(rows)


def read_folder(folder: Path, modality: str | None = None, series_uid: str | None = None) -> Volume:
    """The one series in ``folder`` (searched recursively), or the one named by ``series_uid``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise MedtransError(folder, "folder is empty", "point to the folder that holds the DICOM files")
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path in files:
        if not is_dicom_file(path) and path.suffix.lower() != ".dcm":
            continue
        ds = _read(path, pixels=False)
        if "Rows" in ds and "SeriesInstanceUID" in ds:
            series[str(ds.SeriesInstanceUID)].append((path, ds))
    if not series:
        raise MedtransError(folder, f"no DICOM images among its {len(files)} file(s)",
                            "point to a folder of DICOM files (or pass an image file)")
    if series_uid is None and len(series) > 1:
        raise MedtransError(
            folder, f"folder holds {len(series)} DICOM series: {_series_table(series)}",
            "move each series into its own folder (medtrans info FOLDER --series UID shows one; from "
            "Python: load(FOLDER, series_uid=UID))",
        )
    if series_uid is not None and series_uid not in series:
        raise MedtransError(folder, f"no series with UID {series_uid}; found: {_series_table(series)}",
                            "pass one of the listed UIDs")
    chosen = series[series_uid] if series_uid else next(iter(series.values()))
    frames: list[_Slice] = []
    for path, _ in chosen:
        frames.extend(_frames(_read(path, pixels=True), path))
    return _volume(frames, [p for p, _ in chosen], chosen[0][1], folder, modality)


# ---------------------------------------------------------------------------------------- writing
def _ds(value: float) -> DSfloat:
    """A decimal string of at most 16 characters (the DICOM DS limit), as precise as that allows."""
    return DSfloat(float(value), auto_format=True)


def _quantise(array: np.ndarray, hu: bool) -> tuple[np.ndarray, float, float]:
    """int16 pixels and (slope, intercept) covering the value range.

    Integer-valued data (and CT in HU) that fits int16 is stored with slope 1, intercept 0: masks
    exactly, CT to within 0.5 HU. Anything else spreads its range over the whole int16 span.
    """
    lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    integer = np.array_equal(array, np.round(array))
    if (hu or integer) and lo >= -32768 and hi <= 32767:
        return np.round(array).astype(np.int16), 1.0, 0.0
    if hi == lo:
        return np.zeros(array.shape, np.int16), 1.0, float(_ds(lo))
    slope = float(_ds((hi - lo) / 65534.0 * (1 + 1e-9)))
    intercept = float(_ds((hi + lo) / 2.0))
    stored = np.clip(np.round((array.astype(np.float64) - intercept) / slope), -32768, 32767)
    return stored.astype(np.int16), slope, intercept


def is_medtrans_series(folder: Path) -> bool:
    """True when every file in ``folder`` is a derived DICOM image medtrans wrote (safe to replace)."""
    for path in folder.iterdir():
        if not (path.is_file() and is_dicom_file(path)):
            return False
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            return False
        if ds.get("Manufacturer") != "medtrans" or "DERIVED" not in list(ds.get("ImageType", [])):
            return False
    return True


def _reference_header(reference: Volume | Path | str | None) -> Dataset | None:
    """The first header of the reference series; None (a standalone series) for a non-DICOM Volume."""
    if reference is None:
        return None
    if isinstance(reference, Volume):
        files = reference.meta.get("dicom_reference")
        return _read(Path(files[0]), pixels=False) if files else None
    path = Path(reference)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_dicom_file(p))
        if not files:
            raise MedtransError(path, "reference folder holds no DICOM files",
                                "pass the source series' folder")
        path = files[0]
    return _read(path, pixels=False)


def reference_files(reference: Volume | Path | str | None) -> list[str]:
    """The files a derived series is made from (they must never be overwritten)."""
    if isinstance(reference, Volume):
        return list(reference.meta.get("dicom_reference", [])) + [str(reference.meta.get("source", ""))]
    return [str(reference)] if reference is not None else []


def _synthetic_marks(synthetic: SyntheticInfo | str, ref: Dataset | None) -> tuple[str, str]:
    """(SeriesDescription ≤ 64 chars, ImageComments) both beginning SYNTHETIC, naming model and source."""
    source_series = ""
    if ref is not None:
        source_series = f"{ref.get('SeriesDescription', '')} ({ref.get('SeriesInstanceUID', '')})".strip()
    if isinstance(synthetic, SyntheticInfo):
        named = ref.get("SeriesDescription", "") if ref is not None else synthetic.source
        what = f"{synthetic.target} " if synthetic.target else ""
        short = f"SYNTHETIC {what}{synthetic.model} from {named or synthetic.source}"
        comments = synthetic.description()
    else:
        short, comments = synthetic, synthetic
    if source_series:
        comments += f" source_series={source_series}"
    return short.strip()[:64], comments


def write_series(volume: Volume, folder: Path, reference: Volume | Path | str | None,
                 synthetic: SyntheticInfo | str | None) -> None:
    """A derived series (one file per slice) in ``folder``, geometry from ``volume.affine``."""
    ref = _reference_header(reference)
    affine_lps = LPS @ volume.affine
    col_i, col_j, col_k = affine_lps[:3, 0], affine_lps[:3, 1], affine_lps[:3, 2]
    di, dj = float(np.linalg.norm(col_i)), float(np.linalg.norm(col_j))
    if abs(float(col_i @ col_j)) > 1e-6 * di * dj:
        raise MedtransError(volume.meta.get("source"), "the first two voxel axes are not perpendicular",
                            "DICOM cannot store sheared slices; resample the volume onto an orthogonal grid")
    row_cos, col_cos = col_i / di, col_j / dj
    normal = np.cross(row_cos, col_cos)
    step = float(col_k @ normal)
    if abs(step) < 1e-6:
        raise MedtransError(volume.meta.get("source"), "the slice axis lies in the image plane",
                            "give a volume with a proper 3D affine")
    modality = _MODALITY_TAG.get(str(volume.modality).lower(), "OT")
    hu = modality == "CT"
    pixels, slope, intercept = _quantise(np.asarray(volume.array), hu)
    now = datetime.datetime.now()
    series_uid = generate_uid()
    common = Dataset()
    if ref is not None:
        for keyword in _COPIED:
            if keyword in ref:
                setattr(common, keyword, ref.data_element(keyword).value)
        series_number = int(ref.get("SeriesNumber", 0) or 0) + 1000
    else:
        common.PatientName, common.PatientID, common.PatientBirthDate, common.PatientSex = "", "", "", ""
        common.StudyInstanceUID, common.FrameOfReferenceUID = generate_uid(), generate_uid()
        common.StudyDate, common.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
        common.StudyID, common.AccessionNumber, common.ReferringPhysicianName = "", "", ""
        common.PositionReferenceIndicator = ""
        series_number = 1000
    common.Modality = modality
    common.SOPClassUID = _SOP_CLASSES.get(modality, _SOP_CLASSES["OT"])
    common.SeriesInstanceUID = series_uid
    common.SeriesNumber = series_number
    common.SeriesDate, common.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    common.ContentDate, common.ContentTime = common.SeriesDate, common.SeriesTime
    common.ImageType = ["DERIVED", "SECONDARY"]
    common.Manufacturer = "medtrans"
    common.SeriesDescription = f"medtrans derived {volume.modality or ''}".strip()
    if ref is not None and "SeriesInstanceUID" in ref:
        item = Dataset()
        item.SeriesInstanceUID = ref.SeriesInstanceUID
        common.ReferencedSeriesSequence = [item]
        common.DerivationDescription = f"derived by medtrans from series {ref.SeriesInstanceUID}"[:1024]
    if synthetic:
        common.SeriesDescription, common.ImageComments = _synthetic_marks(synthetic, ref)
        common.DerivationDescription = common.ImageComments[:1024]
        common.BurnedInAnnotation = "NO"
    common.ImageOrientationPatient = [_ds(v) for v in (*row_cos, *col_cos)]
    common.PixelSpacing = [_ds(dj), _ds(di)]
    common.SliceThickness = _ds(abs(step))
    common.SpacingBetweenSlices = _ds(abs(step))
    common.SamplesPerPixel, common.PhotometricInterpretation = 1, "MONOCHROME2"
    common.Rows, common.Columns = pixels.shape[1], pixels.shape[0]
    common.BitsAllocated, common.BitsStored, common.HighBit, common.PixelRepresentation = 16, 16, 15, 1
    common.RescaleSlope, common.RescaleIntercept = _ds(slope), _ds(intercept)
    common.RescaleType = "HU" if hu else "US"
    folder.mkdir()
    for k in range(pixels.shape[2]):
        ds = Dataset()
        ds.update(common)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = common.SOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.InstanceNumber = k + 1
        position = affine_lps[:3, :3] @ np.array([0.0, 0.0, k]) + affine_lps[:3, 3]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(float(position @ normal))
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()
        ds.save_as(folder / f"IM{k + 1:05d}.dcm", enforce_file_format=True)
