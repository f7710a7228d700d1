"""``medtrans demo``: the baseline arithmetic, and the quick variant through the real CLI."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medtrans.cli import _register, app
from medtrans.demo import BASELINES, brain_mask, linear_fit, linear_rescale
from medtrans.io import load

_register()


def test_linear_rescale_maps_the_masked_range_onto_the_target() -> None:
    source = np.array([[[0.0, 10.0, 20.0, 99.0]]])
    target = np.array([[[5.0, 100.0, 300.0, -7.0]]])
    mask = np.array([[[1, 1, 1, 0]]])
    # inside the mask source spans [0, 20] and target [5, 300]: y = 5 + x * 295 / 20
    np.testing.assert_allclose(linear_rescale(source, target, mask), [[[5.0, 152.5, 300.0, 1465.25]]])


def test_linear_fit_recovers_an_exact_linear_relation_inside_the_mask() -> None:
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 500, (6, 5, 4))
    target = 800 - 1.5 * source
    mask = np.zeros(source.shape, np.uint8)
    mask[1:5, 1:4, 1:3] = 1
    target[mask == 0] = 0.0  # outside the mask nothing is fitted
    np.testing.assert_allclose(linear_fit(source, target, mask), 800 - 1.5 * source, rtol=1e-5)


def test_brain_mask_keeps_csf_grey_white_matter_and_lesions() -> None:
    labels = np.arange(11, dtype=np.float32).reshape(1, 1, 11)  # background … urine
    np.testing.assert_array_equal(brain_mask(labels)[0, 0], [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0])


def test_quick_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    html = (out / "report.html").read_text()
    subjects = sorted(p.name for p in (out / "predictions" / "regression").iterdir())
    assert subjects and [s.removesuffix(".nii.gz") for s in subjects] == sorted(
        p.name.removesuffix(".nii.gz") for p in (out / "predictions" / "baseline-minmax").iterdir())
    for name in subjects:
        sid = name.removesuffix(".nii.gz")
        assert f"<h2>{sid}</h2>" in html
        pred, source = load(out / "predictions" / "pix2pix" / name), load(out / "data" / sid / "t1.nii.gz")
        assert pred.shape == source.shape and np.array_equal(pred.affine, source.affine)
        assert pred.meta["synthetic"].startswith("SYNTHETIC")
        std = load(out / "predictions" / "flow" / f"{sid}_t2_std.nii.gz")  # flow's samples spread
        assert std.shape == source.shape and float(std.array.max()) > 0 and float(std.array.min()) >= 0
    assert html.count("<figcaption>std · flow") == len(subjects)
    for model in ("regression", "pix2pix", "flow", "baseline-minmax", "baseline-linfit"):
        assert (out / "evaluation" / model / "per_subject.csv").is_file()
    table = result.output
    for model in ("regression", "pix2pix", "flow", *BASELINES):
        assert re.search(rf"{re.escape(model)}\s*│\s*-?[\d.]+\s*│\s*-?[\d.]+", table), table
    assert f"report {out / 'report.html'}" in re.sub(r" +", " ", table)


def test_demo_replaces_its_own_folder_but_no_other(tmp_path: Path) -> None:
    from medtrans.demo import run_demo
    from medtrans.errors import MedtransError

    out = tmp_path / "demo"
    first = run_demo(out, quick=True, say=lambda _: None, progress=False)
    stale = out / "runs" / "stale.txt"
    stale.write_text("from the first run")
    second = run_demo(out, quick=True, say=lambda _: None, progress=False)
    assert not stale.exists() and second.report.is_file()
    assert second.scores.keys() == first.scores.keys()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(MedtransError, match="was not written by medtrans demo"):
        run_demo(other, quick=True, say=lambda _: None, progress=False)
    assert (other / "notes.txt").read_text() == "keep me"
