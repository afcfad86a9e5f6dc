"""Helpers shared by the benchmarks: timing with warm-up, robust summaries, tables, CSV files and run conditions.

Timings are wall-clock (``time.perf_counter``). Summaries are medians, with the standard
error of the median estimated by a seeded bootstrap, so a few slow outliers (another
process taking the CPU) move them little. :class:`CpuMonitor` reports competition for the
CPUs during a run and :func:`pin_malloc` removes a source of bias from memory allocation
(see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import math
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results" / "benchmarks"


def median(samples: Sequence[float]) -> float:
    """The median of ``samples`` (NaN when empty)."""
    return float(np.median(samples)) if len(samples) else math.nan


def median_stderr(samples: Sequence[float], resamples: int = 2000, seed: int = 0) -> float:
    """Bootstrap standard error of the median; NaN with fewer than two samples."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size < 2:
        return math.nan
    rng = np.random.default_rng(seed)
    draws = rng.choice(values, size=(resamples, values.size), replace=True)
    return float(np.median(draws, axis=1).std(ddof=1))


@dataclass(frozen=True)
class Summary:
    """Median of repeated measurements, its standard error, the interquartile range and the count."""

    median: float
    stderr: float
    iqr: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        values = np.asarray(samples, dtype=np.float64)
        iqr = float(np.subtract(*np.percentile(values, [75, 25]))) if values.size else math.nan
        return cls(median(values), median_stderr(values), iqr, int(values.size))

    def scaled(self, factor: float) -> Summary:
        """The same summary in other units (e.g. seconds to milliseconds)."""
        return Summary(self.median * factor, self.stderr * factor, self.iqr * factor, self.n)


def ratio(numerator: Summary, denominator: Summary) -> tuple[float, float]:
    """``numerator.median / denominator.median`` and its standard error (first-order error propagation)."""
    if numerator is denominator:
        return 1.0, 0.0
    value = numerator.median / denominator.median
    relative = [s.stderr / s.median for s in (numerator, denominator) if math.isfinite(s.stderr) and s.median]
    return value, abs(value) * math.sqrt(sum(r * r for r in relative))


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds taken by each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def pin_malloc() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the OS; True if applied.

    By default glibc serves large blocks with ``mmap`` and returns freed memory to the OS,
    with thresholds that move with the allocation history. A training step at batch 128
    then pays about 16,000 page faults (10-20 ms here) or none, depending on what ran
    before, which biases A/B comparisons by more than the effects measured. With fixed
    thresholds (blocks up to 32 MiB from the heap, no trimming) every variant reuses its
    memory.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(libc.mallopt(m_mmap_threshold, 32 << 20))


def minor_faults() -> int:
    """Minor page faults of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def machine_note(malloc_pinned: bool) -> str:
    """One line on what the figures were measured with, including the load average."""
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), load average {load}, "
        f"malloc thresholds {'fixed' if malloc_pinned else 'glibc default'}"
    )


class CpuMonitor:
    """How busy other processes keep the CPUs while a benchmark runs (Linux only).

    When they are busy, torch's worker threads wait for one another at every parallel
    operation, which can make small operations ten times slower and the figures
    meaningless; the benchmarks print a warning then.
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        """Machine-wide busy CPU seconds, this process's CPU seconds and the wall time."""
        try:
            with open("/proc/stat") as handle:
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, handle.readline().split()[1:9])
        except (OSError, ValueError):
            return None
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return busy, usage.ru_utime + usage.ru_stime, time.perf_counter()

    def others(self) -> float | None:
        """Average number of CPUs used by other processes since this monitor was created."""
        now = self._sample()
        if self._start is None or now is None or now[2] <= self._start[2]:
            return None
        (busy0, own0, wall0), (busy1, own1, wall1) = self._start, now
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)

    def report(self, threshold: float = 0.25) -> str:
        """A line on the competition for the CPUs, a warning when it exceeds ``threshold`` CPUs."""
        others = self.others()
        if others is None:
            return "CPU use by other processes: unknown"
        line = f"Other processes used {others:.2f} of {os.cpu_count()} CPUs on average during the run"
        if others <= threshold:
            return line + "."
        return f"WARNING: {line}; the timings are unreliable. Rerun on an idle machine (or compare with --threads 1)."


def format_number(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant figures, without exponents for everyday magnitudes."""
    if not math.isfinite(value):
        return "-"
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        decimals = max(0, digits - 1 - math.floor(math.log10(abs(value)))) if value else 0
        return f"{value:,.{decimals}f}"
    return f"{value:.{digits - 1}e}"


def with_error(value: float, error: float, digits: int = 3) -> str:
    """``value ± error`` for a table cell."""
    if not math.isfinite(error):
        return format_number(value, digits)
    return f"{format_number(value, digits)} ± {format_number(error, 2)}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, columns right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(str(cell).rjust(width) for cell, width in zip(line, widths, strict=True)) for line in rows]
    header = "  ".join(h.rjust(width) for h, width in zip(headers, widths, strict=True))
    return "\n".join([header, "  ".join("-" * width for width in widths), *lines])


def write_csv(path: Path, rows: Sequence[dict[str, object]]) -> Path:
    """Write ``rows`` (dicts with the same keys) to ``path``, creating its folder; floats keep 6 significant figures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return path


def verdict(met: bool) -> str:
    """How a target's outcome is printed."""
    return "MET" if met else "MISSED"


def add_machine_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark shares: memory thresholds and torch threads."""
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="keep glibc's default memory thresholds (by default they are fixed, see pin_malloc)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice); 1 avoids stalls when other processes load the CPUs",
    )


def apply_machine_arguments(args: argparse.Namespace) -> bool:
    """Apply ``--threads`` and ``--system-malloc``; return whether the memory thresholds were fixed."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return not args.system_malloc and pin_malloc()
