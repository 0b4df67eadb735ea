"""Output buffers of the ops: a fresh tensor, or the caller's ``out=`` checked before any kernel writes.

A caller's ``out`` must be contiguous, of the exact shape and dtype, on the inputs' device, and share no
byte with any input (a kernel reading what it already overwrote gives wrong results). Ops that write rows
(``permute``, ``quantize_to_wire``) also take rows any stride apart and, as a list, several buffers holding
consecutive rows (:func:`output_rows`). Allocation failures name the argument that sized the output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


#: The ``out`` of an op that writes rows: one ``[N, W]`` buffer, or a list of buffers holding its rows in order.
RowsOut = torch.Tensor | Sequence[torch.Tensor]


def output_rows(
    out: object,
    shape: tuple[int, int],
    *,
    dtype: torch.dtype,
    device: torch.device,
    inputs: Mapping[str, torch.Tensor | None],
    sized_by: str,
    row_stride_multiple: int = 1,
) -> list[torch.Tensor]:
    """The buffers an op writes its ``shape[0]`` rows of ``shape[1]`` elements into.

    Args:
        out: None (one fresh contiguous buffer), one tensor, or a list/tuple of tensors: segments holding
            consecutive rows (the first segment's rows are rows 0.., the next one's follow; e.g. one segment
            per peer's shared region, written in one pass). Each is ``[n_i, shape[1]]`` of ``dtype`` on
            ``device``, its columns contiguous, its rows any stride apart (at least a row; a multiple of
            ``row_stride_multiple`` elements; the same in every segment of two rows or more), sharing no byte with the inputs or another segment; the n_i
            sum to ``shape[0]``.
        shape, dtype, device: what the op writes.
        inputs: the op's input tensors by argument name (None entries are skipped).
        sized_by: the argument named when a fresh output cannot be allocated.
        row_stride_multiple: what every row stride must be a multiple of (4: rows holding float32 scales).

    Returns:
        The checked buffers, in row order.
    """
    if out is None:
        return [new_tensor(sized_by, shape, dtype=dtype, device=device)]
    if isinstance(out, torch.Tensor):
        segments, names = [out], ["out"]
    elif isinstance(out, (list, tuple)) and out:
        segments, names = list(out), [f"out[{i}]" for i in range(len(out))]
    else:
        raise TypeError(f"out: expected None, a torch.Tensor or a non-empty list of tensors, got {out!r:.80}")
    num_rows, width = shape
    total, row_stride = 0, None
    for name, segment in zip(names, segments):
        _check_row_segment(name, segment, width, dtype=dtype, device=device, row_stride_multiple=row_stride_multiple)
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


def write_rows(rows: torch.Tensor, segments: list[torch.Tensor]) -> None:
    """Copies ``rows [N, W]`` into ``segments`` (from :func:`output_rows`) in order."""
    start = 0
    for segment in segments:
        segment.copy_(rows[start : start + segment.shape[0]])
        start += segment.shape[0]


def rows_result(out: object, segments: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """What an op that wrote ``segments`` returns: the list when the caller passed one, else its one buffer."""
    return segments if isinstance(out, (list, tuple)) else segments[0]
