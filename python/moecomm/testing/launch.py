"""run_local: run a function on ``world_size`` local processes joined in a gloo process group.

Used by the tests and benchmarks of every part of moecomm. Each rank is a spawned process with
``torch.set_num_threads(1)``, a default gloo group on 127.0.0.1 (rendezvous through a TCP store the
parent owns on a free port, so concurrent runs never race for a port) and the group timeout you ask
for. Results come back in rank order; a failing rank raises :class:`LocalRunError` with its traceback;
a hard timeout kills every process and names the ranks that did not finish. Never hangs.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

#: Seconds the other ranks get to finish (or fail on their own) after one rank failed.
FAILURE_GRACE_S = 10.0
#: Seconds a rank's process group teardown may take after its result is posted.
TEARDOWN_S = 5.0


class LocalRunError(RuntimeError):
    """One or more ranks of :func:`run_local` failed, died or timed out.

    Attributes:
        failed_ranks: ranks that raised, exited without a result, or did not finish in time.
        results: ``{rank: return value}`` of the ranks that did finish.
        tracebacks: ``{rank: text}`` for ranks that raised.
    """

    def __init__(self, message: str, failed_ranks: list[int], results: dict[int, Any], tracebacks: dict[int, str]):
        super().__init__(message)
        self.failed_ranks = failed_ranks
        self.results = results
        self.tracebacks = tracebacks


def _rank_main(
    fn: Callable[..., Any],
    rank: int,
    world_size: int,
    store_port: int,
    group_timeout_s: float,
    args: tuple[Any, ...],
    results: multiprocessing.Queue,
) -> None:
    """Body of one spawned rank: join the gloo group, run ``fn``, post ``(rank, ok, payload)``, tear down.

    The result (or the rank's own traceback) is posted and flushed *before* the group is torn down: a group
    with an abandoned collective (a step that timed out) may block its teardown, and the parent must still
    get this rank's own error. Teardown then gets :data:`TEARDOWN_S` seconds before the process exits anyway.
    """
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    joined = False
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        timeout = timedelta(seconds=group_timeout_s)
        store = dist.TCPStore("127.0.0.1", store_port, world_size, is_master=False, timeout=timeout)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
        joined = True
        value = fn(rank, world_size, *args)
        message = (rank, True, pickle.dumps(value))  # by value: no shared-memory handles that die with us
    except BaseException:  # noqa: BLE001 - report everything, including KeyboardInterrupt / SystemExit
        message = (rank, False, traceback.format_exc())
    results.put(message)
    results.close()
    results.join_thread()  # the message is in the pipe before anything can block
    if joined:
        teardown = threading.Thread(target=_destroy_group, daemon=True)
        teardown.start()
        teardown.join(TEARDOWN_S)
        if teardown.is_alive():  # stuck on an abandoned collective: the result is already posted
            os._exit(0)


def _destroy_group() -> None:
    import torch.distributed as dist

    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - a broken group (a peer died) may fail to tear down; the result stands
        pass


def run_local(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout_s: float = 120.0,
    group_timeout_s: float | None = None,
    failure_grace_s: float = FAILURE_GRACE_S,
) -> list[Any]:
    """Runs ``fn(rank, world_size, *args)`` on ``world_size`` spawned processes in one gloo group.

    Args:
        fn: a picklable (module-level) function; its return value must be picklable (tensors are fine).
        world_size: number of ranks (>= 1).
        *args: picklable arguments passed to every rank after ``rank, world_size``.
        timeout_s: hard wall-clock limit for the whole run, process start included; past it every
            process is killed and :class:`LocalRunError` names the ranks that had not finished.
        group_timeout_s: timeout of the default process group (collectives that wait longer raise on
            their rank); defaults to ``timeout_s``.
        failure_grace_s: seconds the other ranks get to report after one rank failed or died (give it more
            than the survivors' own bounded waits).

    Returns:
        The ranks' return values, in rank order.

    Raises:
        LocalRunError: a rank raised (message holds the rank and its traceback), exited without a
            result, or the run exceeded ``timeout_s``.
    """
    import torch.distributed as dist

    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size: expected an int >= 1, got {world_size!r}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s: expected a number > 0, got {timeout_s!r}")
    group_timeout_s = float(timeout_s if group_timeout_s is None else group_timeout_s)
    if not group_timeout_s > 0:
        raise ValueError(f"group_timeout_s: expected a number > 0, got {group_timeout_s!r}")
    if not failure_grace_s > 0:
        raise ValueError(f"failure_grace_s: expected a number > 0, got {failure_grace_s!r}")

    # The parent owns the rendezvous store on an OS-chosen free port (port 0): no port races.
    store = dist.TCPStore(
        "127.0.0.1", 0, world_size, is_master=True, timeout=timedelta(seconds=timeout_s), wait_for_workers=False
    )
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()
    processes = [
        context.Process(
            target=_rank_main,
            args=(fn, rank, world_size, store.port, group_timeout_s, args, results),
            name=f"moecomm-rank{rank}",
            daemon=True,
        )
        for rank in range(world_size)
    ]
    deadline = time.monotonic() + timeout_s
    values: dict[int, Any] = {}
    tracebacks: dict[int, str] = {}
    dead_since: dict[int, float] = {}
    first_failure: float | None = None
    try:
        for process in processes:
            process.start()
        while len(values) + len(tracebacks) + len(dead_since) < world_size:
            now = time.monotonic()
            if now >= deadline:
                break
            if first_failure is not None and now >= first_failure + failure_grace_s:
                break
            try:
                rank, ok, payload = results.get(timeout=0.05)
            except queue.Empty:
                now = time.monotonic()
                for rank, process in enumerate(processes):
                    if rank in values or rank in tracebacks or rank in dead_since:
                        continue
                    if process.exitcode is not None:
                        # Give a result already in the pipe a moment to arrive before calling it dead.
                        seen = dead_since.setdefault(rank, now)
                        first_failure = first_failure if first_failure is not None else seen
                continue
            dead_since.pop(rank, None)
            if ok:
                values[rank] = pickle.loads(payload)
            else:
                tracebacks[rank] = payload
                first_failure = first_failure if first_failure is not None else time.monotonic()
        # Drain anything that arrived while we were deciding.
        while True:
            try:
                rank, ok, payload = results.get_nowait()
            except queue.Empty:
                break
            dead_since.pop(rank, None)
            if ok:
                values[rank] = pickle.loads(payload)
            else:
                tracebacks[rank] = payload
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        for process in processes:
            if process.pid is not None:  # started
                process.join(timeout=5.0)
        results.close()
        del store

    if len(values) == world_size:
        return [values[rank] for rank in range(world_size)]
    unfinished = [r for r in range(world_size) if r not in values and r not in tracebacks]
    parts = []
    for rank in sorted(tracebacks):
        parts.append(f"rank {rank} raised:\n{tracebacks[rank]}")
    exited = [r for r in unfinished if processes[r].exitcode not in (None, -9)]
    for rank in exited:
        parts.append(f"rank {rank} exited with code {processes[rank].exitcode} without a result")
    killed = [r for r in unfinished if r not in exited]
    if killed:
        why = "timed out" if time.monotonic() >= deadline else "were stopped after another rank failed"
        parts.append(f"ranks {killed} did not finish ({why}; limit {timeout_s:g} s) and were killed")
    failed = sorted(set(tracebacks) | set(unfinished))
    raise LocalRunError(
        f"run_local({getattr(fn, '__name__', fn)!r}, world_size={world_size}): " + "\n".join(parts),
        failed,
        values,
        tracebacks,
    )
