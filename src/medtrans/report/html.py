"""One self-contained HTML file: summary table, per-subject metric tables and slice viewers.

Everything is inline (PNG slices as base64, a few lines of JS for the slider), so the file can be
mailed or archived alone and opens offline.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtrans.atomic import write_text
from medtrans.io import Volume
from medtrans.report.figures import encode_slices, pick_slices, to_display, window


@dataclass
class ModelResult:
    """One model's evaluation: per-subject metric rows (``subject`` + metric columns)."""

    name: str
    rows: list[dict[str, Any]]


@dataclass
class SubjectView:
    """The images shown for one subject, all resampled onto one grid (source, else target, else the
    first synthetic volume) when they are not already on it."""

    subject: str
    source: Volume | None
    synthetic: dict[str, Volume]
    target: Volume | None = None
    mask: Volume | None = None
    std: dict[str, Volume] = field(default_factory=dict)  # per model: std map of its samples

    @property
    def grid(self) -> Volume:
        for volume in (self.source, self.target, *self.synthetic.values()):
            if volume is not None:
                return volume
        raise ValueError(f"subject {self.subject} has no image to show")


def _numeric(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def metric_names(models: Sequence[ModelResult]) -> list[str]:
    """Columns holding numbers in any model's rows, in first-seen order (``subject`` excluded)."""
    names: list[str] = []
    for model in models:
        for row in model.rows:
            for key, value in row.items():
                if key != "subject" and key not in names and _numeric(value) is not None:
                    names.append(key)
    return names


def summarise(rows: Sequence[dict[str, Any]], metric: str) -> tuple[float, float, int] | None:
    """Mean, sample standard deviation and count of a metric over subjects."""
    values = [v for row in rows if (v := _numeric(row.get(metric))) is not None]
    if not values:
        return None
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return mean, (0.0 if std <= 1e-9 * abs(mean) else std), len(values)  # no rounding-noise sd


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def summary_table(models: Sequence[ModelResult], metrics: Sequence[str]) -> str:
    """Models × metrics, mean ± sd over subjects (n in the last column)."""
    body = []
    for model in models:
        cells, count = [model.name], 0
        for metric in metrics:
            stats = summarise(model.rows, metric)
            cells.append("–" if stats is None else f"{_fmt(stats[0])} ± {_fmt(stats[1])}")
            count = max(count, stats[2] if stats else 0)
        body.append([*cells, str(count)])
    return _table(["model", *metrics, "n"], body)


def _subject_table(models: Sequence[ModelResult], subject: str, metrics: Sequence[str]) -> str:
    body = []
    for model in models:
        row = next((r for r in model.rows if str(r.get("subject")) == subject), None)
        if row is not None:
            body.append([model.name, *("–" if (v := _numeric(row.get(m))) is None else _fmt(v)
                                       for m in metrics)])
    return _table(["model", *metrics], body) if body else "<p>no metrics for this subject</p>"


def _panels(view: SubjectView, max_slices: int) -> tuple[list[str], list[list[str]], int]:
    """Captions and per-slice PNG URIs: source | synthetic | target | error map, per model."""
    from medtrans.io.geometry import resample_like

    grid = view.grid

    def on_grid(volume: Volume, order: int) -> np.ndarray:
        same = volume.shape == grid.shape and np.allclose(volume.affine, grid.affine, atol=1e-4)
        return to_display((volume if same else resample_like(volume, grid, order=order)).array,
                          grid.affine).astype(np.float32)

    source = on_grid(view.source, 1) if view.source is not None else None
    target = on_grid(view.target, 1) if view.target is not None else None
    synthetic = {name: on_grid(volume, 1) for name, volume in view.synthetic.items()}
    stds = {name: on_grid(volume, 1) for name, volume in view.std.items()}
    mask = on_grid(view.mask, 0) > 0.5 if view.mask is not None else None
    shown = on_grid(grid, 1)
    foreground = mask if mask is not None else shown > np.percentile(shown, 5)
    indices = pick_slices(foreground, max_slices)
    captions, panels = [], []
    if source is not None:
        captions.append("source")
        panels.append(encode_slices(source, indices, window(source, mask)))
    reference = target if target is not None else next(iter(synthetic.values()), shown)
    limits = window(reference, mask)
    for name, array in synthetic.items():
        captions.append(f"synthetic · {name}")
        panels.append(encode_slices(array, indices, limits))
    if target is not None:
        captions.append("target")
        panels.append(encode_slices(target, indices, limits))
        errors = {name: np.abs(array - target) for name, array in synthetic.items()}
        top = max((window(e, mask, 0, 99)[1] for e in errors.values()), default=1.0)
        for name, error in errors.items():
            captions.append(f"|error| · {name} (0–{_fmt(top)})")
            panels.append(encode_slices(error, indices, (0.0, top), colormap="magma"))
    else:
        top = max((window(s, mask, 0, 99)[1] for s in stds.values()), default=1.0)
    # on the error maps' scale: a calibrated std map looks like the error it predicts
    for name, std in stds.items():
        captions.append(f"std · {name} (0–{_fmt(top)})")
        panels.append(encode_slices(std, indices, (0.0, top), colormap="magma"))
    return captions, panels, len(indices)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f2f2f2}
.row{display:flex;flex-wrap:wrap;gap:.5em}figure{margin:0;text-align:center;font-size:.85em}
figure img{width:180px;image-rendering:pixelated;background:#000;display:block}
.subject{border-top:1px solid #ddd;margin-top:1.2em;padding-top:.5em}
.note{color:#666;font-size:.9em}
"""

_SCRIPT = """
function showSlice(slider){
  const id = slider.dataset.subject, data = JSON.parse(document.getElementById('data-' + id).textContent);
  data.forEach((uris, j) => { document.getElementById('img-' + id + '-' + j).src = uris[slider.value]; });
  document.getElementById('label-' + id).textContent = (Number(slider.value) + 1) + ' / ' + data[0].length;
}
"""


def _subject_section(index: int, view: SubjectView, models: Sequence[ModelResult], metrics: Sequence[str],
                     max_slices: int) -> str:
    captions, panels, count = _panels(view, max_slices)
    middle = count // 2
    figures = "".join(
        f'<figure><img id="img-{index}-{j}" src="{uris[middle]}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for j, (caption, uris) in enumerate(zip(captions, panels, strict=True))
    )
    slider = (f'<input type="range" min="0" max="{count - 1}" value="{middle}" data-subject="{index}" '
              f'oninput="showSlice(this)"> slice <span id="label-{index}">{middle + 1} / {count}</span>')
    data = json.dumps(panels).replace("</", "<\\/")
    return (f'<section class="subject" id="subject-{index}"><h2>{html.escape(view.subject)}</h2>'
            f"{_subject_table(models, view.subject, metrics)}<div>{slider}</div>"
            f'<div class="row">{figures}</div>'
            f'<script type="application/json" id="data-{index}">{data}</script></section>')


def render_report(models: Sequence[ModelResult], subjects: Sequence[SubjectView],
                  title: str = "medtrans report", notes: Sequence[str] = (), max_slices: int = 24,
                  preamble: str = "") -> str:
    """The whole document as a string (see :func:`write_report`); ``preamble`` is trusted HTML shown
    after the notes (the benchmark's leaderboard and plots)."""
    metrics = metric_names(models)
    sections = "".join(_subject_section(i, v, models, metrics, max_slices) for i, v in enumerate(subjects))
    notes_html = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body><h1>{html.escape(title)}</h1>"
        f"{notes_html}{preamble}<h2>Summary (mean ± sd over subjects)</h2>{summary_table(models, metrics)}"
        f'<p class="note">Images: axial slices, radiological view (patient right on the left); synthetic '
        f"and target share the target's 0.5–99.5th percentile window; error maps share one scale per "
        f"subject.</p>{sections}</body></html>"
    )


def write_report(path: str | os.PathLike, models: Sequence[ModelResult], subjects: Sequence[SubjectView],
                 title: str = "medtrans report", notes: Sequence[str] = (), max_slices: int = 24,
                 preamble: str = "") -> Path:
    """Write the report atomically (temporary file in the same folder, then rename)."""
    text = render_report(models, subjects, title=title, notes=notes, max_slices=max_slices,
                         preamble=preamble)
    return write_text(path, text)
