"""permute / unpermute: token rows <-> expert-major rows (native on CPU, the reference elsewhere)."""

from __future__ import annotations

import torch

from moecomm import _C
from moecomm.checks import ACTIVATION_DTYPES, ROW_DTYPES, check_tensor, check_topk_weights
from moecomm.ops._device import reference_ops, runs_natively
from moecomm.ops._native import num_threads, tensor_arg
from moecomm.ops._out import RowsOut, native_ranges, output_buffer, output_rows, rows_result
from moecomm.ops.layout import RouteLayout, check_layout, route_layout


def check_permute_args(x: torch.Tensor, layout: RouteLayout) -> tuple[torch.Tensor, RouteLayout]:
    """Checks ``x [T, H]`` (any device but meta) and, on x's device, the layout over T tokens."""
    x = check_tensor("x", x, dim=2, dtypes=ROW_DTYPES, cpu_only=False)
    layout = check_layout(layout, x.device)
    if x.shape[0] != layout.topk_ids.shape[0]:
        raise ValueError(f"x: expected {layout.topk_ids.shape[0]} tokens (rows of topk_ids), got {x.shape[0]}")
    return x, layout


def check_unpermute_args(
    y: torch.Tensor, layout: RouteLayout, topk_weights: torch.Tensor
) -> tuple[torch.Tensor, RouteLayout, torch.Tensor]:
    """Checks ``y [N, H]`` (any device but meta) and, on y's device, the layout and ``topk_weights [T, K]``."""
    y = check_tensor("y", y, dim=2, dtypes=ACTIVATION_DTYPES, cpu_only=False)
    layout = check_layout(layout, y.device)
    weights = check_topk_weights(topk_weights, layout.topk_ids)
    return y, layout, weights


def check_token_range(tokens: object, num_tokens: int) -> tuple[int, int]:
    """Checks unpermute's ``tokens`` (None: all ``num_tokens``) -> ``(begin, end)``."""
    if tokens is None:
        return 0, num_tokens
    if (
        not isinstance(tokens, tuple)
        or len(tokens) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in tokens)
    ):
        raise TypeError(f"tokens: expected None or a (begin, end) tuple of two ints, got {tokens!r}")
    begin, end = tokens
    if not 0 <= begin <= end <= num_tokens:
        raise ValueError(f"tokens: expected 0 <= begin <= end <= {num_tokens} (the layout's tokens), got {tokens}")
    return begin, end


def kept_layout(layout: RouteLayout, is_kept: torch.Tensor | None) -> RouteLayout:
    """The layout with only the pairs of ``is_kept [T, K] bool`` (``layout`` itself when None)."""
    if is_kept is None:
        return layout
    return route_layout(layout.topk_ids, layout.num_experts, layout.num_ranks, is_kept)


def check_row_count(name: str, rows: torch.Tensor, layout: RouteLayout) -> None:
    if rows.shape[0] != layout.num_rows:
        raise ValueError(f"{name}: expected {layout.num_rows} rows (kept pairs of the layout), got {rows.shape[0]}")


def permute(
    x: torch.Tensor, layout: RouteLayout, is_kept: torch.Tensor | None = None, *, out: RowsOut | None = None
) -> torch.Tensor | list[torch.Tensor]:
    """Copies each token's row to its kept pairs' rows in expert-major order.

    CPU tensors run natively; tensors on another device run the reference there.

    Args:
        x: ``[T, H]`` float32/float16/bfloat16 (or int8 wire rows) tokens, any strides.
        layout: from :func:`route_layout` over the same ``topk_ids [T, K]``, on x's device.
        is_kept: optional ``[T, K]`` bool; dropped pairs are skipped and no other expert's rows shift.
        out: optional ``[N_kept, H]`` tensor of x's dtype and device to write into (rows contiguous, any
            stride apart), a list of such ``[n_i, H]`` tensors holding consecutive rows (e.g. one per peer's
            shared region: each token is read once, whatever the number of buffers), or
            :class:`~moecomm.ops._out.RowRanges`; see :func:`moecomm.ops._out.output_rows`. It may share no
            memory with x or the layout.

    Returns:
        ``[N_kept, H]`` in x's dtype, rows ordered by expert, then token, then k (``out`` itself when given:
        the tensor, list or ranges).
    """
    if not runs_natively(x):
        return reference_ops().permute(x, layout, is_kept, out=out)
    x, layout = check_permute_args(x, layout)
    layout = kept_layout(layout, is_kept)
    ranges = output_rows(
        out,
        (layout.num_rows, x.shape[1]),
        dtype=x.dtype,
        device=x.device,
        inputs={"x": x, "layout": layout.row_of_pair},
        sized_by="x",
    )
    _C.permute(tensor_arg("x", x), tensor_arg("layout", layout.row_of_pair), *native_ranges(ranges), num_threads())
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
    """Combines expert-major rows back into tokens: ``out[t] = sum over kept k of w[t,k] * y[row(t,k)]``.

    CPU tensors run natively; tensors on another device run the reference there.

    Args:
        y: ``[N_kept, H]`` float32/float16/bfloat16 expert outputs in the order :func:`permute` made.
        layout: the layout ``y`` was permuted with, on y's device.
        topk_weights: ``[T, K]`` float32/float16/bfloat16 gate weights (not renormalised).
        is_kept: optional ``[T, K]`` bool, the same mask given to :func:`permute`.
        out: optional ``[T, H]`` (``[end - begin, H]`` with ``tokens``) contiguous tensor of y's dtype and
            device to write into; it may share no memory with y, topk_weights or the layout.
        tokens: optional ``(begin, end)``: combine only the tokens ``[begin, end)`` of the layout (row
            ``t - begin`` of the result is token t); ``0 <= begin <= end <= T``. Used to write one source
            rank's combined rows straight into its shared region.

    Returns:
        ``[T, H]`` (or ``[end - begin, H]``) in y's dtype, accumulated in float32. Tokens with no kept pair
        are zero.
    """
    if not runs_natively(y):
        return reference_ops().unpermute(y, layout, topk_weights, is_kept, out=out, tokens=tokens)
    y, layout, weights = check_unpermute_args(y, layout, topk_weights)
    layout = kept_layout(layout, is_kept)
    check_row_count("y", y, layout)
    begin, end = check_token_range(tokens, layout.topk_ids.shape[0])
    out = output_buffer(
        out,
        (end - begin, y.shape[1]),
        dtype=y.dtype,
        device=y.device,
        inputs={"y": y, "topk_weights": weights, "layout": layout.row_of_pair},
        sized_by="y",
    )
    weights_f32 = weights.to(torch.float32).contiguous()  # held here: a TensorArg does not own its memory
    _C.unpermute(
        tensor_arg("y", y),
        tensor_arg("layout", layout.row_of_pair),
        tensor_arg("topk_weights", weights_f32),
        tensor_arg("out", out),
        begin,
        end,
        num_threads(),
    )
    return out
