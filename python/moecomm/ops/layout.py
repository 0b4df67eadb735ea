"""route_layout: where every (token, k) pair goes in expert-major order (native counting sort)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moecomm import _C
from moecomm.ops._checks import check_is_kept, check_topk_ids, check_topology
from moecomm.ops._native import num_threads, tensor_arg


@dataclass(frozen=True)
class RouteLayout:
    """The expert-major order of a step's routed (token, k) pairs.

    Attributes:
        topk_ids: ``[T, K]`` int32/int64, the routing the layout was built from.
        tokens_per_expert: ``[E]`` int64, kept pairs routed to each expert.
        tokens_per_rank: ``[R]`` int64, kept pairs routed to each rank's block of ``E / R`` experts.
        row_of_pair: ``[T, K]`` int64, row of pair (t, k) in expert-major order (stable: within an
            expert, token order, then k); ``-1`` for a dropped pair.
        num_experts: E.
        num_ranks: R (rank r owns experts ``[r*E/R, (r+1)*E/R)``).
    """

    topk_ids: torch.Tensor
    tokens_per_expert: torch.Tensor
    tokens_per_rank: torch.Tensor
    row_of_pair: torch.Tensor
    num_experts: int
    num_ranks: int

    @property
    def num_rows(self) -> int:
        """Rows in expert-major order (kept pairs)."""
        return int(self.tokens_per_expert.sum())

    @property
    def expert_offsets(self) -> torch.Tensor:
        """``[E + 1]`` int64: first row of each expert, then the total."""
        zero = self.tokens_per_expert.new_zeros(1)
        return torch.cat([zero, torch.cumsum(self.tokens_per_expert, 0)])


def tokens_per_rank_of(tokens_per_expert: torch.Tensor, num_ranks: int) -> torch.Tensor:
    """Sums ``tokens_per_expert [E]`` over each rank's contiguous block of experts -> ``[R]``."""
    return tokens_per_expert.view(num_ranks, -1).sum(dim=1)


def route_layout(
    topk_ids: torch.Tensor, num_experts: int, num_ranks: int = 1, is_kept: torch.Tensor | None = None
) -> RouteLayout:
    """Counting-sorts the (token, k) pairs of ``topk_ids`` by expert, O(T*K).

    Args:
        topk_ids: ``[T, K]`` int32 or int64 expert ids in ``[0, num_experts)``, CPU.
        num_experts: E, divisible by ``num_ranks``.
        num_ranks: R, ranks owning contiguous blocks of ``E / R`` experts.
        is_kept: optional ``[T, K]`` bool; dropped pairs get row ``-1`` and are not counted.
    """
    num_experts, num_ranks = check_topology(num_experts, num_ranks)
    ids = check_topk_ids(topk_ids)
    mask = None if is_kept is None else check_is_kept(is_kept, ids).contiguous()
    ids_c = ids.contiguous()
    tokens_per_expert = torch.empty(num_experts, dtype=torch.int64)
    row_of_pair = torch.empty(ids.shape, dtype=torch.int64)
    _C.route_layout(
        tensor_arg("topk_ids", ids_c),
        num_experts,
        None if mask is None else tensor_arg("is_kept", mask),
        tensor_arg("tokens_per_expert", tokens_per_expert),
        tensor_arg("row_of_pair", row_of_pair),
        num_threads(),
    )
    return RouteLayout(
        topk_ids=ids,
        tokens_per_expert=tokens_per_expert,
        tokens_per_rank=tokens_per_rank_of(tokens_per_expert, num_ranks),
        row_of_pair=row_of_pair,
        num_experts=num_experts,
        num_ranks=num_ranks,
    )
