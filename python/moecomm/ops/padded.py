"""pack_padded / unpack_padded: expert-major rows <-> fixed-capacity ``[B, capacity, H]`` buffers."""

from __future__ import annotations

import torch

from moecomm import _C
from moecomm.checks import INT64_MAX, ROW_DTYPES, check_non_negative_int, check_tensor, exact_sum
from moecomm.ops._device import reference_ops, runs_natively
from moecomm.ops._native import num_threads, tensor_arg
from moecomm.ops._out import output_buffer


def check_counts(
    counts: object, num_rows: int | None, capacity: int, device: torch.device, num_buckets: int | None = None
) -> torch.Tensor:
    """Checks ``counts [B]`` integer on ``device``: each in [0, capacity], summing to ``num_rows``
    (any sum when None) -> int64 contiguous."""
    counts = check_tensor("counts", counts, dim=1, dtypes=(torch.int32, torch.int64), device=device)
    if num_buckets is not None and counts.numel() != num_buckets:
        raise ValueError(f"counts: expected {num_buckets} buckets (dim 0 of buffer), got {counts.numel()}")
    counts = counts.to(torch.int64).contiguous()
    if counts.numel():
        low, high = int(counts.min()), int(counts.max())
        if low < 0 or high > capacity:
            raise ValueError(f"counts: expected every count in [0, {capacity}] (the capacity), got [{low}, {high}]")
    total = exact_sum(counts, capacity)
    if total > INT64_MAX:
        raise ValueError(f"counts: sum is {total}, more than 2**63 - 1 rows")
    if num_rows is not None and total != num_rows:
        raise ValueError(f"counts: sum is {total}, expected {num_rows} rows")
    return counts


def check_pack_args(rows: object, counts: object, capacity: object) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Checks pack_padded's arguments -> (rows, int64 counts, capacity)."""
    rows = check_tensor("rows", rows, dim=2, dtypes=ROW_DTYPES, cpu_only=False)
    capacity = check_non_negative_int("capacity", capacity)
    return rows, check_counts(counts, rows.shape[0], capacity, rows.device), capacity


def check_unpack_args(buffer: object, counts: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks unpack_padded's arguments -> (buffer, int64 counts)."""
    buffer = check_tensor("buffer", buffer, dim=3, dtypes=ROW_DTYPES, cpu_only=False)
    return buffer, check_counts(counts, None, buffer.shape[1], buffer.device, buffer.shape[0])


def pack_padded(
    rows: torch.Tensor, counts: torch.Tensor, capacity: int, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Packs expert-major rows into a zero-padded buffer, ``counts[b]`` rows per bucket.

    CPU tensors run natively; tensors on another device run the reference there.

    Args:
        rows: ``[N, H]`` float32/float16/bfloat16, buckets back to back.
        counts: ``[B]`` int32/int64 rows per bucket on rows' device, each in ``[0, capacity]``, summing to N.
        capacity: slots per bucket (>= 0).
        out: optional ``[B, capacity, H]`` contiguous tensor of rows' dtype and device to write into;
            it may share no memory with rows or counts.

    Returns:
        ``[B, capacity, H]`` in rows' dtype; slots past ``counts[b]`` are zero.
    """
    if not runs_natively(rows):
        return reference_ops().pack_padded(rows, counts, capacity, out=out)
    rows, counts_64, capacity = check_pack_args(rows, counts, capacity)
    out = output_buffer(
        out,
        (counts_64.numel(), capacity, rows.shape[1]),
        dtype=rows.dtype,
        device=rows.device,
        inputs={"rows": rows, "counts": counts},
        sized_by="capacity",
    )
    _C.pack_padded(tensor_arg("rows", rows), tensor_arg("counts", counts_64), tensor_arg("out", out), num_threads())
    return out


def unpack_padded(buffer: torch.Tensor, counts: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of :func:`pack_padded`.

    CPU tensors run natively; tensors on another device run the reference there.

    Args:
        buffer: ``[B, capacity, H]`` float32/float16/bfloat16.
        counts: ``[B]`` int32/int64 valid rows per bucket on buffer's device, each in ``[0, capacity]``.
        out: optional ``[sum(counts), H]`` contiguous tensor of buffer's dtype and device to write into;
            it may share no memory with buffer or counts.

    Returns:
        ``[sum(counts), H]`` in buffer's dtype.
    """
    if not runs_natively(buffer):
        return reference_ops().unpack_padded(buffer, counts, out=out)
    buffer, counts_64 = check_unpack_args(buffer, counts)
    out = output_buffer(
        out,
        (exact_sum(counts_64, buffer.shape[1]), buffer.shape[2]),
        dtype=buffer.dtype,
        device=buffer.device,
        inputs={"buffer": buffer, "counts": counts},
        sized_by="counts",
    )
    _C.unpack_padded(
        tensor_arg("buffer", buffer), tensor_arg("counts", counts_64), tensor_arg("out", out), num_threads()
    )
    return out
