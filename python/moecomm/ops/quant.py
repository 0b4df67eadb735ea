"""quantize_rows / dequantize_rows: rows on the wire as int8 (per-token scale) or float8 e4m3fn (per-128-column
scales, DeepEP's layout), natively.

Exact arithmetic (the native kernels and :mod:`moecomm.ops.reference_quant` agree bit for bit):

- A row of H values is cut into blocks: the whole row for ``"int8"``, 128 columns for ``"fp8"`` (the last
  block is shorter when H is not a multiple of 128). Each block gets one float32 scale
  ``absmax(block) / max_code`` with ``max_code`` 127 (int8) or 448 (e4m3fn's largest finite value).
- Codes: ``clamp(x * inverse, -max_code, max_code)`` in float32 with ``inverse = max_code / absmax(block)``
  (one float32 division per block; vLLM's dynamic int8 and DeepEP's fp8 quantizers multiply by the same
  inverse), then round half to even (int8) or round to the nearest e4m3fn value, ties to even (fp8). When the
  inverse overflows to inf (absmax below ``max_code / FLT_MAX``, ~3.7e-37 for int8) the block divides by its
  scale instead. The clamp only bites for such tiny blocks and for the last ulp of ``x * inverse``.
- A block whose scale is 0 (all zeros, or absmax below ~1.8e-43 so that absmax / 127 underflows) is sent
  as scale 0 and codes 0, and dequantizes to exact zeros.
- inf or NaN in x raises ``ValueError`` naming the first such row; quantized rows must be finite (a NaN has
  no scale that represents it, and a saturated inf would silently change the row's other values).
- Dequantize: ``float(code) * scale`` in float32, rounded to the output dtype (nearest even). A scale that
  is negative, inf or NaN raises ``ValueError`` naming its index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moecomm import _C
from moecomm.checks import ACTIVATION_DTYPES, _names, check_choice, check_tensor
from moecomm.ops._native import dtype_code, num_threads, tensor_arg
from moecomm.ops._out import RowRanges, native_ranges, output_buffer

QUANT_KINDS = ("int8", "fp8")
FP8_BLOCK_COLS = 128
SCALE_BYTES = 4  # float32


@dataclass(frozen=True)
class QuantFormat:
    """How rows of one ``kind`` are quantized: code dtype, largest code, columns per scale (None: the row)."""

    kind: str
    dtype: torch.dtype
    max_code: float
    block_cols: int | None

    def cols_per_scale(self, hidden: int) -> int:
        """Columns of each block of a row of ``hidden`` values (>= 1)."""
        return self.block_cols if self.block_cols is not None else max(hidden, 1)

    def scales_per_row(self, hidden: int) -> int:
        return 1 if self.block_cols is None else -(-hidden // self.block_cols)

    def scales_shape(self, num_rows: int, hidden: int) -> tuple[int, ...]:
        """``(N,)`` for int8, ``(N, ceil(H / 128))`` for fp8."""
        return (num_rows,) if self.block_cols is None else (num_rows, self.scales_per_row(hidden))


QUANT_FORMATS = {
    "int8": QuantFormat("int8", torch.int8, 127.0, None),
    "fp8": QuantFormat("fp8", torch.float8_e4m3fn, 448.0, FP8_BLOCK_COLS),
}


def quant_format(kind: object) -> QuantFormat:
    """The :class:`QuantFormat` of ``kind`` (``"int8"`` or ``"fp8"``); raises naming ``kind`` otherwise."""
    return QUANT_FORMATS[check_choice("kind", kind, QUANT_KINDS)]


def check_quantize_args(x: object, kind: object) -> tuple[torch.Tensor, QuantFormat]:
    """Checks ``x [N, H]`` float32/float16/bfloat16 on the CPU and ``kind``."""
    fmt = quant_format(kind)
    return check_tensor("x", x, dim=2, dtypes=ACTIVATION_DTYPES), fmt


def check_dequantize_args(
    q: object, scales: object, kind: object, dtype: object
) -> tuple[torch.Tensor, torch.Tensor, QuantFormat]:
    """Checks ``q [N, H]`` of kind's code dtype, ``scales`` of kind's shape (float32) and the output ``dtype``."""
    fmt = quant_format(kind)
    q = check_tensor("q", q, dim=2, dtypes=(fmt.dtype,))
    shape = fmt.scales_shape(q.shape[0], q.shape[1])
    scales = check_tensor("scales", scales, dim=len(shape), dtypes=(torch.float32,))
    if tuple(scales.shape) != shape:
        raise ValueError(
            f"scales: expected shape {list(shape)} for {fmt.kind} rows of shape {list(q.shape)}, got {list(scales.shape)}"
        )
    if dtype not in ACTIVATION_DTYPES:
        raise TypeError(f"dtype: expected one of {{{_names(ACTIVATION_DTYPES)}}}, got {dtype!r}")
    return q, scales, fmt


def quantize_rows(
    x: torch.Tensor, kind: str, *, out: torch.Tensor | None = None, out_scales: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantizes each row of ``x`` (definition in the module docstring).

    Args:
        x: ``[N, H]`` float32/float16/bfloat16, CPU, any strides; every value finite.
        kind: ``"int8"`` (one scale per row) or ``"fp8"`` (float8_e4m3fn, one scale per 128 columns).
        out: optional preallocated ``[N, H]`` contiguous int8 / float8_e4m3fn tensor for the codes.
        out_scales: optional preallocated contiguous float32 tensor of the scales' shape.

    Returns:
        ``(q, scales)``: q ``[N, H]`` int8 or float8_e4m3fn; scales float32 ``[N]`` (int8) or
        ``[N, ceil(H / 128)]`` (fp8). With ``out``/``out_scales``, those tensors.

    Raises:
        ValueError: naming ``x`` and the first row holding inf or NaN (out/out_scales are then unspecified).
    """
    x, fmt = check_quantize_args(x, kind)
    num_rows, hidden = x.shape
    inputs = {"x": x}
    q = output_buffer(out, (num_rows, hidden), dtype=fmt.dtype, device=x.device, inputs=inputs, sized_by="x")
    scales = output_buffer(
        out_scales,
        fmt.scales_shape(num_rows, hidden),
        dtype=torch.float32,
        device=x.device,
        inputs={**inputs, "out": q},
        sized_by="x",
        name="out_scales",
    )
    one_range = torch.tensor([[0, 0, num_rows]], dtype=torch.int64, device="cpu")
    quantize_into(
        x,
        fmt,
        RowRanges((q,), one_range, hidden * q.element_size()),
        RowRanges((scales,), one_range, fmt.scales_per_row(hidden) * SCALE_BYTES),
        None,
        names=("out", "out_scales"),
    )
    return q, scales


def quantize_into(
    x: torch.Tensor,
    fmt: QuantFormat,
    codes: RowRanges,
    scales: RowRanges,
    row_of_pair: torch.Tensor | None,
    *,
    names: tuple[str, str] = ("out", "out"),
) -> None:
    """Runs the native quantizer: ``x [N, H]`` (checked) into the code rows and scale rows of ``codes`` and
    ``scales`` (the same rows per range; they may interleave, as in wire rows), scattered by ``row_of_pair [N, K]``
    int64 when given. Raises naming x for a row holding inf or NaN."""
    code_buffers, code_table, code_stride = native_ranges(codes, names[0])
    scale_buffers, scale_table, scale_stride = native_ranges(scales, names[1])
    _C.quantize_rows(
        tensor_arg("x", x),
        dtype_code(fmt.dtype),
        code_buffers,
        code_table,
        code_stride,
        scale_buffers,
        scale_table,
        scale_stride,
        None if row_of_pair is None else tensor_arg("layout", row_of_pair),
        num_threads(),
    )


def dequantize_rows(
    q: torch.Tensor, scales: torch.Tensor, kind: str, dtype: torch.dtype, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Turns quantized rows back into ``dtype`` values: ``float(q) * scale``, rounded to ``dtype``.

    Args:
        q: ``[N, H]`` int8 (kind ``"int8"``) or float8_e4m3fn (kind ``"fp8"``) codes, CPU.
        scales: float32 ``[N]`` (int8) or ``[N, ceil(H / 128)]`` (fp8), each finite and >= 0.
        kind: ``"int8"`` or ``"fp8"``, as given to :func:`quantize_rows`.
        dtype: output dtype, float32/float16/bfloat16.
        out: optional preallocated ``[N, H]`` contiguous tensor of ``dtype``.

    Returns:
        ``[N, H]`` of ``dtype``.
    """
    q, scales, fmt = check_dequantize_args(q, scales, kind, dtype)
    out = output_buffer(
        out, tuple(q.shape), dtype=dtype, device=q.device, inputs={"q": q, "scales": scales}, sized_by="q"
    )
    q, scales = q.contiguous(), scales.contiguous()  # named: the copies must outlive the native call
    _C.dequantize_rows(tensor_arg("q", q), tensor_arg("scales", scales), tensor_arg("out", out), None, num_threads())
    return out
