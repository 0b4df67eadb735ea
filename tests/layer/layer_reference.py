"""Dense single-process reference of an EPMoE forward (per token, per chosen expert, float64)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dense_moe_reference(
    layer, w13: torch.Tensor, w2: torch.Tensor, x: torch.Tensor, expert_input: torch.Tensor | None = None
) -> torch.Tensor:
    """``sum_k weight[t,k] * expert_{id[t,k]}(x[t])`` (+ shared experts) with the full expert tensors.

    Args:
        layer: an EPMoE (its router and shared experts are used).
        w13: ``[E, 2I, H]`` every expert's gate then up projection; w2: ``[E, H, I]``.
        x: ``[T, H]`` tokens (the router and the shared experts see them).
        expert_input: ``[T, H]`` the rows the routed experts see (default x; ``dequantize(quantize(x))`` for a
            layer with ``dispatch_quant``).
    Returns:
        ``[T, H]`` float64.
    """
    topk_ids, topk_weights = layer.router(x)
    inter = w2.shape[2]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for token in range(x.shape[0]):
        row = (x if expert_input is None else expert_input)[token].double()
        for expert, weight in zip(topk_ids[token].tolist(), topk_weights[token].double()):
            hidden = F.silu(w13[expert, :inter].double() @ row) * (w13[expert, inter:].double() @ row)
            out[token] += weight * (w2[expert].double() @ hidden)
    if layer.shared_experts is not None:
        out += layer.shared_experts(x).double()
    return out
