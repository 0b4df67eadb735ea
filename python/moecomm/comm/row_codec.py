"""How a dispatch's token rows travel: as themselves, or as quantized wire rows (``dispatch_quant``).

Every dispatcher moves rows between an *encode* on the sender (``x`` -> the rows that cross, optionally
scattered by a layout straight into a send buffer or a peer's region) and a *decode* on the receiver (the
rows that crossed -> ``expert_x``, optionally scattered by a layout). The wire pattern in between never
looks at the rows' contents, so quantized dispatch is one codec, not a change to each dispatcher:

- :class:`PlainRows`: rows cross in the activation dtype; encode and decode are ``permute`` (or nothing).
- :class:`QuantizedWireRows`: rows cross as int8 wire rows (codes + float32 scales, see
  :mod:`moecomm.ops.wire`); encode is ``quantize_to_wire`` (each token quantized once per send, fused with the
  scatter), decode is ``dequantize_from_wire`` (fused with the scatter) or, for an expert that consumes
  quantized rows, a permute of the wire rows wrapped in :class:`QuantizedRows`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moecomm.backends.base import KernelBackend
from moecomm.ops._out import RowsOut
from moecomm.ops.layout import RouteLayout
from moecomm.ops.wire import WIRE_DTYPE, WireFormat, wire_format


@dataclass(frozen=True)
class QuantizedRows:
    """Expert rows as they crossed: quantized codes and their scales (``dispatch(..., dequantize=False)``).

    Attributes:
        wire: ``[N_recv, W]`` int8 wire rows in ``expert_x``'s row order (may be a view into the dispatcher's
            reused buffers: valid until its next ``dispatch``; rows may lie further apart than W bytes, e.g.
            64-byte aligned).
        format: the :class:`~moecomm.ops.wire.WireFormat` (kind, H, byte layout).
        dtype: the activation dtype the rows were quantized from.
    """

    wire: torch.Tensor
    format: WireFormat
    dtype: torch.dtype

    @property
    def kind(self) -> str:
        """``"int8"`` or ``"fp8"``."""
        return self.format.kind

    @property
    def codes(self) -> torch.Tensor:
        """``[N_recv, H]`` int8 or float8_e4m3fn codes (a row-strided view of ``wire``)."""
        return self.format.views(self.wire)[0]

    @property
    def scales(self) -> torch.Tensor:
        """float32 ``[N_recv]`` (int8) or ``[N_recv, ceil(H/128)]`` (fp8) scales (a view of ``wire``)."""
        return self.format.views(self.wire)[1]

    @property
    def shape(self) -> torch.Size:
        """``[N_recv, H]``, the shape of the rows these stand for."""
        return torch.Size((self.wire.shape[0], self.format.hidden))

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``[N_recv, H]`` values (``float(code) * scale``) in ``dtype`` (default: the activation dtype)."""
        from moecomm.backends import select_backend

        backend = select_backend("auto", self.wire.device)
        return backend.dequantize_from_wire(self.wire, self.format.hidden, self.kind, dtype or self.dtype)


class PlainRows:
    """Rows cross in the activation dtype."""

    quantized = False
    kind: str | None = None

    def width(self, hidden: int) -> int:
        """Elements of one crossing row."""
        return hidden

    def dtype(self, x: torch.Tensor) -> torch.dtype:
        """dtype of the crossing rows of activations ``x``."""
        return x.dtype

    def row_bytes(self, hidden: int, dtype: torch.dtype) -> int:
        """Bytes of one crossing row of ``hidden`` values of ``dtype``."""
        return hidden * torch.empty((), dtype=dtype).element_size()

    def encode(
        self, backend: KernelBackend, x: torch.Tensor, layout: RouteLayout | None, out: RowsOut | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """``x [T, H]`` -> crossing rows: ``x`` itself (no layout) or permuted by ``layout`` into ``out`` (one
        buffer, or a list of buffers holding consecutive rows: each row of x is read once)."""
        return x if layout is None else backend.permute(x, layout, out=out)

    def decode(
        self,
        backend: KernelBackend,
        rows: torch.Tensor,
        layout: RouteLayout | None,
        hidden: int,
        dtype: torch.dtype,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Crossed rows -> ``[N, H]`` of ``dtype``: ``rows`` itself (no layout) or permuted into ``out``."""
        return rows if layout is None else backend.permute(rows, layout, out=out)


class QuantizedWireRows(PlainRows):
    """Rows cross as int8 wire rows of ``kind`` (``"int8"`` or ``"fp8"``)."""

    quantized = True

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def format(self, hidden: int) -> WireFormat:
        return wire_format(hidden, self.kind)

    def width(self, hidden: int) -> int:
        return self.format(hidden).row_bytes

    def dtype(self, x: torch.Tensor) -> torch.dtype:
        return WIRE_DTYPE

    def row_bytes(self, hidden: int, dtype: torch.dtype) -> int:
        return self.format(hidden).row_bytes

    def encode(
        self, backend: KernelBackend, x: torch.Tensor, layout: RouteLayout | None, out: RowsOut | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        return backend.quantize_to_wire(x, self.kind, layout, out=out)

    def decode(
        self,
        backend: KernelBackend,
        rows: torch.Tensor,
        layout: RouteLayout | None,
        hidden: int,
        dtype: torch.dtype,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return backend.dequantize_from_wire(rows, hidden, self.kind, dtype, layout, out=out)

    def keep_quantized(
        self,
        backend: KernelBackend,
        rows: torch.Tensor,
        layout: RouteLayout | None,
        hidden: int,
        dtype: torch.dtype,
        out: torch.Tensor | None = None,
    ) -> QuantizedRows:
        """Crossed wire rows -> :class:`QuantizedRows` in expert order (permuted by ``layout`` into ``out``)."""
        wire = rows if layout is None else backend.permute(rows, layout, out=out)
        return QuantizedRows(wire, self.format(hidden), dtype)


def row_codec(dispatch_quant: str | None) -> PlainRows:
    """The codec of ``MoECommConfig.dispatch_quant`` (None: plain rows)."""
    return PlainRows() if dispatch_quant is None else QuantizedWireRows(dispatch_quant)
