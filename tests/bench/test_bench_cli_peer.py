"""The pure-torch all-to-all-v benchmark peer against a dense single-process reference."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moecomm.bench.torch_peer import TorchAllToAllV
from moecomm.testing.launch import run_local


def scale_by_expert(expert_x: torch.Tensor, tokens_per_local_expert: torch.Tensor, first_expert: int) -> torch.Tensor:
    """Expert e multiplies its rows by e + 1 (rows grouped by local expert)."""
    factors = (torch.arange(tokens_per_local_expert.numel()) + first_expert + 1).repeat_interleave(
        tokens_per_local_expert
    )
    return expert_x * factors.to(expert_x.dtype).unsqueeze(1)


def dense_reference(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """y[t] = sum_k w[t,k] * (ids[t,k] + 1) * x[t], in float64."""
    scale = (topk_weights.double() * (topk_ids.double() + 1)).sum(1, keepdim=True)
    return x.double() * scale


def inputs(rank: int, num_tokens: int, hidden: int, num_experts: int, top_k: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1000 + rank)
    x = torch.randn((num_tokens, hidden), generator=generator)
    scores = torch.rand((num_tokens, num_experts), generator=generator)
    ids = scores.topk(top_k, dim=1).indices
    weights = torch.rand((num_tokens, top_k), generator=generator)
    return x, ids, weights


@settings(max_examples=25, deadline=None)
@given(num_tokens=st.integers(0, 20), hidden=st.integers(1, 9), num_experts=st.integers(1, 12), data=st.data())
def test_bench_cli_peer_single_process_matches_dense(
    num_tokens: int, hidden: int, num_experts: int, data: st.DataObject
) -> None:
    top_k = data.draw(st.integers(1, num_experts))
    x, ids, weights = inputs(0, num_tokens, hidden, num_experts, top_k)
    peer = TorchAllToAllV(num_experts)
    expert_x, handle = peer.dispatch(x, ids, weights)
    assert int(handle.tokens_per_local_expert.sum()) == num_tokens * top_k
    assert torch.equal(handle.tokens_per_local_expert, torch.bincount(ids.reshape(-1), minlength=num_experts))
    y = peer.combine(scale_by_expert(expert_x, handle.tokens_per_local_expert, 0), handle)
    torch.testing.assert_close(y.double(), dense_reference(x, ids, weights), rtol=1e-5, atol=1e-5)


def peer_rank(rank: int, world_size: int, tokens_per_rank: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    num_experts, top_k, hidden = 8, 3, 5
    x, ids, weights = inputs(rank, tokens_per_rank[rank], hidden, num_experts, top_k)
    peer = TorchAllToAllV(num_experts, torch.distributed.group.WORLD)
    expert_x, handle = peer.dispatch(x, ids, weights)
    first = rank * peer.num_local_experts
    y = peer.combine(scale_by_expert(expert_x, handle.tokens_per_local_expert, first), handle)
    return y, dense_reference(x, ids, weights)


def test_bench_cli_peer_two_ranks_match_dense_including_empty_rank() -> None:
    for tokens_per_rank in ([7, 11], [0, 6]):
        for y, expected in run_local(peer_rank, 2, tokens_per_rank, timeout_s=120):
            torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
