"""Find what a report shows from ``medtrans evaluate`` outputs: metric rows and the images behind them.

An evaluation folder holds ``per_subject.csv`` and ``summary.json``; the summary names the prediction,
reference and mask folders it scored, so the images are found again from there. The source image of
a prediction written by ``medtrans predict`` is named in its synthetic marking (``from=<path>``).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtrans.errors import MedtransError
from medtrans.io import Volume, load
from medtrans.report.html import ModelResult, SubjectView

_GENERIC_NAMES = {"eval", "evaluation", "evaluations", "metrics", "results"}
_SOURCE = re.compile(r" from=(.+?) at=\S+$")


@dataclass
class Evaluation:
    """One evaluated model: its name, metric rows and the images of each subject."""

    name: str
    folder: Path
    rows: list[dict[str, Any]]
    images: dict[str, dict[str, Path | None]]  # subject -> {"pred", "ref", "mask"}


def find_evaluations(path: str | Path) -> list[Path]:
    """``path`` itself when it holds ``per_subject.csv``, else every folder below it that does
    (e.g. a run directory with ``eval/`` inside)."""
    path = Path(path)
    if (path / "per_subject.csv").is_file():
        return [path]
    found = sorted(p.parent for p in path.rglob("per_subject.csv") if (p.parent / "summary.json").is_file()) \
        if path.is_dir() else []
    if not found:
        raise MedtransError(path, "holds no evaluation (no per_subject.csv + summary.json)",
                            "run medtrans evaluate PRED REF -o EVAL_DIR first and give EVAL_DIR")
    return found


def model_name(folder: Path) -> str:
    """The folder's name, or its parent's when the folder is called e.g. ``eval``."""
    return folder.parent.name if folder.name.lower() in _GENERIC_NAMES else folder.name


def read_evaluation(folder: Path) -> Evaluation:
    """Rows of ``per_subject.csv`` and the prediction/reference/mask files the summary points to."""
    from medtrans.data.inputs import match_subjects

    with open(folder / "per_subject.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    try:
        inputs = json.loads((folder / "summary.json").read_text())["inputs"]
    except (KeyError, json.JSONDecodeError) as err:
        raise MedtransError(folder / "summary.json", f"is not a medtrans evaluate summary ({err})",
                            "re-run medtrans evaluate") from None
    for key in ("predictions", "references"):
        if not Path(inputs[key]).is_dir():
            raise MedtransError(folder / "summary.json", f"its {key} folder {inputs[key]} is gone",
                                "run the report where the evaluation was made, or evaluate again")
    pairs, _ = match_subjects(inputs["predictions"], inputs["references"], mask=inputs.get("masks"),
                              ref_modality=inputs.get("ref_modality"))
    images = {p.id: {"pred": p.pred, "ref": p.ref, "mask": p.mask} for p in pairs}
    return Evaluation(model_name(folder), folder, rows, images)


def source_of(volume: Volume) -> Path | None:
    """The source file named in a synthetic volume's marking, when it still exists."""
    match = _SOURCE.search(str(volume.meta.get("synthetic") or ""))
    if match is None:
        return None
    path = Path(match.group(1))
    return path if path.exists() else None


def std_beside(prediction: Path, subject: str) -> Path | None:
    """The std map ``medtrans predict`` wrote next to a prediction (``<subject>_<target>_std``), if any."""
    found = sorted(prediction.parent.glob(f"{subject}_*_std.nii.gz"))
    return found[0] if found else None


def collect(paths: list[str | Path]) -> tuple[list[ModelResult], list[SubjectView]]:
    """Models and subject views for :func:`medtrans.report.write_report` from evaluation folders."""
    evaluations = [read_evaluation(folder) for path in paths for folder in find_evaluations(path)]
    names: dict[str, int] = {}
    for evaluation in evaluations:  # two folders with one name: number them
        count = names[evaluation.name] = names.get(evaluation.name, 0) + 1
        if count > 1:
            evaluation.name = f"{evaluation.name} ({count})"
    models = [ModelResult(e.name, e.rows) for e in evaluations]
    subjects = list(dict.fromkeys(s for e in evaluations for s in e.images))
    views = []
    for subject in subjects:
        present = [e for e in evaluations if subject in e.images]
        files = present[0].images[subject]
        synthetic = {e.name: load(e.images[subject]["pred"]) for e in present}
        stds = {e.name: load(path) for e in present
                if (path := std_beside(e.images[subject]["pred"], subject)) is not None}
        source = next((p for v in synthetic.values() if (p := source_of(v)) is not None), None)
        views.append(SubjectView(
            subject=subject, source=load(source) if source is not None else None, synthetic=synthetic,
            target=load(files["ref"]), mask=load(files["mask"]) if files["mask"] is not None else None,
            std=stds,
        ))
    return models, views
