"""Command line of ``moecomm bench`` / ``python -m moecomm.bench``.

Bad flag values exit with code 2 and a message naming the flag (argparse's convention).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("moecomm-bench")
SUBCOMMANDS = ("kernels", "dispatch", "drop", "simulate", "all")
#: Subcommands with their own parser (not part of ``all``: minutes each): name -> module with ``main(argv)``.
STANDALONE = {
    "layer": "moecomm.bench.layer_cli",  # EPMoE at EP=2 vs the transformers block (issue 4)
    "vllm": "moecomm.bench.vllm_cli",  # vLLM TP=2 in-tree vs the layouts through moecomm, tokens/s (issues 5, 12)
    "quant": "moecomm.bench.quant_cli",  # quantized dispatch (int8, fp8) vs bf16 rows (issue 13)
    "mindspore": "moecomm.bench.mindspore_cli",  # MindSpore EP2 dispatch+combine, shm vs MindSpore (issue 11)
}


# ---- argument types: each raises ArgumentTypeError (-> exit code 2) with what was expected ----------


def number_type(
    parse: Callable[[str], Any], is_valid: Callable[[Any], bool], expected: str, name: str
) -> Callable[[str], Any]:
    """An argparse type: ``parse`` the text, then check it; both failures say what was ``expected``."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not is_valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    convert.__name__ = name
    return convert


INF = float("inf")
positive_int = number_type(int, lambda v: v >= 1, "a positive integer", "positive_int")
non_negative_int = number_type(int, lambda v: v >= 0, "an integer >= 0", "non_negative_int")
positive_float = number_type(float, lambda v: 0 < v < INF, "a number > 0", "positive_float")
non_negative_float = number_type(float, lambda v: 0 <= v < INF, "a number >= 0", "non_negative_float")
drop_ratio = number_type(float, lambda v: 0 <= v < 1, "a drop ratio in [0, 1)", "drop_ratio")


def list_of(item: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """A comma-separated non-empty list of ``item`` values (e.g. ``0,0.05,0.1``)."""

    def parse(text: str) -> list[Any]:
        parts = [part.strip() for part in text.split(",")]
        if not text.strip() or any(not part for part in parts):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list like 1,2,3, got {text!r}")
        return [item(part) for part in parts]

    parse.__name__ = f"list of {item.__name__}"
    return parse


# ---- parser -------------------------------------------------------------------------------------------


def add_common(parser: argparse.ArgumentParser) -> None:
    from moecomm.bench.timing import ALLOCATORS

    group = parser.add_argument_group("run")
    group.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default: ./moecomm-bench)")
    group.add_argument("--repeats", type=positive_int, help="timed rounds per case (interleaved); default per section")
    group.add_argument("--warmup", type=non_negative_int, help="untimed rounds first; default per section")
    group.add_argument("--seed", type=non_negative_int, default=0, help="routing and data seed (default 0)")
    group.add_argument(
        "--threads",
        type=positive_int,
        help="torch (and native kernel) threads of this process; default: torch's (spawned ranks use 1)",
    )
    group.add_argument("--quick", action="store_true", help="tiny shapes and few repeats (smoke run, seconds)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    group.add_argument(
        "--allocator",
        choices=ALLOCATORS,
        default="default",
        help="'reuse': let malloc keep freed large blocks (no per-call page faults); default: as is",
    )


def add_shapes(parser: argparse.ArgumentParser) -> None:
    from moecomm.bench.kernels import DTYPES

    group = parser.add_argument_group(
        "shapes (defaults per section: kernels T=4096 H=4096; dispatch/drop T=4096/rank H=2048)"
    )
    group.add_argument("--tokens", type=positive_int, help="tokens T (per rank for dispatch/drop)")
    group.add_argument("--hidden", type=positive_int, help="hidden size H")
    group.add_argument("--experts", type=positive_int, help="experts E (default 64)")
    group.add_argument("--top-k", type=positive_int, help="experts per token K (default 8)")
    group.add_argument("--dtype", choices=tuple(DTYPES), help="activation dtype (default bf16)")


def add_no_megatron(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-megatron",
        action="store_true",
        help="skip the Megatron-Core peers (kernels; dispatch: megatron-alltoall, megatron-allgather)",
    )


def add_kernels(parser: argparse.ArgumentParser) -> None:
    add_no_megatron(parser)
    group = parser.add_argument_group("kernels")
    group.add_argument(
        "--kernel-drop-ratio",
        type=drop_ratio,
        default=0.1,
        help="drop ratio giving select_kept's per-expert capacity (default 0.1)",
    )


def add_dispatchers(parser: argparse.ArgumentParser) -> None:
    from moecomm.bench.dispatch_cases import DISPATCHERS, available_transports

    group = parser.add_argument_group("dispatch")
    group.add_argument("--dispatchers", type=list_of(str), help=f"comma list of {','.join(DISPATCHERS)} (default all)")
    group.add_argument(
        "--transports",
        type=list_of(str),
        help=f"comma list of moecomm transports, one case per dispatcher and transport "
        f"(default every registered one: {','.join(available_transports())})",
    )


def add_ranks(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-process (dispatch, drop)")
    group.add_argument("--ranks", type=positive_int, help="EP ranks spawned locally (default 2)")
    group.add_argument(
        "--timeout", type=positive_float, default=1800.0, help="seconds before a multi-process run is killed"
    )


def add_drop(parser: argparse.ArgumentParser) -> None:
    from moecomm.bench.routing import ROUTING_MODES

    group = parser.add_argument_group("token-drop study (drop)")
    group.add_argument(
        "--skews",
        type=list_of(non_negative_float),
        help="Zipf exponents (hot mode: multipliers >= 1); default 0,1.0,1.5",
    )
    group.add_argument(
        "--ratios", type=list_of(drop_ratio), help="token_drop_ratio values in [0,1); default 0,0.05,0.1,0.2,0.3"
    )
    group.add_argument("--routing", choices=ROUTING_MODES, default="zipf", help="skew model (default zipf)")
    group.add_argument(
        "--drop-policy",
        choices=("position", "probs"),
        default="position",
        help="which pairs go first: later tokens (position, default) or lowest gate weight (probs)",
    )
    group.add_argument(
        "--ffn-intermediate",
        type=positive_int,
        help="intermediate size I of the expert FFN (calibration and error; default 64)",
    )
    group.add_argument(
        "--row-cost-us", type=positive_float, help="per-row expert cost in microseconds (default: calibrated here)"
    )
    group.add_argument(
        "--compute",
        choices=("sleep", "ffn"),
        default="sleep",
        help="expert stand-in: sleep rows x per-row cost (default), or run the real SwiGLU FFN",
    )


def add_simulate(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("EP-scale simulation (simulate)")
    group.add_argument("--ep-sizes", type=list_of(positive_int), help="EP sizes (default 16,64,256)")
    group.add_argument("--sim-experts", type=positive_int, help="experts in the simulation (default 256, DeepSeek-V3)")
    group.add_argument("--sim-top-k", type=positive_int, help="top-k in the simulation (default 8)")
    group.add_argument("--sim-hidden", type=positive_int, help="hidden size in the simulation (default 7168)")
    group.add_argument("--sim-intermediate", type=positive_int, help="expert FFN intermediate size I (default 2048)")
    group.add_argument("--batch", type=positive_int, help="prefill batch (default 8)")
    group.add_argument("--seq-len", type=positive_int, help="prompt length (default 3584)")
    group.add_argument("--link-gbps", type=positive_float, help="per-rank link bandwidth, GB/s each way (default 50)")
    group.add_argument(
        "--sim-row-cost-us",
        type=positive_float,
        help="per-row expert FFN cost in microseconds (default: measured here at the simulated H x I)",
    )
    group.add_argument("--sim-skews", type=list_of(non_negative_float), help="Zipf exponents (default 0,0.25,0.5,1.0)")
    group.add_argument("--sim-ratios", type=list_of(drop_ratio), help="drop ratios (default 0,0.05,0.1,0.2)")
    group.add_argument("--sim-steps", type=positive_int, help="routing draws averaged per point (default 4)")
    group.add_argument(
        "--traffic-tokens",
        type=positive_int,
        help="tokens routed for the traffic-per-token table (Mixtral, Qwen3-30B-A3B, DeepSeek-V3; default 8192)",
    )
    group.add_argument(
        "--traffic-skews",
        type=list_of(non_negative_float),
        help="Zipf exponents of the traffic-per-token table (default 0,1.0)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``moecomm bench`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="moecomm bench",
        description="moecomm microbenchmarks: kernels vs peers, dispatchers over local ranks, the token-drop "
        "study and an EP-scale simulation. Results (JSON, markdown, PNG) go to --out.",
    )
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="{" + ",".join((*SUBCOMMANDS, *STANDALONE)) + "}"
    )
    helps = {
        "kernels": "native ops vs pure-torch reference vs Megatron-Core vs memcpy (one process)",
        "dispatch": "dispatch+combine per dispatcher vs a pure-torch all-to-all-v, over local ranks",
        "drop": "skew x token_drop_ratio sweep: step time, loads, dropped share, output error",
        "simulate": "predict EP 16/64/256 step times with and without drops from measured costs",
        "all": "every section above, one JSON + markdown + plots",
    }
    adders = {
        "kernels": (add_shapes, add_kernels),
        "dispatch": (add_shapes, add_ranks, add_dispatchers, add_no_megatron),
        "drop": (add_shapes, add_ranks, add_drop),
        "simulate": (add_simulate,),
        "all": (add_shapes, add_kernels, add_ranks, add_dispatchers, add_drop, add_simulate),
    }
    for name in SUBCOMMANDS:
        sub = subparsers.add_parser(name, help=helps[name], description=helps[name])
        for adder in adders[name]:
            adder(sub)
        add_common(sub)
    for name, module in STANDALONE.items():
        subparsers.add_parser(name, help=f"see `moecomm bench {name} --help` ({module})", add_help=False)
    return parser


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Cross-flag checks; ``parser.error`` exits with code 2."""
    experts = getattr(args, "experts", None) or 64
    top_k = getattr(args, "top_k", None) or 8
    if top_k > experts:
        parser.error(f"argument --top-k: {top_k} is more than --experts {experts}")
    ranks = getattr(args, "ranks", None)
    if ranks is not None and experts % ranks:
        parser.error(f"argument --ranks: --experts {experts} is not divisible by --ranks {ranks}")
    dispatchers = getattr(args, "dispatchers", None)
    if dispatchers:
        from moecomm.bench.dispatch_cases import DISPATCHERS

        unknown = [d for d in dispatchers if d not in DISPATCHERS]
        if unknown:
            parser.error(f"argument --dispatchers: unknown {', '.join(unknown)}; choose from {', '.join(DISPATCHERS)}")
        if len(set(dispatchers)) != len(dispatchers):
            parser.error(f"argument --dispatchers: repeated names in {','.join(dispatchers)}")
        if getattr(args, "no_megatron", False) and all(d.startswith("megatron-") for d in dispatchers):
            parser.error("argument --no-megatron: it removes every case of --dispatchers")
    transports = getattr(args, "transports", None)
    if transports:
        from moecomm.bench.dispatch_cases import available_transports

        known = available_transports()
        unknown = [t for t in transports if t not in known]
        if unknown:
            parser.error(f"argument --transports: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
        if len(set(transports)) != len(transports):
            parser.error(f"argument --transports: repeated names in {','.join(transports)}")
    sim_experts = getattr(args, "sim_experts", None) or 256
    sim_top_k = getattr(args, "sim_top_k", None) or 8
    if sim_top_k > sim_experts:
        parser.error(f"argument --sim-top-k: {sim_top_k} is more than --sim-experts {sim_experts}")
    for size in getattr(args, "ep_sizes", None) or ():
        if sim_experts % size:
            parser.error(f"argument --ep-sizes: --sim-experts {sim_experts} is not divisible by EP size {size}")
    if getattr(args, "routing", "zipf") == "hot":
        low = [s for s in (getattr(args, "skews", None) or ()) if s < 1]
        if low:
            parser.error(f"argument --skews: the hot routing mode takes popularity multipliers >= 1, got {low}")


def check_out_folder(parser: argparse.ArgumentParser, out: Path) -> None:
    """Creates the ``--out`` folder and proves it writable before any benchmark runs (else exit 2)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".moecomm-write-check-"):
            pass
    except OSError as error:
        parser.error(f"argument --out: cannot write results to {str(out)!r}: {error.strerror or error}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parses ``argv``, runs the sections, writes results; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in STANDALONE:
        import importlib

        return importlib.import_module(STANDALONE[argv[0]]).main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    validate(parser, args)
    check_out_folder(parser, args.out)
    from moecomm.bench.runner import run_command

    command = "moecomm bench " + shlex.join(argv)
    started = time.perf_counter()
    paths = run_command(args, command)
    print(
        f"\nresults in {args.out.resolve()} ({time.perf_counter() - started:.0f} s): "
        + ", ".join(path.name for path in paths),
        flush=True,
    )
    return 0
