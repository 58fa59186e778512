"""The run directory's human-facing outputs: PNG plots and ``report.md``."""

from drencoder.reporting.plots import plot_run
from drencoder.reporting.report import write_report

__all__ = ["plot_run", "write_report"]
