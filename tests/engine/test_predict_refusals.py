"""What ``predict`` refuses, and that a refusal writes nothing and modifies nothing (checksums)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medtrans.engine.predictor import Predictor, resolve_device
from medtrans.errors import MedtransError
from medtrans.io import load, save

CLI = [sys.executable, "-c", "from medtrans.cli import main; main()"]


def digest(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (hidden ones too) with its content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def predictor(tiny_run: Path) -> Predictor:
    return Predictor.from_run(tiny_run, device="cpu")


@pytest.fixture()
def dataset(phantom_root: Path, tmp_path: Path) -> Path:
    """Two subjects of the phantom and a DICOM series, copied so that checksums are this test's own."""
    root = tmp_path / "data"
    for sid in ("sub-004", "sub-005"):
        shutil.copytree(phantom_root / sid, root / sid)
    save(load(phantom_root / "sub-004" / "t1.nii.gz"), root / "sub-006" / "t1")  # <subject>/t1/ DICOM series
    return root


def refused(predictor: Predictor, inputs: list[Path], out: Path, match: str, **kwargs) -> str:
    with pytest.raises(MedtransError, match=match) as caught:
        predictor.predict_paths(inputs, out, **kwargs)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    return message


def test_output_folder_inside_an_input_is_refused(predictor: Predictor, dataset: Path,
                                                  tmp_path: Path) -> None:
    before = digest(tmp_path)
    series = dataset / "sub-006" / "t1"
    cases = [
        ([series], series),                          # -o = the DICOM series folder
        ([dataset / "sub-006"], series),             # -o = a series folder inside the subject
        ([dataset / "sub-004"], dataset / "sub-004"),  # -o = the subject folder
        ([dataset], dataset / "synthetic"),          # -o inside the dataset root
        ([dataset / "sub-005" / "t1.nii.gz"], dataset / "sub-005"),  # -o = the folder of the input file
    ]
    for inputs, out in cases:
        message = refused(predictor, inputs, out, "is or lies inside the input folder")
        assert f"-o {tmp_path / 'data'}" in message or "-synthetic" in message
    # the suggestion is a sibling of the input, outside it
    message = refused(predictor, [dataset], dataset / "synthetic", "inside the input folder")
    assert message.endswith(f"-o {tmp_path / 'data-synthetic'})")
    assert digest(tmp_path) == before


def test_output_at_an_existing_file_is_one_line_through_the_cli(tiny_run: Path, dataset: Path,
                                                                 tmp_path: Path) -> None:
    taken = tmp_path / "result.nii.gz"
    taken.write_bytes(b"already here")
    before = digest(tmp_path)
    done = subprocess.run([*CLI, "predict", str(tiny_run), str(dataset / "sub-004"), "-o", str(taken)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "result.nii.gz: -o is an existing file, not a folder" in lines[0]
    assert f"-o {tmp_path / 'result.nii.gz-synthetic'}" in lines[0]
    assert digest(tmp_path) == before


def test_nothing_is_written_when_any_input_is_bad(predictor: Predictor, dataset: Path,
                                                  tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "t1.nii.gz").write_bytes((dataset / "sub-004" / "t1.nii.gz").read_bytes()[:200])  # truncated
    before = digest(tmp_path)
    out = tmp_path / "out"
    refused(predictor, [dataset / "sub-004", bad], out, r"bad/t1\.nii\.gz: not a readable NIfTI")
    assert not out.exists() and digest(tmp_path) == before
    # a second modality that does not overlap the first in patient space is a geometry error, found first
    # too (a two-source model is needed: check_sources is what predict_paths runs per subject)
    from medtrans.data.inputs import check_sources
    from medtrans.io import Volume

    t1 = load(dataset / "sub-004" / "t1.nii.gz")
    far = t1.affine.copy()
    far[:3, 3] += 5000.0
    with pytest.raises(MedtransError, match="does not overlap the t1 image"):
        check_sources({"t1": t1, "t2": Volume(t1.array, far)},
                      {"t1": Path("t1.nii.gz"), "t2": Path("t2.nii.gz")}, allow_synthetic=False)


def test_failed_run_leaves_no_empty_folder_and_stale_stages_are_cleaned(predictor: Predictor, dataset: Path,
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "out"

    def ctrl_c(subject: str, done: int, total: int) -> None:
        raise KeyboardInterrupt  # the user stops the run while the first subject is being translated

    with pytest.raises(KeyboardInterrupt):
        predictor.predict_paths([dataset / "sub-004", dataset / "sub-005"], out, progress=ctrl_c)
    assert not out.exists()
    stale = out / ".sub-004.nii.gz.k1ll3d.tmp"  # what `staged` leaves when a run is killed mid-write
    stale.mkdir(parents=True)
    (stale / "sub-004.nii.gz").write_bytes(b"half")
    written = predictor.predict_paths([dataset / "sub-004"], out)
    assert sorted(p.name for p in out.iterdir()) == ["sub-004.nii.gz"] and written == [out / "sub-004.nii.gz"]


def test_a_synthetic_source_is_refused_unless_allowed(predictor: Predictor, dataset: Path,
                                                      tmp_path: Path) -> None:
    first = predictor.predict_paths([dataset / "sub-004"], tmp_path / "first")[0]  # a synthetic T2
    before = digest(tmp_path)
    message = refused(predictor, [first], tmp_path / "second", "marked synthetic")
    assert message.startswith(f"{first}: the t1 source is marked synthetic (SYNTHETIC by medtrans target=t2")
    assert "--allow-synthetic" in message
    assert digest(tmp_path) == before
    again = predictor.predict_paths([first], tmp_path / "second", allow_synthetic=True)
    assert again == [tmp_path / "second" / "sub-004.nii.gz"]


def test_two_series_in_one_folder_suggest_what_predict_can_do(predictor: Predictor, dataset: Path,
                                                              tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    save(load(dataset / "sub-004" / "t1.nii.gz"), tmp_path / "a")
    save(load(dataset / "sub-005" / "t1.nii.gz"), tmp_path / "b")
    mixed.mkdir()
    for folder in (tmp_path / "a", tmp_path / "b"):
        for f in folder.iterdir():
            shutil.copy(f, mixed / f"{folder.name}-{f.name}")
    message = refused(predictor, [mixed], tmp_path / "out", "holds 2 DICOM series")
    assert "move each series into its own folder" in message and "(CLI: --series" not in message


def test_truncated_checkpoint_is_one_line_in_predict_and_resume(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights = run / "checkpoints" / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(MedtransError) as caught:
        Predictor.from_run(run, which="best", device="cpu")
    message = str(caught.value)
    assert message.startswith(f"{weights}: checkpoint file is truncated or damaged")
    assert "--checkpoint last" in message and "retrain" in message and len(message.splitlines()) == 1
    Predictor.from_run(run, which="last", device="cpu")  # the other checkpoint still works
    state = run / "checkpoints" / "last" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:1000])
    before = digest(run)
    done = subprocess.run([*CLI, "train", "--resume", str(run)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{state}: checkpoint file is truncated or damaged" in lines[0]
    assert digest(run) == before


def test_resume_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    done = subprocess.run([*CLI, "train", "--resume", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{tmp_path}: not a run folder (no config.yaml)" in lines[0]
    assert "config file not found" not in lines[0]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_error_names_the_option_of_each_command() -> None:
    with pytest.raises(MedtransError) as caught:
        resolve_device("cuda")
    message = str(caught.value)
    assert "predict --device cpu" in message and "train --set device=cpu" in message
