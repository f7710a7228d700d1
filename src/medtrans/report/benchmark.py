"""The benchmark's HTML page: conventions, leaderboard, quality-against-time (Pareto front), per-subject
box plots, and one viewer per test subject with every entry's translation and error map side by side."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from medtrans.engine.leaderboard import CALIBRATION, higher_is_better, pareto_front
from medtrans.report.collect import collect
from medtrans.report.html import write_report


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def leaderboard_table(board: dict[str, Any], primary: str) -> str:
    quality = [m for m in board["metrics"] if m not in CALIBRATION and not m.startswith("truth_")]
    truth = [m for m in board["metrics"] if m.startswith("truth_")]
    calibration = [m for m in board["metrics"] if m in CALIBRATION]
    head = ["entry", *[f"{m} (N-mean) [95% CI]" for m in quality], f"{primary} (1 sample)",
            f"p vs best ({primary}, Holm)", *truth, *calibration, "params", "train s/step", "peak RSS MB",
            "s/volume", "NFE/voxel", "status"]
    body = []
    for row in board["rows"]:
        cells = [html.escape(row["entry"])]
        for m in quality:
            low, high = row.get(f"{m}_ci_low"), row.get(f"{m}_ci_high")
            ci = f" [{low:.4g}, {high:.4g}]" if low is not None and high is not None else ""
            cells.append(_cell(row.get(m)) + ci)
        cells += [_cell(row.get(f"{primary}_1")), _cell(row.get(f"{primary}_p_holm"))]
        cells += [_cell(row.get(m)) for m in truth + calibration]
        cells += [_cell(row.get(k)) for k in ("parameters", "train_s_per_step", "peak_rss_mb", "s_per_volume",
                                              "evaluations_per_voxel")]
        status = row.get("status") or ""
        cells.append(html.escape(status if status == "done" else f"{status}: {row.get('error') or ''}"))
        body.append(cells)
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"


def pareto_plot(board: dict[str, Any], primary: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in board["rows"] if r.get(primary) is not None and r.get("s_per_volume")]
    if not rows:
        return None
    points = [(r["s_per_volume"], r[primary]) for r in rows]
    front = set(pareto_front(points, higher_is_better(primary)))
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (row, (t, q)) in enumerate(zip(rows, points, strict=True)):
        ax.scatter(t, q, color="tab:red" if i in front else "tab:blue", zorder=3)
        ax.annotate(row["entry"], (t, q), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ordered = sorted(points[i] for i in front)
    ax.step([p[0] for p in ordered], [p[1] for p in ordered], where="post", color="tab:red", alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("inference seconds per volume (log)")
    ax.set_ylabel(f"{primary} (mean over test subjects)")
    ax.set_title("quality against inference time (red: Pareto front)")
    ax.grid(alpha=0.3)
    return _png(fig)


def box_plot(board: dict[str, Any], records: dict[str, Any], primary: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [r["entry"] for r in board["rows"] if r.get(primary) is not None]
    if not entries:
        return None
    values = [[float(records[e]["mean"]["per_subject"][s][primary]) for s in board["subjects"]]
              for e in entries]
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(entries) + 2), 3.5))
    ax.boxplot(values)
    ax.set_xticks(range(1, len(entries) + 1), entries, rotation=30, ha="right")
    ax.set_ylabel(f"{primary} per test subject")
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def write_benchmark_page(out: Path, board: dict[str, Any], records: dict[str, Any],
                         conventions: list[str], primary: str, title: str) -> Path:
    """``OUT/report.html``; slices come from each evaluated entry's ``runs/<entry>/eval``."""
    plots = [p for p in (pareto_plot(board, primary), box_plot(board, records, primary)) if p]
    images = "".join(f'<img src="{p}" alt="benchmark plot" style="width:auto;max-width:48%">' for p in plots)
    preamble = (f"<h2>Leaderboard (ranked by {html.escape(primary)})</h2>"
                f"{leaderboard_table(board, primary)}<div class=\"row\">{images}</div>")
    folders = [out / "runs" / r["entry"] / "eval" for r in board["rows"]
               if r.get("status") == "done" and (out / "runs" / r["entry"] / "eval").is_dir()]
    models, views = collect(folders) if folders else ([], [])
    return write_report(out / "report.html", models, views, title=title, notes=conventions, max_slices=5,
                        preamble=preamble)
