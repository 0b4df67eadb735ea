"""``moecomm bench quant``: quantized dispatch (int8, fp8) vs bf16 rows; see :mod:`moecomm.bench.quant_dispatch`."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """Flags (defaults from ``QuantBenchConfig``)."""
    from moecomm.bench.cli import list_of, non_negative_int, positive_float, positive_int
    from moecomm.bench.quant_dispatch import KINDS, QuantBenchConfig

    defaults = QuantBenchConfig()
    parser = argparse.ArgumentParser(prog="moecomm bench quant", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=positive_int, default=defaults.num_ranks, help="EP ranks (default 2)")
    parser.add_argument(
        "--tokens", type=positive_int, default=defaults.num_tokens, help="tokens per rank (default 4096)"
    )
    parser.add_argument(
        "--hiddens", type=list_of(positive_int), default=list(defaults.hiddens), help="hidden sizes (default 2048,7168)"
    )
    parser.add_argument("--experts", type=positive_int, default=defaults.num_experts, help="experts E (default 64)")
    parser.add_argument("--top-k", type=positive_int, default=defaults.top_k, help="experts per token K (default 8)")
    parser.add_argument(
        "--kinds",
        type=list_of(str),
        default=list(defaults.kinds),
        help=f"comma list of {','.join(KINDS)} (default all)",
    )
    parser.add_argument("--dispatcher", default=defaults.dispatcher, help="moecomm dispatcher (default alltoallv)")
    parser.add_argument("--transport", default=defaults.transport, help="moecomm transport (default shm)")
    parser.add_argument("--repeats", type=positive_int, default=defaults.repeats, help="timed rounds (default 7)")
    parser.add_argument("--warmup", type=non_negative_int, default=defaults.warmup, help="untimed rounds (default 2)")
    parser.add_argument(
        "--timeout", type=positive_float, default=defaults.timeout_s, help="seconds before the run is killed"
    )
    parser.add_argument("--json", type=Path, help="also write the records to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and prints the table; bad flag values exit with code 2."""
    from moecomm.bench.quant_dispatch import KINDS, QuantBenchConfig, run_quant
    from moecomm.bench.report import write_json
    from moecomm.config import MoECommConfig

    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown:
        parser.error(f"argument --kinds: unknown {unknown}; choose from {', '.join(KINDS)}")
    try:
        MoECommConfig(dispatcher=args.dispatcher, transport=args.transport, max_tokens_per_rank=args.tokens)
    except ValueError as error:
        parser.error(str(error))
    config = QuantBenchConfig(
        num_ranks=args.ranks,
        num_tokens=args.tokens,
        hiddens=tuple(args.hiddens),
        num_experts=args.experts,
        top_k=args.top_k,
        kinds=tuple(args.kinds),
        dispatcher=args.dispatcher,
        transport=args.transport,
        repeats=args.repeats,
        warmup=args.warmup,
        timeout_s=args.timeout,
    )
    result = run_quant(config)
    print("## quantized dispatch\n")
    print(result["table"] + "\n")
    if args.json is not None:
        command = shlex.join([sys.executable, *sys.argv])
        print(f"\nJSON: {write_json(args.json, {'quant': result}, command)}")
    return 0
