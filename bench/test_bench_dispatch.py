"""pytest-benchmark: dispatch + combine per dispatcher over 2 local ranks, vs the pure-torch peer.

The ranks stay up for the whole module (``moecomm.bench.dispatch.serve_steps``); each benchmark round
asks both ranks for one step of a dispatcher and waits until both finished it, so a round's time is the
slowest rank's step plus a queue round trip (well under a millisecond). Shapes via
MOECOMM_BENCH_DISPATCH_TOKENS / _HIDDEN (defaults: issue 3's T=4096 per rank, H=2048, E=64, K=8, bf16).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from moecomm.bench.dispatch import DispatchBenchConfig, planned_case_names, serve_steps
from moecomm.testing.launch import run_local

NUM_RANKS = 2
CONFIG = DispatchBenchConfig(
    num_ranks=NUM_RANKS,
    num_tokens=int(os.environ.get("MOECOMM_BENCH_DISPATCH_TOKENS", 4096)),
    hidden=int(os.environ.get("MOECOMM_BENCH_DISPATCH_HIDDEN", 2048)),
    timeout_s=300.0,
)


@pytest.fixture(scope="module")
def ranks() -> Iterator[tuple[list[Any], Any]]:
    context = multiprocessing.get_context("spawn")
    commands = [context.Queue() for _ in range(NUM_RANKS)]
    done = context.Queue()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            run_local(serve_steps, NUM_RANKS, CONFIG, commands, done, timeout_s=1800)
        except BaseException as error:  # noqa: BLE001 - surfaced by the step below
            failure.append(error)
            for _ in range(NUM_RANKS):
                done.put((-1, repr(error)))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield commands, done
    for queue in commands:
        queue.put(None)
    thread.join(timeout=60)
    if failure:
        raise failure[0]


@pytest.mark.parametrize("dispatcher", planned_case_names(CONFIG))
def test_bench_dispatch(benchmark: Any, ranks: tuple[list[Any], Any], dispatcher: str) -> None:
    commands, done = ranks

    def step() -> None:
        for queue in commands:
            queue.put(dispatcher)
        for _ in range(NUM_RANKS):
            rank, name = done.get(timeout=CONFIG.timeout_s)
            if rank < 0:
                raise RuntimeError(f"dispatch benchmark ranks failed: {name}")

    benchmark.group = f"dispatch+combine ({NUM_RANKS} ranks, T={CONFIG.num_tokens}/rank, H={CONFIG.hidden})"
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
