"""The EP-scale simulation's counting and drop model against direct computations."""

from __future__ import annotations

import torch

from moecomm import ops
from moecomm.bench.simulate import SimulationConfig, run_simulation, step_time


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


def test_bench_cli_simulate_result_carries_the_traffic_table() -> None:
    config = SimulationConfig(
        ep_sizes=(2, 4),
        num_experts=8,
        top_k=2,
        batch=1,
        seq_len=64,
        skews=(0.0,),
        ratios=(0.0, 0.1),
        steps=1,
        traffic_tokens=64,
        traffic_skews=(0.0, 1.0),
        traffic_ep_sizes=(2, 16),
    )
    result = run_simulation(config, progress=False)
    traffic = result["traffic"]["records"]
    # Mixtral (E=8) has no EP16 row; Qwen3 and DeepSeek-V3 have both; two skews each
    assert sorted((r["model"], r["ep_size"]) for r in traffic if r["skew"] == 0.0) == [
        ("DeepSeek-V3", 2),
        ("DeepSeek-V3", 16),
        ("Mixtral-8x7B", 2),
        ("Qwen3-30B-A3B", 2),
        ("Qwen3-30B-A3B", 16),
    ]
    assert len(traffic) == 10
    assert "### Traffic per token" in result["table"] and "| DeepSeek-V3 |" in result["table"]
    assert result["config"]["traffic_skews"] == [0.0, 1.0]
