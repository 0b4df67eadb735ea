"""`moecomm bench simulate`: predicted MoE step time at EP 16/64/256, with and without token drops.

The model (printed with the results):

1. One prefill step routes ``batch x seq_len`` tokens with the same seeded generator as the benchmarks
   (Zipf over experts, hot experts placed at random), spread evenly over the EP ranks as sources.
   Rank r owns experts ``[r*E/R, (r+1)*E/R)``.
2. Drops follow moecomm's plan at ``drop_scope="rank"``: cap C = the water-filling cap of the received
   loads for the ratio; each rank keeps ``min(load, C)`` rows, taken from its sources in proportion.
3. A step is three globally synchronised phases, so each costs its slowest rank:
   dispatch = alpha + max_r(max(rows sent off-rank, rows received from other ranks)) x row_bytes / link,
   experts = max_r(rows received) x row_cost, combine = dispatch's mirror. Links are full duplex,
   per rank, uncontended; rows a rank keeps for itself do not travel.
4. ``row_cost`` is the per-row cost of the real SwiGLU expert FFN at the simulated H x I, measured on
   one thread of this machine unless given; only the MoE layer is modelled (attention, shared experts
   and the gate are unchanged by drops, so an end-to-end gain is this cut x the MoE share).
5. Results are means over ``steps`` routing draws (each with its own popularity placement).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from moecomm import ops
from moecomm.bench.progress import progress_task
from moecomm.bench.report import markdown_table
from moecomm.bench.routing import make_routing
from moecomm.bench.traffic import even_source_ranks, off_rank, traffic_matrix
from moecomm.bench.traffic_study import EP_SIZES, run_traffic

ASSUMPTIONS = [
    line.strip()
    for line in __doc__.split("The model (printed with the results):")[1].strip().split("\n\n")[0].split("\n")
]


@dataclass(frozen=True)
class SimulationConfig:
    """Defaults: the published setting (prefill, batch 8 x 3.5K tokens, DeepSeek-V3 256 experts top-8)."""

    ep_sizes: tuple[int, ...] = (16, 64, 256)
    num_experts: int = 256
    top_k: int = 8
    hidden: int = 7168
    intermediate: int = 2048
    batch: int = 8
    seq_len: int = 3584
    dtype_bytes: int = 2
    link_gbps: float = 50.0
    alpha_s: float = 20e-6
    row_cost_s: float = 1e-6
    skews: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    ratios: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
    steps: int = 4
    seed: int = 0
    traffic_tokens: int = 8192
    traffic_skews: tuple[float, ...] = (0.0, 1.0)
    traffic_ep_sizes: tuple[int, ...] = EP_SIZES


def step_time(counts: torch.Tensor, ratio: float, config: SimulationConfig) -> dict[str, float]:
    """Predicted phases of one step from ``counts [R, R]`` (source x destination pairs) at drop ``ratio``."""
    counts = counts.to(torch.float64)
    loads = counts.sum(0)
    cap = ops.capacity_for_ratio(loads.to(torch.int64), ratio)
    kept = counts * (cap / loads.clamp_min(1)).clamp(max=1.0).unsqueeze(0)
    crossing = off_rank(kept)
    wire_rows = torch.maximum(crossing.sum(1), crossing.sum(0))
    row_bytes = config.hidden * config.dtype_bytes
    exchange = config.alpha_s + float(wire_rows.max()) * row_bytes / (config.link_gbps * 1e9)
    experts = float(kept.sum(0).max()) * config.row_cost_s
    return {
        "dispatch_s": exchange,
        "experts_s": experts,
        "combine_s": exchange,
        "step_s": 2 * exchange + experts,
        "max_over_mean_load": float(loads.max() / loads.mean()) if loads.sum() > 0 else 1.0,
        "dropped_share": 1.0 - float(kept.sum() / counts.sum()) if counts.sum() > 0 else 0.0,
    }


def run_simulation(config: SimulationConfig, *, progress: bool = True) -> dict[str, Any]:
    """Predicts every (EP size, skew, ratio) and the traffic per token of real routing shapes; returns
    ``{"config", "assumptions", "records", "traffic": {"records", "table"}, "table"}``."""
    num_tokens = config.batch * config.seq_len
    records = []
    total = len(config.ep_sizes) * len(config.skews) * config.steps
    with progress_task("simulate", total, progress) as advance:
        sums: dict[tuple[int, float, float], dict[str, float]] = {}
        for skew in config.skews:
            for step in range(config.steps):
                routing = make_routing(
                    num_tokens,
                    config.num_experts,
                    config.top_k,
                    skew=skew,
                    seed=config.seed * 1009 + step,
                    popularity_seed=config.seed * 1009 + step,
                )
                for ep_size in config.ep_sizes:
                    counts = traffic_matrix(
                        routing.topk_ids, config.num_experts, ep_size, even_source_ranks(num_tokens, ep_size)
                    )
                    for ratio in config.ratios:
                        point = step_time(counts, ratio, config)
                        acc = sums.setdefault((ep_size, skew, ratio), dict.fromkeys(point, 0.0))
                        for key, value in point.items():
                            acc[key] += value / config.steps
                    advance()
    for (ep_size, skew, ratio), point in sorted(sums.items()):
        base = sums[(ep_size, skew, config.ratios[0])]["step_s"]
        records.append(
            {
                "section": "simulate",
                "name": f"EP{ep_size} skew={skew:g} ratio={ratio:g}",
                "ep_size": ep_size,
                "skew": skew,
                "token_drop_ratio": ratio,
                **point,
                "step_time_cut": 1.0 - point["step_s"] / base,
            }
        )
    shape = asdict(config)
    shape.update(
        ep_sizes=list(config.ep_sizes),
        skews=list(config.skews),
        ratios=list(config.ratios),
        num_tokens=num_tokens,
        traffic_skews=list(config.traffic_skews),
        traffic_ep_sizes=list(config.traffic_ep_sizes),
    )
    traffic = run_traffic(
        config.traffic_tokens, config.traffic_skews, seed=config.seed, ep_sizes=config.traffic_ep_sizes
    )
    table = simulation_table(records, config) + "\n\n### Traffic per token\n\n" + traffic["table"]
    return {"config": shape, "assumptions": ASSUMPTIONS, "records": records, "traffic": traffic, "table": table}


def simulation_table(records: list[dict[str, Any]], config: SimulationConfig) -> str:
    """Markdown: one row per (EP size, skew, ratio), then the model's assumptions."""
    rows = [
        [
            r["ep_size"],
            r["skew"],
            r["token_drop_ratio"],
            r["step_s"] * 1e3,
            r["dispatch_s"] * 1e3,
            r["experts_s"] * 1e3,
            r["max_over_mean_load"],
            f"{100 * r['dropped_share']:.1f}%",
            f"{100 * r['step_time_cut']:.1f}%",
        ]
        for r in records
    ]
    table = markdown_table(
        [
            "EP",
            "zipf",
            "drop ratio",
            "step ms",
            "dispatch ms",
            "experts ms",
            "max/mean load",
            "dropped",
            "step time cut",
        ],
        rows,
    )
    header = (
        f"Prefill {config.batch} x {config.seq_len} tokens, E={config.num_experts} top-{config.top_k}, "
        f"H={config.hidden} I={config.intermediate}, row cost {config.row_cost_s * 1e6:.3g} us, "
        f"link {config.link_gbps:g} GB/s, {config.steps} draws per point."
    )
    return header + "\n\n" + table + "\n\nModel assumptions:\n" + "\n".join(ASSUMPTIONS)
