"""regroup_blocks: reorder row blocks from (outer, inner) to (inner, outer) order; large fresh buffers."""

from __future__ import annotations

import torch

from moecomm import _C
from moecomm.checks import ROW_DTYPES, check_tensor, exact_sum
from moecomm.ops._device import reference_ops, runs_natively
from moecomm.ops._native import num_threads, tensor_arg
from moecomm.ops._out import output_buffer


def empty_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor of ``shape`` for a kernel or a collective to overwrite whole.

    With ``MOECOMM_HUGE_PAGES=1`` large ones ask for transparent huge pages (fewer first-touch page
    faults; see the README for when that helps and when the kernel's compaction makes it slower).
    """
    out = torch.empty(shape, dtype=dtype)
    _C.advise_huge_pages(tensor_arg("out", out))
    return out


def check_regroup_args(rows: object, block_rows: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks ``rows [N, H]`` and ``block_rows [A, B]`` integer on rows' device, each >= 0, summing to N
    -> (rows, int64 contiguous blocks)."""
    rows = check_tensor("rows", rows, dim=2, dtypes=ROW_DTYPES, cpu_only=False)
    blocks = check_tensor("block_rows", block_rows, dim=2, dtypes=(torch.int32, torch.int64), device=rows.device)
    blocks = blocks.to(torch.int64).contiguous()
    num_rows = rows.shape[0]
    if blocks.numel():
        low, high = int(blocks.min()), int(blocks.max())
        if low < 0 or high > num_rows:
            raise ValueError(
                f"block_rows: expected every block size in [0, {num_rows}] (the rows of rows), got [{low}, {high}]"
            )
    total = exact_sum(blocks, num_rows)
    if total != num_rows:
        raise ValueError(f"block_rows: sum is {total}, expected the {num_rows} rows of rows")
    return rows, blocks


def regroup_blocks(rows: torch.Tensor, block_rows: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Reorders blocks of rows from (outer, inner) order to (inner, outer) order.

    The dispatchers receive rows ordered by (source rank, local expert) and hand experts rows ordered
    by (local expert, source rank); ``regroup_blocks(y, block_rows.t())`` is the way back.
    CPU tensors run natively; tensors on another device run the reference there.

    Args:
        rows: ``[N, H]`` float32/float16/bfloat16, blocks back to back in (outer, inner) order.
        block_rows: ``[A, B]`` int32/int64 rows of block (a, b) on rows' device, each >= 0, summing to N.
        out: optional ``[N, H]`` contiguous tensor of rows' dtype and device to write into; it may share
            no memory with rows or block_rows.

    Returns:
        ``[N, H]`` in rows' dtype: block (a, b) moved to position (b, a), rows inside a block unchanged.
    """
    if not runs_natively(rows):
        return reference_ops().regroup_blocks(rows, block_rows, out=out)
    rows, blocks = check_regroup_args(rows, block_rows)
    out = output_buffer(
        out,
        tuple(rows.shape),
        dtype=rows.dtype,
        device=rows.device,
        inputs={"rows": rows, "block_rows": block_rows},
        sized_by="rows",
    )
    _C.regroup_blocks(tensor_arg("rows", rows), tensor_arg("block_rows", blocks), tensor_arg("out", out), num_threads())
    return out
