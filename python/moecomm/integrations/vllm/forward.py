"""One MoE layer forward on one EP rank, as the plugin runs it: own slice -> [MoE-TP gather] -> dispatch -> experts
-> combine -> [MoE-TP reduce] -> gather."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from moecomm.comm.moe_step import run_moe_step
from moecomm.comm.transports.base import Transport
from moecomm.integrations.vllm.moe_tp import gather_group_tokens, reduce_group_partials, tp_group_tokens
from moecomm.integrations.vllm.ownership import gather_token_slices, token_slice
from moecomm.layer.experts import swiglu_experts


def ep_moe_forward(
    dispatcher: Any,
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    *,
    tp_rank: int = 0,
    tp_size: int = 1,
    tp_group: dist.ProcessGroup | None = None,
    gather: bool = True,
    inner: Transport | None = None,
) -> tuple[torch.Tensor, Any]:
    """Routed-expert output of the tokens ``x`` that the ``tp_size`` ranks of ``tp_group`` share.

    With ``tp_size`` = 1 (one rank per DP rank) the whole of ``x`` is this rank's own. Otherwise every TP rank
    holds the same ``x`` and dispatches only :func:`token_slice` ``(T, tp_rank, tp_size)`` of it.

    Args:
        dispatcher: a moecomm dispatcher over the EP group (``make_dispatcher``).
        x: ``[T, H]`` float32/bfloat16/float16 activations.
        topk_ids: ``[T, K]`` int32/int64 global expert ids.
        topk_weights: ``[T, K]`` float32 router weights.
        w13: ``[E_local, 2I/M, H]`` this rank's experts' gate-then-up weights (vLLM's ``w13_weight``: with MoE
            tensor parallel M > 1, this rank's column slice of gate then of up).
        w2: ``[E_local, H, I/M]`` this rank's experts' down weights (vLLM's ``w2_weight``, row slice with M > 1).
        tp_rank, tp_size, tp_group: this rank in the group of ranks sharing ``x`` (group None when size 1).
        gather: True: all-gather the slices so every TP rank returns the full output. False: return the
            slice in place, zeros elsewhere (for a caller that all-reduces the output itself).
        inner: with MoE tensor parallel, a transport over the M ranks holding slices of the same experts (see
            :mod:`.moe_tp`): their tokens are dispatched together and the partial sums reduced; None when M = 1.
            When M divides ``tp_size`` the inner group lies inside the TP group (vLLM's rank order), and the
            pooled tokens are taken from ``x`` without a gather.

    Returns:
        (``[T, H]`` output in x's dtype, the dispatch handle whose ``stats`` hold the step's drop statistics).
    """
    num_tokens = x.shape[0]
    owned = token_slice(num_tokens, tp_rank, tp_size)
    tokens = (x[owned], topk_ids[owned], topk_weights[owned])
    split = inner is not None and inner.world_size > 1
    if split and tp_size % inner.world_size == 0:
        rows, counts = tp_group_tokens(num_tokens, tp_rank, tp_size, inner.world_size)
        tokens = (x[rows], topk_ids[rows], topk_weights[rows])
    elif split:
        *tokens, counts = gather_group_tokens(inner, *tokens)
    local_out, handle = run_moe_step(
        dispatcher,
        *tokens,
        lambda expert_x, tokens_per_expert: swiglu_experts(expert_x, tokens_per_expert, w13, w2),
    )
    if split:
        local_out = reduce_group_partials(inner, local_out, counts)
    if tp_size == 1:
        return local_out, handle
    if gather:
        return gather_token_slices(local_out, num_tokens, tp_group), handle
    out = local_out.new_zeros(num_tokens, local_out.shape[1])
    out[owned] = local_out
    return out, handle
