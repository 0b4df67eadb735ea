"""pack_padded / unpack_padded: expert-major rows <-> fixed-capacity ``[B, capacity, H]`` buffers."""

from __future__ import annotations

import torch

from moecomm import _C
from moecomm.ops._checks import ACTIVATION_DTYPES, check_non_negative_int, check_tensor
from moecomm.ops._native import num_threads, tensor_arg
from moecomm.ops._checks import output_buffer


def check_counts(counts: torch.Tensor, num_rows: int, capacity: int, num_buckets: int | None = None) -> torch.Tensor:
    """Checks ``counts [B]`` integer: each in [0, capacity], summing to ``num_rows`` -> int64 CPU."""
    counts = check_tensor("counts", counts, dim=1, dtypes=(torch.int32, torch.int64))
    if num_buckets is not None and counts.numel() != num_buckets:
        raise ValueError(f"counts: expected {num_buckets} buckets (dim 0 of buffer), got {counts.numel()}")
    counts = counts.to(torch.int64).contiguous()
    if counts.numel():
        low, high = int(counts.min()), int(counts.max())
        if low < 0 or high > capacity:
            raise ValueError(f"counts: expected every count in [0, {capacity}] (the capacity), got [{low}, {high}]")
    total = int(counts.sum())
    if total != num_rows:
        raise ValueError(f"counts: sum is {total}, expected {num_rows} rows")
    return counts


def pack_padded(
    rows: torch.Tensor, counts: torch.Tensor, capacity: int, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Packs expert-major rows into a zero-padded buffer, ``counts[b]`` rows per bucket.

    Args:
        rows: ``[N, H]`` float32/float16/bfloat16, buckets back to back.
        counts: ``[B]`` int32/int64 rows per bucket, each in ``[0, capacity]``, summing to N.
        capacity: slots per bucket (>= 0).
        out: optional preallocated ``[B, capacity, H]`` contiguous tensor of rows' dtype to write into.

    Returns:
        ``[B, capacity, H]`` in rows' dtype; slots past ``counts[b]`` are zero.
    """
    rows = check_tensor("rows", rows, dim=2, dtypes=ACTIVATION_DTYPES)
    capacity = check_non_negative_int("capacity", capacity)
    counts = check_counts(counts, rows.shape[0], capacity)
    out = output_buffer(out, (counts.numel(), capacity, rows.shape[1]), rows.dtype)
    _C.pack_padded(tensor_arg("rows", rows), tensor_arg("counts", counts), tensor_arg("out", out), num_threads())
    return out


def unpack_padded(buffer: torch.Tensor, counts: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of :func:`pack_padded`.

    Args:
        buffer: ``[B, capacity, H]`` float32/float16/bfloat16.
        counts: ``[B]`` int32/int64 valid rows per bucket, each in ``[0, capacity]``.
        out: optional preallocated ``[sum(counts), H]`` contiguous tensor of buffer's dtype to write into.

    Returns:
        ``[sum(counts), H]`` in buffer's dtype.
    """
    buffer = check_tensor("buffer", buffer, dim=3, dtypes=ACTIVATION_DTYPES)
    counts = check_tensor("counts", counts, dim=1, dtypes=(torch.int32, torch.int64))
    total = int(counts.sum()) if counts.numel() else 0
    counts = check_counts(counts, total, buffer.shape[1], buffer.shape[0])
    out = output_buffer(out, (total, buffer.shape[2]), buffer.dtype)
    _C.unpack_padded(tensor_arg("buffer", buffer), tensor_arg("counts", counts), tensor_arg("out", out), num_threads())
    return out
