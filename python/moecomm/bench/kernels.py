"""`moecomm bench kernels`: the native ops vs the pure-torch reference, Megatron-Core and memcpy.

Peers, all timed in one interleaved run on the same inputs:

- ``native``: ``moecomm.ops`` (the C++ kernels), returning a fresh output per call.
- ``native-out``: the same with ``out=`` a preallocated buffer (what a dispatcher reusing buffers gets).
- ``reference``: ``moecomm.ops.reference`` (pure torch, same signatures).
- ``megatron``: Megatron-Core's unfused ``moe_utils.permute`` / ``unpermute`` (from a ``[T, E]``
  routing map and probs, ``fused=False``) and ``apply_router_token_dropping`` as the peer of
  ``select_kept``; skipped when megatron-core is not installed.
- ``memcpy/prealloc``: glibc ``memcpy`` (``ctypes.memmove``, one thread) of a contiguous ``[N, H]`` tensor
  (the size of permute's output) into a preallocated buffer: the bytes permute reads and writes, with no
  indexing and no allocation.
- ``memcpy/alloc``: ``torch.empty`` of the output, then the same ``memcpy``: what an op returning a fresh
  tensor pays at least.
- ``quantize_int8`` / ``quantize_fp8`` / ``dequantize_int8`` / ``dequantize_fp8``: ``moecomm.ops.quantize_rows``
  and ``dequantize_rows`` of ``x [T, H]`` (native, native-out, reference), with ``memcpy_x/prealloc`` (glibc
  ``memcpy`` of x into a preallocated buffer) as their bandwidth peer: their ``bandwidth_vs_memcpy`` compares
  GB/s of the bytes each one reads and writes (x, codes, scales) with memcpy's GB/s.

With ``allocator="default"`` a fresh 256 MiB output is a new mmap each call, so every op that returns a
new tensor pays page faults (on this VM more than the copy itself); ``allocator="reuse"`` (mallopt) lets
all peers reuse freed memory, which isolates the kernels' own cost.
"""

from __future__ import annotations

import ctypes
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from moecomm import ops
from moecomm.bench.progress import progress_task
from moecomm.bench.report import markdown_table, ms, timing_record
from moecomm.bench.routing import make_routing
from moecomm.bench.timing import Timing, measure_interleaved, set_allocator

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class KernelBenchConfig:
    """Shapes and settings of the kernel benchmark (defaults: issue 2's T=4096, K=8, H=4096, E=64, bf16)."""

    num_tokens: int = 4096
    hidden: int = 4096
    num_experts: int = 64
    top_k: int = 8
    dtype: str = "bf16"
    skew: float = 0.0
    drop_ratio: float = 0.1
    repeats: int = 10
    warmup: int = 2
    seed: int = 0
    megatron: bool = True
    allocator: str = "default"


def load_megatron_module(name: str) -> Any | None:
    """The Megatron-Core module ``name`` (its import warnings silenced), or None when it does not import."""
    import importlib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any import failure means "peer not available"
        return None


def load_megatron_moe_utils() -> Any | None:
    """Megatron-Core's ``moe_utils`` module, or None when megatron-core is not installed."""
    return load_megatron_module("megatron.core.transformer.moe.moe_utils")


def memcpy(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """glibc ``memcpy`` of contiguous ``src`` into contiguous ``dst`` (same shape and dtype, CPU); returns dst."""
    if not (src.is_contiguous() and dst.is_contiguous()) or dst.shape != src.shape or dst.dtype != src.dtype:
        raise ValueError("dst: expected a contiguous tensor of src's shape and dtype")
    ctypes.memmove(dst.data_ptr(), src.data_ptr(), src.numel() * src.element_size())
    return dst


def dense_routing(
    topk_ids: torch.Tensor, topk_weights: torch.Tensor, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Megatron's router outputs from ``topk_ids [T, K] int64`` and ``topk_weights [T, K] float32``:
    ``routing_map [T, E] bool`` and ``probs [T, E] float32`` (zero where not routed)."""
    num_tokens = topk_ids.shape[0]
    routing_map = torch.zeros((num_tokens, num_experts), dtype=torch.bool).scatter_(1, topk_ids, True)
    probs = torch.zeros((num_tokens, num_experts), dtype=torch.float32).scatter_(1, topk_ids, topk_weights)
    return routing_map, probs


def build_cases(config: KernelBenchConfig) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
    """The callables to time and facts about them (row counts, bytes, correctness checks)."""
    dtype = DTYPES[config.dtype]
    routing = make_routing(config.num_tokens, config.num_experts, config.top_k, skew=config.skew, seed=config.seed)
    ids, weights = routing.topk_ids, routing.topk_weights
    generator = torch.Generator().manual_seed(config.seed + 1)
    x = torch.randn((config.num_tokens, config.hidden), generator=generator).to(dtype)
    layout = ops.route_layout(ids, config.num_experts)
    num_rows = layout.num_rows
    rows = ops.permute(x, layout)
    expert_out = torch.randn((num_rows, config.hidden), generator=generator).to(dtype)
    capacity = ops.capacity_for_ratio(layout.tokens_per_expert, config.drop_ratio)

    checks = {
        "route_layout_matches_reference": bool(
            torch.equal(layout.row_of_pair, ops.reference.route_layout(ids, config.num_experts).row_of_pair)
        ),
        "permute_matches_reference": bool(torch.equal(rows, ops.reference.permute(x, layout))),
    }
    memcpy_src = torch.empty_like(rows).copy_(rows)
    memcpy_dst = torch.empty_like(rows)
    permute_out = torch.empty_like(rows)
    unpermute_out = torch.empty_like(x)

    cases: dict[str, Callable[[], object]] = {
        "route_layout/native": lambda: ops.route_layout(ids, config.num_experts),
        "route_layout/reference": lambda: ops.reference.route_layout(ids, config.num_experts),
        "select_kept/native": lambda: ops.select_kept(
            ids, weights, config.num_experts, capacity=capacity, policy="probs"
        ),
        "select_kept/reference": lambda: ops.reference.select_kept(
            ids, weights, config.num_experts, capacity=capacity, policy="probs"
        ),
        "memcpy/prealloc": lambda: memcpy(memcpy_dst, memcpy_src),
        "memcpy/alloc": lambda: memcpy(torch.empty_like(memcpy_src), memcpy_src),
        "permute/native": lambda: ops.permute(x, layout),
        "permute/native-out": lambda: ops.permute(x, layout, out=permute_out),
        "permute/reference": lambda: ops.reference.permute(x, layout),
        "unpermute/native": lambda: ops.unpermute(expert_out, layout, weights),
        "unpermute/native-out": lambda: ops.unpermute(expert_out, layout, weights, out=unpermute_out),
        "unpermute/reference": lambda: ops.reference.unpermute(expert_out, layout, weights),
    }
    quant_cases, quant_checks, quant_bytes = quant_cases_of(x)
    cases.update(quant_cases)
    checks.update(quant_checks)
    moe_utils = load_megatron_moe_utils() if config.megatron else None
    if moe_utils is not None:
        routing_map, probs = dense_routing(ids, weights, config.num_experts)
        _, _, sorted_indices = moe_utils.permute(x, routing_map, num_out_tokens=num_rows)
        # Megatron's capacity factor giving the same per-expert cap as select_kept's `capacity`.
        factor = capacity * config.num_experts / max(1, config.num_tokens * config.top_k)
        cases["select_kept/megatron"] = lambda: moe_utils.apply_router_token_dropping(
            probs, routing_map, config.top_k, factor, drop_policy="probs"
        )
        cases["permute/megatron"] = lambda: moe_utils.permute(x, routing_map, num_out_tokens=num_rows)
        cases["unpermute/megatron"] = lambda: moe_utils.unpermute(
            expert_out, sorted_indices, x.shape, probs=probs, routing_map=routing_map
        )
        megatron_rows = moe_utils.permute(x, routing_map, num_out_tokens=num_rows)[0]
        checks["megatron_permute_matches_native"] = bool(torch.equal(megatron_rows, rows))
    element = x.element_size()
    pairs = ids.numel()
    facts = {
        "num_rows": num_rows,
        "capacity": capacity,
        "checks": checks,
        "megatron_available": moe_utils is not None,
        "bytes": {
            "route_layout": pairs * 8 * 2,  # ids in, row_of_pair out
            "select_kept": pairs * (8 + 4 + 1),  # ids, weights in, mask out
            "memcpy": 2 * num_rows * config.hidden * element,
            "permute": 2 * num_rows * config.hidden * element,  # gather rows in, rows out
            "unpermute": (num_rows + config.num_tokens) * config.hidden * element,  # rows in, tokens out
            **quant_bytes,
        },
    }
    return cases, facts


def quant_cases_of(x: torch.Tensor) -> tuple[dict[str, Callable[[], object]], dict[str, bool], dict[str, int]]:
    """quantize_rows / dequantize_rows cases on ``x [T, H]`` for every kind, their reference checks, and the
    bytes each case reads and writes (memcpy_x: x read and written once)."""
    cases: dict[str, Callable[[], object]] = {}
    checks: dict[str, bool] = {}
    x_bytes = x.numel() * x.element_size()
    moved = {"memcpy_x": 2 * x_bytes}
    memcpy_src, memcpy_dst = x.clone(), torch.empty_like(x)
    cases["memcpy_x/prealloc"] = lambda: memcpy(memcpy_dst, memcpy_src)
    for kind in ops.QUANT_KINDS:
        q, scales = ops.quantize_rows(x, kind)
        q_ref, scales_ref = ops.reference.quantize_rows(x, kind)
        checks[f"quantize_{kind}_matches_reference"] = bool(
            torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)) and torch.equal(scales, scales_ref)
        )
        checks[f"dequantize_{kind}_matches_reference"] = bool(
            torch.equal(
                ops.dequantize_rows(q, scales, kind, x.dtype), ops.reference.dequantize_rows(q, scales, kind, x.dtype)
            )
        )
        q_out, scales_out, rows_out = torch.empty_like(q), torch.empty_like(scales), torch.empty_like(x)
        touched = x_bytes + q.numel() * q.element_size() + scales.numel() * scales.element_size()
        moved[f"quantize_{kind}"] = moved[f"dequantize_{kind}"] = touched
        cases.update(
            {
                f"quantize_{kind}/native": lambda kind=kind: ops.quantize_rows(x, kind),
                f"quantize_{kind}/native-out": lambda kind=kind, q_out=q_out, scales_out=scales_out: ops.quantize_rows(
                    x, kind, out=q_out, out_scales=scales_out
                ),
                f"quantize_{kind}/reference": lambda kind=kind: ops.reference.quantize_rows(x, kind),
                f"dequantize_{kind}/native": lambda kind=kind, q=q, scales=scales: ops.dequantize_rows(
                    q, scales, kind, x.dtype
                ),
                f"dequantize_{kind}/native-out": lambda kind=kind, q=q, scales=scales, rows_out=rows_out: (
                    ops.dequantize_rows(q, scales, kind, x.dtype, out=rows_out)
                ),
                f"dequantize_{kind}/reference": lambda kind=kind, q=q, scales=scales: ops.reference.dequantize_rows(
                    q, scales, kind, x.dtype
                ),
            }
        )
    return cases, checks, moved


def kernel_ratios(timings: dict[str, Timing], bytes_moved: dict[str, int] | None = None) -> dict[str, dict[str, float]]:
    """Peer ratios per case, from medians of the same interleaved run. With ``bytes_moved`` (op -> bytes),
    the quantize/dequantize cases also get ``bandwidth_vs_memcpy``: their GB/s over ``memcpy_x``'s."""

    def median(name: str) -> float | None:
        return timings[name].median if name in timings else None

    ratios: dict[str, dict[str, float]] = {}
    for case in timings:
        op, _, peer = case.partition("/")
        if peer not in ("native", "native-out"):
            continue
        native = timings[case].median
        found: dict[str, float] = {}
        for other in ("reference", "megatron"):
            other_median = median(f"{op}/{other}")
            if other_median is not None:
                found[f"speedup_vs_{other}"] = other_median / native
        if op == "permute":  # memcpy moves the same bytes, so a time ratio is a GB/s ratio
            found["bandwidth_vs_memcpy"] = timings["memcpy/prealloc"].median / native
            found["bandwidth_vs_memcpy_alloc"] = timings["memcpy/alloc"].median / native
            megatron = median("permute/megatron")
            if megatron is not None:  # Megatron's permute derives its indices itself: charge ours the layout
                found["speedup_vs_megatron_incl_layout"] = megatron / (native + timings["route_layout/native"].median)
        if op.startswith(("quantize_", "dequantize_")) and bytes_moved and "memcpy_x/prealloc" in timings:
            memcpy_gb_per_s = bytes_moved["memcpy_x"] / timings["memcpy_x/prealloc"].median
            found["bandwidth_vs_memcpy"] = bytes_moved[op] / native / memcpy_gb_per_s
        ratios[case] = found
    return ratios


def run_kernels(config: KernelBenchConfig, *, progress: bool = True) -> dict[str, Any]:
    """Runs the kernel benchmark; returns ``{"config", "facts", "records", "table"}``."""
    if not set_allocator(config.allocator):
        raise RuntimeError(f"allocator: could not apply {config.allocator!r} (needs glibc's mallopt)")
    cases, facts = build_cases(config)
    with progress_task("kernels", config.warmup + config.repeats, progress) as advance:
        timings = measure_interleaved(cases, repeats=config.repeats, warmup=config.warmup, on_round=advance)
    ratios = kernel_ratios(timings, facts["bytes"])
    shape = asdict(config)
    shape["torch_threads"] = torch.get_num_threads()
    records = []
    for name, timing in timings.items():
        op = name.partition("/")[0]
        records.append(
            timing_record(
                "kernels", name, timing, config=shape, bytes_moved=facts["bytes"][op], ratios=ratios.get(name)
            )
        )
    return {"config": shape, "facts": facts, "records": records, "table": kernel_table(records)}


def kernel_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per case with median/p10/p90 ms, GB/s and its ratios."""
    rows = []
    for record in records:
        ratio_text = ", ".join(f"{key} {value:.2f}x" for key, value in record["ratios"].items())
        rows.append(
            [
                record["name"],
                ms(record["median_s"]),
                ms(record["p10_s"]),
                ms(record["p90_s"]),
                ms(record["min_s"]),
                record.get("gb_per_s"),
                ratio_text or "-",
            ]
        )
    return markdown_table(
        ["case", "median ms", "p10 ms", "p90 ms", "min ms", "GB/s (median)", "ratios of medians (same run)"], rows
    )
