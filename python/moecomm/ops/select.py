"""select_kept: which (token, k) pairs survive a per-expert or per-rank capacity."""

from __future__ import annotations

import torch

from moecomm import _C
from moecomm.ops._checks import (
    check_choice,
    check_tensor,
    check_topk_ids,
    check_topk_weights,
    check_topology,
)
from moecomm.ops._native import tensor_arg

SCOPES = ("expert", "rank")
POLICIES = ("position", "probs")


def bucket_capacity(capacity: int | torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Checks ``capacity`` (an int, or ``[num_buckets]`` integer tensor; each >= 0) -> ``[B]`` int64."""
    if isinstance(capacity, torch.Tensor):
        cap = check_tensor("capacity", capacity, dim=1, dtypes=(torch.int32, torch.int64), cpu_only=False)
        if cap.numel() != num_buckets:
            raise ValueError(f"capacity: expected {num_buckets} per-bucket capacities, got {cap.numel()}")
        cap = cap.detach().to("cpu", torch.int64).contiguous()
    elif isinstance(capacity, int) and not isinstance(capacity, bool):
        cap = torch.full((num_buckets,), capacity, dtype=torch.int64)
    else:
        raise TypeError(f"capacity: expected an int or an integer tensor, got {type(capacity).__name__}")
    if cap.numel() and int(cap.min()) < 0:
        raise ValueError(f"capacity: expected every capacity >= 0, got {int(cap.min())}")
    return cap


def check_select_args(
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor | None,
    num_experts: int,
    capacity: int | torch.Tensor,
    scope: str,
    num_ranks: int,
    policy: str,
) -> tuple[torch.Tensor, torch.Tensor | None, int, torch.Tensor]:
    """Validates select_kept's arguments -> (ids, float32 weights or None, experts per bucket, caps)."""
    num_experts, num_ranks = check_topology(num_experts, num_ranks)
    check_choice("scope", scope, SCOPES)
    check_choice("policy", policy, POLICIES)
    ids = check_topk_ids(topk_ids)
    weights = None
    if policy == "probs":
        if topk_weights is None:
            raise ValueError("topk_weights: required with policy='probs'")
        weights = check_topk_weights(topk_weights, ids).float().contiguous()
        if weights.numel() and bool(torch.isnan(weights).any()):
            raise ValueError("topk_weights: contains NaN")
    elif topk_weights is not None:
        check_topk_weights(topk_weights, ids)
    experts_per_bucket = 1 if scope == "expert" else num_experts // num_ranks
    return ids, weights, experts_per_bucket, bucket_capacity(capacity, num_experts // experts_per_bucket)


def select_kept(
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor | None,
    num_experts: int,
    *,
    capacity: int | torch.Tensor,
    scope: str = "expert",
    num_ranks: int = 1,
    policy: str = "position",
) -> torch.Tensor:
    """Marks the (token, k) pairs kept when each bucket holds at most its capacity.

    Args:
        topk_ids: ``[T, K]`` int32/int64 expert ids, CPU.
        topk_weights: ``[T, K]`` float32/float16/bfloat16 gate weights (needed for ``policy="probs"``).
        num_experts: E.
        capacity: an int for every bucket, or ``[B]`` int tensor (B = E for scope "expert", R for "rank").
        scope: ``"expert"`` caps each expert; ``"rank"`` caps each destination rank's block of E/R experts.
        num_ranks: R.
        policy: ``"position"`` keeps earlier pairs (token index, then k); ``"probs"`` keeps higher
            weights, ties by token index, then k.

    Returns:
        ``is_kept``: ``[T, K]`` bool.
    """
    ids, weights, experts_per_bucket, cap = check_select_args(
        topk_ids, topk_weights, num_experts, capacity, scope, num_ranks, policy
    )
    ids_c = ids.contiguous()
    is_kept = torch.empty(ids.shape, dtype=torch.bool)
    _C.select_kept(
        tensor_arg("topk_ids", ids_c),
        num_experts,
        experts_per_bucket,
        tensor_arg("capacity", cap),
        None if weights is None else tensor_arg("topk_weights", weights),
        tensor_arg("is_kept", is_kept),
    )
    return is_kept
