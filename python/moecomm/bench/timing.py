"""Interleaved timing: every peer of a comparison runs once per round, rounds repeat.

Interleaving spreads the noise of a shared machine (other processes, frequency changes) over all
peers alike, so ratios measured in one run are fair even when absolute times drift.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from moecomm.checks import check_choice, check_non_negative_int, check_positive_int


@dataclass(frozen=True)
class Timing:
    """Wall-clock samples of one case, in seconds, with their summary statistics."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return quantile(self.samples, 0.5)

    @property
    def p10(self) -> float:
        return quantile(self.samples, 0.1)

    @property
    def p90(self) -> float:
        return quantile(self.samples, 0.9)


def quantile(samples: tuple[float, ...] | list[float], q: float) -> float:
    """Linear-interpolation quantile ``q`` in [0, 1] of a non-empty list of floats."""
    if not samples:
        raise ValueError("samples: expected at least one sample")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q: expected a number in [0, 1], got {q!r}")
    return float(torch.quantile(torch.tensor(samples, dtype=torch.float64), q))


def time_once(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (perf_counter)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def minor_page_faults() -> int:
    """Minor page faults of this process so far (``getrusage(RUSAGE_SELF).ru_minflt``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def counting_faults(fn: Callable[[], object], faults: list[int]) -> Callable[[], object]:
    """``fn`` that appends the minor page faults of each call (delta around it) to ``faults``."""

    def counted() -> object:
        before = minor_page_faults()
        result = fn()
        faults.append(minor_page_faults() - before)
        return result

    return counted


def measure_interleaved(
    cases: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int,
    on_round: Callable[[int], None] | None = None,
    timer: Callable[[Callable[[], object]], float] = time_once,
) -> dict[str, Timing]:
    """Times every case of ``cases`` once per round, ``warmup`` untimed rounds then ``repeats`` timed ones.

    Args:
        cases: name -> zero-argument callable. Round r runs them in the mapping's order rotated by r, so no
            case always runs first (right after the previous round's last case) and carries a position bias;
            the order is deterministic, so ranks of a multi-process benchmark stay in lockstep.
        repeats: timed rounds (>= 1).
        warmup: untimed rounds first (>= 0).
        on_round: called with the round index after each round (progress bars).
        timer: measures one call in seconds; multi-process benchmarks pass a timer that synchronises
            ranks and returns the slowest rank's time.

    Returns:
        name -> :class:`Timing` with ``repeats`` samples.
    """
    check_positive_int("repeats", repeats)
    check_non_negative_int("warmup", warmup)
    if not cases:
        raise ValueError("cases: expected at least one case to time")
    samples: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases.items())
    for round_index in range(warmup + repeats):
        shift = round_index % len(order)
        for name, fn in order[shift:] + order[:shift]:
            elapsed = timer(fn)
            if round_index >= warmup:
                samples[name].append(elapsed)
        if on_round is not None:
            on_round(round_index)
    return {name: Timing(tuple(values)) for name, values in samples.items()}


ALLOCATORS = ("default", "reuse")


def set_allocator(mode: str) -> bool:
    """``"reuse"``: tells glibc malloc to keep freed large blocks (mallopt), so an op that allocates a
    fresh ``[N, H]`` output per call reuses warm pages instead of page-faulting a new mmap each time.
    ``"default"``: leaves malloc alone (what a plain process gets). Returns True when the setting applied
    (False off glibc). Affects only this process, and only allocations made after the call."""
    check_choice("allocator", mode, ALLOCATORS)
    if mode == "default":
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, (1 << 31) - 1))
