"""SQL queries and the static HTML corpus report (``midicorpus report``)."""

from __future__ import annotations

from reports.report import Figure, ReportError, figures, write_report

__all__ = ["Figure", "ReportError", "figures", "write_report"]
