"""Dataset layouts: find subjects and their modality files in a folder, whatever the folder's convention.

A layout knows how to recognise its folders (``detect``) and how to list subjects (``scan``). Auto-
detection tries the most specific layouts first (nnU-Net, BraTS, SynthRAD, IXI) and the generic
``<subject>/<modality>.nii.gz`` last; when none fits, the error says what each one expects.
Modality names are mapped to medtrans names (BraTS 2023 t1n → t1, t1c → t1ce, t2w → t2, t2f → flair).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path

from medtrans.data.modalities import canonical, is_known
from medtrans.errors import MedtransError
from medtrans.io.suffixes import split_image_name
from medtrans.registry import LAYOUTS

MASK_NAMES = {"mask", "brainmask", "body_mask", "bodymask"}
LABEL_NAMES = {"labels", "label", "seg", "segmentation"}


@dataclass
class SubjectRecord:
    """One subject's files: modality name → path, plus an optional mask and label map."""

    id: str
    images: dict[str, Path]
    mask: Path | None = None
    labels: Path | None = None


@dataclass
class Dataset:
    """Subjects found under ``root`` by ``layout``, and every problem found on the way."""

    root: Path
    layout: str
    subjects: list[SubjectRecord]
    problems: list[str] = field(default_factory=list)

    @property
    def modalities(self) -> list[str]:
        return sorted({m for s in self.subjects for m in s.images})

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.subjects]

    def subject(self, subject_id: str) -> SubjectRecord:
        for s in self.subjects:
            if s.id == subject_id:
                return s
        raise MedtransError(self.root, f"subject {subject_id!r} is not in this dataset",
                            f"use one of {', '.join(self.ids[:8])}{' …' if len(self.ids) > 8 else ''}")

    def require(self, modalities: list[str], strict: bool = False) -> Dataset:
        """Only the subjects that have every one of ``modalities``.

        Subjects missing one are skipped with a warning that lists them, or raise under ``strict``;
        no subject left at all is always an error.
        """
        wanted = [canonical(m) for m in modalities]
        absent = [m for m in wanted if m not in self.modalities]
        if absent:
            raise MedtransError(self.root, f"no subject has modality {', '.join(absent)} "
                                f"(layout {self.layout}; found {', '.join(self.modalities) or 'none'})",
                                "check the modality names (medtrans names: t1, t2, pd, flair, t1ce, ct, "
                                "cbct, pet, mr …)")
        keep, skipped = [], []
        for s in self.subjects:
            missing = [m for m in wanted if m not in s.images]
            (skipped if missing else keep).append((s, missing))
        if skipped:
            listing = "; ".join(f"{s.id} (no {', '.join(miss)})" for s, miss in skipped)
            if strict:
                raise MedtransError(self.root, f"{len(skipped)} subject(s) miss a modality: {listing}",
                                    "add the files, or leave out --strict to skip these subjects")
            warnings.warn(f"skipping {len(skipped)} subject(s) missing a modality: {listing}", stacklevel=2)
        return replace(self, subjects=[s for s, _ in keep],
                       problems=self.problems + [f"skipped {s.id}: no {', '.join(m)}" for s, m in skipped])


def _files(folder: Path) -> list[Path]:
    with os.scandir(folder) as it:
        return sorted(Path(e.path) for e in it if e.is_file() and not e.name.startswith("."))


def _dirs(folder: Path) -> list[Path]:
    with os.scandir(folder) as it:
        return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))


class Layout(ABC):
    """How one dataset convention is recognised and read."""

    name = ""
    expects = ""

    @abstractmethod
    def detect(self, root: Path) -> bool:
        """Whether ``root`` looks like this layout (cheap: names only, no image is read)."""

    @abstractmethod
    def scan(self, root: Path) -> tuple[list[SubjectRecord], list[str]]:
        """The subjects found under ``root`` and every problem noticed on the way."""


def _assign(record: SubjectRecord, stem: str, path: Path, problems: list[str]) -> None:
    """Put a file into the record as mask, labels or a modality; anything else is a problem."""
    key = stem.lower()
    if key in MASK_NAMES:
        record.mask = path
    elif key in LABEL_NAMES:
        record.labels = path
    elif is_known(key):
        modality = canonical(key)
        if modality in record.images:
            first = record.images[modality].name
            problems.append(f"{record.id}: two files for {modality} ({first}, {path.name}); kept the first")
        else:
            record.images[modality] = path
    else:
        problems.append(f"{record.id}: ignored {path.name} (not a known modality name)")


@LAYOUTS.register("generic")
class Generic(Layout):
    name = "generic"
    expects = "ROOT/<subject>/<modality>.nii.gz (t1, t2, ct …) with optional mask.nii.gz and labels.nii.gz"

    def detect(self, root: Path) -> bool:
        for sub in _dirs(root):
            for f in _files(sub):
                parts = split_image_name(f.name)
                if parts and is_known(parts[0]):
                    return True
        return False

    def scan(self, root: Path) -> tuple[list[SubjectRecord], list[str]]:
        subjects, problems = [], []
        for sub in _dirs(root):
            record = SubjectRecord(sub.name, {})
            for f in _files(sub):
                parts = split_image_name(f.name)
                if parts:
                    _assign(record, parts[0], f, problems)
            if record.images:
                subjects.append(record)
            else:
                problems.append(f"{sub.name}: no image with a modality name, folder ignored")
        return subjects, problems


@LAYOUTS.register("nnunet")
class NNUNet(Layout):
    name = "nnunet"
    expects = "ROOT/dataset.json with channel_names, ROOT/imagesTr/<case>_0000.nii.gz, optional labelsTr/"

    def _meta(self, root: Path) -> dict | None:
        path = root / "dataset.json"
        if not path.is_file() or not (root / "imagesTr").is_dir():
            return None
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and isinstance(meta.get("channel_names"), dict) else None

    def detect(self, root: Path) -> bool:
        return self._meta(root) is not None

    def scan(self, root: Path) -> tuple[list[SubjectRecord], list[str]]:
        meta = self._meta(root)
        if meta is None:  # only when --layout nnunet is forced: detection already required it
            raise MedtransError(root / "dataset.json", "missing, unreadable, or without channel_names "
                                "(or no imagesTr/ beside it)", f"an nnU-Net dataset needs {self.expects}")
        channels = {int(k): canonical(str(v)) for k, v in meta["channel_names"].items()}
        ending = str(meta.get("file_ending", ".nii.gz"))
        pattern = re.compile(rf"^(?P<case>.+)_(?P<ch>\d{{4}}){re.escape(ending)}$")
        records: dict[str, SubjectRecord] = {}
        problems: list[str] = []
        for folder in ("imagesTr", "imagesTs"):
            if not (root / folder).is_dir():
                continue
            for f in _files(root / folder):
                m = pattern.match(f.name)
                if not m:
                    problems.append(f"{folder}/{f.name}: not <case>_XXXX{ending}, ignored")
                    continue
                ch = int(m["ch"])
                if ch not in channels:
                    problems.append(f"{folder}/{f.name}: channel {ch} is not in dataset.json channel_names")
                    continue
                rec = records.setdefault(m["case"], SubjectRecord(m["case"], {}))
                rec.images[channels[ch]] = f
        for case, rec in records.items():
            label = root / "labelsTr" / f"{case}{ending}"
            if label.is_file():
                rec.labels = label
        return [records[k] for k in sorted(records)], problems


_BRATS_DIR = re.compile(r"^BraTS(?:20\d\d_\d+|-[A-Za-z]+-\d+-\d+)$")
_BRATS_MODS = ("t1ce", "t1n", "t1c", "t2w", "t2f", "t1", "t2", "flair", "seg")


@LAYOUTS.register("brats")
class BraTS(Layout):
    name = "brats"
    expects = ("ROOT/BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz or "
               "ROOT/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz")

    def detect(self, root: Path) -> bool:
        return any(_BRATS_DIR.match(d.name) for d in _dirs(root))

    def scan(self, root: Path) -> tuple[list[SubjectRecord], list[str]]:
        subjects, problems = [], []
        for sub in _dirs(root):
            if not _BRATS_DIR.match(sub.name):
                continue
            record = SubjectRecord(sub.name, {})
            for f in _files(sub):
                parts = split_image_name(f.name)
                if not parts:
                    continue
                stem = parts[0]
                tail = stem[len(sub.name) + 1:] if stem.startswith(sub.name) else ""
                if tail.lower() in _BRATS_MODS:
                    _assign(record, tail, f, problems)
                else:
                    problems.append(f"{sub.name}: ignored {f.name} (not <subject>_<modality>)")
            if record.images:
                subjects.append(record)
        return subjects, problems


_SYNTHRAD_ID = re.compile(r"^[12](?:B|P|HN|TH|AB)[A-E]\d{3}$")


@LAYOUTS.register("synthrad")
class SynthRAD(Layout):
    name = "synthrad"
    expects = ("SynthRAD2023 Task1/brain/1BA001/{mr,ct,mask}.nii.gz, "
               "Task2/pelvis/2PA001/{cbct,ct,mask}.nii.gz or SynthRAD2025 .mha (regions HN/TH/AB), "
               "from any of these folder levels")

    def _subject_dirs(self, root: Path, depth: int = 3) -> list[Path]:
        found: list[Path] = []
        level = [root]
        for _ in range(depth + 1):
            nxt = []
            for d in level:
                for sub in _dirs(d):
                    (found if _SYNTHRAD_ID.match(sub.name) else nxt).append(sub)
            level = nxt
        return found

    def detect(self, root: Path) -> bool:
        if _SYNTHRAD_ID.match(root.name):
            return False
        return bool(self._subject_dirs(root))

    def scan(self, root: Path) -> tuple[list[SubjectRecord], list[str]]:
        subjects, problems = [], []
        seen: dict[str, Path] = {}
        for sub in sorted(self._subject_dirs(root), key=lambda p: p.name):
            if sub.name in seen:
                problems.append(f"{sub.name}: found twice ({seen[sub.name]}, {sub}); kept the first")
                continue
            seen[sub.name] = sub
            record = SubjectRecord(sub.name, {})
            for f in _files(sub):
                parts = split_image_name(f.name)
                if parts and parts[0].lower() in ("mr", "ct", "cbct", "mask"):
                    _assign(record, parts[0], f, problems)
            if record.images:
                subjects.append(record)
        return subjects, problems


_IXI_FILE = re.compile(r"^(?P<id>IXI\d{3}-[A-Za-z]+-\d{4})-(?P<mod>T1|T2|PD|MRA)\.nii(?:\.gz)?$")


@LAYOUTS.register("ixi")
class IXI(Layout):
    name = "ixi"
    expects = "ROOT/IXI002-Guys-0828-T1.nii.gz (…-T2, …-PD), flat or in per-modality folders (IXI-T1/ …)"

    def _candidates(self, root: Path) -> list[Path]:
        return _files(root) + [f for d in _dirs(root) for f in _files(d)]

    def detect(self, root: Path) -> bool:
        return any(_IXI_FILE.match(f.name) for f in self._candidates(root))

    def scan(self, root: Path) -> tuple[list[SubjectRecord], list[str]]:
        records: dict[str, SubjectRecord] = {}
        problems: list[str] = []
        for f in self._candidates(root):
            m = _IXI_FILE.match(f.name)
            if m:
                rec = records.setdefault(m["id"], SubjectRecord(m["id"], {}))
                _assign(rec, m["mod"], f, problems)
        return [records[k] for k in sorted(records)], problems


#: detection order: most specific first, generic last
DETECTION_ORDER = ("nnunet", "brats", "synthrad", "ixi", "generic")


def open_dataset(root: str | os.PathLike, layout: str | None = None, strict: bool = False) -> Dataset:
    """Subjects under ``root`` in ``layout`` (auto-detected when None).

    Problems (a subject missing a modality others have, ignored files) are listed in
    ``Dataset.problems``; with ``strict`` any problem is an error.
    """
    root = Path(root)
    if not root.exists():
        raise MedtransError(root, "does not exist", "check the dataset path")
    if not root.is_dir():
        raise MedtransError(root, "is a file, not a dataset folder",
                            "give the folder that holds the subjects")
    if not any(root.iterdir()):
        raise MedtransError(root, "is an empty folder", "put a dataset there, or make one: medtrans phantom "
                            f"{root} --subjects 8")
    if layout is not None:
        chosen = LAYOUTS.get(layout)()
    else:
        candidates = [LAYOUTS.get(n)() for n in DETECTION_ORDER]
        chosen = next((c for c in candidates if c.detect(root)), None)
        if chosen is None:
            tried = "; ".join(f"{c.name}: {c.expects}" for c in candidates)
            raise MedtransError(root, f"no known dataset layout found (tried {tried})",
                                "arrange the files in one of these layouts, or force one with --layout")
    subjects, problems = chosen.scan(root)
    if not subjects:
        raise MedtransError(root, f"no subjects found for layout {chosen.name} (expects {chosen.expects})",
                            "check the folder, or choose another --layout")
    subjects.sort(key=lambda s: s.id)
    everything = sorted({m for s in subjects for m in s.images})
    for s in subjects:
        missing = [m for m in everything if m not in s.images]
        if missing:
            problems.append(f"{s.id}: missing {', '.join(missing)}")
    if strict and problems:
        raise MedtransError(root, f"{len(problems)} problem(s): {'; '.join(problems[:10])}"
                            f"{' …' if len(problems) > 10 else ''}",
                            "fix the files, or leave out --strict to skip what is incomplete")
    return Dataset(root=root, layout=chosen.name, subjects=subjects, problems=problems)
