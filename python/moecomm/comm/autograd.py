"""A differentiable MoE step: gradients flow through dispatch and combine to the tokens, the gate weights (the
router) and the experts' parameters.

Forward (every rank together, as :func:`moecomm.comm.moe_step.run_moe_step`):

1. dispatch float32 rows ``[x | w | ids]`` (the tokens plus their K gate weights and expert ids), so each
   expert row knows its pair's weight ``w_row`` (the k whose id is the row's expert);
2. run the experts with autograd (their parameters get gradients the usual way);
3. combine ``w_row * expert_y`` with unit weights (the weighting moved to the expert side, where it is
   differentiable): ``y[t] = sum over kept k of w[t, k] * expert(x[t])``, exactly the inference step.

Backward (again every rank together, in autograd's reverse order):

- through combine: its transpose is a dispatch of ``grad_y`` along the same routes (a fresh ``dispatch`` with
  the same ids and weights plans the same kept pairs, so the rows come back in the same order);
- through dispatch: its transpose is a combine with unit weights of ``[grad_expert_x | grad_w_row one-hot in
  column k]``, which returns ``grad_x`` and, per pair, ``grad_w``.

Costs: the rows cross in float32 with 2K extra columns, and the backward adds one dispatch and one combine.
``renormalize_kept`` is refused (the renormalised weights would need their own gradient).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from moecomm.comm.dispatchers.base import Dispatcher
from moecomm.comm.handle import DispatchHandle

ExpertFn = Any  # (expert_x [N_recv, H], tokens_per_local_expert [E_local]) -> [N_recv, H]


@dataclass
class _StepRoutes:
    """What the two autograd nodes of one step share: the dispatcher, the routing, and the latest handle."""

    dispatcher: Dispatcher
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    handle: DispatchHandle | None = None
    pair_of_row: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))


def _pair_of_row(meta_rows: torch.Tensor, handle: DispatchHandle, dispatcher: Dispatcher, top_k: int) -> torch.Tensor:
    """``[N_recv]`` int64: the k of each expert row (the position of the row's expert among its token's ids)."""
    first = dispatcher.local_experts.start
    local = torch.arange(dispatcher.num_local_experts, device=meta_rows.device)
    expert_of_row = first + torch.repeat_interleave(local, handle.tokens_per_local_expert.to(meta_rows.device))
    ids_of_row = meta_rows[:, top_k:].round().to(torch.int64)
    return (ids_of_row == expert_of_row.unsqueeze(1)).to(torch.int8).argmax(dim=1)


class _Dispatch(torch.autograd.Function):
    """``(x [T, H], w [T, K] float32) -> (expert_x [N_recv, H] float32, w_row [N_recv] float32)``."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weights: torch.Tensor, routes: _StepRoutes
    ) -> tuple[torch.Tensor, torch.Tensor]:
        top_k = routes.topk_ids.shape[1]
        rows = torch.cat([x.float(), weights.detach().float(), routes.topk_ids.to(torch.float32)], dim=1)
        received, handle = routes.dispatcher.dispatch(rows, routes.topk_ids, routes.topk_weights)
        routes.handle = handle
        hidden = x.shape[1]
        meta = received[:, hidden:]
        routes.pair_of_row = _pair_of_row(meta, handle, routes.dispatcher, top_k)
        w_row = meta[:, :top_k].gather(1, routes.pair_of_row.unsqueeze(1)).squeeze(1)
        ctx.routes, ctx.hidden, ctx.x_dtype = routes, hidden, x.dtype
        return received[:, :hidden].clone(), w_row.clone()  # clones: the dispatcher reuses its buffers

    @staticmethod
    def backward(ctx: Any, grad_rows: torch.Tensor, grad_w_row: torch.Tensor) -> tuple[Any, ...]:
        routes = ctx.routes
        top_k = routes.topk_ids.shape[1]
        num_rows = routes.pair_of_row.shape[0]
        grad_rows = torch.zeros((num_rows, ctx.hidden), dtype=torch.float32) if grad_rows is None else grad_rows
        one_hot = torch.zeros((num_rows, top_k), dtype=torch.float32, device=grad_rows.device)
        if grad_w_row is not None:
            one_hot.scatter_(1, routes.pair_of_row.unsqueeze(1), grad_w_row.float().unsqueeze(1))
        back = routes.dispatcher.combine(torch.cat([grad_rows.float(), one_hot], dim=1), routes.handle.unit_weights())
        return back[:, : ctx.hidden].to(ctx.x_dtype), back[:, ctx.hidden :], None


class _Combine(torch.autograd.Function):
    """``weighted_rows [N_recv, H] float32 -> y [T, H] float32``: the unit-weight combine of rows already
    multiplied by their pair's weight."""

    @staticmethod
    def forward(ctx: Any, weighted_rows: torch.Tensor, routes: _StepRoutes) -> torch.Tensor:
        ctx.routes = routes
        return routes.dispatcher.combine(weighted_rows, routes.handle.unit_weights())

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[Any, ...]:
        routes = ctx.routes
        grad_rows, handle = routes.dispatcher.dispatch(
            grad_y.float().contiguous(), routes.topk_ids, routes.topk_weights
        )
        routes.handle = handle  # the latest dispatch: the combine of _Dispatch.backward uses it
        return grad_rows.clone(), None


def run_moe_step_with_grad(
    dispatcher: Dispatcher, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, experts: ExpertFn
) -> tuple[torch.Tensor, DispatchHandle]:
    """The differentiable :func:`~moecomm.comm.moe_step.run_moe_step` (see the module docstring).

    Args:
        dispatcher: from :func:`moecomm.make_dispatcher`; every rank of its group calls this together, and runs
            the backward together.
        x: ``[T, H]`` float32/float16/bfloat16 tokens (may require grad).
        topk_ids: ``[T, K]`` int32/int64 expert ids; topk_weights: ``[T, K]`` float gate weights (may require grad).
        experts: ``(expert_x [N_recv, H] in x's dtype, tokens_per_local_expert [E_local]) -> [N_recv, H]``.

    Returns:
        (``[T, H]`` output in x's dtype, the forward's handle).
    """
    if dispatcher.config.renormalize_kept:
        raise ValueError(
            "renormalize_kept: not supported with gradients (run the step under torch.no_grad(), or drop "
            "renormalize_kept)"
        )
    if dispatcher.config.dispatch_quant is not None:
        raise ValueError(
            "dispatch_quant: not supported with gradients (run the step under torch.no_grad(), or set "
            "dispatch_quant=None for training)"
        )
    if topk_ids.shape[1] and topk_ids.numel() and int(topk_ids.max()) >= 1 << 24:
        raise ValueError("topk_ids: expert ids must be below 2**24 with gradients (they cross as float32)")
    routes = _StepRoutes(dispatcher, topk_ids, topk_weights.detach().float())
    expert_rows, w_row = _Dispatch.apply(x, topk_weights.float(), routes)
    handle = routes.handle
    assert handle is not None
    expert_y = experts(expert_rows.to(x.dtype), handle.tokens_per_local_expert)
    y = _Combine.apply(expert_y.float() * w_row.unsqueeze(1), routes)
    return y.to(x.dtype), handle
