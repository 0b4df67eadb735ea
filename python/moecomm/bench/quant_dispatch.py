"""Quantized dispatch (``dispatch_quant``) against bf16 rows: time, bytes on the wire, and layer error.

    moecomm bench quant                    # EP2, T=4096/rank, H=2048 and 7168, E=64, K=8, bf16, alltoallv over shm
    moecomm bench quant --hiddens 2048 --repeats 5 --json quant.json

Timing: for each H, one interleaved run of every ``dispatch_quant`` (none, int8, fp8) as the dispatch alone,
the dispatch with ``dequantize=False`` (experts that take int8/fp8 rows), and dispatch + combine with identity
experts (slowest rank per sample); ratios are medians of the same run.
Bytes: ``handle.stats.bytes_sent`` (rows and routing metadata that crossed ranks), summed over ranks.
Error: relative L2 of a SwiGLU MoE layer's output with quantized vs unquantized dispatch (same router, same
experts; one process, since a quantized dispatch equals the unquantized dispatch of the rounded rows at any
rank count), for Gaussian activations and for Gaussian activations with a few outlier channels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist

from moecomm.bench.dispatch import RanksConfig, rank_seed, rank_tokens, synced_time
from moecomm.bench.report import markdown_table, ms
from moecomm.bench.routing import make_routing
from moecomm.bench.timing import Timing, measure_interleaved

KINDS = ("none", "int8", "fp8")


@dataclass(frozen=True)
class QuantBenchConfig(RanksConfig):
    """Shapes of the quantized-dispatch benchmark (RanksConfig's defaults: 2 ranks, T=4096, E=64, K=8, bf16)."""

    hiddens: tuple[int, ...] = (2048, 7168)
    kinds: tuple[str, ...] = KINDS
    dispatcher: str = "alltoallv"
    transport: str = "shm"
    repeats: int = 7
    warmup: int = 2
    error_tokens: int = 2048
    intermediate: int = 768
    outlier_channels: int = 8
    outlier_scale: float = 50.0


def _quant(kind: str) -> str | None:
    return None if kind == "none" else kind


def quant_worker(rank: int, world_size: int, config: QuantBenchConfig) -> dict[str, Any]:
    """One rank: per H, timings of every kind's dispatch and dispatch + combine, and its bytes_sent."""
    from moecomm import MoECommConfig, make_dispatcher

    results: dict[str, Any] = {}
    for hidden in config.hiddens:
        shaped = QuantBenchConfig(**{**asdict(config), "hidden": hidden, "hiddens": (hidden,)})
        x = rank_tokens(shaped, rank)
        routing = make_routing(
            config.num_tokens,
            config.num_experts,
            config.top_k,
            seed=rank_seed(config, rank),
            popularity_seed=config.seed,
        )
        ids, weights = routing.topk_ids, routing.topk_weights
        cases, bytes_sent, dispatchers = {}, {}, []
        for kind in config.kinds:
            quant_config = MoECommConfig(
                dispatcher=config.dispatcher,
                transport=config.transport,
                dispatch_quant=_quant(kind),
                **({"max_tokens_per_rank": config.num_tokens} if config.dispatcher == "alltoall" else {}),
            )
            d = make_dispatcher(quant_config, config.num_experts, dist.group.WORLD if world_size > 1 else None)
            dispatchers.append(d)
            _, handle = d.dispatch(x, ids, weights)
            sent = torch.tensor([handle.stats.bytes_sent], dtype=torch.int64)
            if world_size > 1:
                dist.all_reduce(sent)
            bytes_sent[kind] = int(sent)

            def step(d: Any = d) -> None:
                expert_x, handle = d.dispatch(x, ids, weights)
                d.combine(expert_x, handle)

            cases[f"{kind}/dispatch"] = lambda d=d: d.dispatch(x, ids, weights)
            cases[f"{kind}/dispatch+combine"] = step
            if kind != "none":  # the experts take the quantized rows (no dequantize on the receiver)
                cases[f"{kind}/dispatch, rows kept quantized"] = lambda d=d: d.dispatch(
                    x, ids, weights, dequantize=False
                )
        timings = measure_interleaved(cases, repeats=config.repeats, warmup=config.warmup, timer=synced_time)
        for d in dispatchers:
            d.close()
        results[str(hidden)] = {"timings": {n: t.samples for n, t in timings.items()}, "bytes_sent": bytes_sent}
    return results


def layer_errors(config: QuantBenchConfig, hidden: int) -> dict[str, dict[str, float]]:
    """Relative L2 error of a SwiGLU MoE layer's output, quantized vs unquantized dispatch, per activation kind
    (``gaussian``, ``outliers``) and quantization kind (one process, bf16 rows, float32 experts)."""
    from moecomm import MoECommConfig, make_dispatcher
    from moecomm.comm.moe_step import run_moe_step
    from moecomm.layer.experts import swiglu_experts

    gen = torch.Generator().manual_seed(config.seed + 17)
    experts, top_k, inter = config.num_experts, config.top_k, config.intermediate
    w13 = torch.randn((experts, 2 * inter, hidden), generator=gen) / hidden**0.5
    w2 = torch.randn((experts, hidden, inter), generator=gen) / inter**0.5
    router = torch.randn((hidden, experts), generator=gen) / hidden**0.5
    errors: dict[str, dict[str, float]] = {}
    for activation in ("gaussian", "outliers"):
        x = torch.randn((config.error_tokens, hidden), generator=gen)
        if activation == "outliers":
            channels = torch.randperm(hidden, generator=gen)[: config.outlier_channels]
            x[:, channels] *= config.outlier_scale
        x = x.to(torch.bfloat16)
        weights, ids = torch.softmax(x.float() @ router, dim=-1).topk(top_k, dim=-1)

        def layer(
            kind: str | None, x: torch.Tensor = x, ids: torch.Tensor = ids, weights: torch.Tensor = weights
        ) -> torch.Tensor:
            d = make_dispatcher(MoECommConfig(dispatch_quant=kind), experts)

            def run(rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
                return swiglu_experts(rows.float(), counts, w13, w2)

            y, _ = run_moe_step(d, x, ids, weights, run)
            d.close()
            return y.double()

        plain = layer(None)
        errors[activation] = {
            kind: float((layer(kind) - plain).norm() / plain.norm()) for kind in config.kinds if kind != "none"
        }
    return errors


def run_quant(config: QuantBenchConfig) -> dict[str, Any]:
    """Spawns the ranks, times every case, measures the layer error; ``{"config", "records", "table"}``."""
    from moecomm.testing.launch import run_local

    per_rank = run_local(quant_worker, config.num_ranks, config, timeout_s=config.timeout_s)
    records = []
    for hidden in config.hiddens:
        result = per_rank[0][str(hidden)]
        timings = {name: Timing(tuple(samples)) for name, samples in result["timings"].items()}
        errors = layer_errors(config, hidden)
        for kind in config.kinds:
            dispatch, step = timings[f"{kind}/dispatch"], timings[f"{kind}/dispatch+combine"]
            kept = timings.get(f"{kind}/dispatch, rows kept quantized")
            base_dispatch, base_step = timings.get("none/dispatch"), timings.get("none/dispatch+combine")
            records.append(
                {
                    "hidden": hidden,
                    "kind": kind,
                    "dispatch_median_s": dispatch.median,
                    "step_median_s": step.median,
                    "dispatch_speedup_vs_bf16": base_dispatch.median / dispatch.median if base_dispatch else None,
                    "dispatch_quantized_rows_median_s": kept.median if kept else None,
                    "dispatch_quantized_rows_speedup_vs_bf16": base_dispatch.median / kept.median
                    if kept and base_dispatch
                    else None,
                    "step_speedup_vs_bf16": base_step.median / step.median if base_step else None,
                    "bytes_sent": result["bytes_sent"][kind],
                    "bytes_vs_bf16": result["bytes_sent"][kind] / result["bytes_sent"]["none"]
                    if "none" in result["bytes_sent"]
                    else None,
                    "layer_rel_error_gaussian": errors["gaussian"].get(kind, 0.0),
                    "layer_rel_error_outliers": errors["outliers"].get(kind, 0.0),
                    "dispatch_samples_s": list(dispatch.samples),
                    "step_samples_s": list(step.samples),
                }
            )
    return {"config": asdict(config), "records": records, "table": quant_table(records, config)}


def quant_table(records: list[dict[str, Any]], config: QuantBenchConfig) -> str:
    """Markdown: one row per (H, kind)."""
    rows = [
        [
            r["hidden"],
            r["kind"],
            ms(r["dispatch_median_s"]),
            r["dispatch_speedup_vs_bf16"],
            ms(r["dispatch_quantized_rows_median_s"]),
            r["dispatch_quantized_rows_speedup_vs_bf16"],
            ms(r["step_median_s"]),
            r["step_speedup_vs_bf16"],
            r["bytes_sent"] / (1 << 20),
            r["bytes_vs_bf16"],
            r["layer_rel_error_gaussian"],
            r["layer_rel_error_outliers"],
        ]
        for r in records
    ]
    head = (
        f"{config.dispatcher} over {config.transport}, EP{config.num_ranks}, T={config.num_tokens}/rank, "
        f"E={config.num_experts}, K={config.top_k}, {config.dtype} in; {config.repeats} timed rounds."
    )
    table = markdown_table(
        [
            "H",
            "dispatch_quant",
            "dispatch ms",
            "dispatch speedup vs bf16",
            "dispatch ms, rows kept quantized",
            "its speedup vs bf16",
            "dispatch+combine ms",
            "step speedup vs bf16",
            "MiB sent (all ranks)",
            "bytes vs bf16",
            "layer rel. error (Gaussian)",
            f"layer rel. error ({config.outlier_channels} outlier channels x{config.outlier_scale:g})",
        ],
        rows,
    )
    return head + "\n\n" + table
