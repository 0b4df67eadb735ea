"""capacity_for_ratio (water-filling) and capacity_from_factor vs brute force and Megatron-Core."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moecomm import ops


def brute_force_cap(loads: list[int], budget: int) -> int:
    cap = 0
    while sum(max(0, load - cap) for load in loads) > budget:
        cap += 1
    return cap


@settings(max_examples=200, deadline=None)
@given(loads=st.lists(st.integers(0, 200), min_size=0, max_size=20), ratio=st.floats(0, 0.999))
def test_capacity_for_ratio_is_the_smallest_cap_within_budget(loads, ratio):
    total = sum(loads)
    budget = ops.drop_budget(total, ratio)
    assert budget <= ratio * total + 1e-9 and budget >= math.floor(ratio * total) - 1
    cap = ops.capacity_for_ratio(torch.tensor(loads, dtype=torch.int64), ratio)
    assert cap == brute_force_cap(loads, budget)


def test_zero_ratio_drops_nothing_and_budget_is_exact():
    loads = torch.tensor([7, 3, 0, 12])
    assert ops.capacity_for_ratio(loads, 0.0) == 12
    assert ops.drop_budget(100, 0.29) == 29  # float 0.29 * 100 is 28.999999999999996


@settings(max_examples=100, deadline=None)
@given(
    num_tokens=st.integers(0, 10_000),
    top_k=st.integers(1, 8),
    num_experts=st.integers(1, 256),
    factor=st.floats(0.01, 8.0),
)
def test_capacity_from_factor_matches_megatron(num_tokens, top_k, num_experts, factor):
    moe_utils = pytest.importorskip("megatron.core.transformer.moe.moe_utils")
    want = moe_utils.get_capacity(num_tokens=num_tokens * top_k, num_experts=num_experts, capacity_factor=factor)
    assert ops.capacity_from_factor(num_tokens, top_k, num_experts, factor) == want
