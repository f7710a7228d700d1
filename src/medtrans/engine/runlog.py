"""Training logs: ``logs/metrics.csv`` (long format, appendable), TensorBoard, PNG sample grids.

The CSV has one row per value (``step,epoch,name,value``) so that methods with different loss names,
validation rows and resumed runs all append to the same file without changing its header.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtrans.atomic import atomic_path

CSV_HEADER = ["step", "epoch", "name", "value"]


class MetricLog:
    """Appends scalars to ``metrics.csv`` and, when enabled, to TensorBoard under the same names."""

    def __init__(self, log_dir: Path, tensorboard: bool, start_step: int = 0) -> None:
        """Logging continues after ``start_step``: anything logged later than it is dropped first."""
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.log_dir / "metrics.csv"
        truncate_csv(self.csv_path, start_step)
        fresh = not self.csv_path.exists()
        self._file = open(self.csv_path, "a", newline="")  # noqa: SIM115 - kept open for the run
        self._csv = csv.writer(self._file)
        if fresh:
            self._csv.writerow(CSV_HEADER)
            self._file.flush()
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a crashed run wrote after the checkpoint we resume from
            self.writer = SummaryWriter(str(self.log_dir), purge_step=start_step + 1)

    def scalars(self, step: int, epoch: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._csv.writerow([step, epoch, name, repr(float(value))])
            if self.writer is not None:
                self.writer.add_scalar(name, value, step)
        self._file.flush()

    def figure(self, tag: str, figure: Any, step: int) -> None:
        if self.writer is not None:
            self.writer.add_figure(tag, figure, step, close=False)

    def close(self) -> None:
        self._file.close()
        if self.writer is not None:
            self.writer.close()


def truncate_csv(path: Path, last_step: int) -> None:
    """Keep only rows up to ``last_step`` (a resumed run re-logs what came after its checkpoint)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:  # a run killed before its first flush: start the file again, header first
        path.unlink()
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= last_step]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a metrics.csv as dicts with typed step, epoch and value."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{"step": int(r["step"]), "epoch": int(r["epoch"]), "name": r["name"], "value": float(r["value"])}
            for r in rows]


def sample_grid(rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], title: str) -> Any:
    """A matplotlib figure, one row per subject: source | prediction | target | |error|.

    Images are 2D model-space slices; source, prediction and target share one grey scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.1 * len(rows)), squeeze=False)
    for r, (subject, source, prediction, target) in enumerate(rows):
        lo, hi = float(np.min(target)), float(np.max(target))
        error = np.abs(prediction - target)
        panels = [("source", source, "gray", None), ("prediction", prediction, "gray", (lo, hi)),
                  ("target", target, "gray", (lo, hi)),
                  ("|error|", error, "magma", (0, max(hi - lo, 1e-6) / 2))]
        for c, (name, image, cmap, limits) in enumerate(panels):
            ax = axes[r, c]
            vmin, vmax = limits if limits else (None, None)
            ax.imshow(np.asarray(image, dtype=np.float32).T, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
        axes[r, 0].set_ylabel(subject, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(figure: Any, path: Path) -> Path:
    """PNG written atomically, then the figure closed."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=80, format="png")
    finally:
        plt.close(figure)
    return path
