"""Self-contained HTML reports of translated volumes and their metrics."""

from medtrans.report.html import ModelResult, SubjectView, render_report, write_report

__all__ = ["ModelResult", "SubjectView", "render_report", "write_report"]
