"""The HTML report: one file, every subject named, slices decodable, tables with the right numbers."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from medtrans.io import Volume
from medtrans.report import ModelResult, SubjectView, write_report
from medtrans.report.figures import encode_slices, pick_slices, to_display


def _volume(array: np.ndarray, affine: np.ndarray | None = None) -> Volume:
    return Volume(array.astype(np.float32), np.eye(4) if affine is None else affine, {})


def _decode(uri: str) -> np.ndarray:
    """The pixels a browser shows (a palette image as its RGB colours)."""
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    return np.asarray(image.convert("RGB") if image.mode == "P" else image)


def test_colour_mapped_slices_are_palette_pngs_with_matplotlibs_colours() -> None:
    from matplotlib import colormaps

    volume = np.zeros((4, 3, 2), np.float32)
    volume[:, :, 1] = np.arange(12).reshape(4, 3)
    image = Image.open(io.BytesIO(base64.b64decode(
        encode_slices(volume, [1], (0.0, 11.0), colormap="magma")[0].split(",", 1)[1])))
    assert image.mode == "P"  # one byte per pixel
    levels = np.round(volume[:, :, 1].T[::-1, ::-1] / 11.0 * 255).astype(int)
    expected = (colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)[levels]
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), expected)


def test_to_display_brings_lps_to_ras() -> None:
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_array_equal(to_display(array, lps), array[::-1, ::-1, :])
    np.testing.assert_array_equal(to_display(array, np.eye(4)), array)


def test_pick_slices_stays_inside_the_foreground() -> None:
    fg = np.zeros((4, 4, 30), bool)
    fg[1:3, 1:3, 10:21] = True
    assert pick_slices(fg, 3) == [10, 15, 20]
    assert pick_slices(fg, 100) == list(range(10, 21))


def test_encoded_slice_is_the_windowed_plane_in_radiological_view() -> None:
    volume = np.zeros((4, 3, 2), np.float32)
    volume[0, 2, 1] = 10.0  # patient's far right (i=0 in RAS), most anterior row
    pixels = _decode(encode_slices(volume, [1], (0.0, 10.0))[0])
    assert pixels.shape == (3, 4)
    expected = np.zeros((3, 4), np.uint8)
    expected[0, 3] = 255  # anterior on top, patient's right on the viewer's left → last column
    np.testing.assert_array_equal(pixels, expected)


def test_report_names_every_subject_and_tabulates_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    subjects, rows_a, rows_b = [], [], []
    for n in range(3):
        target = rng.uniform(0, 100, (16, 16, 6))
        mask = np.zeros_like(target)
        mask[2:14, 2:14, 1:5] = 1
        subjects.append(SubjectView(
            subject=f"sub-{n:02d}", source=_volume(100 - target), target=_volume(target), mask=_volume(mask),
            synthetic={"regression": _volume(target + 1), "pix2pix": _volume(target - 2)},
        ))
        rows_a.append({"subject": f"sub-{n:02d}", "psnr": 30.0 + n, "ssim": 0.9, "note": "ok"})
        rows_b.append({"subject": f"sub-{n:02d}", "psnr": 20.0 + 2 * n, "ssim": 0.8})
    models = [ModelResult("regression", rows_a), ModelResult("pix2pix", rows_b)]
    out = write_report(tmp_path / "nested" / "report.html", models, subjects, title="T1 → T2")
    text = out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # atomic: no temp file left
    for n in range(3):
        assert f"<h2>sub-{n:02d}</h2>" in text
    # summary: mean ± sample sd over subjects, n; the text column is not a metric
    assert "<td>regression</td><td>31 ± 1</td><td>0.9 ± 0</td><td>3</td>" in text
    assert "<td>pix2pix</td><td>22 ± 2</td><td>0.8 ± 0</td><td>3</td>" in text
    assert "note" not in re.findall(r"<th>(.*?)</th>", text)
    # viewer: source, 2 synthetic, target, 2 error maps; one PNG per slice with foreground (4)
    data = json.loads(re.search(r'id="data-0">(.*?)</script>', text).group(1))
    assert len(data) == 6 and all(len(panel) == 4 for panel in data)
    assert 'type="range" min="0" max="3"' in text
    # the error map of regression is |+1| everywhere: one flat colour
    error = _decode(data[4][0])
    assert error.ndim == 3 and len(np.unique(error.reshape(-1, 3), axis=0)) == 1
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched from elsewhere


def test_report_resamples_a_target_on_another_grid(tmp_path: Path) -> None:
    source = _volume(np.ones((8, 8, 4)))
    target_affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    target_affine[:3, 3] = [7, 7, 0]  # same voxel centres as the source, LPS axes
    target = _volume(np.arange(256, dtype=float).reshape(8, 8, 4), target_affine)
    view = SubjectView("flip", source, {"m": source}, target=target)
    text = write_report(tmp_path / "r.html", [ModelResult("m", [])], [view]).read_text()
    data = json.loads(re.search(r'id="data-0">(.*?)</script>', text).group(1))
    shown_target = _decode(data[2][0])
    assert shown_target.shape == (8, 8) and len(np.unique(shown_target)) > 8
