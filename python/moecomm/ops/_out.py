"""Output buffers of the ops: a fresh tensor, or the caller's ``out=`` checked before any kernel writes.

A caller's ``out`` must be contiguous, of the exact shape and dtype, on the inputs' device, and share no
byte with any input (a kernel reading what it already overwrote gives wrong results). Ops that write rows
(``permute``, ``quantize_to_wire``) also take rows any stride apart and, as a list, several buffers holding
consecutive rows (:func:`output_rows`). Allocation failures name the argument that sized the output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from moecomm.checks import INT64_MAX


def byte_span(tensor: torch.Tensor) -> tuple[int, int] | None:
    """``[first, end)`` byte addresses ``tensor``'s elements may occupy; None when it has none."""
    if tensor.numel() == 0:
        return None
    last = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))  # torch strides are >= 0
    start = tensor.data_ptr()
    return start, start + (last + 1) * tensor.element_size()


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the byte ranges of ``a`` and ``b`` (same device) intersect."""
    span_a, span_b = byte_span(a), byte_span(b)
    return span_a is not None and span_b is not None and span_a[0] < span_b[1] and span_b[0] < span_a[1]


def new_tensor(sized_by: str, shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised ``shape`` tensor; a shape too large to allocate raises naming ``sized_by``."""
    numel = 1
    for size in shape:
        numel *= size
    nbytes = numel * dtype.itemsize
    if nbytes > INT64_MAX:
        raise ValueError(f"{sized_by}: the output of shape {list(shape)} would need {nbytes} bytes (more than 2**63)")
    try:
        return torch.empty(shape, dtype=dtype, device=device)
    except (RuntimeError, MemoryError) as error:  # torch reports allocation failures as RuntimeError
        raise MemoryError(
            f"{sized_by}: cannot allocate the output of shape {list(shape)} ({nbytes} bytes): {error}"
        ) from None


def output_buffer(
    out: object,
    shape: tuple[int, ...],
    *,
    dtype: torch.dtype,
    device: torch.device,
    inputs: Mapping[str, torch.Tensor | None],
    sized_by: str,
    name: str = "out",
) -> torch.Tensor:
    """A fresh ``shape`` tensor when ``out`` is None, else ``out`` checked for the op to overwrite.

    Args:
        out: None, or the caller's buffer: a contiguous ``shape`` tensor of ``dtype`` on ``device``.
        shape, dtype, device: what the op writes.
        inputs: the op's input tensors by argument name (None entries are skipped); ``out`` may share
            no byte with any of them.
        sized_by: the argument named when a fresh output cannot be allocated.
        name: the buffer's argument name in errors (``out``, ``out_scales``).
    """
    if out is None:
        return new_tensor(sized_by, shape, dtype=dtype, device=device)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(
            f"{name}: expected dtype {str(dtype).replace('torch.', '')}, got {str(out.dtype).replace('torch.', '')}"
        )
    if out.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (where the inputs are), got device {out.device}")
    if tuple(out.shape) != tuple(shape) or not out.is_contiguous():
        raise ValueError(
            f"{name}: expected a contiguous tensor of shape {list(shape)}, got {list(out.shape)} "
            f"with strides {list(out.stride())}"
        )
    for input_name, tensor in inputs.items():
        if tensor is not None and overlaps(out, tensor):
            raise ValueError(
                f"{name}: shares memory with {input_name}; pass a separate buffer (an op cannot write over its input)"
            )
    return out


@dataclass(frozen=True)
class RowRanges:
    """Output rows as byte ranges of a few byte buffers: how a writer that knows where each block of rows goes
    (the shm exchange: one buffer per peer's region, one range per destination expert) hands them to an op
    without a tensor per block.

    Attributes:
        buffers: the tensors holding the rows: ``[nbytes]`` uint8 (e.g. the peers' region views) when the
            caller builds the ranges; the ops build them for their ``out=`` tensors too.
        table: ``[S, 3]`` int64 CPU contiguous: per range (buffer index, byte offset from the buffer's first
            element, rows); the ranges hold consecutive output rows in table order.
        row_stride: bytes from a row of a range to the next (at least a row; a multiple of the element size).
    """

    buffers: tuple[torch.Tensor, ...]
    table: torch.Tensor
    row_stride: int

    @property
    def num_rows(self) -> int:
        return int(self.table[:, 2].sum())

    def views(self, width: int, dtype: torch.dtype) -> list[torch.Tensor]:
        """Each range as a ``[rows, width]`` view of ``dtype`` into its buffer (what the reference ops write)."""
        element = dtype.itemsize
        views = []
        for index, offset, rows in self.table.tolist():
            buffer = self.buffers[index]
            storage = torch.empty(0, dtype=torch.uint8, device=buffer.device).set_(buffer.untyped_storage())
            start = buffer.storage_offset() * buffer.element_size() + offset
            views.append(torch.as_strided(storage, (rows, width * element), (self.row_stride, 1), start).view(dtype))
        return views


#: The ``out`` of an op that writes rows: one ``[N, W]`` buffer, a list of buffers holding its rows in order,
#: or :class:`RowRanges`.
RowsOut = torch.Tensor | Sequence[torch.Tensor] | RowRanges


def output_rows(
    out: object,
    shape: tuple[int, int],
    *,
    dtype: torch.dtype,
    device: torch.device,
    inputs: Mapping[str, torch.Tensor | None],
    sized_by: str,
    row_stride_multiple: int = 1,
) -> RowRanges:
    """Where an op writes its ``shape[0]`` rows of ``shape[1]`` elements, as :class:`RowRanges`.

    Args:
        out: None (one fresh contiguous buffer); one tensor or a list/tuple of tensors (segments holding
            consecutive rows: the first one's rows are rows 0.., the next one's follow; e.g. one per peer's
            shared region, written in one pass), each ``[n_i, shape[1]]`` of ``dtype`` on ``device``, its columns
            contiguous, its rows any stride apart (at least a row; a multiple of ``row_stride_multiple``
            elements; the same in every segment of two rows or more), sharing no byte with the inputs or another
            segment, the n_i summing to ``shape[0]``; or :class:`RowRanges` (checked for its form and its
            buffers against the inputs; the native core checks every range against its buffer's bytes).
        shape, dtype, device: what the op writes.
        inputs: the op's input tensors by argument name (None entries are skipped).
        sized_by: the argument named when a fresh output cannot be allocated.
        row_stride_multiple: what every row stride must be a multiple of (4: rows holding float32 scales).
    """
    if isinstance(out, RowRanges):
        return _checked_ranges(out, shape, dtype=dtype, device=device, inputs=inputs, multiple=row_stride_multiple)
    segments = _row_segments(
        out, shape, dtype=dtype, device=device, inputs=inputs, sized_by=sized_by, multiple=row_stride_multiple
    )
    multi = [s for s in segments if s.shape[0] > 1]
    single = [s for s in segments if s.shape[0] == 1 and s.stride(0) >= shape[1]]
    stride = multi[0].stride(0) if multi else single[0].stride(0) if single else shape[1]
    table = torch.tensor([[i, 0, s.shape[0]] for i, s in enumerate(segments)], dtype=torch.int64, device="cpu")
    return RowRanges(tuple(segments), table, stride * dtype.itemsize)


def _row_segments(
    out: object,
    shape: tuple[int, int],
    *,
    dtype: torch.dtype,
    device: torch.device,
    inputs: Mapping[str, torch.Tensor | None],
    sized_by: str,
    multiple: int,
) -> list[torch.Tensor]:
    if out is None:
        return [new_tensor(sized_by, shape, dtype=dtype, device=device)]
    if isinstance(out, torch.Tensor):
        segments, names = [out], ["out"]
    elif isinstance(out, (list, tuple)) and out:
        segments, names = list(out), [f"out[{i}]" for i in range(len(out))]
    else:
        raise TypeError(
            f"out: expected None, a torch.Tensor, a non-empty list of tensors or RowRanges, got {out!r:.80}"
        )
    num_rows, width = shape
    total, row_stride = 0, None
    for name, segment in zip(names, segments):
        _check_row_segment(name, segment, width, dtype=dtype, device=device, row_stride_multiple=multiple)
        total += segment.shape[0]
        if segment.shape[0] > 1:  # the native kernels address every segment's rows with one stride
            if row_stride is not None and segment.stride(0) != row_stride:
                raise ValueError(f"{name}: expected rows {row_stride} elements apart, like the other segments")
            row_stride = segment.stride(0)
    if total != num_rows:
        raise ValueError(f"out: expected {num_rows} rows in all, got {total} ({[s.shape[0] for s in segments]})")
    for i, (name, segment) in enumerate(zip(names, segments)):
        for input_name, tensor in inputs.items():
            if tensor is not None and overlaps(segment, tensor):
                raise ValueError(
                    f"{name}: shares memory with {input_name}; pass a separate buffer (an op cannot write over its input)"
                )
        for other_name, other in zip(names[i + 1 :], segments[i + 1 :]):
            if overlaps(segment, other):
                raise ValueError(f"{name}: shares memory with {other_name} (each row needs a place of its own)")
    return segments


def _checked_ranges(
    ranges: RowRanges,
    shape: tuple[int, int],
    *,
    dtype: torch.dtype,
    device: torch.device,
    inputs: Mapping[str, torch.Tensor | None],
    multiple: int,
) -> RowRanges:
    table = ranges.table
    if not (
        isinstance(table, torch.Tensor)
        and table.dtype == torch.int64
        and table.device.type == "cpu"
        and table.dim() == 2
        and table.shape[1] == 3
        and table.shape[0] >= 1
        and table.is_contiguous()
    ):
        raise ValueError("out: RowRanges.table must be a contiguous [S >= 1, 3] int64 CPU tensor")
    for buffer in ranges.buffers:
        if not (isinstance(buffer, torch.Tensor) and buffer.dtype == torch.uint8 and buffer.dim() == 1):
            raise ValueError("out: RowRanges.buffers must be 1-D uint8 tensors")
        if buffer.device != device:
            raise ValueError(f"out: expected buffers on {device} (where the inputs are), got device {buffer.device}")
        for input_name, tensor in inputs.items():
            if tensor is not None and overlaps(buffer, tensor):
                raise ValueError(f"out: a buffer shares memory with {input_name}")
    stride = ranges.row_stride
    element = dtype.itemsize
    if not isinstance(stride, int) or stride < shape[1] * element or stride % (element * multiple):
        raise ValueError(
            f"out: expected a row stride of at least {shape[1] * element} bytes, a multiple of {element * multiple}, "
            f"got {stride!r}"
        )
    if bool((table < 0).any()) or int(table[:, 0].max()) >= len(ranges.buffers):
        raise ValueError(f"out: RowRanges.table holds a negative entry or a buffer past {len(ranges.buffers)}")
    if ranges.num_rows != shape[0]:
        raise ValueError(f"out: expected {shape[0]} rows in all, got {ranges.num_rows}")
    return ranges


def _check_row_segment(
    name: str, segment: object, width: int, *, dtype: torch.dtype, device: torch.device, row_stride_multiple: int
) -> None:
    if not isinstance(segment, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(segment).__name__}")
    if segment.dtype != dtype:
        raise TypeError(
            f"{name}: expected dtype {str(dtype).replace('torch.', '')}, got {str(segment.dtype).replace('torch.', '')}"
        )
    if segment.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (where the inputs are), got device {segment.device}")
    if segment.dim() != 2 or segment.shape[1] != width:
        raise ValueError(f"{name}: expected rows of {width} elements ([n, {width}]), got shape {list(segment.shape)}")
    rows_apart = segment.shape[0] < 2 or (segment.stride(0) >= width and segment.stride(0) % row_stride_multiple == 0)
    if (width > 1 and segment.shape[0] and segment.stride(1) != 1) or not rows_apart:
        raise ValueError(
            f"{name}: expected contiguous rows at least {width} elements apart"
            + (f" (a multiple of {row_stride_multiple})" if row_stride_multiple > 1 else "")
            + f", got strides {list(segment.stride())}"
        )


def write_rows(rows: torch.Tensor, ranges: RowRanges) -> None:
    """Copies ``rows [N, W]`` into ``ranges`` (from :func:`output_rows`) in order (the reference ops' write)."""
    start = 0
    for view in ranges.views(rows.shape[1], rows.dtype):
        view.copy_(rows[start : start + view.shape[0]])
        start += view.shape[0]


def rows_result(out: object, ranges: RowRanges) -> torch.Tensor | list[torch.Tensor] | RowRanges:
    """What an op that wrote ``ranges`` returns: ``out`` as the caller passed it (its one fresh buffer for None)."""
    return ranges.buffers[0] if out is None else out


def native_ranges(ranges: RowRanges, name: str = "out") -> tuple[list[object], object, int]:
    """``(buffers, table, row_stride)`` TensorArgs of ``ranges`` for the native core (which hold no memory: keep
    ``ranges`` alive until the call returns)."""
    from moecomm.ops._native import tensor_arg

    def described(i: int, buffer: torch.Tensor) -> object:
        buffer = buffer.view(torch.int8) if buffer.dtype == torch.uint8 else buffer  # bytes either way
        return tensor_arg(name if len(ranges.buffers) == 1 else f"{name}[{i}]", buffer)

    return [described(i, b) for i, b in enumerate(ranges.buffers)], tensor_arg(name, ranges.table), ranges.row_stride
