"""Drop statistics of the plugin's MoE layers, summed over layers and logged every N engine steps."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from moecomm.comm.handle import DropStats

# A child of vLLM's "vllm" logger, so vLLM's log configuration (level, format, handlers) applies.
logger = logging.getLogger("vllm.moecomm")


class DropStatsLog:
    """Accumulates the DropStats of every MoE layer call and logs a summary every ``every`` steps.

    A step is one model forward: it begins each time the first layer that ever reported reports again.

    Args:
        every: log after this many steps (0 = never log).
        rank: this process's EP rank; only rank 0 logs (the figures are global, identical on every rank).
        emit: where the summary line goes (default: this module's logger at INFO).
    """

    def __init__(self, every: int, rank: int, emit: Callable[[str], None] | None = None) -> None:
        self.every = every
        self.rank = rank
        self.emit = emit if emit is not None else logger.info
        self.first_layer: str | None = None
        self.steps = 0
        self._reset()

    def _reset(self) -> None:
        self.layer_calls = 0
        self.dropped_pairs = 0
        self.total_pairs = 0
        self.received_per_rank: torch.Tensor | None = None

    def record(self, layer_name: str, stats: DropStats) -> None:
        """Adds one layer call's statistics (``stats.received_per_rank``: ``[R]`` int64 rows per EP rank)."""
        if self.every <= 0:
            return
        if self.first_layer is None:
            self.first_layer = layer_name
        if layer_name == self.first_layer:
            if self.steps and self.steps % self.every == 0 and self.layer_calls:
                self.flush()
            self.steps += 1
        self.layer_calls += 1
        self.dropped_pairs += int(stats.dropped_pairs)
        self.total_pairs += int(stats.total_pairs)
        received = stats.received_per_rank.to(torch.int64)
        self.received_per_rank = received if self.received_per_rank is None else self.received_per_rank + received

    def summary(self) -> str:
        """One log line: dropped share, and max / mean rows received per EP rank, over the window."""
        received = self.received_per_rank if self.received_per_rank is not None else torch.zeros(1, dtype=torch.int64)
        max_load, mean_load = int(received.max()), float(received.double().mean())
        share = self.dropped_pairs / self.total_pairs if self.total_pairs else 0.0
        return (
            f"moecomm drop stats (steps {self.steps - min(self.steps, self.every) + 1}-{self.steps}, "
            f"{self.layer_calls} MoE layer calls): dropped share {share:.4f} "
            f"({self.dropped_pairs}/{self.total_pairs} pairs), load per EP rank max {max_load} "
            f"mean {mean_load:.1f} (max/mean {max_load / mean_load if mean_load else 1.0:.3f}), "
            f"received per rank {received.tolist()}"
        )

    def flush(self) -> None:
        """Logs the window's summary (on rank 0) and starts a new window."""
        if self.rank == 0 and self.layer_calls:
            self.emit(self.summary())
        self._reset()


_process_log: DropStatsLog | None = None


def process_stats_log(every: int, rank: int) -> DropStatsLog:
    """The one DropStatsLog of this process, shared by all its MoE layers (created on first call)."""
    global _process_log
    if _process_log is None or _process_log.every != every or _process_log.rank != rank:
        _process_log = DropStatsLog(every, rank)
    return _process_log
