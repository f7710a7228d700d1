"""``medtrans info`` on every format; NIfTI and DICOM of one image print the same geometry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import medtrans.cli.info  # noqa: F401  (registers the command)
from medtrans.cli import app
from medtrans.io import describe, save

runner = CliRunner()
MEDTRANS = Path(sys.executable).parent / "medtrans"


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii", "ct_dicom", "ct.mha", "ct.mhd", "ct.nrrd", "ct.npy"])
def test_info_prints_geometry_for_each_volume_format(tmp_path, make_volume, name) -> None:
    volume = make_volume("LAS", (0.0, 10.0, 0.0))
    path = save(volume, tmp_path / name)
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["shape"] == [9, 8, 6] and info["orientation"] == "LAS" and info["modality"] == "ct"
    np.testing.assert_allclose(info["spacing"], volume.spacing, atol=1e-4)
    np.testing.assert_allclose(info["affine"], volume.affine, atol=1e-4)
    assert (info["min"], info["max"]) == (float(volume.array.min()), float(volume.array.max()))


@pytest.mark.parametrize("name", ["ct.png", "ct.tif", "ct.dcm"])
def test_info_on_single_slice_formats(tmp_path, make_volume, name) -> None:
    path = save(make_volume("RAS", shape=(6, 5, 1)), tmp_path / name)
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "6 x 5 x 1" in result.output and "RAS" in result.output and "ct (HU)" in result.output


def _printed_rows(text: str) -> dict[str, list[str]]:
    """The table as {key: [value lines]} (continuation lines belong to the key above)."""
    rows: dict[str, list[str]] = {}
    key = ""
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 4:
            key = cells[1] or key
            rows.setdefault(key, []).append(cells[2])
    return rows


def test_nifti_and_dicom_of_one_image_print_the_same_geometry(tmp_path, make_volume) -> None:
    volume = make_volume("LPS", (7.0, -12.0, 21.0))
    printed = []
    for name in ("ct.nii.gz", "ct_series"):
        path = save(volume, tmp_path / name)
        printed.append(_printed_rows(runner.invoke(app, ["info", str(path)]).output))
    geometry = ("modality", "shape", "spacing (mm)", "orientation", "affine (RAS mm)", "dtype", "range")
    assert len(printed[0]["affine (RAS mm)"]) == 4
    for key in geometry:
        assert printed[0][key] == printed[1][key], key


def test_info_picks_a_series_by_uid(tmp_path, make_volume) -> None:
    path = save(make_volume(), tmp_path / "s")
    uid = describe(path)["series_uid"]
    result = runner.invoke(app, ["info", str(path), "--series", uid, "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["series_uid"] == uid


def test_bad_input_prints_one_line_and_exits_2(tmp_path) -> None:
    (tmp_path / "scan.jpg").write_bytes(b"\xff\xd8")
    done = subprocess.run(
        [str(MEDTRANS), "info", str(tmp_path / "scan.jpg")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read this file type" in lines[0] and "scan.jpg" in lines[0]
    assert "Traceback" not in done.stderr
