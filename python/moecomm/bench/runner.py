"""Runs the sections a ``moecomm bench`` command asks for and writes JSON, markdown and plots."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from moecomm.bench.report import INTERLEAVE_NOTE, write_json


def pick(value: Any, default: Any, quick_default: Any, quick: bool) -> Any:
    """A flag's value if given, else the section default (``quick_default`` under ``--quick``)."""
    if value is not None:
        return value
    return quick_default if quick else default


def kernel_config(args: argparse.Namespace) -> Any:
    from moecomm.bench.kernels import KernelBenchConfig

    quick = args.quick
    return KernelBenchConfig(
        num_tokens=pick(args.tokens, 4096, 256, quick),
        hidden=pick(args.hidden, 4096, 256, quick),
        num_experts=pick(args.experts, 64, 16, quick),
        top_k=pick(args.top_k, 8, 4, quick),
        dtype=pick(args.dtype, "bf16", "bf16", quick),
        drop_ratio=args.kernel_drop_ratio,
        repeats=pick(args.repeats, 10, 3, quick),
        warmup=pick(args.warmup, 2, 1, quick),
        seed=args.seed,
        megatron=not args.no_megatron,
        allocator=args.allocator,
    )


def show(section: str, result: dict[str, Any]) -> dict[str, Any]:
    """Prints a section's markdown table on stdout as soon as it is measured; returns ``result``."""
    print(f"\n## {section}\n\n" + result["table"] + "\n", flush=True)
    return result


def run_kernels_section(args: argparse.Namespace) -> dict[str, Any]:
    from moecomm.bench.kernels import run_kernels

    return show("kernels", run_kernels(kernel_config(args), progress=not args.no_progress))


def ranks_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The multi-process benchmarks' shared settings (``RanksConfig`` fields) from the flags."""
    quick = args.quick
    return {
        "num_ranks": pick(args.ranks, 2, 2, quick),
        "num_tokens": pick(args.tokens, 4096, 128, quick),
        "hidden": pick(args.hidden, 2048, 128, quick),
        "num_experts": pick(args.experts, 64, 16, quick),
        "top_k": pick(args.top_k, 8, 4, quick),
        "dtype": pick(args.dtype, "bf16", "bf16", quick),
        "seed": args.seed,
        "allocator": args.allocator,
        "timeout_s": args.timeout,
    }


def dispatch_config(args: argparse.Namespace) -> Any:
    from moecomm.bench.dispatch import DispatchBenchConfig
    from moecomm.bench.dispatch_cases import DISPATCHERS, MEGATRON_PEERS, available_transports

    quick = args.quick
    dispatchers = tuple(args.dispatchers or DISPATCHERS)
    if args.no_megatron:
        dispatchers = tuple(d for d in dispatchers if d not in MEGATRON_PEERS)
    return DispatchBenchConfig(
        **ranks_fields(args),
        dispatchers=dispatchers,
        transports=tuple(args.transports or available_transports()),
        repeats=pick(args.repeats, 10, 3, quick),
        warmup=pick(args.warmup, 2, 1, quick),
    )


def run_dispatch_section(args: argparse.Namespace) -> dict[str, Any]:
    from moecomm.bench.dispatch import run_dispatch

    return show("dispatch", run_dispatch(dispatch_config(args), progress=not args.no_progress))


def drop_config(args: argparse.Namespace) -> Any:
    from moecomm.bench.drop import DropBenchConfig

    quick = args.quick
    default_skews = (2.0, 8.0) if args.routing == "hot" else (0.0, 1.0, 1.5)
    return DropBenchConfig(
        **ranks_fields(args),
        routing=args.routing,
        drop_policy=args.drop_policy,
        skews=tuple(pick(args.skews, default_skews, default_skews[:2], quick)),
        ratios=tuple(pick(args.ratios, (0.0, 0.05, 0.1, 0.2, 0.3), (0.0, 0.1), quick)),
        ffn_intermediate=pick(args.ffn_intermediate, 64, 32, quick),
        row_cost_s=None if args.row_cost_us is None else args.row_cost_us * 1e-6,
        compute=args.compute,
        repeats=pick(args.repeats, 3, 2, quick),
        warmup=pick(args.warmup, 1, 0, quick),
    )


def run_drop_section(args: argparse.Namespace) -> dict[str, Any]:
    from moecomm.bench.drop import run_drop

    return show("drop", run_drop(drop_config(args), progress=not args.no_progress))


def simulation_config(args: argparse.Namespace) -> tuple[Any, str]:
    """The simulation's settings and where its per-row cost came from (given, or measured here at the
    simulated expert shape H x I on one thread)."""
    from moecomm.bench.drop import calibrate_row_cost
    from moecomm.bench.simulate import SimulationConfig

    quick = args.quick
    defaults = SimulationConfig()
    hidden = pick(args.sim_hidden, defaults.hidden, defaults.hidden, quick)
    intermediate = pick(args.sim_intermediate, defaults.intermediate, defaults.intermediate, quick)
    if args.sim_row_cost_us is not None:
        row_cost_s, source = args.sim_row_cost_us * 1e-6, "given (--sim-row-cost-us)"
    else:
        rows = 16 if quick else 128
        row_cost_s = calibrate_row_cost(
            hidden, intermediate, 1, torch.bfloat16, num_rows=rows, repeats=1 if quick else 3
        )
        source = f"measured here: real SwiGLU expert FFN, H={hidden} I={intermediate} bf16, one thread, {rows} rows"
    config = SimulationConfig(
        ep_sizes=tuple(pick(args.ep_sizes, defaults.ep_sizes, defaults.ep_sizes, quick)),
        num_experts=pick(args.sim_experts, defaults.num_experts, defaults.num_experts, quick),
        top_k=pick(args.sim_top_k, defaults.top_k, defaults.top_k, quick),
        hidden=hidden,
        intermediate=intermediate,
        batch=pick(args.batch, defaults.batch, 1, quick),
        seq_len=pick(args.seq_len, defaults.seq_len, 1024, quick),
        link_gbps=pick(args.link_gbps, defaults.link_gbps, defaults.link_gbps, quick),
        row_cost_s=row_cost_s,
        skews=tuple(pick(args.sim_skews, defaults.skews, (0.0, 1.0), quick)),
        ratios=tuple(pick(args.sim_ratios, defaults.ratios, (0.0, 0.1), quick)),
        steps=pick(args.sim_steps, defaults.steps, 1, quick),
        seed=args.seed,
        traffic_tokens=pick(args.traffic_tokens, defaults.traffic_tokens, 512, quick),
        traffic_skews=tuple(pick(args.traffic_skews, defaults.traffic_skews, defaults.traffic_skews, quick)),
    )
    return config, source


def run_simulate_section(args: argparse.Namespace) -> dict[str, Any]:
    from moecomm.bench.simulate import run_simulation

    config, source = simulation_config(args)
    result = run_simulation(config, progress=not args.no_progress)
    result["config"]["row_cost_source"] = source
    result["table"] = f"Row cost: {source}.\n\n" + result["table"]
    return show("simulate", result)


SECTIONS = {
    "kernels": run_kernels_section,
    "dispatch": run_dispatch_section,
    "drop": run_drop_section,
    "simulate": run_simulate_section,
}


def sections_of(command: str) -> list[str]:
    return ["kernels", "dispatch", "drop", "simulate"] if command == "all" else [command]


def run_command(args: argparse.Namespace, command_line: str) -> list[Path]:
    """Runs every section of ``args.command``; returns the files written under ``args.out``."""
    from moecomm.bench.timing import set_allocator

    set_allocator(args.allocator)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    for section in sections_of(args.command):
        results[section] = SECTIONS[section](args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_json(out / f"{args.command}.json", results, command_line)]
    markdown = [f"# moecomm bench {args.command}", "", f"`{command_line}`", "", INTERLEAVE_NOTE, ""]
    for section, result in results.items():
        markdown += [f"## {section}", "", result["table"], ""]
    markdown_path = out / f"{args.command}.md"
    markdown_path.write_text("\n".join(markdown), encoding="utf-8")
    paths.append(markdown_path)
    if not args.no_plots:
        from moecomm.bench.plots import write_plots

        paths += write_plots(results, out)
    return paths
