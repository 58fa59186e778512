"""Comparing the methods of docs/design.md §5 at matched privacy: a grid of ordinary runs
(methods × target ε × seeds), each final adapter scored, one table, plots and verdicts."""

from drencoder.compare.execute import run_comparison
from drencoder.compare.plan import CompareSpec, PlannedRun, plan_runs
from drencoder.compare.table import summarize_comparison

__all__ = ["CompareSpec", "PlannedRun", "plan_runs", "run_comparison", "summarize_comparison"]
