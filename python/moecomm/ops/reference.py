"""Pure-torch references of every native op, with the same signatures (no ``_C`` anywhere).

They favour obviousness over speed: stable sorts and index ops where the native core counts.
Tests compare the native ops against these; benchmarks use them as the plain-torch peer.
"""

from __future__ import annotations

import torch

from moecomm.ops._checks import ACTIVATION_DTYPES, check_is_kept, check_tensor, check_topk_ids, check_topology
from moecomm.ops.capacity import capacity_for_ratio, capacity_from_factor, drop_budget
from moecomm.ops.layout import RouteLayout, tokens_per_rank_of
from moecomm.ops.padded import check_counts
from moecomm.ops.reference_quant import dequantize_rows, quantize_rows
from moecomm.ops.permute import check_permute_args, check_row_count, check_unpermute_args
from moecomm.ops.regroup import check_block_rows
from moecomm.ops.select import check_select_args

__all__ = [
    "route_layout",
    "select_kept",
    "permute",
    "unpermute",
    "pack_padded",
    "unpack_padded",
    "regroup_blocks",
    "capacity_for_ratio",
    "capacity_from_factor",
    "drop_budget",
    "quantize_rows",
    "dequantize_rows",
]


def route_layout(
    topk_ids: torch.Tensor, num_experts: int, num_ranks: int = 1, is_kept: torch.Tensor | None = None
) -> RouteLayout:
    """Reference of :func:`moecomm.ops.route_layout`: a stable argsort of the flattened ids."""
    num_experts, num_ranks = check_topology(num_experts, num_ranks)
    ids = check_topk_ids(topk_ids, num_experts)
    flat = ids.reshape(-1).to(torch.int64)
    kept = torch.ones_like(flat, dtype=torch.bool) if is_kept is None else check_is_kept(is_kept, ids).reshape(-1)
    sort_key = torch.where(kept, flat, torch.full_like(flat, num_experts))  # dropped pairs sort last
    order = torch.sort(sort_key, stable=True).indices
    row_of_pair = torch.empty_like(flat)
    row_of_pair[order] = torch.arange(flat.numel(), dtype=torch.int64)
    row_of_pair[~kept] = -1
    tokens_per_expert = torch.bincount(flat[kept], minlength=num_experts)[:num_experts]
    return RouteLayout(
        topk_ids=ids,
        tokens_per_expert=tokens_per_expert,
        tokens_per_rank=tokens_per_rank_of(tokens_per_expert, num_ranks),
        row_of_pair=row_of_pair.view(ids.shape),
        num_experts=num_experts,
        num_ranks=num_ranks,
    )


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
    """Reference of :func:`moecomm.ops.select_kept`: rank the pairs inside each bucket by a sort."""
    ids, weights, experts_per_bucket, cap = check_select_args(
        topk_ids, topk_weights, num_experts, capacity, scope, num_ranks, policy
    )
    check_topk_ids(ids, num_experts)
    bucket = ids.reshape(-1).to(torch.int64) // experts_per_bucket
    num_pairs = bucket.numel()
    pair_index = torch.arange(num_pairs, dtype=torch.int64)
    if weights is None:
        order = torch.sort(bucket, stable=True).indices  # by bucket, then pair index
    else:
        by_weight = torch.sort(weights.reshape(-1), descending=True, stable=True).indices
        order = by_weight[torch.sort(bucket[by_weight], stable=True).indices]
    sorted_bucket = bucket[order]
    first_of_bucket = torch.searchsorted(sorted_bucket, sorted_bucket, right=False)
    rank_in_bucket = pair_index - first_of_bucket
    is_kept = torch.empty(num_pairs, dtype=torch.bool)
    is_kept[order] = rank_in_bucket < cap[sorted_bucket] if num_pairs else torch.empty(0, dtype=torch.bool)
    return is_kept.view(ids.shape)


def permute(x: torch.Tensor, layout: RouteLayout, is_kept: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`moecomm.ops.permute`: one index_copy."""
    x, layout = check_permute_args(x, layout)
    layout = kept_layout_reference(layout, is_kept)
    num_tokens, top_k = layout.row_of_pair.shape
    rows = layout.row_of_pair.reshape(-1)
    token_of_pair = torch.arange(num_tokens).repeat_interleave(top_k)
    kept = rows >= 0
    out = x.new_empty((layout.num_rows, x.shape[1]))
    out[rows[kept]] = x[token_of_pair[kept]]
    return out


def unpermute(
    y: torch.Tensor, layout: RouteLayout, topk_weights: torch.Tensor, is_kept: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference of :func:`moecomm.ops.unpermute`: float32 index_add."""
    y, layout, weights = check_unpermute_args(y, layout, topk_weights)
    layout = kept_layout_reference(layout, is_kept)
    check_row_count("y", y, layout)
    num_tokens, top_k = layout.row_of_pair.shape
    rows = layout.row_of_pair.reshape(-1)
    kept = rows >= 0
    token_of_pair = torch.arange(num_tokens).repeat_interleave(top_k)[kept]
    contrib = y[rows[kept]].float() * weights.reshape(-1)[kept].float().unsqueeze(1)
    out = torch.zeros((num_tokens, y.shape[1]), dtype=torch.float32)
    out.index_add_(0, token_of_pair, contrib)
    return out.to(y.dtype)


def pack_padded(rows: torch.Tensor, counts: torch.Tensor, capacity: int) -> torch.Tensor:
    """Reference of :func:`moecomm.ops.pack_padded`: a loop over buckets."""
    counts = check_counts(counts, rows.shape[0], capacity)
    out = rows.new_zeros((counts.numel(), capacity, rows.shape[1]))
    for b, part in enumerate(torch.split(rows, counts.tolist())):
        out[b, : part.shape[0]] = part
    return out


def unpack_padded(buffer: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Reference of :func:`moecomm.ops.unpack_padded`: a loop over buckets."""
    counts = check_counts(counts, int(counts.sum()), buffer.shape[1], buffer.shape[0])
    parts = [buffer[b, :n] for b, n in enumerate(counts.tolist())]
    return torch.cat(parts) if parts else buffer.new_empty((0, buffer.shape[2]))


def regroup_blocks(rows: torch.Tensor, block_rows: torch.Tensor) -> torch.Tensor:
    """Reference of :func:`moecomm.ops.regroup_blocks`: split into blocks, transpose the grid, concatenate."""
    check_tensor("rows", rows, dim=2, dtypes=ACTIVATION_DTYPES)
    blocks = check_block_rows(block_rows, rows.shape[0])
    pieces = torch.split(rows, blocks.reshape(-1).tolist())
    num_outer, num_inner = blocks.shape
    reordered = [pieces[a * num_inner + b] for b in range(num_inner) for a in range(num_outer)]
    return torch.cat(reordered) if reordered else rows.new_empty((0, rows.shape[1]))


def kept_layout_reference(layout: RouteLayout, is_kept: torch.Tensor | None) -> RouteLayout:
    if is_kept is None:
        return layout
    return route_layout(layout.topk_ids, layout.num_experts, layout.num_ranks, is_kept)
