"""MindSpore EP dispatch benchmark: ``moecomm bench mindspore``.

    moecomm bench mindspore                       # EP2, T=2048/rank, H=2048, E=16, K=4, fp32, shm vs mindspore
    moecomm bench mindspore --tokens 512 --repeats 10 --json ms.json

Starts a MindSpore CPU cluster (scheduler + ``--ranks`` workers on 127.0.0.1, with the MindSpore
environment's interpreter ``--python``, default ``.venv-mindspore/bin/python`` or ``MOECOMM_MINDSPORE_PYTHON``)
and times one ``alltoallv`` dispatch + combine step per transport, interleaved in the same run: moecomm's
shared memory (bootstrapped over MindSpore) vs MindSpore's own all-gather collectives (the fallback where
all-to-all is missing). Step time = slowest rank; medians with p10/p90.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TRANSPORTS = ("shm", "mindspore")


def default_python() -> str:
    """``MOECOMM_MINDSPORE_PYTHON``, else ``.venv-mindspore/bin/python`` in the current folder."""
    return os.environ.get("MOECOMM_MINDSPORE_PYTHON", str(Path(".venv-mindspore/bin/python")))


def build_parser() -> argparse.ArgumentParser:
    from moecomm.bench.cli import drop_ratio, non_negative_int, positive_float, positive_int

    parser = argparse.ArgumentParser(prog="moecomm bench mindspore", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=positive_int, default=2, help="EP ranks (MindSpore workers; default 2)")
    parser.add_argument("--tokens", type=positive_int, default=2048, help="tokens T per rank (default 2048)")
    parser.add_argument("--hidden", type=positive_int, default=2048, help="hidden size H (default 2048)")
    parser.add_argument("--experts", type=positive_int, default=16, help="experts E (default 16)")
    parser.add_argument("--top-k", type=positive_int, default=4, help="experts per token K (default 4)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="activations")
    parser.add_argument("--drop-ratio", type=drop_ratio, default=0.0, help="token_drop_ratio (default 0)")
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed interleaved rounds (default 10)")
    parser.add_argument("--warmup", type=non_negative_int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="tokens and routing seed")
    parser.add_argument("--python", default=default_python(), help="the MindSpore environment's interpreter")
    parser.add_argument("--timeout", type=positive_float, default=600.0, help="seconds before the run is killed")
    parser.add_argument("--json", type=Path, help="also write the records to this JSON file")
    return parser


def summarize(shape: dict[str, Any], ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """Per transport: the slowest rank's time of each step, its median / p10 / p90 (ms), and the ratio."""
    from moecomm.bench.report import markdown_table, ms
    from moecomm.bench.timing import Timing

    timings = {
        name: Timing(tuple(max(times) for times in zip(*(rank["samples"][name] for rank in ranks))))
        for name in TRANSPORTS
    }
    payload = shape["tokens"] * shape["hidden"] * (2 if shape["dtype"] == "bfloat16" else 4)
    fallback = timings["mindspore"].median
    rows = [
        [
            name,
            ms(timing.median),
            ms(timing.p10),
            ms(timing.p90),
            payload / timing.median / 1e9,
            fallback / timing.median,
        ]
        for name, timing in timings.items()
    ]
    table = markdown_table(
        ["transport", "step ms (median)", "p10", "p90", "GB/s of x per rank", "speedup vs mindspore"], rows
    )
    return {
        "shape": shape,
        "table": table,
        "max_abs_diff_between_transports": max(rank["max_abs_diff"] for rank in ranks),
        "timings_ms": {name: [ms(s) for s in timing.samples] for name, timing in timings.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    from moecomm.bench.report import INTERLEAVE_NOTE, write_json
    from moecomm.integrations.mindspore import run_mindspore_local

    parser = build_parser()
    args = parser.parse_args(argv)
    if not Path(args.python).exists():
        parser.error(f"argument --python: {args.python} does not exist (scripts/setup.sh makes .venv-mindspore)")
    shape = {
        "ranks": args.ranks,
        "tokens": args.tokens,
        "hidden": args.hidden,
        "experts": args.experts,
        "top_k": args.top_k,
        "dtype": args.dtype,
        "drop_ratio": args.drop_ratio,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "seed": args.seed,
    }
    if args.experts % args.ranks:
        parser.error(f"argument --experts: {args.experts} is not divisible by --ranks {args.ranks}")
    ranks = run_mindspore_local(
        "moecomm.bench.mindspore_rank:bench_rank",
        args.ranks,
        shape,
        list(TRANSPORTS),
        python=args.python,
        timeout_s=args.timeout,
    )
    result = summarize(shape, ranks)
    print(
        f"## MindSpore EP{args.ranks} alltoallv dispatch + combine: T={args.tokens}/rank, H={args.hidden}, "
        f"E={args.experts}, K={args.top_k}, {args.dtype}, drop ratio {args.drop_ratio}\n"
    )
    print(result["table"] + "\n")
    print(
        INTERLEAVE_NOTE + " Step time = slowest rank (each step after a barrier). max abs diff between the "
        f"transports' outputs: {result['max_abs_diff_between_transports']:.3g}."
    )
    if args.json is not None:
        command = shlex.join([sys.executable, *sys.argv])
        print(f"\nJSON: {write_json(args.json, {'mindspore_dispatch': result}, command)}")
    return 0
