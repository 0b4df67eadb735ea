"""The seeded EPMoE case both frameworks run: sizes, full weights and each rank's tokens (torch only)."""

from __future__ import annotations

from typing import Any

import torch

CASE: dict[str, Any] = {
    "hidden": 16,
    "inter": 12,
    "experts": 8,
    "top_k": 2,
    "shared_inter": 8,
    "tokens": [11, 7],
    "seed": 5,
}


def case_weights(case: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The full routed experts ``w13 [E, 2I, H]``, ``w2 [E, H, I]`` (float32) and the replicated weights by
    the layer's parameter names (router ``[E, H]``, shared experts' projections)."""
    gen = torch.Generator().manual_seed(case["seed"])
    hidden, inter, experts, shared = case["hidden"], case["inter"], case["experts"], case["shared_inter"]
    w13 = torch.randn(experts, 2 * inter, hidden, generator=gen) / hidden**0.5
    w2 = torch.randn(experts, hidden, inter, generator=gen) / inter**0.5
    replicated = {
        "router.weight": torch.randn(experts, hidden, generator=gen) * 0.5,
        "shared_experts.gate_proj.weight": torch.randn(shared, hidden, generator=gen) / hidden**0.5,
        "shared_experts.up_proj.weight": torch.randn(shared, hidden, generator=gen) / hidden**0.5,
        "shared_experts.down_proj.weight": torch.randn(hidden, shared, generator=gen) / shared**0.5,
    }
    return w13, w2, replicated


def case_tokens(case: dict[str, Any], rank: int) -> torch.Tensor:
    """Rank ``rank``'s tokens ``[T_r, H]`` float32."""
    gen = torch.Generator().manual_seed(case["seed"] * 1000 + rank)
    return torch.randn(case["tokens"][rank], case["hidden"], generator=gen)
