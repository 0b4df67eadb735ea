"""Traffic per token of real MoE routing shapes at EP 2..64: per (token, expert) pair vs per (token,
destination rank), uniform and skewed routing (part of `moecomm bench simulate`).

Tokens are split evenly over the EP ranks as sources; rank r owns experts ``[r*E/R, (r+1)*E/R)``;
routing comes from the benchmarks' seeded generator (DeepSeek-V3: grouped top-k, 4 of 8 groups).
A row is one token's hidden vector in bf16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moecomm.bench.report import markdown_table
from moecomm.bench.routing import make_routing
from moecomm.bench.traffic import StepTraffic, even_source_ranks

BF16_BYTES = 2


@dataclass(frozen=True)
class MoEShape:
    """A model's routing shape: E experts, top-K, hidden size H, and its group-limited routing."""

    name: str
    num_experts: int
    top_k: int
    hidden: int
    num_groups: int = 1
    top_groups: int = 1


MODELS = (
    MoEShape("Mixtral-8x7B", 8, 2, 4096),
    MoEShape("Qwen3-30B-A3B", 128, 8, 2048),
    MoEShape("DeepSeek-V3", 256, 8, 7168, num_groups=8, top_groups=4),
)
EP_SIZES = (2, 4, 8, 16, 32, 64)


def traffic_records(
    num_tokens: int,
    skews: tuple[float, ...],
    *,
    seed: int = 0,
    ep_sizes: tuple[int, ...] = EP_SIZES,
    models: tuple[MoEShape, ...] = MODELS,
) -> list[dict[str, Any]]:
    """One record per (model, skew, EP size <= E): rows and bytes crossing ranks per token in both units."""
    records = []
    for model in models:
        for skew in skews:
            routing = make_routing(
                num_tokens,
                model.num_experts,
                model.top_k,
                skew=skew,
                seed=seed,
                popularity_seed=seed,
                num_groups=model.num_groups,
                top_groups=model.top_groups,
            )
            for ep_size in ep_sizes:
                if ep_size > model.num_experts or model.num_experts % ep_size:
                    continue
                traffic = StepTraffic.of(
                    routing.topk_ids,
                    model.num_experts,
                    ep_size,
                    even_source_ranks(num_tokens, ep_size),
                    model.hidden * BF16_BYTES,
                )
                pair = traffic.crossing_rows_per_token("pair")
                token = traffic.crossing_rows_per_token("token")
                records.append(
                    {
                        "section": "simulate",
                        "name": f"traffic {model.name} EP{ep_size} skew={skew:g}",
                        "model": model.name,
                        "num_experts": model.num_experts,
                        "top_k": model.top_k,
                        "hidden": model.hidden,
                        "num_groups": model.num_groups,
                        "top_groups": model.top_groups,
                        "ep_size": ep_size,
                        "skew": skew,
                        "num_tokens": num_tokens,
                        "crossing_rows_per_token_pair": pair,
                        "crossing_rows_per_token_token": token,
                        "crossing_bytes_per_token_pair": pair * traffic.row_bytes,
                        "crossing_bytes_per_token_token": token * traffic.row_bytes,
                        "token_rank_saving": 1.0 - token / pair if pair else 0.0,
                    }
                )
    return records


def traffic_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per (model, skew, EP size)."""
    rows = [
        [
            r["model"],
            f"E={r['num_experts']} K={r['top_k']}",
            r["ep_size"],
            r["skew"],
            r["crossing_rows_per_token_pair"],
            r["crossing_rows_per_token_token"],
            r["crossing_bytes_per_token_pair"] / 1024,
            r["crossing_bytes_per_token_token"] / 1024,
            f"{100 * r['token_rank_saving']:.1f}%",
        ]
        for r in records
    ]
    return markdown_table(
        [
            "model",
            "routing",
            "EP",
            "zipf",
            "rows/token per pair",
            "rows/token per (token, rank)",
            "KiB/token per pair",
            "KiB/token per (token, rank)",
            "saved by (token, rank) rows",
        ],
        rows,
    )


def run_traffic(
    num_tokens: int, skews: tuple[float, ...], *, seed: int = 0, ep_sizes: tuple[int, ...] = EP_SIZES
) -> dict[str, Any]:
    """``{"records", "table"}`` of :func:`traffic_records` (rows crossing ranks in dispatch; combine
    sends as many back)."""
    records = traffic_records(num_tokens, skews, seed=seed, ep_sizes=ep_sizes)
    header = (
        f"Rows crossing ranks per token in dispatch (combine returns as many), {num_tokens} tokens split "
        "evenly over the EP ranks, bf16 rows; DeepSeek-V3 routes grouped top-8 within 4 of 8 groups."
    )
    return {"records": records, "table": header + "\n\n" + traffic_table(records)}
