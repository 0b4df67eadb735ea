"""Bounded MindSpore collectives: every call runs on one daemon thread per process and is waited on for at
most ``timeout_s``.

MindSpore's CPU collectives have no timeout of their own: an ``AllGather`` whose peer died blocks until
MindSpore's cluster heartbeat (minutes) SIGTERMs the process. Running them on a helper thread lets the
caller give up after ``timeout_s`` and raise; the helper thread stays blocked (a daemon, it never holds the
process at exit), so the transport that timed out is broken from then on, as every moecomm transport is
after a failed step. One thread serves every transport of the process, so MindSpore always sees its
collectives issued from the same thread, in order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

Result = TypeVar("Result")

_lock = threading.Lock()
_jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future]] | None = None


def _serve(jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future]]) -> None:
    while True:
        action, future = jobs.get()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(action())
        except BaseException as error:  # noqa: BLE001 - handed to the waiting caller
            future.set_exception(error)


def _queue() -> queue.SimpleQueue[tuple[Callable[[], Any], Future]]:
    global _jobs
    with _lock:
        if _jobs is None:
            _jobs = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(_jobs,), name="moecomm-mindspore-collectives", daemon=True).start()
        return _jobs


def run_bounded(action: Callable[[], Result], timeout_s: float, what: str) -> Result:
    """Runs ``action`` (a MindSpore collective that synchronises its result) on the collectives thread.

    Raises:
        TimeoutError: no result within ``timeout_s`` (names ``what``: a peer died, hung or is late).
        Exception: whatever ``action`` raised.
    """
    future: Future = Future()
    _queue().put((action, future))
    try:
        return future.result(timeout=timeout_s)
    except FutureTimeout:
        future.cancel()
        raise TimeoutError(
            f"{what} gave no result within {timeout_s:g} s (a peer rank died, hung or is late)"
        ) from None
