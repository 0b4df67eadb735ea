"""The EP-scale simulation's counting and drop model against direct computations."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moecomm import ops
from moecomm.bench.simulate import SimulationConfig, pair_counts, step_time


@settings(max_examples=30, deadline=None)
@given(num_tokens=st.integers(1, 60), ranks_log2=st.integers(0, 3), seed=st.integers(0, 50))
def test_bench_cli_simulate_pair_counts_match_a_loop(num_tokens: int, ranks_log2: int, seed: int) -> None:
    num_ranks, num_experts, top_k = 2**ranks_log2, 16, 2
    ids = torch.rand((num_tokens, num_experts), generator=torch.Generator().manual_seed(seed)).topk(top_k, dim=1).indices
    counts = pair_counts(ids, num_experts, num_ranks)
    expected = torch.zeros((num_ranks, num_ranks), dtype=torch.int64)
    for token in range(num_tokens):
        source = token * num_ranks // num_tokens
        for expert in ids[token].tolist():
            expected[source, expert // (num_experts // num_ranks)] += 1
    assert torch.equal(counts, expected)


def test_bench_cli_simulate_drop_caps_the_straggler() -> None:
    counts = torch.tensor([[10, 50, 0, 0], [10, 50, 5, 5], [10, 50, 5, 5], [10, 50, 0, 0]])
    config = SimulationConfig(row_cost_s=1e-3, link_gbps=1e9, alpha_s=0.0)  # compute-bound
    dropless = step_time(counts, 0.0, config)
    dropped = step_time(counts, 0.2, config)
    loads = counts.sum(0)
    cap = ops.capacity_for_ratio(loads, 0.2)
    assert dropless["experts_s"] == float(loads.max()) * 1e-3
    assert abs(dropped["experts_s"] - cap * 1e-3) < 1e-12
    assert abs(dropped["dropped_share"] - int((loads - cap).clamp_min(0).sum()) / int(loads.sum())) < 1e-12
    assert dropped["step_s"] < dropless["step_s"]
