"""The plugin's per-rank MoE forward (ep_moe_forward) in both token-ownership shapes, over gloo, vs dense torch.

- "TP shape" (DP=1, TP=R): every rank holds the same tokens; each dispatches its slice, slices are gathered.
- "DP shape" (TP=1 per DP rank): every rank holds its own tokens and dispatches all of them.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from moecomm.testing.launch import run_local  # noqa: E402

pytestmark = pytest.mark.vllm

HIDDEN, INTER, EXPERTS, TOP_K = 16, 8, 8, 2


def _weights() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(EXPERTS, 2 * INTER, HIDDEN, generator=gen), torch.randn(EXPERTS, HIDDEN, INTER, generator=gen)


def _tokens(num_tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, HIDDEN, generator=gen)
    logits = torch.randn(num_tokens, EXPERTS, generator=gen)
    weights, ids = torch.softmax(logits, dim=-1).topk(TOP_K, dim=-1)
    return x, ids.to(torch.int32), weights


def dense_moe(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Single-process reference: every token through its K experts, token by token."""
    w13, w2 = _weights()
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            gate, up = (w13[e] @ x[t]).chunk(2)
            out[t] += weights[t, k] * (w2[e] @ (F.silu(gate) * up))
    return out


def _rank(rank: int, world_size: int, shape: str, num_tokens: int, dispatcher: str) -> list[torch.Tensor]:
    import torch.distributed as dist

    from moecomm import MoECommConfig, make_dispatcher
    from moecomm.integrations.vllm.forward import ep_moe_forward

    cfg = MoECommConfig(dispatcher=dispatcher, max_tokens_per_rank=num_tokens)
    disp = make_dispatcher(cfg, num_experts=EXPERTS, group=dist.group.WORLD)
    w13, w2 = _weights()
    local = slice(rank * EXPERTS // world_size, (rank + 1) * EXPERTS // world_size)
    w13, w2 = w13[local].contiguous(), w2[local].contiguous()
    if shape == "tp":
        x, ids, w = _tokens(num_tokens, seed=0)
        gathered, _ = ep_moe_forward(
            disp, x, ids, w, w13, w2, tp_rank=rank, tp_size=world_size, tp_group=dist.group.WORLD, gather=True
        )
        partial, _ = ep_moe_forward(
            disp, x, ids, w, w13, w2, tp_rank=rank, tp_size=world_size, tp_group=dist.group.WORLD, gather=False
        )
        return [gathered, partial]
    x, ids, w = _tokens(num_tokens + rank, seed=100 + rank)  # DP ranks hold different numbers of tokens
    out, _ = ep_moe_forward(disp, x, ids, w, w13, w2)
    return [out]


@pytest.mark.parametrize("dispatcher", ["alltoallv", "allgather"])
@pytest.mark.parametrize("num_tokens", [1, 7])
def test_vllm_tp_shape_slices_and_gathers(dispatcher, num_tokens):
    expected = dense_moe(*_tokens(num_tokens, seed=0))
    results = run_local(_rank, 2, "tp", num_tokens, dispatcher, timeout_s=120)
    for gathered, _ in results:  # every TP rank ends with the full output, counted once
        torch.testing.assert_close(gathered, expected, rtol=1e-5, atol=1e-5)
    partial_sum = results[0][1] + results[1][1]  # the zero-padded slices sum to the full output
    torch.testing.assert_close(partial_sum, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dispatcher", ["alltoallv", "allgather"])
def test_vllm_dp_shape_each_rank_its_own_tokens(dispatcher):
    results = run_local(_rank, 2, "dp", 5, dispatcher, timeout_s=120)
    for rank, (out,) in enumerate(results):
        torch.testing.assert_close(out, dense_moe(*_tokens(5 + rank, seed=100 + rank)), rtol=1e-5, atol=1e-5)
