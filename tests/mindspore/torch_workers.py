"""Rank functions of the torch side of the MindSpore comparisons (spawned through ``run_local``, gloo)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from moe_case import case_tokens, case_weights

from moecomm import EPMoE


def torch_ep_moe(
    rank: int, world_size: int, case: dict[str, Any], configs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """torch EPMoE forwards of the seeded case, one layer per config."""
    w13, w2, replicated = case_weights(case)
    outcomes = []
    for config in configs:
        layer = EPMoE(
            case["hidden"],
            case["inter"],
            case["experts"],
            case["top_k"],
            group=dist.group.WORLD,
            config=config,
            shared_intermediate_size=case["shared_inter"],
        )
        layer.load_expert_weights(w13=w13, w2=w2)
        with torch.no_grad():
            for name, value in replicated.items():
                layer.get_parameter(name).copy_(value)
            y = layer(case_tokens(case, rank))
        outcomes.append({"y": y, "stats": layer.last_stats.as_dict()})
        layer.dispatcher.close()
    return outcomes
