"""regroup_blocks: reorder row blocks from (outer, inner) to (inner, outer) order; large fresh buffers."""

from __future__ import annotations

import torch

from moecomm import _C
from moecomm.ops._checks import ACTIVATION_DTYPES, check_tensor
from moecomm.ops._native import num_threads, tensor_arg
from moecomm.ops._checks import output_buffer


def empty_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor of ``shape`` for a kernel or a collective to overwrite whole.

    With ``MOECOMM_HUGE_PAGES=1`` large ones ask for transparent huge pages (fewer first-touch page
    faults; see the README for when that helps and when the kernel's compaction makes it slower).
    """
    out = torch.empty(shape, dtype=dtype)
    _C.advise_huge_pages(tensor_arg("out", out))
    return out


def check_block_rows(block_rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Checks ``block_rows [A, B]`` integer, each >= 0, summing to ``num_rows`` -> int64 contiguous."""
    blocks = check_tensor("block_rows", block_rows, dim=2, dtypes=(torch.int32, torch.int64))
    blocks = blocks.to(torch.int64).contiguous()
    if blocks.numel() and int(blocks.min()) < 0:
        raise ValueError(f"block_rows: expected every block size >= 0, got {int(blocks.min())}")
    if int(blocks.sum()) != num_rows:
        raise ValueError(f"block_rows: sum is {int(blocks.sum())}, expected the {num_rows} rows of rows")
    return blocks


def regroup_blocks(rows: torch.Tensor, block_rows: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Reorders blocks of rows from (outer, inner) order to (inner, outer) order.

    The dispatchers receive rows ordered by (source rank, local expert) and hand experts rows ordered
    by (local expert, source rank); ``regroup_blocks(y, block_rows.t())`` is the way back.

    Args:
        rows: ``[N, H]`` float32/float16/bfloat16, blocks back to back in (outer, inner) order.
        block_rows: ``[A, B]`` int32/int64 rows of block (a, b), each >= 0, summing to N.
        out: optional preallocated ``[N, H]`` contiguous tensor of rows' dtype to write into.

    Returns:
        ``[N, H]`` in rows' dtype: block (a, b) moved to position (b, a), rows inside a block unchanged.
    """
    rows = check_tensor("rows", rows, dim=2, dtypes=ACTIVATION_DTYPES)
    blocks = check_block_rows(block_rows, rows.shape[0])
    out = output_buffer(out, tuple(rows.shape), rows.dtype)
    _C.regroup_blocks(tensor_arg("rows", rows), tensor_arg("block_rows", blocks), tensor_arg("out", out), num_threads())
    return out
