"""Hypothesis strategies for routed batches: random, all-to-one-expert and repeated-id routings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class Routing:
    topk_ids: torch.Tensor  # [T, K] int32/int64
    topk_weights: torch.Tensor  # [T, K] float32
    num_experts: int
    num_ranks: int


@st.composite
def routings(draw: st.DrawFn, max_tokens: int = 48) -> Routing:
    num_tokens = draw(st.sampled_from([0, 1, 2, 3, draw(st.integers(0, max_tokens))]))
    top_k = draw(st.integers(1, 8))
    num_experts = draw(st.sampled_from([1, 2, 3, 4, 8, 16, 64, 256, draw(st.integers(1, 256))]))
    divisors = [r for r in (1, 2, 3, 4, 8) if num_experts % r == 0]
    num_ranks = draw(st.sampled_from(divisors))
    mode = draw(st.sampled_from(["random", "one_expert", "repeated", "distinct"]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    if mode == "one_expert":
        ids = torch.full((num_tokens, top_k), draw(st.integers(0, num_experts - 1)), dtype=torch.int64)
    elif mode == "repeated":
        ids = torch.randint(0, num_experts, (num_tokens, 1), generator=gen).repeat(1, top_k)
    elif mode == "distinct" and top_k <= num_experts:
        ids = (
            torch.stack([torch.randperm(num_experts, generator=gen)[:top_k] for _ in range(num_tokens)])
            if num_tokens
            else torch.empty((0, top_k), dtype=torch.int64)
        )
    else:
        ids = torch.randint(0, num_experts, (num_tokens, top_k), generator=gen)
    ids = ids.to(draw(st.sampled_from([torch.int32, torch.int64])))
    # weights with deliberate ties (rounded) so tie-breaking is exercised
    weights = (torch.rand((num_tokens, top_k), generator=gen) * 8).round() / 8
    return Routing(ids, weights, num_experts, num_ranks)


def activations(routing: Routing, hidden: int, dtype: torch.dtype, seed: int, non_contiguous: bool) -> torch.Tensor:
    """``[T, hidden]`` activations; non-contiguous ones are a strided view of a wider tensor."""
    gen = torch.Generator().manual_seed(seed)
    num_tokens = routing.topk_ids.shape[0]
    if non_contiguous:
        wide = torch.randn((num_tokens, hidden * 2), generator=gen).to(dtype)
        return wide[:, ::2]
    return torch.randn((num_tokens, hidden), generator=gen).to(dtype)
