"""One MoE step on one EP rank, written once: dispatch -> local experts -> combine.

``EPMoE``, the vLLM plugin and the benchmarks all run their layer through :func:`run_moe_step`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moecomm.comm.dispatchers.base import Dispatcher
from moecomm.comm.handle import DispatchHandle

#: ``(expert_x [N_recv, H], tokens_per_local_expert [E_local] int64) -> expert_y [N_recv, H]``.
ExpertFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def run_moe_step(
    dispatcher: Dispatcher,
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    experts: ExpertFn,
    *,
    differentiable: bool | None = None,
) -> tuple[torch.Tensor, DispatchHandle]:
    """Routed-expert output of this rank's tokens.

    Args:
        dispatcher: from :func:`moecomm.make_dispatcher` (every rank of its group calls this together).
        x: ``[T, H]`` float32/float16/bfloat16 tokens of this rank.
        topk_ids: ``[T, K]`` int32/int64 global expert ids; topk_weights: ``[T, K]`` float gate weights.
        experts: the local experts, ``(expert_x [N_recv, H], tokens_per_local_expert [E_local]) -> [N_recv, H]``
            (rows grouped by local expert, in dispatch's order).

        differentiable: True runs the step so that gradients reach ``x``, ``topk_weights`` and the experts'
            parameters (:mod:`moecomm.comm.autograd`; every rank must then run the backward too); None (default)
            means True when grad mode is on and ``x`` or ``topk_weights`` requires grad.

    Returns:
        (``[T, H]`` combined output in the experts' output dtype, the step's handle: ``handle.stats`` holds the
        drop statistics).
    """
    if differentiable is None:
        differentiable = torch.is_grad_enabled() and (x.requires_grad or topk_weights.requires_grad)
    if differentiable:
        from moecomm.comm.autograd import run_moe_step_with_grad

        return run_moe_step_with_grad(dispatcher, x, topk_ids, topk_weights, experts)
    expert_x, handle = dispatcher.dispatch(x, topk_ids, topk_weights)
    expert_y = experts(expert_x, handle.tokens_per_local_expert)
    return dispatcher.combine(expert_y, handle), handle
