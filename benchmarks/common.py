"""What every benchmark records beside its numbers, and where it writes them.

The CPU benchmarks run on a small machine that is shared with other work, so absolute times
move with the load; every script reports ratios of two things measured in the same run
(interleaved, medians over repetitions) and records the machine and its load here.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Date, CPU, core count, load, Python and (when imported) torch versions."""
    info = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "processor": platform.processor(),
        "cores": os.cpu_count(),
        "load_average_1m_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # the accountant benchmark does not need torch
        pass
    return info


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of the paired ratios ``numerators[i] / denominators[i]``.

    Pairs come from the same repetition (measured back to back), so a load spike that slows
    both sides of one pair cancels in its ratio; the median drops the pairs it did not.
    """
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError(
            f"need equally many numerators and denominators (>= 1), got "
            f"{len(numerators)} and {len(denominators)}"
        )
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


def sig(x: float, digits: int = 3) -> float | None:
    """``x`` rounded to ``digits`` significant digits (ratios span several decades); None for
    NaN (a standard error over one seed), which JSON cannot hold."""
    if x != x:
        return None
    return float(f"{x:.{digits}g}")


def write(name: str, result: dict) -> Path:
    """Add the load at the end, print ``result`` as JSON and write it to results/<name>.json."""
    result = {**result, "load_average_1m_end": round(os.getloadavg()[0], 2)}
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(text + "\n")
    return path
