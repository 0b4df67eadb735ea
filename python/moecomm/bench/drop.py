"""`moecomm bench drop`: what token dropping buys, over real local EP ranks.

For each routing skew (Zipf exponent, or hot-expert multiplier) and each ``token_drop_ratio``, one step
is ``dispatch -> expert stand-in -> combine`` with moecomm's ``alltoallv`` dispatcher
(``drop_scope="rank"``). The expert stand-in costs time proportional to the rows a rank received:

- ``sleep`` (default): ``rows x row_cost`` seconds, where ``row_cost`` is calibrated from the real SwiGLU
  expert FFN (``moecomm.layer.experts.swiglu_experts``) on one core, so the 2 shared cores of this
  machine do not distort the straggler effect (each EP rank owns its accelerator in a deployment).
- ``ffn``: the real SwiGLU FFN on the received rows.

Measured per point: step time (slowest rank, interleaved over ratios), max/mean received rows, dropped
share of (token, expert) pairs, and the output's relative error against the dropless step with the real
expert FFN (computed in an untimed pass).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist

from moecomm.bench.dispatch import RanksConfig, rank_seed, rank_tokens, relative_error, synced_time
from moecomm.bench.progress import progress_task
from moecomm.bench.report import markdown_table, ms, timing_record
from moecomm.bench.routing import make_routing
from moecomm.bench.timing import Timing, measure_interleaved, quantile, set_allocator


@dataclass(frozen=True)
class DropBenchConfig(RanksConfig):
    """Issue 3 / 6's token-drop study over ``RanksConfig``'s shapes (skew x ratio sweep)."""

    routing: str = "zipf"
    drop_policy: str = "position"
    skews: tuple[float, ...] = (0.0, 1.0, 1.5)
    ratios: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3)
    ffn_intermediate: int = 64
    row_cost_s: float | None = None
    compute: str = "sleep"
    repeats: int = 3
    warmup: int = 1


def expert_weights(
    num_experts: int, hidden: int, intermediate: int, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random SwiGLU weights ``w13 [E, 2I, H]`` and ``w2 [E, H, I]`` in ``dtype`` (scaled like nn.Linear)."""
    generator = torch.Generator().manual_seed(seed)
    w13 = torch.randn((num_experts, 2 * intermediate, hidden), generator=generator) / hidden**0.5
    w2 = torch.randn((num_experts, hidden, intermediate), generator=generator) / intermediate**0.5
    return w13.to(dtype), w2.to(dtype)


def calibrate_row_cost(
    hidden: int,
    intermediate: int,
    num_local_experts: int,
    dtype: torch.dtype,
    *,
    num_rows: int = 2048,
    repeats: int = 5,
) -> float:
    """Seconds per row of the real SwiGLU expert FFN on one thread (median of ``repeats``)."""
    from moecomm.layer.experts import swiglu_experts

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        w13, w2 = expert_weights(num_local_experts, hidden, intermediate, dtype, seed=0)
        rows = torch.randn((num_rows, hidden)).to(dtype)
        counts = torch.full((num_local_experts,), num_rows // num_local_experts, dtype=torch.int64)
        counts[: num_rows % num_local_experts] += 1
        swiglu_experts(rows, counts, w13, w2)  # warm up
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            swiglu_experts(rows, counts, w13, w2)
            samples.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return quantile(samples, 0.5) / num_rows


def drop_worker(rank: int, world_size: int, config: DropBenchConfig, row_cost_s: float) -> dict[str, Any]:
    """One rank of the drop study (run by ``run_local``). Returns per skew: timings, loads, drops, errors."""
    from moecomm.bench.dispatch import make_bench_dispatcher
    from moecomm.bench.kernels import DTYPES
    from moecomm.comm.moe_step import run_moe_step
    from moecomm.layer.experts import swiglu_experts

    set_allocator(config.allocator)
    dtype = DTYPES[config.dtype]
    num_local = config.num_experts // world_size
    w13, w2 = expert_weights(num_local, config.hidden, config.ffn_intermediate, dtype, seed=config.seed * 31 + rank)
    x = rank_tokens(config, rank)
    dispatchers = {
        ratio: make_bench_dispatcher(
            "alltoallv", config.num_experts, token_drop_ratio=ratio, drop_scope="rank", drop_policy=config.drop_policy
        )
        for ratio in config.ratios
    }
    dropless = make_bench_dispatcher("alltoallv", config.num_experts)
    results = []
    for skew in config.skews:
        routing = make_routing(
            config.num_tokens,
            config.num_experts,
            config.top_k,
            skew=skew,
            mode=config.routing,
            seed=rank_seed(config, rank),
            popularity_seed=config.seed,
        )
        ids, weights = routing.topk_ids, routing.topk_weights

        def ffn(expert_x: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
            return swiglu_experts(expert_x, tokens_per_expert, w13, w2)

        def stand_in(expert_x: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
            time.sleep(expert_x.shape[0] * row_cost_s)
            return expert_x

        def ffn_step(dispatcher: Any) -> tuple[torch.Tensor, Any]:
            return run_moe_step(dispatcher, x, ids, weights, ffn)

        reference, _ = ffn_step(dropless)
        points = {}
        for ratio, dispatcher in dispatchers.items():
            y, handle = ffn_step(dispatcher)
            received = torch.tensor([int(handle.tokens_per_local_expert.sum())], dtype=torch.int64)
            gathered = [torch.empty_like(received) for _ in range(world_size)]
            dist.all_gather(gathered, received)
            dropped = torch.tensor([int((~handle.is_kept).sum()), handle.is_kept.numel()], dtype=torch.int64)
            dist.all_reduce(dropped)
            points[ratio] = {
                "received_rows_per_rank": [int(g) for g in gathered],
                "dropped_pairs": int(dropped[0]),
                "total_pairs": int(dropped[1]),
                "relative_error": relative_error(y, reference),
            }

        def timed_step(dispatcher: Any) -> torch.Tensor:
            return run_moe_step(dispatcher, x, ids, weights, ffn if config.compute == "ffn" else stand_in)[0]

        cases = {f"{ratio}": (lambda d=dispatcher: timed_step(d)) for ratio, dispatcher in dispatchers.items()}
        timings = measure_interleaved(cases, repeats=config.repeats, warmup=config.warmup, timer=synced_time)
        for ratio in config.ratios:
            points[ratio]["samples_s"] = timings[f"{ratio}"].samples
        results.append({"skew": skew, "points": points})
    return {"rank": rank, "skews": results}


def run_drop(config: DropBenchConfig, *, progress: bool = True) -> dict[str, Any]:
    """Calibrates the per-row cost, spawns the ranks, runs the sweep; returns ``{"config", "records", "table"}``."""
    from moecomm.bench.kernels import DTYPES
    from moecomm.testing.launch import run_local

    num_local = config.num_experts // config.num_ranks
    calibrated = calibrate_row_cost(config.hidden, config.ffn_intermediate, num_local, DTYPES[config.dtype])
    row_cost_s = config.row_cost_s if config.row_cost_s is not None else calibrated
    with progress_task(
        f"drop ({config.num_ranks} ranks, {len(config.skews)} skews x {len(config.ratios)} ratios)", 1, progress
    ) as advance:
        results = run_local(drop_worker, config.num_ranks, config, row_cost_s, timeout_s=config.timeout_s)
        advance()
    shape = asdict(config)
    shape.update(
        skews=list(config.skews), ratios=list(config.ratios), row_cost_s=row_cost_s, calibrated_row_cost_s=calibrated
    )
    records = []
    for entry in results[0]["skews"]:
        skew = entry["skew"]
        base = Timing(tuple(entry["points"][config.ratios[0]]["samples_s"]))
        for ratio in config.ratios:
            point = entry["points"][ratio]
            timing = Timing(tuple(point["samples_s"]))
            loads = torch.tensor(point["received_rows_per_rank"], dtype=torch.float64)
            dropless_loads = torch.tensor(
                entry["points"][config.ratios[0]]["received_rows_per_rank"], dtype=torch.float64
            )
            records.append(
                timing_record(
                    "drop",
                    f"skew={skew:g} ratio={ratio:g}",
                    timing,
                    config={**shape, "skew": skew, "ratio": ratio},
                    ratios={f"step_time_vs_ratio_{config.ratios[0]:g}": timing.median / base.median},
                    extra={
                        "skew": skew,
                        "token_drop_ratio": ratio,
                        "received_rows_per_rank": point["received_rows_per_rank"],
                        "max_over_mean_load": float(loads.max() / loads.mean()) if loads.sum() > 0 else 1.0,
                        "max_load_vs_dropless": float(loads.max() / dropless_loads.max())
                        if dropless_loads.max() > 0
                        else 1.0,
                        "dropped_share": point["dropped_pairs"] / max(1, point["total_pairs"]),
                        "relative_error": point["relative_error"],
                        "step_time_cut": 1.0 - timing.median / base.median,
                    },
                )
            )
    header = (
        f"{config.num_ranks} ranks, T={config.num_tokens}/rank H={config.hidden} E={config.num_experts} "
        f"K={config.top_k} {config.dtype}, alltoallv, drop_scope=rank, drop_policy={config.drop_policy}, "
        f"{config.routing} routing; expert stand-in: {config.compute}"
        + (
            f" ({row_cost_s * 1e6:.3g} us/row, real SwiGLU FFN I={config.ffn_intermediate} measured on one thread)"
            if config.compute == "sleep"
            else f" (real SwiGLU FFN I={config.ffn_intermediate})"
        )
        + "; step = slowest rank, ratios interleaved."
    )
    return {"config": shape, "records": records, "table": header + "\n\n" + drop_table(records)}


def drop_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per (skew, ratio)."""
    rows = [
        [
            r["skew"],
            r["token_drop_ratio"],
            ms(r["median_s"]),
            ms(r["p10_s"]),
            ms(r["p90_s"]),
            f"{100 * r['step_time_cut']:.1f}%",
            r["max_over_mean_load"],
            r["received_rows_per_rank"],
            f"{100 * r['dropped_share']:.2f}%",
            r["relative_error"],
        ]
        for r in records
    ]
    return markdown_table(
        [
            "skew",
            "drop ratio",
            "step median ms",
            "p10 ms",
            "p90 ms",
            "step time cut vs ratio 0",
            "max/mean rows",
            "rows per rank",
            "dropped pairs",
            "rel. output error",
        ],
        rows,
    )
