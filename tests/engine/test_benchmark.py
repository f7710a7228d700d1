"""``medtrans benchmark`` through the real CLI on the tiny phantom: the leaderboard's statistics against
numpy/scipy on the entries' own CSVs, one split for every entry, kill and re-run, a failing entry; and
the Holm and Pareto helpers by hand."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy.stats import wilcoxon
from typer.testing import CliRunner

from medtrans.cli import _register, app
from medtrans.engine.leaderboard import pareto_front
from medtrans.metrics.stats import bootstrap_ci, holm

_register()

QUALITY = ("mae", "rmse", "nmse", "ncc", "psnr", "ssim")
LOWER = ("mae", "rmse", "nmse")


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["entry"]: row for row in csv.DictReader(handle)}


def per_subject(run: Path, folder: str = "eval") -> dict[str, dict[str, float]]:
    with open(run / folder / "per_subject.csv", newline="") as handle:
        return {row.pop("subject"): {k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)}


def test_leaderboard_statistics_match_scipy_on_the_entries_csvs(two_entries: Path) -> None:
    rows = read_rows(two_entries / "leaderboard.csv")
    assert set(rows) == {"regression", "flow"}
    values = {e: per_subject(two_entries / "runs" / e) for e in rows}
    subjects = sorted(values["flow"])
    assert len(subjects) == 3 and all(sorted(v) == subjects for v in values.values())
    for metric in QUALITY:
        column = {e: np.array([values[e][s][metric] for s in subjects]) for e in rows}
        means = {e: float(v.mean()) for e, v in column.items()}
        for e, row in rows.items():
            assert float(row[metric]) == pytest.approx(means[e], rel=1e-12)
            low, high = bootstrap_ci(column[e], seed=0)
            assert (float(row[f"{metric}_ci_low"]), float(row[f"{metric}_ci_high"])) == \
                pytest.approx((low, high), rel=1e-12)
        best = (min if metric in LOWER else max)(means, key=means.get)
        other = next(e for e in rows if e != best)
        assert rows[best][f"{metric}_p_holm"] == ""  # the best is not tested against itself
        # one comparison: Holm leaves its p as it is (several: test_holm_against_a_hand_computed_example)
        p = wilcoxon(column[other], column[best], alternative="two-sided").pvalue
        assert float(rows[other][f"{metric}_p_holm"]) == pytest.approx(p, rel=1e-12)
    # one sample of the stochastic entry is scored separately; the one-pass methods have no such column
    single = per_subject(two_entries / "runs" / "flow", "eval_single")
    assert float(rows["flow"]["psnr_1"]) == pytest.approx(np.mean([single[s]["psnr"] for s in subjects]))
    assert rows["regression"]["psnr_1"] == "" and rows["regression"]["samples"] == "1"
    assert rows["flow"]["samples"] == "2" and rows["flow"]["steps"] == "2"
    assert rows["flow"]["evaluations_per_voxel"] == "4"  # 2 samples × 2 Euler steps
    assert float(rows["flow"]["std_ratio"]) > 0 and rows["regression"]["std_ratio"] == ""
    psnr = [float(rows[e]["psnr"]) for e in rows]
    assert list(rows) == [e for _, e in sorted(zip(psnr, rows, strict=True), reverse=True)]  # ranked
    markdown = (two_entries / "leaderboard.md").read_text().splitlines()
    assert [line.split(" | ")[0].removeprefix("| ") for line in markdown[2:]] == list(rows)  # same order
    for line in markdown[2:]:
        entry = line.split(" | ")[0].removeprefix("| ")
        assert line.startswith(f"| {entry} | {float(rows[entry]['psnr']):.2f} [")
    harness = json.loads((two_entries / "harness.json").read_text())
    assert harness["entries_run"] == ["regression", "flow"]
    assert harness["wall_seconds"] > harness["entries_seconds"] > harness["work_seconds"] > 0


def test_every_entry_trained_on_one_split_that_keeps_test_subjects_out(two_entries: Path) -> None:
    shared = json.loads((two_entries / "splits.json").read_text())
    assert len(shared["test"]) == 3 and not set(shared["test"]) & set(shared["train"] + shared["val"])
    for name in ("regression", "flow"):
        run = two_entries / "runs" / name
        split = json.loads((run / "splits.json").read_text())
        assert {k: split[k] for k in ("train", "val", "test")} == \
            {k: shared[k] for k in ("train", "val", "test")}
        assert not set(split["test"]) & set(split["train"])
        assert sorted(p.name.split("_")[0].removesuffix(".nii.gz") for p in (run / "pred_mean").iterdir()
                      if "_std" not in p.name) == shared["test"]


def _children_of(job: Path) -> list[int]:
    """Processes whose command line names the entry's job file (the benchmark's child for it)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(job).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _fingerprint(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def killed_and_rerun(bench_root: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None,
                     benchmark_spec: Callable[..., Path]) -> dict[str, Any]:
    """regression, a broken entry and flow; SIGKILL while flow trains, then the same command again."""
    folder = tmp_path_factory.mktemp("killed")
    spec = benchmark_spec(folder, bench_root, [
        ("regression", "phantom_t1_t2_regression.yaml"),
        ("broken", "phantom_t1_t2_regression.yaml", "method.args.no_such_argument=1"),
        ("flow", "phantom_t1_t2_flow.yaml", "checkpoint.every=2")], steps=30, baselines=True)
    out = folder / "out"
    command = [sys.executable, "-c", "from medtrans.cli import main; main()", "benchmark", str(spec),
               "-o", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / "runs" / "flow" / "checkpoints" / "last" / "state.json"
    deadline = time.monotonic() + 120
    while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no handler runs, the child training flow is left without its parent
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode() if proc.stderr else ""
    job = out / "runs" / "flow.job.json"
    deadline = time.monotonic() + 15
    while _children_of(job) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = _children_of(job)
    for pid in orphans:  # do not leave a process behind even when the test fails
        os.kill(pid, signal.SIGKILL)
    killed_at = json.loads(state.read_text())["step"]
    before = {"regression": _fingerprint(out / "runs" / "regression" / "checkpoints"),
              "regression.json": (out / "entries" / "regression.json").read_bytes(),
              "baselines": _fingerprint(out / "baselines")}
    rerun = CliRunner().invoke(app, ["benchmark", str(spec), "-o", str(out)])
    return {"out": out, "orphans": orphans, "killed_at": killed_at, "before": before, "rerun": rerun}


def test_a_killed_benchmark_resumes_without_retraining_finished_entries(
        killed_and_rerun: dict[str, Any]) -> None:
    out = killed_and_rerun["out"]
    assert killed_and_rerun["orphans"] == [], "the entry's child outlived the killed benchmark"
    before = killed_and_rerun["before"]
    assert _fingerprint(out / "runs" / "regression" / "checkpoints") == before["regression"]
    assert (out / "entries" / "regression.json").read_bytes() == before["regression.json"]
    flow = json.loads((out / "entries" / "flow.json").read_text())
    assert flow["status"] == "done" and flow["train_steps"] == 30
    assert 2 <= killed_and_rerun["killed_at"] < 30  # it was killed between two checkpoints
    assert flow["resumed_from_step"] == killed_and_rerun["killed_at"]
    harness = json.loads((out / "harness.json").read_text())
    assert harness["entries_run"] == ["broken", "flow"]
    assert set(read_rows(out / "leaderboard.csv")) == {"regression", "broken", "flow", "baseline-linear",
                                                       "baseline-lookup", "baseline-quantile"}
    assert _fingerprint(out / "baselines") == before["baselines"]  # scored once, read back on the re-run


def test_the_baselines_are_fitted_on_training_subjects_and_scored_like_entries(
        killed_and_rerun: dict[str, Any]) -> None:
    from medtrans.engine.baselines import fit_lookup
    from medtrans.io import load

    out = killed_and_rerun["out"]
    rows, split = read_rows(out / "leaderboard.csv"), json.loads((out / "splits.json").read_text())
    for name in ("linear", "lookup", "quantile"):
        scores = per_subject(out / "baselines", f"{name}_eval")
        assert sorted(scores) == split["test"]
        assert float(rows[f"baseline-{name}"]["psnr"]) == pytest.approx(
            np.mean([v["psnr"] for v in scores.values()]))
        assert rows[f"baseline-{name}"]["train_steps"] == "0"
    # the lookup map refitted here from the training subjects alone reproduces the harness's prediction
    spec = json.loads((out / "harness.json").read_text())["spec"]
    data_root = Path(yaml.safe_load(Path(spec).read_text())["data"]["root"])
    pairs = [(load(data_root / s / "t1.nii.gz").array, load(data_root / s / "t2.nii.gz").array,
              load(data_root / s / "mask.nii.gz").array > 0) for s in split["train"]]
    lookup = fit_lookup([np.concatenate([t1[m] for t1, _, m in pairs])],
                        np.concatenate([t2[m] for _, t2, m in pairs]))
    subject = split["test"][0]
    predicted = load(out / "baselines" / "lookup" / f"{subject}.nii.gz")
    assert "baseline-lookup" in predicted.meta["synthetic"]  # marked synthetic like every prediction
    np.testing.assert_allclose(predicted.array, lookup([load(data_root / subject / "t1.nii.gz").array]),
                               rtol=1e-6, atol=1e-6)


def test_the_baseline_maps_recover_what_they_can_represent() -> None:
    from medtrans.engine.baselines import fit_linear, fit_lookup, fit_quantile

    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 1, 5000), rng.uniform(0, 1, 5000)
    linear = fit_linear([a, b], 3 * a - 2 * b + 0.5)
    np.testing.assert_allclose(linear([a, b]), 3 * a - 2 * b + 0.5, atol=1e-5)
    # a contrast inversion that is not monotonic (dark -> bright -> dark): no linear map can follow it
    bump = np.sin(np.pi * a)
    lookup, straight = fit_lookup([a], bump), fit_linear([a], bump)
    error = np.abs(lookup([a]) - bump)
    # 64 bins of width ~1/64: interpolation error inside, the slope × half a bin beyond the end centres
    assert error.mean() < 0.002 and error.max() < np.pi / 128 + 0.005
    assert np.abs(straight([a]) - bump).mean() > 0.15
    # histogram matching recovers a monotonic map from the marginals alone: pairs shuffled apart
    quantile = fit_quantile([a], rng.permutation(np.exp(2 * a)))
    np.testing.assert_allclose(quantile([a]), np.exp(2 * a), rtol=0.01)
    # and cannot follow an inversion, which the paired lookup does
    assert np.abs(fit_quantile([a], 1 - a)([a]) - (1 - a)).mean() > 0.4


def test_a_failing_entry_is_recorded_and_the_others_finish(killed_and_rerun: dict[str, Any]) -> None:
    out, rerun = killed_and_rerun["out"], killed_and_rerun["rerun"]
    assert rerun.exit_code == 1
    assert "entry broken failed" in rerun.output and "no_such_argument" in rerun.output
    broken = json.loads((out / "entries" / "broken.json").read_text())
    assert broken["status"] == "failed" and "no_such_argument" in broken["error"]
    rows = read_rows(out / "leaderboard.csv")
    assert rows["broken"]["status"] == "failed" and "no_such_argument" in rows["broken"]["error"]
    assert rows["broken"]["psnr"] == ""
    for name in ("regression", "flow"):  # the entry after the broken one finished and was scored
        assert rows[name]["status"] == "done" and float(rows[name]["psnr"]) == pytest.approx(
            np.mean([v["psnr"] for v in per_subject(out / "runs" / name).values()]))
    assert "no_such_argument" in (out / "report.html").read_text()


def test_the_phantom_spec_has_an_entry_for_every_method_and_refuses_unequal_terms(tmp_path: Path) -> None:
    from medtrans.engine.benchmark import load_spec
    from medtrans.errors import MedtransError
    from medtrans.registry import METHODS

    spec_path = Path(__file__).resolve().parents[2] / "configs" / "benchmark_phantom.yaml"
    spec, entries = load_spec(spec_path)
    standalone = [m for m in METHODS.names() if getattr(METHODS.get(m), "standalone", True)]
    assert [e.name for e in entries] == standalone and all(e.recipe.is_file() for e in entries)
    assert spec.budget.minutes is not None and spec.inference.samples >= 2
    unfair = tmp_path / "unfair.yaml"
    unfair.write_text(spec_path.read_text().replace(
        "entries: [all]", "entries: [{name: long, recipe: phantom_t1_t2_regression.yaml, "
        "set: [optim.steps=99999]}]"))
    with pytest.raises(MedtransError, match="entry long sets optim.steps"):
        load_spec(unfair)


def test_entry_selection_keeps_the_spec_order_and_names_the_choices_on_a_typo(tmp_path: Path) -> None:
    from medtrans.engine.benchmark import load_spec, select_entries

    spec_path = Path(__file__).resolve().parents[2] / "configs" / "benchmark_families.yaml"
    _, entries = load_spec(spec_path)
    assert [e.name for e in select_entries(entries, ["vqar", "vqvae"], spec_path)] == ["vqvae", "vqar"]
    assert select_entries(entries, None, spec_path) == entries
    result = CliRunner().invoke(app, ["benchmark", str(spec_path), "-o", str(tmp_path / "out"),
                                      "--entry", "vqar", "--entry", "vqae"])
    assert result.exit_code != 0
    assert "no entry named 'vqae'" in str(result.exception) and "vqvae" in str(result.exception)
    assert not (tmp_path / "out" / "splits.json").exists()  # refused before anything was written


def test_holm_against_a_hand_computed_example() -> None:
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, None, 0.005]) == pytest.approx([0.03, 0.06, 0.06, None, 0.02])
    assert holm([0.6, 0.9]) == [1.0, 1.0]  # 0.6·2 capped at 1, then monotone
    assert holm([]) == []


def test_pareto_front_keeps_the_points_nothing_beats_in_time_and_quality() -> None:
    # (seconds, psnr): (3, 11) is slower and worse than (2, 12); an equal pair dominates neither
    points = [(1.0, 10.0), (2.0, 12.0), (3.0, 11.0), (0.5, 5.0), (2.0, 12.0)]
    assert pareto_front(points, higher=True) == [0, 1, 3, 4]
    # (seconds, mae): lower is better, (3, 4) is beaten by (2, 3)
    assert pareto_front([(1.0, 5.0), (2.0, 3.0), (3.0, 4.0)], higher=False) == [0, 1]
