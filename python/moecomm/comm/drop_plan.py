"""Drop planning: global count matrix -> water-filling cap -> per-source quotas -> ``is_kept``.

Every rank holds the same ``[R, E]`` count matrix after the count exchange, so every rank computes
the same cap and the same quotas; each source rank then keeps its quota of each bucket by the drop
policy (``ops.select_kept``), and rows are dropped on the sender before they travel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moecomm import ops
from moecomm.ops._checks import check_choice, check_topology

SCOPES = ("rank", "expert")


def bucket_counts(counts: torch.Tensor, scope: str, num_ranks: int) -> torch.Tensor:
    """Sums a ``[S, E]`` int64 (source, expert) count matrix into ``[S, B]`` buckets.

    B = E for ``scope="expert"``; B = ``num_ranks`` for ``scope="rank"`` (each destination rank's
    contiguous block of E / R experts).
    """
    check_choice("scope", scope, SCOPES)
    if scope == "expert":
        return counts
    return counts.view(counts.shape[0], num_ranks, -1).sum(dim=2)


def split_quota(keep: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Splits each bucket's kept rows over its sources in proportion to their counts.

    Largest remainder: source s first gets ``floor(keep[b] * counts[s, b] / load[b])``, then the
    rows still unassigned go one each to the largest remainders, ties to the lower source rank.

    Args:
        keep: ``[B]`` int64, rows bucket b keeps, each in ``[0, load[b]]`` (load = counts.sum(0)).
        counts: ``[S, B]`` int64 (source, bucket) counts, each >= 0.

    Returns:
        ``[S, B]`` int64 quotas with ``quota <= counts`` and ``quota.sum(0) == keep``.
    """
    if keep.dim() != 1 or counts.dim() != 2 or counts.shape[1] != keep.shape[0]:
        raise ValueError(f"keep/counts: expected [B] and [S, B], got {list(keep.shape)} and {list(counts.shape)}")
    keep = keep.to(torch.int64)
    counts = counts.to(torch.int64)
    load = counts.sum(dim=0)
    if bool((keep < 0).any()) or bool((keep > load).any()):
        raise ValueError("keep: expected every bucket's kept rows in [0, its load]")
    numerator = keep.unsqueeze(0) * counts
    denominator = load.clamp_min(1).unsqueeze(0)
    base = numerator // denominator
    remainder = numerator % denominator
    leftover = keep - base.sum(dim=0)  # [B], < S; sum(remainder / load) == leftover exactly
    order = torch.sort(-remainder, dim=0, stable=True).indices  # largest remainder first, ties lower rank
    position = torch.empty_like(order)
    sources = torch.arange(counts.shape[0], dtype=torch.int64).unsqueeze(1).expand_as(order)
    position.scatter_(0, order, sources)  # position[s, b] = place of source s in bucket b's order
    return base + (position < leftover.unsqueeze(0)).to(torch.int64)


def fill_to_capacity(quota: torch.Tensor, capacity: int) -> torch.Tensor:
    """Cuts ``quota [B]`` int64 to total at most ``capacity``, largest first (water-filling).

    Finds the largest level c with ``sum(min(quota, c)) <= capacity``, clips to it, then hands the
    rows still free one each to the buckets above c, lower index first. Returns ``[B]`` int64.
    """
    quota = quota.to(torch.int64)
    if int(quota.sum()) <= capacity:
        return quota
    low, high = 0, int(quota.max())
    while low < high:  # largest c with sum(min(q, c)) <= capacity
        mid = (low + high + 1) // 2
        if int(quota.clamp_max(mid).sum()) <= capacity:
            low = mid
        else:
            high = mid - 1
    clipped = quota.clamp_max(low)
    free = capacity - int(clipped.sum())
    above = quota > low
    extra = above & (torch.cumsum(above.to(torch.int64), 0) <= free)
    return clipped + extra.to(torch.int64)


@dataclass(frozen=True)
class RatioPlan:
    """The drop plan of a ``token_drop_ratio`` step (identical on every rank).

    Attributes:
        cap: water-filling cap C, rows per bucket.
        loads: ``[B]`` int64 bucket loads before drops.
        quotas: ``[S, B]`` int64 rows source s may send to bucket b.
    """

    cap: int
    loads: torch.Tensor
    quotas: torch.Tensor


def plan_ratio(counts: torch.Tensor, drop_ratio: float, scope: str, num_ranks: int) -> RatioPlan:
    """Plans a ratio drop from the global ``[S, E]`` int64 (source, expert) count matrix.

    The cap C is the smallest with ``sum(max(0, load - C)) <= floor(drop_ratio * total)`` over the
    buckets of ``scope``; bucket b keeps ``min(load_b, C)``, split over sources by :func:`split_quota`.
    """
    check_topology(counts.shape[1], num_ranks)
    per_bucket = bucket_counts(counts.to(torch.int64), scope, num_ranks)
    loads = per_bucket.sum(dim=0)
    cap = ops.capacity_for_ratio(loads, drop_ratio)
    quotas = split_quota(loads.clamp_max(cap), per_bucket)
    return RatioPlan(cap=cap, loads=loads, quotas=quotas)


def quota_within_pair_capacity(quota: torch.Tensor, scope: str, num_ranks: int, pair_capacity: int) -> torch.Tensor:
    """Cuts one source's bucket quotas ``[B]`` so no destination rank gets more than ``pair_capacity`` rows.

    For ``scope="rank"`` that is ``min(quota, pair_capacity)``; for ``scope="expert"`` each destination
    rank's block of experts is cut by :func:`fill_to_capacity`. Returns ``[B]`` int64.
    """
    if scope == "rank":
        return quota.clamp_max(pair_capacity)
    blocks = quota.view(num_ranks, -1)
    return torch.cat([fill_to_capacity(block, pair_capacity) for block in blocks])


def effective_weights(topk_weights: torch.Tensor, is_kept: torch.Tensor | None, renormalize: bool) -> torch.Tensor:
    """The ``[T, K]`` float32 weights combine applies.

    Dropped pairs weigh 0. With ``renormalize``, each token's kept weights are scaled so they sum to
    the token's original total weight (a token with nothing kept stays 0).
    """
    weights = topk_weights.to(torch.float32)
    if is_kept is None:
        return weights.contiguous()
    kept = torch.where(is_kept, weights, torch.zeros_like(weights))
    if renormalize:
        kept_total = kept.sum(dim=1, keepdim=True)
        scale = torch.where(kept_total != 0, weights.sum(dim=1, keepdim=True) / kept_total, torch.zeros_like(kept_total))
        kept = kept * scale
    return kept.contiguous()
