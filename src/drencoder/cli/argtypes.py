"""The argument types every command shares: each parses its text and checks its range, so
that a bad value stops at the command line with the flag named and the accepted range
stated. Light on purpose (no torch, no config): ``drencoder privacy`` uses them too."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from drencoder.devices import is_device


def device(text: str) -> str:
    """An argparse type: a torch device, cpu, cuda or cuda:N (the rule of ``model.device``)."""
    if not is_device(text):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    return text


def _range_text(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    return f"{left}{lo:g}, {'inf' if math.isinf(hi) else format(hi, 'g')}{right}"


def _in_range(value: float, lo: float, hi: float, lo_open: bool, hi_open: bool) -> bool:
    return (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)


def number(
    *,
    lo: float,
    hi: float = math.inf,
    lo_open: bool = False,
    hi_open: bool = True,
    integer: bool = False,
) -> Callable[[str], float | int]:
    """An argparse type: one number (an integer if ``integer``) in the given interval."""
    kind = "an integer" if integer else "a number"
    where = _range_text(lo, hi, lo_open, hi_open)

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind} in {where}, got {text!r}") from None
        if not math.isfinite(value) or not _in_range(value, lo, hi, lo_open, hi_open):
            raise argparse.ArgumentTypeError(f"must be {kind} in {where}, got {text}")
        return value

    return parse


def number_list(
    *, lo: float, lo_open: bool = False, integer: bool = False
) -> Callable[[str], tuple]:
    """An argparse type: comma-separated numbers (integers if ``integer``), each >= ``lo``
    (> ``lo`` if ``lo_open``)."""
    one = number(lo=lo, lo_open=lo_open, integer=integer)
    kind, example = ("integers", "0,1,2") if integer else ("numbers", "2,8")
    where = _range_text(lo, math.inf, lo_open, True)

    def parse(text: str) -> tuple:
        try:
            return tuple(one(x.strip()) for x in text.split(",") if x.strip())
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"expected {kind} like {example}, each in {where}, got {text!r}"
            ) from None

    return parse


def names(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated names; ``none`` alone is the empty list."""
    out = tuple(x.strip() for x in text.split(",") if x.strip())
    return () if out == ("none",) else out
