"""Capacities: water-filling cap for a drop ratio, and the GShard/Megatron capacity factor."""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from moecomm.checks import INT64_MAX, check_non_negative_int, check_positive_int, check_ratio, exact_sum


def drop_budget(total_pairs: int, drop_ratio: float) -> int:
    """``floor(drop_ratio * total_pairs)``, computed exactly (0.29 * 100 is 29, not 28)."""
    check_non_negative_int("total_pairs", total_pairs)
    ratio = check_ratio("drop_ratio", drop_ratio)
    return math.floor(Fraction(repr(ratio)) * total_pairs)


def dropped_above(loads: torch.Tensor, cap: int) -> int:
    """``sum(max(0, load - cap))`` over ``loads [B]`` (any integer dtype)."""
    return int((loads.to(torch.int64) - cap).clamp_min(0).sum())


def capacity_for_ratio(loads: torch.Tensor, drop_ratio: float) -> int:
    """The smallest cap C with ``sum(max(0, load - C)) <= floor(drop_ratio * sum(loads))``.

    Water-filling: the most loaded buckets are cut first, so the largest load falls as far as the
    budget allows. Args: ``loads [B]`` any integer dtype, each >= 0; ``drop_ratio`` in [0, 1).
    With ``drop_ratio == 0`` the cap is ``max(loads)`` (nothing dropped).
    """
    if not isinstance(loads, torch.Tensor) or loads.dim() != 1:
        raise ValueError(f"loads: expected a 1-D tensor, got {getattr(loads, 'shape', type(loads).__name__)}")
    if loads.dtype.is_floating_point or loads.dtype.is_complex or loads.dtype == torch.bool:
        raise TypeError(f"loads: expected an integer dtype, got {loads.dtype}")
    loads = loads.detach().to("cpu", torch.int64)
    if loads.numel() and int(loads.min()) < 0:
        raise ValueError(f"loads: expected every load >= 0, got {int(loads.min())}")
    high = int(loads.max()) if loads.numel() else 0
    total = exact_sum(loads, high)
    if total > INT64_MAX:
        raise ValueError(f"loads: expected a total load of at most 2**63 - 1, got {total}")
    budget = drop_budget(total, drop_ratio)
    low = 0
    while low < high:  # dropped_above is non-increasing in the cap: binary search
        mid = (low + high) // 2
        if dropped_above(loads, mid) <= budget:
            high = mid
        else:
            low = mid + 1
    return low


def capacity_from_factor(num_tokens: int, top_k: int, num_experts: int, factor: float) -> int:
    """Per-expert capacity ``ceil(factor * T * K / E)``, with Megatron-Core's exact float expression."""
    check_non_negative_int("num_tokens", num_tokens)
    check_positive_int("top_k", top_k)
    check_positive_int("num_experts", num_experts)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0 or math.isinf(factor):
        raise ValueError(f"factor: expected a finite number > 0, got {factor!r}")
    return math.ceil((num_tokens * top_k / num_experts) * factor)
