"""Pure-torch references of every native op, with the same signatures (no ``_C`` anywhere).

They favour obviousness over speed: stable sorts and index ops where the native core counts. They are
device-generic: every tensor they make lives on the inputs' device, so the public ops run them for
tensors the native core does not serve (CUDA, NPU, ...). Tests compare the native ops against these;
benchmarks use them as the plain-torch peer.
"""

from __future__ import annotations

import torch

from moecomm.checks import check_is_kept, check_topk_ids, check_topology
from moecomm.ops._out import RowsOut, new_tensor, output_buffer, output_rows, rows_result, write_rows
from moecomm.ops.capacity import capacity_for_ratio, capacity_from_factor, drop_budget
from moecomm.ops.layout import RouteLayout, tokens_per_rank_of
from moecomm.ops.padded import check_pack_args, check_unpack_args
from moecomm.ops.permute import check_permute_args, check_row_count, check_token_range, check_unpermute_args
from moecomm.ops.reference_quant import dequantize_from_wire, dequantize_rows, quantize_rows, quantize_to_wire
from moecomm.ops.regroup import check_regroup_args
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
    "quantize_to_wire",
    "dequantize_from_wire",
]


def route_layout(
    topk_ids: torch.Tensor, num_experts: int, num_ranks: int = 1, is_kept: torch.Tensor | None = None
) -> RouteLayout:
    """Reference of :func:`moecomm.ops.route_layout`: a stable argsort of the flattened ids."""
    num_experts, num_ranks = check_topology(num_experts, num_ranks)
    ids = check_topk_ids(topk_ids, num_experts, cpu_only=False)
    flat = ids.reshape(-1).to(torch.int64)
    kept = torch.ones_like(flat, dtype=torch.bool) if is_kept is None else check_is_kept(is_kept, ids).reshape(-1)
    sort_key = torch.where(kept, flat, torch.full_like(flat, num_experts))  # dropped pairs sort last
    order = torch.sort(sort_key, stable=True).indices
    row_of_pair = torch.empty_like(flat)
    row_of_pair[order] = torch.arange(flat.numel(), dtype=torch.int64, device=flat.device)
    row_of_pair[~kept] = -1
    tokens_per_expert = new_tensor("num_experts", (num_experts,), dtype=torch.int64, device=flat.device).zero_()
    tokens_per_expert.index_add_(0, flat[kept], torch.ones_like(flat[kept]))
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
    check_topk_ids(ids, num_experts, cpu_only=False)
    bucket = ids.reshape(-1).to(torch.int64) // experts_per_bucket
    num_pairs = bucket.numel()
    pair_index = torch.arange(num_pairs, dtype=torch.int64, device=ids.device)
    if weights is None:
        order = torch.sort(bucket, stable=True).indices  # by bucket, then pair index
    else:
        by_weight = torch.sort(weights.reshape(-1), descending=True, stable=True).indices
        order = by_weight[torch.sort(bucket[by_weight], stable=True).indices]
    sorted_bucket = bucket[order]
    first_of_bucket = torch.searchsorted(sorted_bucket, sorted_bucket, right=False)
    rank_in_bucket = pair_index - first_of_bucket
    is_kept = torch.empty(num_pairs, dtype=torch.bool, device=ids.device)
    is_kept[order] = rank_in_bucket < cap[sorted_bucket]
    return is_kept.view(ids.shape)


def check_rows_cover(layout: RouteLayout) -> None:
    """The reference's own check that ``layout.row_of_pair`` maps the kept pairs one-to-one onto
    ``[0, layout.num_rows)`` (the native kernels check the same invariant)."""
    rows = layout.row_of_pair.reshape(-1)
    num_rows = layout.num_rows
    if rows.numel() and (int(rows.min()) < -1 or int(rows.max()) >= num_rows):
        raise ValueError(f"layout: row_of_pair holds a row outside [-1, {num_rows})")
    kept = rows[rows >= 0]
    if kept.numel() != num_rows or (num_rows and int(torch.bincount(kept, minlength=num_rows).max()) > 1):
        raise ValueError(
            f"layout: row_of_pair does not use every row in [0, {num_rows}) exactly once "
            "(its rows and tokens_per_expert disagree)"
        )


def permute(
    x: torch.Tensor, layout: RouteLayout, is_kept: torch.Tensor | None = None, *, out: RowsOut | None = None
) -> torch.Tensor | list[torch.Tensor]:
    """Reference of :func:`moecomm.ops.permute`: one indexed copy (then into ``out``'s buffers)."""
    x, layout = check_permute_args(x, layout)
    layout = kept_layout_reference(layout, is_kept)
    check_rows_cover(layout)
    ranges = output_rows(
        out,
        (layout.num_rows, x.shape[1]),
        dtype=x.dtype,
        device=x.device,
        inputs={"x": x, "layout": layout.row_of_pair},
        sized_by="x",
    )
    num_tokens, top_k = layout.row_of_pair.shape
    rows = layout.row_of_pair.reshape(-1)
    token_of_pair = torch.arange(num_tokens, device=x.device).repeat_interleave(top_k)
    kept = rows >= 0
    result = ranges.buffers[0] if out is None else x.new_empty((layout.num_rows, x.shape[1]))
    result[rows[kept]] = x[token_of_pair[kept]]
    if out is not None:
        write_rows(result, ranges)
    return rows_result(out, ranges)


def unpermute(
    y: torch.Tensor,
    layout: RouteLayout,
    topk_weights: torch.Tensor,
    is_kept: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    tokens: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Reference of :func:`moecomm.ops.unpermute`: float32 index_add (over all tokens, then the slice)."""
    y, layout, weights = check_unpermute_args(y, layout, topk_weights)
    layout = kept_layout_reference(layout, is_kept)
    check_row_count("y", y, layout)
    check_rows_cover(layout)
    num_tokens, top_k = layout.row_of_pair.shape
    begin, end = check_token_range(tokens, num_tokens)
    out = output_buffer(
        out,
        (end - begin, y.shape[1]),
        dtype=y.dtype,
        device=y.device,
        inputs={"y": y, "topk_weights": weights, "layout": layout.row_of_pair},
        sized_by="y",
    )
    rows = layout.row_of_pair.reshape(-1)
    kept = rows >= 0
    token_of_pair = torch.arange(num_tokens, device=y.device).repeat_interleave(top_k)[kept]
    contrib = y[rows[kept]].float() * weights.reshape(-1)[kept].float().unsqueeze(1)
    summed = torch.zeros((num_tokens, y.shape[1]), dtype=torch.float32, device=y.device)
    summed.index_add_(0, token_of_pair, contrib)
    return out.copy_(summed[begin:end])


def pack_padded(
    rows: torch.Tensor, counts: torch.Tensor, capacity: int, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference of :func:`moecomm.ops.pack_padded`: a loop over buckets."""
    rows, counts_64, capacity = check_pack_args(rows, counts, capacity)
    out = output_buffer(
        out,
        (counts_64.numel(), capacity, rows.shape[1]),
        dtype=rows.dtype,
        device=rows.device,
        inputs={"rows": rows, "counts": counts},
        sized_by="capacity",
    )
    out.zero_()
    for b, part in enumerate(torch.split(rows, counts_64.tolist())):
        out[b, : part.shape[0]] = part
    return out


def unpack_padded(buffer: torch.Tensor, counts: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`moecomm.ops.unpack_padded`: a loop over buckets."""
    buffer, counts_64 = check_unpack_args(buffer, counts)
    sizes = counts_64.tolist()
    out = output_buffer(
        out,
        (sum(sizes), buffer.shape[2]),
        dtype=buffer.dtype,
        device=buffer.device,
        inputs={"buffer": buffer, "counts": counts},
        sized_by="counts",
    )
    if sizes:
        torch.cat([buffer[b, :n] for b, n in enumerate(sizes)], out=out)
    return out


def regroup_blocks(rows: torch.Tensor, block_rows: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`moecomm.ops.regroup_blocks`: split into blocks, transpose the grid, concatenate."""
    rows, blocks = check_regroup_args(rows, block_rows)
    out = output_buffer(
        out,
        tuple(rows.shape),
        dtype=rows.dtype,
        device=rows.device,
        inputs={"rows": rows, "block_rows": block_rows},
        sized_by="rows",
    )
    pieces = torch.split(rows, blocks.reshape(-1).tolist())
    num_outer, num_inner = blocks.shape
    reordered = [pieces[a * num_inner + b] for b in range(num_inner) for a in range(num_outer)]
    if reordered:
        torch.cat(reordered, out=out)
    return out


def kept_layout_reference(layout: RouteLayout, is_kept: torch.Tensor | None) -> RouteLayout:
    if is_kept is None:
        return layout
    return route_layout(layout.topk_ids, layout.num_experts, layout.num_ranks, is_kept)
