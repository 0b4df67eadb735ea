"""route_layout: where every (token, k) pair goes in expert-major order (native counting sort); RouteLayout."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moecomm import _C
from moecomm.checks import ID_DTYPES, check_is_kept, check_tensor, check_topk_ids, check_topology, exact_sum
from moecomm.ops._device import reference_ops, runs_natively
from moecomm.ops._native import num_threads, tensor_arg
from moecomm.ops._out import new_tensor


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

    Every tensor lives on topk_ids' device. The ops check a layout's structure (:func:`check_layout`) and
    that ``row_of_pair`` covers the rows ``[0, sum(tokens_per_expert))`` exactly once before using it.
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


def check_layout(layout: object, device: torch.device) -> RouteLayout:
    """Checks a :class:`RouteLayout`'s structure (types, shapes, dtypes, ``device``, counts >= 0 summing
    to at most T*K) and returns it. That its rows cover ``[0, N)`` exactly once is checked where they
    are used: the native kernels, and the reference's own pass."""
    if not isinstance(layout, RouteLayout):
        raise TypeError(f"layout: expected a RouteLayout from route_layout(), got {type(layout).__name__}")
    try:
        check_topology(layout.num_experts, layout.num_ranks)
        ids = check_tensor("topk_ids", layout.topk_ids, dim=2, dtypes=ID_DTYPES, device=device)
        counts = check_tensor(
            "tokens_per_expert", layout.tokens_per_expert, dim=1, dtypes=(torch.int64,), device=device
        )
        rows = check_tensor("row_of_pair", layout.row_of_pair, dim=2, dtypes=(torch.int64,), device=device)
    except (TypeError, ValueError) as error:
        raise type(error)(f"layout: {error}") from None
    if rows.shape != ids.shape:
        raise ValueError(f"layout: row_of_pair has shape {list(rows.shape)}, topk_ids {list(ids.shape)}")
    if counts.numel() != layout.num_experts:
        raise ValueError(f"layout: tokens_per_expert has {counts.numel()} entries for {layout.num_experts} experts")
    if counts.numel() and int(counts.min()) < 0:
        raise ValueError(f"layout: tokens_per_expert holds a negative count {int(counts.min())}")
    total = exact_sum(counts, int(counts.max()) if counts.numel() else 0)
    if total > ids.numel():
        raise ValueError(f"layout: tokens_per_expert sums to {total} rows, more than the {ids.numel()} pairs")
    return layout


def route_layout(
    topk_ids: torch.Tensor, num_experts: int, num_ranks: int = 1, is_kept: torch.Tensor | None = None
) -> RouteLayout:
    """Counting-sorts the (token, k) pairs of ``topk_ids`` by expert, O(T*K).

    CPU tensors run natively; tensors on another device run the reference there.

    Args:
        topk_ids: ``[T, K]`` int32 or int64 expert ids in ``[0, num_experts)``.
        num_experts: E, divisible by ``num_ranks``.
        num_ranks: R, ranks owning contiguous blocks of ``E / R`` experts.
        is_kept: optional ``[T, K]`` bool on topk_ids' device; dropped pairs get row ``-1`` and are not counted.
    """
    if not runs_natively(topk_ids):
        return reference_ops().route_layout(topk_ids, num_experts, num_ranks, is_kept)
    num_experts, num_ranks = check_topology(num_experts, num_ranks)
    ids = check_topk_ids(topk_ids)
    mask = None if is_kept is None else check_is_kept(is_kept, ids).contiguous()
    ids_c = ids.contiguous()
    tokens_per_expert = new_tensor("num_experts", (num_experts,), dtype=torch.int64, device=ids.device)
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
