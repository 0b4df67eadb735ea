"""Rank function of the autograd tests: a differentiable MoE step whose experts scale their rows by a learnt
per-expert vector, backward of a seeded linear loss; the parent checks every gradient against dense autograd."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from comm_workers import make_batch

from moecomm.comm import make_dispatcher, run_moe_step
from moecomm.config import MoECommConfig


def expert_scales(case: dict[str, Any]) -> torch.Tensor:
    """``[E, H]`` float32: expert e multiplies its rows by ``scales[e]`` (seeded, the same on every rank)."""
    gen = torch.Generator().manual_seed(case["seed"] + 999)
    return torch.randn((case["experts"], case["hidden"]), generator=gen)


def loss_weights(case: dict[str, Any], rank: int) -> torch.Tensor:
    """``[T_rank, H]``: the loss of rank r is ``(y * loss_weights).sum()``."""
    gen = torch.Generator().manual_seed(case["seed"] * 31 + rank)
    return torch.randn((case["tokens"][rank], case["hidden"]), generator=gen)


def grad_step(rank: int, world_size: int, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = []
    for case in cases:
        dispatcher = make_dispatcher(MoECommConfig.from_dict(case["config"]), case["experts"], dist.group.WORLD)
        inputs = make_batch(case, world_size)[rank]
        x = inputs["x"].clone().requires_grad_(True)
        weights = inputs["topk_weights"].float().clone().requires_grad_(True)
        local = dispatcher.local_experts
        scales = expert_scales(case)[local.start : local.stop].clone().requires_grad_(True)

        def experts(rows: torch.Tensor, counts: torch.Tensor, scales: torch.Tensor = scales) -> torch.Tensor:
            return rows * torch.repeat_interleave(scales, counts, dim=0).to(rows.dtype)

        y, handle = run_moe_step(dispatcher, x, inputs["topk_ids"], weights, experts)
        (y.float() * loss_weights(case, rank)).sum().backward()
        results.append(
            {
                "y": y.detach(),
                "x_grad": x.grad,
                "w_grad": weights.grad,
                "scales_grad": scales.grad,
                "is_kept": handle.is_kept,
                "requires_grad": y.requires_grad,
            }
        )
        dispatcher.close()
    return results
