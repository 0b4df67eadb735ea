"""The handle a dispatch returns (everything combine needs) and the step's drop statistics."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from moecomm.ops import RouteLayout


@dataclass(frozen=True)
class DropStats:
    """Drop statistics of one dispatch step; global figures are identical on every rank.

    Attributes:
        dropped_pairs: routed (token, expert) pairs dropped over all ranks.
        total_pairs: routed pairs over all ranks (sum of T * K).
        local_dropped_pairs: pairs this rank dropped (it sent fewer rows).
        received_per_rank: ``[R]`` int64, rows each rank received (its expert load after drops).
        cap: the cap in force on this rank, in rows per bucket: the water-filling cap C of
            ``token_drop_ratio`` (per rank or per expert, by ``drop_scope``), the per-expert cap of
            ``capacity_factor``, or the per-(source, destination) buffer rows of ``alltoall``; None if
            nothing capped the step.
        scope: what ``cap`` counts: ``"rank"``, ``"expert"`` or ``"pair"`` (alltoall buffer); None with no cap.
        rows_sent: rows this rank sent to other ranks in this step's dispatch (a token-level dispatch
            sends a token once per destination rank; a pair-level one once per kept (token, expert) pair).
        bytes_sent: bytes of those rows (and their routing metadata) that crossed to other ranks in dispatch.
    """

    dropped_pairs: int
    total_pairs: int
    local_dropped_pairs: int
    received_per_rank: torch.Tensor
    cap: int | None
    scope: str | None
    rows_sent: int = 0
    bytes_sent: int = 0

    @property
    def dropped_share(self) -> float:
        """``dropped_pairs / total_pairs`` (0 for an empty step)."""
        return self.dropped_pairs / self.total_pairs if self.total_pairs else 0.0

    @property
    def max_load(self) -> int:
        """Rows received by the most loaded rank."""
        return int(self.received_per_rank.max()) if self.received_per_rank.numel() else 0

    @property
    def mean_load(self) -> float:
        """Mean rows received per rank."""
        return float(self.received_per_rank.double().mean()) if self.received_per_rank.numel() else 0.0

    @property
    def imbalance(self) -> float:
        """``max_load / mean_load`` (1.0 when perfectly balanced or empty)."""
        mean = self.mean_load
        return self.max_load / mean if mean else 1.0

    def as_dict(self) -> dict[str, object]:
        """Plain numbers for logs and metrics."""
        return {
            "dropped_pairs": self.dropped_pairs,
            "total_pairs": self.total_pairs,
            "dropped_share": self.dropped_share,
            "local_dropped_pairs": self.local_dropped_pairs,
            "received_per_rank": self.received_per_rank.tolist(),
            "max_load": self.max_load,
            "mean_load": self.mean_load,
            "imbalance": self.imbalance,
            "cap": self.cap,
            "scope": self.scope,
            "rows_sent": self.rows_sent,
            "bytes_sent": self.bytes_sent,
        }


@dataclass(frozen=True)
class DispatchHandle:
    """What :meth:`combine` needs from a :meth:`dispatch` (no hidden state in the dispatcher).

    Attributes:
        dispatcher: name of the dispatcher that made it (combine checks it).
        step: the dispatcher's step number of this dispatch (combine refuses a stale handle).
        num_tokens: T of this rank's ``dispatch``.
        is_kept: ``[T, K]`` bool, the pairs this rank sent (False = dropped).
        topk_weights: ``[T, K]`` float32 weights combine applies (renormalised if configured).
        layout: this rank's :class:`~moecomm.ops.RouteLayout` of the kept pairs (over all experts).
        tokens_per_local_expert: ``[E_local]`` int64 rows of ``expert_x`` per local expert.
        received_from_rank: ``[R, E_local]`` int64 rows received from each source rank per local expert.
        stats: the step's :class:`DropStats`.
    """

    dispatcher: str
    step: int
    num_tokens: int
    is_kept: torch.Tensor
    topk_weights: torch.Tensor
    layout: RouteLayout
    tokens_per_local_expert: torch.Tensor
    received_from_rank: torch.Tensor
    stats: DropStats

    def unit_weights(self) -> DispatchHandle:
        """This handle with every kept pair's weight 1 (combine then sums the rows it is given, unweighted; the
        differentiable step applies the weights on the expert side, see :mod:`moecomm.comm.autograd`)."""
        return dataclasses.replace(self, topk_weights=self.is_kept.to(torch.float32))

    @property
    def num_received(self) -> int:
        """N_recv, rows of ``expert_x``."""
        return int(self.tokens_per_local_expert.sum())
