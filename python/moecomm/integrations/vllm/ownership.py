"""Which tokens an EP rank dispatches, and how the combined slices become the layer's output.

vLLM hands every MoE layer the tokens of its data-parallel rank; the TP ranks of one DP rank all hold the
same tokens. Each TP rank therefore dispatches only its contiguous slice of them (so every token is routed
by exactly one EP rank), and after combine the slices are all-gathered over the TP group, which leaves the
full, already-reduced output on every TP rank. With TP = 1 (pure DP) the slice is the whole input.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from moecomm.checks import ACTIVATION_DTYPES, check_tensor


def token_slice(num_tokens: int, rank: int, world_size: int) -> slice:
    """The rows of a ``num_tokens``-row input that ``rank`` of ``world_size`` owns.

    Slices are contiguous, in rank order, ``ceil(num_tokens / world_size)`` long except the last ones
    (which may be shorter or empty), and together cover every row exactly once.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size (world_size={world_size}), got {rank}")
    if num_tokens < 0:
        raise ValueError(f"num_tokens: expected >= 0, got {num_tokens}")
    per_rank = -(-num_tokens // world_size)
    start = min(rank * per_rank, num_tokens)
    return slice(start, min(start + per_rank, num_tokens))


def gather_token_slices(local_out: torch.Tensor, num_tokens: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """All-gathers each rank's output slice into the full ``[num_tokens, H]`` output on every rank.

    Args:
        local_out: ``[n_r, H]`` this rank's rows, ``n_r`` = length of :func:`token_slice` for this rank.
        num_tokens: total rows T (the same on every rank of ``group``).
        group: the TP process group (gloo on CPU), or None for one process.

    Returns:
        ``[num_tokens, H]`` in local_out's dtype, rows in rank order.
    """
    check_tensor("local_out", local_out, dim=2, dtypes=ACTIVATION_DTYPES, cpu_only=False)
    if group is None or dist.get_world_size(group) == 1:
        if local_out.shape[0] != num_tokens:
            raise ValueError(f"local_out: expected {num_tokens} rows with one rank, got {local_out.shape[0]}")
        return local_out
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    if num_tokens == 0:  # same T on every TP rank: all of them skip the collective
        return local_out
    expected = token_slice(num_tokens, rank, world_size)
    if local_out.shape[0] != expected.stop - expected.start:
        raise ValueError(
            f"local_out: rank {rank} expected {expected.stop - expected.start} rows "
            f"(slice {expected.start}:{expected.stop} of {num_tokens}), got {local_out.shape[0]}"
        )
    per_rank = -(-num_tokens // world_size)
    padded = local_out.new_zeros(per_rank, local_out.shape[1])
    padded[: local_out.shape[0]] = local_out
    gathered = local_out.new_empty(world_size * per_rank, local_out.shape[1])
    dist.all_gather(list(gathered.chunk(world_size)), padded, group=group)
    return gathered[:num_tokens]
