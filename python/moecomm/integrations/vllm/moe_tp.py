"""MoE tensor parallel inside an expert block: the M ranks that hold slices of the same experts (the inner group).

Every rank of the inner group dispatches the tokens of all of them (so each expert slice sees every token
routed to its expert, each token exactly once per slice), and the M partial outputs of a token are summed
back on the rank that owns it. Both collectives run on a moecomm transport, so every wait is bounded and a
failure names the rank and the step.
"""

from __future__ import annotations

import torch

from moecomm.checks import ACTIVATION_DTYPES, check_tensor
from moecomm.comm.transports.base import Transport
from moecomm.integrations.vllm.ownership import token_slice

PHASE = "moe-tp"


def tp_group_tokens(num_tokens: int, tp_rank: int, tp_size: int, group_size: int) -> tuple[slice, list[int]]:
    """The inner group's tokens when it lies inside one DP rank's TP group (``group_size`` divides ``tp_size``).

    Every TP rank holds the same ``num_tokens`` rows and owns :func:`~.ownership.token_slice` of them; the
    inner group of ``tp_rank`` is TP ranks ``[k*M, (k+1)*M)``, ``k = tp_rank // M``, so its pooled tokens are
    the rows its members own, one contiguous range: no gather needed.

    Returns:
        (that range of rows, the M members' token counts in rank order, as :func:`gather_group_tokens` gives).
    """
    if group_size < 1 or tp_size % group_size:
        raise ValueError(f"group_size: expected a divisor of tp_size {tp_size}, got {group_size}")
    first = tp_rank // group_size * group_size
    owned = [token_slice(num_tokens, r, tp_size) for r in range(first, first + group_size)]
    return slice(owned[0].start, owned[-1].stop), [s.stop - s.start for s in owned]


def gather_group_tokens(
    transport: Transport, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Concatenates the inner group's tokens in rank order (every rank gets the same rows).

    Args:
        transport: over the inner group (its M ranks call this together).
        x: ``[T_r, H]`` float32/bfloat16/float16 this rank's tokens (T_r may be 0 and differ across ranks).
        topk_ids: ``[T_r, K]`` int32/int64; topk_weights: ``[T_r, K]`` float.

    Returns:
        (``[U, H]`` x, ``[U, K]`` ids, ``[U, K]`` weights of all M ranks, ``U = sum(counts)``; ``counts``: the
        M ranks' T_r, which :func:`reduce_group_partials` needs).
    """
    check_tensor("x", x, dim=2, dtypes=ACTIVATION_DTYPES, cpu_only=False)
    if topk_ids.shape[0] != x.shape[0] or topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"topk_ids, topk_weights: expected [{x.shape[0]}, K] each (x has {x.shape[0]} rows), "
            f"got {list(topk_ids.shape)} and {list(topk_weights.shape)}"
        )
    count = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    counts = transport.all_gather(PHASE, "token counts", count).view(-1).tolist()
    longest = max(counts)
    if longest == 0:
        return x, topk_ids, topk_weights, counts

    def gather(name: str, rows: torch.Tensor) -> torch.Tensor:
        padded = rows.new_zeros(longest, *rows.shape[1:])
        padded[: rows.shape[0]] = rows
        table = transport.all_gather(PHASE, f"gather {name}", padded)
        return torch.cat([table[r, : counts[r]] for r in range(len(counts))])

    return gather("x", x), gather("topk_ids", topk_ids), gather("topk_weights", topk_weights), counts


def reduce_group_partials(transport: Transport, partial: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Sums the M ranks' partial outputs of the group's tokens; returns this rank's own rows.

    Args:
        transport: over the inner group (its M ranks call this together, in the same order as the gather).
        partial: ``[sum(counts), H]`` float32/bfloat16/float16: this rank's expert slices' output of every
            token :func:`gather_group_tokens` returned.
        counts: the M ranks' token counts, from :func:`gather_group_tokens`.

    Returns:
        ``[counts[rank], H]`` in partial's dtype (summed in float32).
    """
    check_tensor("partial", partial, dim=2, dtypes=ACTIVATION_DTYPES, cpu_only=False)
    if len(counts) != transport.world_size or partial.shape[0] != sum(counts):
        raise ValueError(
            f"partial: expected {sum(counts)} rows for counts {counts} over {transport.world_size} ranks, "
            f"got {partial.shape[0]}"
        )
    longest = max(counts)
    if longest == 0:
        return partial
    padded = torch.zeros(len(counts) * longest, partial.shape[1], dtype=torch.float32, device=partial.device)
    start = 0
    for r, n in enumerate(counts):
        padded[r * longest : r * longest + n] = partial[start : start + n]
        start += n
    mine = transport.reduce_scatter(PHASE, "reduce partial sums", padded)
    return mine[: counts[transport.rank]].to(partial.dtype)
