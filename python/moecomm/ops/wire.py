"""Wire rows of quantized dispatch: each row's codes and scales packed into one int8 row, so every dispatcher
and transport moves them as plain rows (permute, padded buffers, regroup, all-to-all, shared regions).

A wire row of a ``[H]`` row quantized as ``kind`` (see :mod:`moecomm.ops.quant`) is ``W`` bytes:

- bytes ``[0, H)``: the H codes (int8, or float8_e4m3fn bytes);
- bytes ``[H, A)``: zero padding to ``A = 4 * ceil(H / 4)`` (the scales stay 4-byte aligned);
- bytes ``[A, W)``: the row's float32 scales, 1 (int8) or ``ceil(H / 128)`` (fp8), little-endian as in memory.

``quantize_to_wire`` is ``quantize_rows`` fused with ``permute`` (each token is quantized once and written to
every row its layout sends it to); ``dequantize_from_wire`` is ``dequantize_rows`` fused with ``permute``.
Both run natively on CPU tensors and as the pure-torch reference (:mod:`moecomm.ops.reference_quant`) on any
other device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moecomm import _C
from moecomm.checks import check_tensor
from moecomm.ops._device import runs_natively
from moecomm.ops._native import num_threads, tensor_arg
from moecomm.ops._out import RowRanges, RowsOut, output_buffer, output_rows, rows_result
from moecomm.ops.layout import RouteLayout, check_layout
from moecomm.ops.quant import (
    SCALE_BYTES,
    QuantFormat,
    check_dequantize_args,
    check_quantize_args,
    quant_format,
    quantize_into,
)

WIRE_DTYPE = torch.int8


@dataclass(frozen=True)
class WireFormat:
    """Byte layout of the wire rows of ``[*, hidden]`` rows quantized as ``kind``.

    Attributes:
        quant: the :class:`~moecomm.ops.quant.QuantFormat` of ``kind``.
        hidden: H, values per row.
        scales_offset: A, first byte of the scales (H rounded up to 4).
        row_bytes: W, bytes of one wire row (scales included).
    """

    quant: QuantFormat
    hidden: int
    scales_offset: int
    row_bytes: int

    @property
    def kind(self) -> str:
        return self.quant.kind

    def views(self, wire: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes [N, H] int8/float8_e4m3fn, scales [N] or [N, ceil(H/128)] float32)``: views into ``wire``."""
        if wire.shape[0] <= 1 and wire.stride(0) != wire.shape[1] and (wire.shape[1] <= 1 or wire.stride(1) == 1):
            # 0 or 1 rows: the row stride is arbitrary (DLPack, numpy); give it the canonical one
            wire = wire.as_strided(tuple(wire.shape), (wire.shape[1], 1))
        codes = wire[:, : self.hidden].view(self.quant.dtype)
        scales = wire[:, self.scales_offset : self.row_bytes]
        if wire.shape[0] and (wire.stride(0) % SCALE_BYTES or scales.storage_offset() % SCALE_BYTES):
            raise ValueError("wire: rows must start 4-byte aligned in their storage (the scales are float32)")
        scales = scales.view(torch.float32)
        return codes, (scales[:, 0] if self.quant.block_cols is None else scales)


def wire_format(hidden: int, kind: object) -> WireFormat:
    """The :class:`WireFormat` of rows of ``hidden`` values quantized as ``kind`` (``"int8"`` or ``"fp8"``)."""
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
        raise ValueError(f"hidden: expected an int >= 0, got {hidden!r}")
    fmt = quant_format(kind)
    offset = -(-hidden // SCALE_BYTES) * SCALE_BYTES
    return WireFormat(fmt, hidden, offset, offset + SCALE_BYTES * fmt.scales_per_row(hidden))


def wire_row_bytes(hidden: int, kind: str) -> int:
    """W, bytes of one wire row of ``hidden`` values quantized as ``kind`` (what crosses per row)."""
    return wire_format(hidden, kind).row_bytes


def check_wire(wire: object, hidden: int, kind: object) -> tuple[torch.Tensor, WireFormat]:
    """Checks ``wire [N, W]`` int8 with contiguous columns for rows of ``hidden`` values of ``kind``."""
    fmt = wire_format(hidden, kind)
    wire = check_tensor("wire", wire, dim=2, dtypes=(WIRE_DTYPE,), cpu_only=False)
    if wire.shape[1] != fmt.row_bytes:
        raise ValueError(
            f"wire: expected rows of {fmt.row_bytes} bytes ({kind} rows of {hidden} values), got {wire.shape[1]}"
        )
    if wire.numel() and wire.shape[1] > 1 and wire.stride(1) != 1:
        raise ValueError("wire: expected rows with contiguous bytes")
    return wire, fmt


def _checked_layout(layout: RouteLayout | None, num_rows: int, device: torch.device, name: str) -> RouteLayout | None:
    if layout is None:
        return None
    layout = check_layout(layout, device)
    if layout.topk_ids.shape[0] != num_rows:
        raise ValueError(f"layout: expected {num_rows} tokens (rows of {name}), got {layout.topk_ids.shape[0]}")
    return layout


def quantize_to_wire(
    x: torch.Tensor, kind: str, layout: RouteLayout | None = None, *, out: RowsOut | None = None
) -> torch.Tensor | list[torch.Tensor]:
    """Quantizes each row of ``x`` once into wire rows, optionally scattered like :func:`moecomm.ops.permute`.

    Args:
        x: ``[T, H]`` float32/float16/bfloat16, any strides; every value finite.
        kind: ``"int8"`` or ``"fp8"`` (see :mod:`moecomm.ops.quant`).
        layout: None (wire row t is token t) or a RouteLayout over ``[T, K]`` pairs on x's device: token t's
            wire row goes to each of its kept pairs' rows (expert-major, as ``permute``).
        out: optional ``[N, W]`` int8 tensor to write into (rows any stride apart that is a multiple of 4,
            bytes contiguous; e.g. a view of a peer's shared region), a list of such tensors holding
            consecutive rows (e.g. one per peer's region: each token is still quantized once), or
            :class:`~moecomm.ops._out.RowRanges`; it may share no memory with x. See
            :func:`moecomm.ops._out.output_rows`.

    Returns:
        ``[N, W]`` int8 wire rows, N = T without a layout, else ``layout.num_rows`` (``out`` itself when
        given; the list of buffers when ``out`` is a list).

    Raises:
        ValueError: naming ``x`` and the first row holding inf or NaN.
    """
    if not runs_natively(x):
        from moecomm.ops import reference_quant

        return reference_quant.quantize_to_wire(x, kind, layout, out=out)
    x, _ = check_quantize_args(x, kind)
    fmt = wire_format(x.shape[1], kind)
    layout = _checked_layout(layout, x.shape[0], x.device, "x")
    ranges = wire_outputs(out, x.shape[0] if layout is None else layout.num_rows, fmt, x)
    scale_table = ranges.table.clone()
    scale_table[:, 1] += fmt.scales_offset  # each row's scales follow its codes in the same wire row
    # codes and scales share the wire rows: the kernel writes each row whole, padding zeroed
    quantize_into(
        x,
        fmt.quant,
        ranges,
        RowRanges(ranges.buffers, scale_table, ranges.row_stride),
        None if layout is None else layout.row_of_pair,
    )
    return rows_result(out, ranges)


def wire_outputs(out: RowsOut | None, num_rows: int, fmt: WireFormat, x: torch.Tensor) -> RowRanges:
    """The caller's ``out`` buffers (checked: :func:`~moecomm.ops._out.output_rows` with rows 4-byte aligned, no
    overlap with x) or a new ``[N, W]`` int8 tensor."""
    return output_rows(
        out,
        (num_rows, fmt.row_bytes),
        dtype=WIRE_DTYPE,
        device=x.device,
        inputs={"x": x},
        sized_by="x",
        row_stride_multiple=SCALE_BYTES,
    )


def dequantize_from_wire(
    wire: torch.Tensor,
    hidden: int,
    kind: str,
    dtype: torch.dtype,
    layout: RouteLayout | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dequantizes wire rows to ``dtype``, optionally scattered like :func:`moecomm.ops.permute`.

    Args:
        wire: ``[N, W]`` int8 wire rows of ``hidden`` values quantized as ``kind`` (rows any stride apart that
            is a multiple of 4, bytes contiguous).
        hidden: H; kind: ``"int8"`` or ``"fp8"``; dtype: float32/float16/bfloat16 output.
        layout: None (row n to row n) or a RouteLayout over ``[N, K]`` pairs: row n goes to each of its kept
            pairs' rows.
        out: optional ``[N_out, H]`` contiguous tensor of ``dtype``; it may share no memory with wire.

    Returns:
        ``[N_out, H]`` of ``dtype`` (``float(code) * scale`` rounded once), N_out = N or ``layout.num_rows``.
    """
    if not runs_natively(wire):
        from moecomm.ops import reference_quant

        return reference_quant.dequantize_from_wire(wire, hidden, kind, dtype, layout, out=out)
    wire, fmt = check_wire(wire, hidden, kind)
    codes, scales = fmt.views(wire)
    check_dequantize_args(codes, scales, kind, dtype)
    layout = _checked_layout(layout, wire.shape[0], wire.device, "wire")
    num_rows = wire.shape[0] if layout is None else layout.num_rows
    out = output_buffer(
        out, (num_rows, hidden), dtype=dtype, device=wire.device, inputs={"wire": wire}, sized_by="wire"
    )
    row_map = None if layout is None else tensor_arg("layout", layout.row_of_pair)
    _C.dequantize_rows(
        tensor_arg("wire", codes), tensor_arg("scales", scales), tensor_arg("out", out), row_map, num_threads()
    )
    return out
