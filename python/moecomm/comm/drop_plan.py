"""Drop planning: global count matrix -> water-filling cap -> per-source quotas -> ``is_kept``.

Every rank holds the same ``[R, E]`` count matrix after the count exchange, so every rank computes
the same cap and the same quotas; each source rank then keeps its quota of each bucket by the drop
policy (``select_kept``), and rows are dropped on the sender before they travel. :func:`plan_step`
runs all of it for one dispatch step; the rest are the plain functions it is made of.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from moecomm import ops
from moecomm.backends.base import KernelBackend
from moecomm.checks import ACTIVATION_DTYPES, check_choice, check_topology
from moecomm.comm.handle import DropStats
from moecomm.comm.transports.base import Transport
from moecomm.config import MoECommConfig

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
        scale = torch.where(
            kept_total != 0, weights.sum(dim=1, keepdim=True) / kept_total, torch.zeros_like(kept_total)
        )
        kept = kept * scale
    return kept.contiguous()


#: Trailing fields of each rank's count message after its ``[E]`` counts (and any extra counts).
_META_FIELDS = ("num_tokens", "hidden", "top_k", "dtype")


@dataclass(frozen=True)
class StepPlan:
    """One rank's view of a dispatch step after the count exchange and the drop plan.

    Attributes:
        is_kept: ``[T, K]`` bool pairs this rank sends.
        topk_weights: ``[T, K]`` float32 weights combine applies (0 for dropped pairs).
        layout: RouteLayout of the kept pairs (E experts, R ranks).
        kept_counts: ``[R, E]`` int64 kept pairs per (source rank, expert), identical on every rank.
        num_tokens_per_rank: ``[R]`` int64 T of every rank.
        extra_counts: ``[R, X]`` int64 every rank's ``extra_counts`` (X = 0 when none were asked for).
        stats: the step's DropStats.
    """

    is_kept: torch.Tensor
    topk_weights: torch.Tensor
    layout: ops.RouteLayout
    kept_counts: torch.Tensor
    num_tokens_per_rank: torch.Tensor
    extra_counts: torch.Tensor
    stats: DropStats


def exchange_counts(
    transport: Transport, owner: str, counts: torch.Tensor, extra: torch.Tensor, x: torch.Tensor, top_k: int, step: str
) -> torch.Tensor:
    """All-gathers ``counts [E]`` + ``extra [X]`` + (T, H, K, dtype) of every rank -> ``[R, E + X + 4]`` int64.

    Raises ``ValueError`` on every rank (naming the field and each rank's value) when H, K or the dtype differ.
    """
    dtype_code = ACTIVATION_DTYPES.index(x.dtype)
    meta = torch.tensor([x.shape[0], x.shape[1], top_k, dtype_code], dtype=torch.int64)
    message = torch.cat([counts.to("cpu", torch.int64), extra.to("cpu", torch.int64), meta])
    table = transport.all_gather("dispatch", step, message.to(x.device)).cpu()
    gathered_meta = table[:, -len(_META_FIELDS) :]
    for column, field in enumerate(_META_FIELDS[1:], start=1):
        values = gathered_meta[:, column]
        if bool((values != values[0]).any()):
            shown = values.tolist()
            if field == "dtype":
                shown = [str(ACTIVATION_DTYPES[v]).replace("torch.", "") for v in shown]
            per_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(shown))
            raise ValueError(f"rank {transport.rank}: {owner} dispatch: {field} differs across ranks ({per_rank})")
    return table


def plan_step(
    config: MoECommConfig,
    backend: KernelBackend,
    transport: Transport,
    owner: str,
    num_experts: int,
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    *,
    pair_capacity: int | None = None,
    extra_counts: Callable[[ops.RouteLayout, torch.Tensor], torch.Tensor] | None = None,
) -> StepPlan:
    """Count exchange + drop plan for one step (collectives: one all-gather, two with a drop ratio).

    Args:
        config: the dispatcher's config (drop ratio, capacity factor, policy, scope, renormalisation).
        backend / transport: the kernel backend and the transport of the step.
        owner: the dispatcher's name, for messages.
        num_experts: E.
        x: ``[T, H]`` tokens (only T, H and the dtype are read).
        ids: ``[T, K]`` int32/int64 expert ids; weights: ``[T, K]`` float gate weights.
        pair_capacity: rows per (source, destination) buffer when the wire caps them (alltoall), else None.
        extra_counts: optional ``(kept layout, is_kept) -> [X]`` int64 counts every rank needs from every
            other (e.g. tokens per destination rank), exchanged with the final count message.
    """
    num_ranks, rank = transport.world_size, transport.rank
    top_k = ids.shape[1]
    routed = backend.route_layout(ids, num_experts, num_ranks)  # every pair: the counts, or the dropless layout
    no_extra = torch.zeros(0, dtype=torch.int64)
    cap: int | None = None
    scope: str | None = None
    if config.drops_by_ratio:
        table = exchange_counts(transport, owner, routed.tokens_per_expert, no_extra, x, top_k, "count exchange")
        plan = plan_ratio(table[:, :num_experts], config.token_drop_ratio, config.drop_scope, num_ranks)
        quota = plan.quotas[rank]
        if pair_capacity is not None:
            quota = quota_within_pair_capacity(quota, config.drop_scope, num_ranks, pair_capacity)
        is_kept = backend.select_kept(
            ids,
            weights,
            num_experts,
            capacity=quota.to(ids.device),
            scope=config.drop_scope,
            num_ranks=num_ranks,
            policy=config.drop_policy,
        )
        layout = backend.route_layout(ids, num_experts, num_ranks, is_kept)
        extra = no_extra if extra_counts is None else extra_counts(layout, is_kept)
        kept_table = exchange_counts(transport, owner, layout.tokens_per_expert, extra, x, top_k, "kept-count exchange")
        kept_counts = kept_table[:, :num_experts]
        extra_table = kept_table[:, num_experts : num_experts + extra.numel()]
        cap, scope = plan.cap, config.drop_scope
    else:
        if pair_capacity is not None:
            cap, scope = pair_capacity, "pair"
            is_kept = backend.select_kept(
                ids,
                weights,
                num_experts,
                capacity=pair_capacity,
                scope="rank",
                num_ranks=num_ranks,
                policy=config.drop_policy,
            )
        elif config.capacity_factor is not None:
            cap, scope = ops.capacity_from_factor(ids.shape[0], top_k, num_experts, config.capacity_factor), "expert"
            is_kept = backend.select_kept(
                ids, weights, num_experts, capacity=cap, scope="expert", num_ranks=num_ranks, policy=config.drop_policy
            )
        else:
            is_kept = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
        # no cap in this branch means dropless: the layout of every pair is already at hand
        layout = routed if cap is None else backend.route_layout(ids, num_experts, num_ranks, is_kept)
        extra = no_extra if extra_counts is None else extra_counts(layout, is_kept)
        table = exchange_counts(transport, owner, layout.tokens_per_expert, extra, x, top_k, "count exchange")
        kept_counts = table[:, :num_experts]
        extra_table = table[:, num_experts : num_experts + extra.numel()]
    num_tokens = table[:, -len(_META_FIELDS)]
    total_pairs = int((num_tokens * top_k).sum())
    stats = DropStats(
        dropped_pairs=total_pairs - int(kept_counts.sum()),
        total_pairs=total_pairs,
        local_dropped_pairs=ids.numel() - layout.num_rows,
        received_per_rank=kept_counts.view(num_ranks, num_ranks, -1).sum(dim=(0, 2)),
        cap=cap,
        scope=scope,
    )
    return StepPlan(
        is_kept=is_kept,
        topk_weights=effective_weights(weights, is_kept, config.renormalize_kept),
        layout=layout,
        kept_counts=kept_counts.contiguous(),
        num_tokens_per_rank=num_tokens.contiguous(),
        extra_counts=extra_table.contiguous(),
        stats=stats,
    )
