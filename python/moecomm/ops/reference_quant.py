"""Pure-torch references of :func:`moecomm.ops.quantize_rows` and :func:`moecomm.ops.dequantize_rows`
(no ``_C``): the same arithmetic written as whole-tensor torch ops, in the same order, so the native
kernels match them bit for bit. Definition: :mod:`moecomm.ops.quant`.
"""

from __future__ import annotations

import torch

from moecomm.ops._out import RowsOut, rows_result, write_rows
from moecomm.ops.layout import RouteLayout
from moecomm.ops.quant import QuantFormat, check_dequantize_args, check_quantize_args
from moecomm.ops.wire import check_wire, wire_format, wire_outputs

__all__ = ["quantize_rows", "dequantize_rows", "quantize_to_wire", "dequantize_from_wire"]


def _expand_scales(scales: torch.Tensor, fmt: QuantFormat, hidden: int) -> torch.Tensor:
    """``[N, H]``: each column's block scale."""
    per_block = scales.reshape(scales.shape[0], fmt.scales_per_row(hidden))
    return per_block.repeat_interleave(fmt.cols_per_scale(hidden), dim=1)[:, :hidden]


def quantize_rows(x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`moecomm.ops.quantize_rows`: padded blocks, amax, scale and inverse, multiply,
    clamp, round, cast."""
    x, fmt = check_quantize_args(x, kind)
    num_rows, hidden = x.shape
    values = x.float()
    finite_rows = torch.isfinite(values).all(dim=1)
    if not bool(finite_rows.all()):
        bad = int((~finite_rows).nonzero()[0, 0])
        raise ValueError(f"x: row {bad} contains inf or NaN (quantized rows must be finite)")
    cols, blocks = fmt.cols_per_scale(hidden), fmt.scales_per_row(hidden)
    padded = torch.nn.functional.pad(values, (0, blocks * cols - hidden))
    absmax = padded.view(num_rows, blocks, cols).abs().amax(dim=2)
    scales = absmax / fmt.max_code
    inverses = torch.full_like(absmax, fmt.max_code) / absmax  # inf where absmax is 0 or tiny
    expanded = _expand_scales(scales, fmt, hidden)
    expanded_inverses = _expand_scales(inverses, fmt, hidden)
    quotients = torch.where(torch.isinf(expanded_inverses), values / expanded, values * expanded_inverses)
    scaled = torch.where(expanded > 0, quotients.clamp(-fmt.max_code, fmt.max_code), 0.0)
    q = torch.round(scaled).to(torch.int8) if fmt.kind == "int8" else scaled.to(torch.float8_e4m3fn)
    return q, scales.reshape(fmt.scales_shape(num_rows, hidden))


def dequantize_rows(q: torch.Tensor, scales: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """Reference of :func:`moecomm.ops.dequantize_rows`: float32 product of codes and expanded scales."""
    q, scales, fmt = check_dequantize_args(q, scales, kind, dtype)
    bad = ~((scales >= 0) & torch.isfinite(scales))
    if bool(bad.any()):
        index = bad.nonzero()[0].tolist()
        raise ValueError(f"scales: entry {index} is negative, inf or NaN (expected finite scales >= 0)")
    return (q.float() * _expand_scales(scales, fmt, q.shape[1])).to(dtype)


def _permute(rows: torch.Tensor, layout: RouteLayout) -> torch.Tensor:
    from moecomm.ops.reference import permute  # reference re-exports this module: import on use

    return permute(rows, layout)


def _copy_out(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return result
    if tuple(out.shape) != tuple(result.shape) or out.dtype != result.dtype or out.device != result.device:
        raise ValueError(
            f"out: expected a {list(result.shape)} {result.dtype} tensor on {result.device}, got "
            f"{list(out.shape)} {out.dtype} on {out.device}"
        )
    return out.copy_(result)


def quantize_to_wire(
    x: torch.Tensor, kind: str, layout: RouteLayout | None = None, *, out: RowsOut | None = None
) -> torch.Tensor | list[torch.Tensor]:
    """Reference of :func:`moecomm.ops.wire.quantize_to_wire`: quantize, pack codes/zeros/scales bytes, permute."""
    q, scales = quantize_rows(x, kind)
    fmt = wire_format(x.shape[1], kind)
    rows = torch.zeros((x.shape[0], fmt.row_bytes), dtype=torch.int8, device=x.device)
    rows[:, : fmt.hidden] = q.view(torch.int8)
    if x.shape[0]:  # (an empty scales tensor may have strides no byte view accepts)
        rows[:, fmt.scales_offset :] = scales.reshape(x.shape[0], -1).contiguous().view(torch.int8)
    rows = rows if layout is None else _permute(rows, layout)
    if out is None:
        return rows
    ranges = wire_outputs(out, rows.shape[0], fmt, x)
    write_rows(rows, ranges)
    return rows_result(out, ranges)


def dequantize_from_wire(
    wire: torch.Tensor,
    hidden: int,
    kind: str,
    dtype: torch.dtype,
    layout: RouteLayout | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference of :func:`moecomm.ops.wire.dequantize_from_wire`: unpack, dequantize, permute."""
    wire, fmt = check_wire(wire, hidden, kind)
    codes, scales = fmt.views(wire)
    values = dequantize_rows(codes.contiguous(), scales.contiguous(), kind, dtype)
    return _copy_out(values if layout is None else _permute(values, layout), out)
