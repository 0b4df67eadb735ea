"""Cross-rank traffic of one MoE step: rows per (token, expert) pair vs per (token, destination rank).

A wire that sends one row per routed (token, expert) pair moves a token K times when its K experts
sit on K ranks, and also when several of them sit on the same rank; a wire that sends one row per
(token, destination rank) moves it once per rank it visits. Rows a rank keeps for itself never cross.
Rank r owns experts ``[r*E/R, (r+1)*E/R)``. Dispatch sends the rows out and combine sends the same
number back, so a step moves every crossing row twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from moecomm.checks import check_topk_ids, check_topology

PAGE_BYTES = 4096
UNITS = ("pair", "token")


def destination_ranks(topk_ids: torch.Tensor, num_experts: int, num_ranks: int) -> torch.Tensor:
    """``[T, K]`` int64: the rank owning each expert of ``topk_ids [T, K]`` (int)."""
    check_topology(num_experts, num_ranks)
    ids = check_topk_ids(topk_ids, num_experts).to(torch.int64)
    return torch.div(ids, num_experts // num_ranks, rounding_mode="floor")


def even_source_ranks(num_tokens: int, num_ranks: int) -> torch.Tensor:
    """``[T]`` int64: tokens split into ``num_ranks`` contiguous, near-equal blocks (source rank of each)."""
    return torch.arange(num_tokens) * num_ranks // max(1, num_tokens)


def traffic_matrix(
    topk_ids: torch.Tensor, num_experts: int, num_ranks: int, source_ranks: torch.Tensor, unit: str = "pair"
) -> torch.Tensor:
    """``[R, R]`` int64 rows from source rank s (row) to destination rank d (column).

    Args:
        topk_ids: ``[T, K]`` int expert ids.
        num_experts: E, divisible by ``num_ranks``.
        num_ranks: R.
        source_ranks: ``[T]`` int64, the rank each token starts on.
        unit: ``"pair"`` (one row per (token, expert) pair) or ``"token"`` (one row per (token,
            destination rank): a token visits each rank once however many of its experts live there).
    """
    if unit not in UNITS:
        raise ValueError(f"unit: expected one of {', '.join(UNITS)}, got {unit!r}")
    destination = destination_ranks(topk_ids, num_experts, num_ranks)
    num_tokens = destination.shape[0]
    if source_ranks.shape != (num_tokens,):
        raise ValueError(f"source_ranks: expected shape ({num_tokens},), got {tuple(source_ranks.shape)}")
    source = source_ranks.to(torch.int64).unsqueeze(1).expand_as(destination)
    if unit == "token":
        visits = torch.zeros((num_tokens, num_ranks), dtype=torch.bool).scatter_(1, destination, True)
        token, destination = visits.nonzero(as_tuple=True)
        source = source_ranks.to(torch.int64)[token]
    cells = source.reshape(-1) * num_ranks + destination.reshape(-1)
    return torch.bincount(cells, minlength=num_ranks * num_ranks).view(num_ranks, num_ranks)


def off_rank(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix [R, R]`` with its diagonal (rows a rank keeps) zeroed."""
    return matrix - torch.diag(torch.diag(matrix))


def step_rows_per_rank(matrix: torch.Tensor) -> torch.Tensor:
    """``[R]`` int64: rows each rank writes across ranks in one step, from ``matrix [R, R]``: its crossing
    rows out in dispatch plus the crossing rows it received, sent back in combine."""
    crossing = off_rank(matrix)
    return crossing.sum(1) + crossing.sum(0)


def pages(num_bytes: int) -> int:
    """4 KiB pages ``num_bytes`` occupy."""
    return math.ceil(num_bytes / PAGE_BYTES)


@dataclass(frozen=True)
class StepTraffic:
    """Cross-rank traffic of one step (all ranks' routing), in both units.

    Attributes:
        pair_rows: ``[R, R]`` int64 source x destination rows per (token, expert) pair.
        token_rows: ``[R, R]`` int64 source x destination rows per (token, destination rank).
        num_tokens: tokens over all ranks.
        row_bytes: bytes of one row (H x element size).
    """

    pair_rows: torch.Tensor
    token_rows: torch.Tensor
    num_tokens: int
    row_bytes: int

    @classmethod
    def of(
        cls, topk_ids: torch.Tensor, num_experts: int, num_ranks: int, source_ranks: torch.Tensor, row_bytes: int
    ) -> StepTraffic:
        """Both matrices of ``topk_ids [T, K]`` whose tokens start on ``source_ranks [T]``."""
        return cls(
            traffic_matrix(topk_ids, num_experts, num_ranks, source_ranks, "pair"),
            traffic_matrix(topk_ids, num_experts, num_ranks, source_ranks, "token"),
            int(topk_ids.shape[0]),
            int(row_bytes),
        )

    def matrix(self, unit: str) -> torch.Tensor:
        if unit not in UNITS:
            raise ValueError(f"unit: expected one of {', '.join(UNITS)}, got {unit!r}")
        return self.pair_rows if unit == "pair" else self.token_rows

    def crossing_rows_per_token(self, unit: str) -> float:
        """Rows that cross ranks per token (dispatch only; combine sends as many back)."""
        return int(off_rank(self.matrix(unit)).sum()) / self.num_tokens if self.num_tokens else 0.0

    def step_bytes_per_rank(self, unit: str) -> list[int]:
        """Bytes each rank writes across ranks in one step (dispatch out + combine back)."""
        return [int(rows) * self.row_bytes for rows in step_rows_per_rank(self.matrix(unit)).tolist()]

    def summary(self) -> dict[str, float | int | list[int]]:
        """Plain numbers for a benchmark record (``token``: the bytes that must cross ranks)."""
        facts: dict[str, float | int | list[int]] = {}
        for unit in UNITS:
            per_rank = self.step_bytes_per_rank(unit)
            rows_per_token = self.crossing_rows_per_token(unit)
            facts[f"crossing_rows_per_token_{unit}"] = rows_per_token
            facts[f"crossing_bytes_per_token_{unit}"] = rows_per_token * self.row_bytes
            facts[f"crossing_bytes_per_rank_{unit}"] = per_rank
            facts[f"crossing_bytes_max_rank_{unit}"] = max(per_rank, default=0)
        return facts
