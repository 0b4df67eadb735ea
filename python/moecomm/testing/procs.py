"""Subprocess helpers shared by the benchmarks and the end-to-end tests that start vLLM engines."""

from __future__ import annotations

import os
import signal
import subprocess


def kill_process_group(proc: subprocess.Popen) -> None:
    """Ends the process group led by ``proc`` (started with ``start_new_session=True``), workers included.

    SIGTERM first (20 s to exit), then SIGKILL; the group is SIGKILLed once more at the end because
    worker processes may outlive their leader for a moment.
    """
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
