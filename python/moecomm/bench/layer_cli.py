"""Layer forward benchmark (issue 4): EPMoE at EP=2 vs the transformers Qwen3-MoE block on one process.

    moecomm bench layer   # or: python bench/layer_forward.py                      # defaults: T=1024/rank, H=2048, I=768, E=32, K=8, fp32
    moecomm bench layer   # or: python bench/layer_forward.py --tokens 256 --repeats 5 --json layer.json

Prints a markdown table (medians, p10/p90, speedups measured in the same interleaved run, and the
"max abs diff" sanity column against the transformers block over the same global batch); see
``moecomm.bench.layer`` for what each case is.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """Flags of the script (defaults from ``LayerBenchConfig``)."""
    from moecomm.bench.cli import drop_ratio, list_of, non_negative_int, positive_float, positive_int
    from moecomm.bench.kernels import DTYPES
    from moecomm.bench.layer import HF_IMPLS, LayerBenchConfig

    defaults = LayerBenchConfig()
    parser = argparse.ArgumentParser(prog="moecomm bench layer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=positive_int, default=defaults.num_ranks, help="EP ranks (default 2)")
    parser.add_argument(
        "--tokens", type=positive_int, default=defaults.num_tokens, help="tokens T per rank (default 1024)"
    )
    parser.add_argument("--hidden", type=positive_int, default=defaults.hidden, help="hidden size H (default 2048)")
    parser.add_argument(
        "--intermediate",
        type=positive_int,
        default=defaults.intermediate,
        help="expert FFN size I (default 768, Qwen3-30B-A3B's)",
    )
    parser.add_argument(
        "--experts",
        type=positive_int,
        default=defaults.num_experts,
        help="experts E (default 32: Qwen3-30B-A3B's 128 scaled 4x down)",
    )
    parser.add_argument("--top-k", type=positive_int, default=defaults.top_k, help="experts per token K (default 8)")
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), default=defaults.dtype, help="weights and activations (default fp32)"
    )
    parser.add_argument(
        "--drop-ratio",
        type=drop_ratio,
        default=defaults.drop_ratio,
        help="token_drop_ratio of the dropping EP case, in (0, 1) (default 0.1)",
    )
    parser.add_argument(
        "--hf-impls",
        type=list_of(str),
        default=list(defaults.hf_impls),
        help=f"transformers experts implementations to time, comma list of {','.join(HF_IMPLS)} (default all)",
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=defaults.repeats, help="timed interleaved rounds (default 8)"
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_int,
        default=defaults.warmup,
        help="untimed rounds first (default 0: the correctness pass warms every case)",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=defaults.seed, help="weights and tokens seed (default 0)"
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=defaults.timeout_s, help="seconds before the run is killed"
    )
    parser.add_argument("--json", type=Path, help="also write the records to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and prints the table; bad flag values exit with code 2."""
    from moecomm.bench.layer import LayerBenchConfig, run_layer_bench
    from moecomm.bench.report import INTERLEAVE_NOTE, write_json

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = LayerBenchConfig(
            num_ranks=args.ranks,
            num_tokens=args.tokens,
            hidden=args.hidden,
            intermediate=args.intermediate,
            num_experts=args.experts,
            top_k=args.top_k,
            dtype=args.dtype,
            drop_ratio=args.drop_ratio,
            hf_impls=tuple(args.hf_impls),
            repeats=args.repeats,
            warmup=args.warmup,
            seed=args.seed,
            timeout_s=args.timeout,
        )
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    result = run_layer_bench(config, progress=not args.no_progress)
    print(
        f"## layer: T={config.num_tokens}/rank, H={config.hidden}, I={config.intermediate}, "
        f"E={config.num_experts}, K={config.top_k}, {config.dtype}, EP={config.num_ranks}\n"
    )
    print(result["table"] + "\n")
    print(
        INTERLEAVE_NOTE + " EP step time = slowest rank after a barrier; one-process cases run on rank 0 "
        "(one thread) while the other ranks wait. Speedup = peer median / case median. "
        "max abs diff: against hf-eager over the global batch (first T rows for per-rank cases)."
    )
    if args.json is not None:
        command = shlex.join([sys.executable, *sys.argv])
        print(f"\nJSON: {write_json(args.json, {'layer': result}, command)}")
    return 0
