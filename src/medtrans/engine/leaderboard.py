"""The benchmark's leaderboard: per-entry means with bootstrap CIs, paired tests against the best, costs.

Statistics are over test subjects (never slices). For each metric the best entry is the one with the
best mean of the ``mean`` variant (the mean of N samples; the only variant of one-pass methods); every
other entry is compared with it by a two-sided paired Wilcoxon signed-rank test on the same subjects,
and the p-values of one metric are Holm-corrected across the entries compared.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from medtrans.atomic import write_json, write_text
from medtrans.metrics.stats import holm, paired_wilcoxon, summarise

#: metrics where lower is better
LOWER_IS_BETTER = ("mae", "mse", "rmse", "nmse", "std_ause")
#: calibration columns (only where a std map exists)
CALIBRATION = ("std_spearman", "std_ause", "std_ratio")


def higher_is_better(metric: str) -> bool:
    return metric.removeprefix("truth_") not in LOWER_IS_BETTER


def _values(record: dict[str, Any], variant: str, metric: str, subjects: list[str]) -> list[float]:
    rows = record[variant]["per_subject"]
    return [float(rows[s][metric]) for s in subjects]


def leaderboard(records: dict[str, dict[str, Any]], primary: str = "psnr",
                seed: int = 0) -> dict[str, Any]:
    """Rows of the leaderboard (sorted by the primary metric) and the tests behind them."""
    scored = {k: r for k, r in records.items() if r.get("status") == "done" and r.get("evaluate", True)}
    if not scored:
        return {"rows": [_cost_row(k, r) for k, r in records.items()], "metrics": [], "best": {}}
    subjects = sorted(set.intersection(*(set(r["mean"]["per_subject"]) for r in scored.values())))
    columns = {k: set(next(iter(r["mean"]["per_subject"].values()))) for k, r in scored.items()}
    # quality metrics every entry has; calibration only exists where there is a std map
    quality = sorted(m for m in set.intersection(*columns.values()) if m not in CALIBRATION)
    metrics = quality + [m for m in CALIBRATION if any(m in c for c in columns.values())]
    best: dict[str, str] = {}
    tests: dict[str, dict[str, dict[str, Any]]] = {}
    for metric in quality:
        means = {k: float(np.nanmean(_values(r, "mean", metric, subjects))) for k, r in scored.items()}
        pick = max if higher_is_better(metric) else min
        best[metric] = pick(means, key=means.get)
        others = [k for k in scored if k != best[metric]]
        raw = [paired_wilcoxon(_values(scored[k], "mean", metric, subjects),
                               _values(scored[best[metric]], "mean", metric, subjects)) for k in others]
        adjusted = holm([t["p_value"] for t in raw])
        tests[metric] = {k: {**t, "p_holm": a} for k, t, a in zip(others, raw, adjusted, strict=True)}
    rows = []
    for key, record in records.items():
        row = _cost_row(key, record)
        if key in scored:
            for variant in ("mean", "single"):
                if variant not in record:
                    continue
                for metric in metrics:
                    if metric in CALIBRATION and (variant == "single" or metric not in columns[key]):
                        continue
                    stats = summarise(_values(record, variant, metric, subjects), seed=seed)
                    prefix = f"{metric}" if variant == "mean" else f"{metric}_1"
                    row[prefix] = stats["mean"]
                    if metric not in CALIBRATION:
                        row[f"{prefix}_ci_low"], row[f"{prefix}_ci_high"] = stats["ci95"] or (None, None)
            for metric in quality:
                test = tests[metric].get(key)
                row[f"{metric}_p_holm"] = None if test is None else test["p_holm"]
        rows.append(row)
    direction = 1 if higher_is_better(primary) else -1
    rows.sort(key=lambda r: (r.get(primary) is None, -direction * (r.get(primary) or 0.0)))
    return {"rows": rows, "metrics": metrics, "best": best, "subjects": subjects, "tests": tests}


def _cost_row(key: str, record: dict[str, Any]) -> dict[str, Any]:
    mean = record.get("mean", {})
    single = record.get("single", {})
    return {
        "entry": key, "status": record.get("status"), "error": record.get("error"),
        "parameters": record.get("parameters"), "train_steps": record.get("train_steps"),
        "train_s_per_step": record.get("train_s_per_step"), "peak_rss_mb": record.get("peak_rss_mb"),
        "samples": mean.get("samples"), "steps": mean.get("steps"),
        "s_per_volume": mean.get("s_per_volume"), "s_per_volume_1": single.get("s_per_volume"),
        "evaluations_per_voxel": mean.get("evaluations_per_voxel"),
    }


def _cell(value: Any, fmt: str) -> str:
    return "–" if value is None or value == "" else format(value, fmt)


def leaderboard_markdown(board: dict[str, Any], reference: str = "regression") -> str:
    """The leaderboard as a Markdown table (for papers and docs): quality of the N-mean and of one
    sample, against the noise-free truth where scored, calibration and costs, with the prediction time
    as a ratio to ``reference``'s (when that entry is on the board)."""
    rows = board["rows"]
    ref = next((r for r in rows if r["entry"] == reference and r.get("s_per_volume")), None)
    header = ["entry", "PSNR N-mean [95% CI]", "SSIM", "PSNR 1 sample", "SSIM 1", "p vs best (Holm)",
              "PSNR truth", "std Spearman", "std ratio", "train steps", "s / step", "s / volume",
              f"× {reference}", "NFE / voxel"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if r.get("status") != "done" or r.get("psnr") is None:
            if r.get("status") == "failed":
                lines.append(f"| {r['entry']} | failed: {r.get('error') or ''} |" + " |" * (len(header) - 2))
            continue
        ci = (f" [{r['psnr_ci_low']:.2f}, {r['psnr_ci_high']:.2f}]"
              if r.get("psnr_ci_low") is not None else "")
        ratio = (r["s_per_volume"] / ref["s_per_volume"]) if ref and r.get("s_per_volume") else None
        cells = [r["entry"], f"{r['psnr']:.2f}{ci}", _cell(r.get("ssim"), ".3f"),
                 _cell(r.get("psnr_1"), ".2f"), _cell(r.get("ssim_1"), ".3f"),
                 _cell(r.get("psnr_p_holm"), ".3f"),
                 _cell(r.get("truth_psnr"), ".2f"), _cell(r.get("std_spearman"), ".2f"),
                 _cell(r.get("std_ratio"), ".2f"), _cell(r.get("train_steps"), "d"),
                 _cell(r.get("train_s_per_step"), ".3f"), _cell(r.get("s_per_volume"), ".2f"),
                 _cell(ratio, ".1f"), _cell(r.get("evaluations_per_voxel"), "d")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(board: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``leaderboard.csv`` (one row per entry), ``leaderboard.json`` (rows + tests) and ``leaderboard.md``
    (the table to paste), atomically."""
    columns: list[str] = []
    for row in board["rows"]:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in board["rows"]:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    write_text(out / "leaderboard.md", leaderboard_markdown(board))
    return (write_text(out / "leaderboard.csv", buffer.getvalue()),
            write_json(out / "leaderboard.json", json.loads(json.dumps(board, default=str))))


def pareto_front(points: list[tuple[float, float]], higher: bool = True) -> list[int]:
    """Indices of the points not dominated in (lower time, better quality)."""
    front = []
    for i, (t, q) in enumerate(points):
        dominated = any((t2 <= t and (q2 >= q if higher else q2 <= q)) and (t2, q2) != (t, q)
                        for t2, q2 in points)
        if not dominated:
            front.append(i)
    return front
