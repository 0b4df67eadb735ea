"""Output buffers of the ops: a fresh tensor, or the caller's ``out=`` checked before any kernel writes.

A caller's ``out`` must be contiguous, of the exact shape and dtype, on the inputs' device, and share no
byte with any input (a kernel reading what it already overwrote gives wrong results). Allocation
failures name the argument that sized the output.
"""

from __future__ import annotations

from collections.abc import Mapping

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
