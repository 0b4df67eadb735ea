"""Gradients through dispatch and combine (``run_moe_step`` with grad mode on) at 1, 2 and 4 ranks, every
dispatcher, both transports, with and without drops: equal to dense single-process autograd in float64; plus a
gradcheck of the step at one process, and the settings refused with gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from comm_workers import make_batch
from grad_workers import expert_scales, grad_step, loss_weights

from moecomm.comm import make_dispatcher, run_moe_step
from moecomm.config import MoECommConfig
from moecomm.testing.launch import run_local

DISPATCHERS = ("alltoallv", "alltoallv-pairs", "alltoall", "allgather")


def _cases(world_size: int) -> list[dict[str, Any]]:
    tokens = {1: [13], 2: [11, 0], 4: [7, 0, 9, 5]}[world_size]
    cases = []
    for index, (dispatcher, transport) in enumerate((d, t) for d in DISPATCHERS for t in ("torch", "shm")):
        config: dict[str, Any] = {"dispatcher": dispatcher, "transport": transport}
        if dispatcher == "alltoall":
            config["max_tokens_per_rank"] = max(tokens) + 1
        if index % 2:
            config["token_drop_ratio"] = 0.25
        cases.append(
            {
                "config": config,
                "tokens": tokens,
                "seed": 300 + index,
                "hidden": 6,
                "experts": 8,
                "top_k": 3,
                "routing": "skew" if index % 2 else "random",
                "dtype": "bfloat16" if index % 3 == 2 else "float32",
            }
        )
    return cases


_RESULTS: dict[int, list[list[dict[str, Any]]]] = {}


def _results(world_size: int) -> list[list[dict[str, Any]]]:
    if world_size not in _RESULTS:
        per_rank = run_local(grad_step, world_size, _cases(world_size), timeout_s=300.0, group_timeout_s=60.0)
        _RESULTS[world_size] = [[per_rank[r][i] for r in range(world_size)] for i in range(len(per_rank[0]))]
    return _RESULTS[world_size]


def dense_gradients(case: dict[str, Any], world_size: int, kept: list[torch.Tensor]) -> dict[str, Any]:
    """float64 autograd of the whole step on one process: ``y[t] = sum_k kept * w[t,k] * x[t] * scales[id]``."""
    batch = make_batch(case, world_size)
    scales = expert_scales(case).double().requires_grad_(True)
    xs, ws, loss = [], [], torch.zeros((), dtype=torch.float64)
    for rank, inputs in enumerate(batch):
        x = inputs["x"].double().requires_grad_(True)
        w = inputs["topk_weights"].double().requires_grad_(True)
        ids = inputs["topk_ids"]
        y = (kept[rank].double() * w).unsqueeze(2).mul(x.unsqueeze(1) * scales[ids]).sum(dim=1)
        loss = loss + (y * loss_weights(case, rank).double()).sum()
        xs.append(x)
        ws.append(w)
    loss.backward()
    return {"x": [x.grad for x in xs], "w": [w.grad for w in ws], "scales": scales.grad}


@pytest.mark.parametrize(
    "world_size,index",
    [
        pytest.param(
            w,
            i,
            id=f"R{w}-{c['config']['dispatcher']}-{c['config']['transport']}-"
            f"{'drop' if 'token_drop_ratio' in c['config'] else 'dropless'}-{c['dtype']}",
        )
        for w in (1, 2, 4)
        for i, c in enumerate(_cases(w))
    ],
)
def test_gradients_equal_dense_autograd(world_size: int, index: int) -> None:
    case = _cases(world_size)[index]
    results = _results(world_size)
    kept = [r["is_kept"] for r in results[index]]
    dense = dense_gradients(case, world_size, kept)
    bf16 = case["dtype"] == "bfloat16"
    tol = {"rtol": 3e-2, "atol": 3e-2} if bf16 else {"rtol": 1e-5, "atol": 1e-5}
    experts_per_rank = case["experts"] // world_size
    for rank, result in enumerate(results[index]):
        assert result["requires_grad"]
        torch.testing.assert_close(result["x_grad"].double(), dense["x"][rank], **tol)
        torch.testing.assert_close(result["w_grad"].double(), dense["w"][rank], **tol)
        mine = dense["scales"][rank * experts_per_rank : (rank + 1) * experts_per_rank]
        torch.testing.assert_close(result["scales_grad"].double(), mine, **tol)
    if "token_drop_ratio" in case["config"]:
        assert any(bool((~k).any()) for k in kept), "the drop case dropped nothing"


def test_gradcheck_one_process() -> None:
    """torch.autograd.gradcheck of (x, w) -> y through dispatch, experts and combine (float32 steps)."""
    torch.manual_seed(0)
    dispatcher = make_dispatcher(MoECommConfig(token_drop_ratio=0.2), 4)
    ids = torch.stack([torch.randperm(4)[:2] for _ in range(5)])
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.rand(5, 2, requires_grad=True)
    scales = torch.randn(4, 3)

    def step(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        def experts(rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
            return rows * rows * torch.repeat_interleave(scales, counts, dim=0)  # a nonlinear expert

        return run_moe_step(dispatcher, x, ids, w, experts)[0]

    assert torch.autograd.gradcheck(step, (x, w), eps=1e-2, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize(
    "config,match", [({"renormalize_kept": True}, "renormalize_kept"), ({"dispatch_quant": "int8"}, "dispatch_quant")]
)
def test_settings_without_gradients_are_refused_in_grad_mode(config: dict[str, Any], match: str) -> None:
    dispatcher = make_dispatcher(MoECommConfig(**config), 4)
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        run_moe_step(dispatcher, x, torch.tensor([[0], [1], [2]]), torch.ones(3, 1), lambda r, c: r)
    with torch.no_grad():  # inference is unaffected
        y, _ = run_moe_step(dispatcher, x, torch.tensor([[0], [1], [2]]), torch.ones(3, 1), lambda r, c: r)
    assert not y.requires_grad
