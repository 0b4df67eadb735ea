"""permute / unpermute: token rows <-> expert-major rows, natively."""

from __future__ import annotations

import torch

from moecomm import _C
from moecomm.ops._checks import ACTIVATION_DTYPES, check_tensor, check_topk_weights, output_buffer
from moecomm.ops._native import num_threads, tensor_arg
from moecomm.ops.layout import RouteLayout, route_layout


def check_layout(layout: object) -> RouteLayout:
    if not isinstance(layout, RouteLayout):
        raise TypeError(f"layout: expected a RouteLayout from route_layout(), got {type(layout).__name__}")
    return layout


def kept_layout(layout: RouteLayout, is_kept: torch.Tensor | None) -> RouteLayout:
    """The layout with only the pairs of ``is_kept [T, K] bool`` (``layout`` itself when None)."""
    if is_kept is None:
        return layout
    return route_layout(layout.topk_ids, layout.num_experts, layout.num_ranks, is_kept)


def check_permute_args(x: torch.Tensor, layout: RouteLayout) -> tuple[torch.Tensor, RouteLayout]:
    layout = check_layout(layout)
    x = check_tensor("x", x, dim=2, dtypes=ACTIVATION_DTYPES)
    if x.shape[0] != layout.topk_ids.shape[0]:
        raise ValueError(f"x: expected {layout.topk_ids.shape[0]} tokens (rows of topk_ids), got {x.shape[0]}")
    return x, layout


def check_unpermute_args(
    y: torch.Tensor, layout: RouteLayout, topk_weights: torch.Tensor
) -> tuple[torch.Tensor, RouteLayout, torch.Tensor]:
    layout = check_layout(layout)
    y = check_tensor("y", y, dim=2, dtypes=ACTIVATION_DTYPES)
    weights = check_topk_weights(topk_weights, layout.topk_ids)
    return y, layout, weights


def check_row_count(name: str, rows: torch.Tensor, layout: RouteLayout) -> None:
    if rows.shape[0] != layout.num_rows:
        raise ValueError(f"{name}: expected {layout.num_rows} rows (kept pairs of the layout), got {rows.shape[0]}")


def permute(
    x: torch.Tensor, layout: RouteLayout, is_kept: torch.Tensor | None = None, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Copies each token's row to its kept pairs' rows in expert-major order.

    Args:
        x: ``[T, H]`` float32/float16/bfloat16 tokens, CPU, any strides.
        layout: from :func:`route_layout` over the same ``topk_ids [T, K]``.
        is_kept: optional ``[T, K]`` bool; dropped pairs are skipped and no other expert's rows shift.
        out: optional preallocated ``[N_kept, H]`` contiguous tensor of x's dtype to write into.

    Returns:
        ``[N_kept, H]`` in x's dtype, rows ordered by expert, then token, then k.
    """
    x, layout = check_permute_args(x, layout)
    layout = kept_layout(layout, is_kept)
    out = output_buffer(out, (layout.num_rows, x.shape[1]), x.dtype)
    _C.permute(tensor_arg("x", x), tensor_arg("row_of_pair", layout.row_of_pair), tensor_arg("out", out), num_threads())
    return out


def unpermute(
    y: torch.Tensor,
    layout: RouteLayout,
    topk_weights: torch.Tensor,
    is_kept: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Combines expert-major rows back into tokens: ``out[t] = sum over kept k of w[t,k] * y[row(t,k)]``.

    Args:
        y: ``[N_kept, H]`` float32/float16/bfloat16 expert outputs in the order :func:`permute` made.
        layout: the layout ``y`` was permuted with.
        topk_weights: ``[T, K]`` float32/float16/bfloat16 gate weights (not renormalised).
        is_kept: optional ``[T, K]`` bool, the same mask given to :func:`permute`.
        out: optional preallocated ``[T, H]`` contiguous tensor of y's dtype to write into.

    Returns:
        ``[T, H]`` in y's dtype, accumulated in float32. Tokens with no kept pair are zero.
    """
    y, layout, weights = check_unpermute_args(y, layout, topk_weights)
    layout = kept_layout(layout, is_kept)
    check_row_count("y", y, layout)
    weights = weights.to(torch.float32).contiguous()
    out = output_buffer(out, (layout.topk_ids.shape[0], y.shape[1]), y.dtype)
    _C.unpermute(
        tensor_arg("y", y),
        tensor_arg("row_of_pair", layout.row_of_pair),
        tensor_arg("topk_weights", weights),
        tensor_arg("out", out),
        num_threads(),
    )
    return out
