"""The rank side of ``moecomm bench mindspore`` (runs on MindSpore CPU workers; imports MindSpore).

One dispatcher per transport (``shm`` bootstrapped over MindSpore, and MindSpore's all-gather collectives),
both alive at once; each timed round runs one dispatch + combine step of each, interleaved, every step
after a barrier on its own transport. Each rank returns its own step times; the parent takes the slowest
rank per step.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from moecomm.integrations.mindspore import make_mindspore_dispatcher


def bench_rank(rank: int, world_size: int, shape: dict[str, Any], transports: list[str]) -> dict[str, Any]:
    """Step times (s) of ``alltoallv`` dispatch + combine per transport; the outputs' max abs difference."""
    gen = torch.Generator().manual_seed(shape["seed"] * 100 + rank)
    tokens, hidden, experts, top_k = shape["tokens"], shape["hidden"], shape["experts"], shape["top_k"]
    x = torch.randn(tokens, hidden, generator=gen).to(getattr(torch, shape["dtype"]))
    weights, ids = torch.softmax(torch.randn(tokens, experts, generator=gen), dim=-1).topk(top_k, dim=-1)
    config = {"dispatcher": "alltoallv", "token_drop_ratio": shape["drop_ratio"], "timeout_s": 60}
    dispatchers = {name: make_mindspore_dispatcher({**config, "transport": name}, experts) for name in transports}

    def step(name: str) -> torch.Tensor:
        dispatcher = dispatchers[name]
        expert_x, handle = dispatcher.dispatch(x, ids, weights)
        return dispatcher.combine(expert_x, handle)  # identity experts: y = sum of kept weights * x

    outputs = {name: step(name) for name in transports}
    first = outputs[transports[0]]
    difference = max(
        float((out.float() - first.float()).abs().max()) if out.numel() else 0.0 for out in outputs.values()
    )
    for _ in range(shape["warmup"]):
        for name in transports:
            step(name)
    samples: dict[str, list[float]] = {name: [] for name in transports}
    for _ in range(shape["repeats"]):
        for name in transports:
            dispatchers[name].transport.barrier("bench", "round start")
            start = time.perf_counter()
            step(name)
            samples[name].append(time.perf_counter() - start)
    for dispatcher in dispatchers.values():
        dispatcher.close()
    return {"samples": samples, "max_abs_diff": difference}
