"""select_kept: which (token, k) pairs survive a per-expert or per-rank capacity."""

from __future__ import annotations

import numbers

import torch

from moecomm import _C
from moecomm.checks import (
    check_choice,
    check_non_negative_int,
    check_tensor,
    check_topk_ids,
    check_topk_weights,
    check_topology,
)
from moecomm.ops._device import reference_ops, runs_natively
from moecomm.ops._native import tensor_arg
from moecomm.ops._out import new_tensor

SCOPES = ("expert", "rank")
POLICIES = ("position", "probs")


def bucket_capacity(capacity: int | torch.Tensor, num_buckets: int, device: torch.device) -> torch.Tensor:
    """Checks ``capacity`` (an int, or a ``[num_buckets]`` integer tensor on ``device``; each >= 0)
    -> ``[B]`` int64 on ``device``."""
    if isinstance(capacity, torch.Tensor):
        cap = check_tensor("capacity", capacity, dim=1, dtypes=(torch.int32, torch.int64), device=device)
        if cap.numel() != num_buckets:
            raise ValueError(f"capacity: expected {num_buckets} per-bucket capacities, got {cap.numel()}")
        cap = cap.detach().to(torch.int64).contiguous()
        if cap.numel() and int(cap.min()) < 0:
            raise ValueError(f"capacity: expected every capacity >= 0, got {int(cap.min())}")
        return cap
    if isinstance(capacity, bool) or not isinstance(capacity, numbers.Integral):
        raise TypeError(f"capacity: expected an int or an integer tensor, got {type(capacity).__name__}")
    value = check_non_negative_int("capacity", capacity)
    return new_tensor("num_experts", (num_buckets,), dtype=torch.int64, device=device).fill_(value)


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
    ids = check_topk_ids(topk_ids, cpu_only=False)
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
    return ids, weights, experts_per_bucket, bucket_capacity(capacity, num_experts // experts_per_bucket, ids.device)


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

    CPU tensors run natively; tensors on another device run the reference there.

    Args:
        topk_ids: ``[T, K]`` int32/int64 expert ids.
        topk_weights: ``[T, K]`` float32/float16/bfloat16 gate weights (needed for ``policy="probs"``).
        num_experts: E.
        capacity: an int for every bucket, or ``[B]`` int tensor on topk_ids' device (B = E for scope
            "expert", R for "rank").
        scope: ``"expert"`` caps each expert; ``"rank"`` caps each destination rank's block of E/R experts.
        num_ranks: R.
        policy: ``"position"`` keeps earlier pairs (token index, then k); ``"probs"`` keeps higher
            weights, ties by token index, then k.

    Returns:
        ``is_kept``: ``[T, K]`` bool.
    """
    if not runs_natively(topk_ids):
        return reference_ops().select_kept(
            topk_ids, topk_weights, num_experts, capacity=capacity, scope=scope, num_ranks=num_ranks, policy=policy
        )
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
