"""run_mindspore_local: a MindSpore CPU cluster of N workers on 127.0.0.1 (scheduler included) for tests,
examples and benchmarks; bounded in time, always shut down, results collected.

Needs no MindSpore in the calling process: every rank is a subprocess of ``python`` (a MindSpore
environment's interpreter, e.g. ``.venv-mindspore/bin/python``) running
:mod:`moecomm.integrations.mindspore.cluster_worker`. The parent picks a free port for MindSpore's
scheduler, starts the scheduler and the workers each in its own session, and waits for the workers'
result files. A worker that raised or died, or a run past ``timeout_s``, raises
:class:`moecomm.testing.LocalRunError` naming the ranks (with their tracebacks and the tail of their logs).
Every process of the cluster is killed and reaped before the call returns, whatever happened.
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from moecomm.testing.launch import FAILURE_GRACE_S, LocalRunError
from moecomm.testing.procs import kill_process_group

#: Lines of a rank's log shown when it fails (MindSpore's own WARNING/INFO lines left out).
LOG_TAIL_LINES = 30


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    kept = [line for line in lines if not line.startswith(("[WARNING]", "[INFO]"))]
    return "\n".join(kept[-LOG_TAIL_LINES:])


def _start(python: str, run_dir: Path, role: str, node: str, env: dict[str, str]) -> subprocess.Popen:
    log = open(run_dir / f"log-{node}.txt", "wb")  # noqa: SIM115 - closed when the run ends (inherited by the child)
    try:
        return subprocess.Popen(
            [python, "-m", "moecomm.integrations.mindspore.cluster_worker", str(run_dir)],
            env={**env, "MS_ROLE": role, **({"MS_NODE_ID": node} if role == "MS_WORKER" else {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def run_mindspore_local(
    target: str,
    world_size: int,
    *args: Any,
    python: str | None = None,
    timeout_s: float = 120.0,
    failure_grace_s: float = FAILURE_GRACE_S,
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Runs ``module:function(rank, world_size, *args)`` on ``world_size`` MindSpore CPU workers.

    Args:
        target: ``"package.module:function"``, importable by the workers (extend ``PYTHONPATH`` in ``env``).
        world_size: workers (>= 1); MindSpore's scheduler runs beside them.
        *args: picklable arguments after ``rank, world_size``.
        python: the interpreter of a MindSpore environment (default: this one).
        timeout_s: wall-clock limit of the whole run, cluster start included; past it every process is
            killed and :class:`LocalRunError` names the ranks that had not finished.
        failure_grace_s: seconds the other ranks get to report after one rank failed or died.
        env: extra environment variables for every process.

    Returns:
        The workers' return values in rank order (they must unpickle here: plain data or torch tensors).
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size: expected an int >= 1, got {world_size!r}")
    if not isinstance(target, str) or target.count(":") != 1:
        raise ValueError(f"target: expected 'package.module:function', got {target!r}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s: expected a number > 0, got {timeout_s!r}")
    if not failure_grace_s > 0:
        raise ValueError(f"failure_grace_s: expected a number > 0, got {failure_grace_s!r}")
    python = python or sys.executable
    if shutil.which(python) is None:
        raise ValueError(
            f"python: no interpreter at {python!r} (the MindSpore environment's, e.g. .venv-mindspore/bin/python)"
        )
    with tempfile.TemporaryDirectory(prefix="moecomm-ms-run-") as directory:
        run_dir = Path(directory)
        with open(run_dir / "job.pkl", "wb") as file:
            pickle.dump((target, args), file)
        cluster_env = {
            **os.environ,
            "GLOG_v": "3",  # MindSpore: errors only
            "OMP_NUM_THREADS": "1",
            **(env or {}),
            "MS_SCHED_HOST": "127.0.0.1",
            "MS_SCHED_PORT": str(_free_port()),
            "MS_WORKER_NUM": str(world_size),
        }
        return _run(target, world_size, python, run_dir, cluster_env, timeout_s, failure_grace_s)


def _run(
    target: str,
    world_size: int,
    python: str,
    run_dir: Path,
    env: dict[str, str],
    timeout_s: float,
    failure_grace_s: float,
) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    scheduler: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = []
    outcomes: dict[int, tuple[bool, Any]] = {}
    dead: dict[int, int] = {}
    first_failure: float | None = None
    try:
        scheduler = _start(python, run_dir, "MS_SCHED", "sched", env)
        workers = [_start(python, run_dir, "MS_WORKER", str(node), env) for node in range(world_size)]
        while len(outcomes) + len(dead) < world_size:
            now = time.monotonic()
            if now >= deadline or (first_failure is not None and now >= first_failure + failure_grace_s):
                break
            for node, worker in enumerate(workers):
                if node in outcomes or node in dead:
                    continue
                path = run_dir / f"result-{node}.pkl"
                if path.exists():
                    with open(path, "rb") as file:
                        outcomes[node] = pickle.load(file)
                    if not outcomes[node][0]:
                        first_failure = first_failure if first_failure is not None else now
                elif worker.poll() is not None and not path.exists():
                    dead[node] = worker.returncode
                    first_failure = first_failure if first_failure is not None else now
            time.sleep(0.05)
    finally:
        for process in [*workers, *([scheduler] if scheduler is not None else [])]:
            kill_process_group(process)
    values = {node: value for node, (ok, value) in outcomes.items() if ok}
    if len(values) == world_size:
        return [values[node] for node in range(world_size)]
    tracebacks = {node: str(value) for node, (ok, value) in outcomes.items() if not ok}
    parts = [f"rank {node} raised:\n{text}" for node, text in sorted(tracebacks.items())]
    parts += [
        f"rank {node} exited with code {code} without a result; its log ends:\n{_log_tail(run_dir / f'log-{node}.txt')}"
        for node, code in sorted(dead.items())
    ]
    unfinished = [n for n in range(world_size) if n not in outcomes and n not in dead]
    if unfinished:
        why = "timed out" if time.monotonic() >= deadline else "were stopped after another rank failed"
        tails = "\n".join(f"rank {n}'s log ends:\n{_log_tail(run_dir / f'log-{n}.txt')}" for n in unfinished)
        parts.append(f"ranks {unfinished} did not finish ({why}; limit {timeout_s:g} s) and were killed\n{tails}")
    scheduler_log = _log_tail(run_dir / "log-sched.txt")
    if scheduler_log:
        parts.append(f"the scheduler's log ends:\n{scheduler_log}")
    raise LocalRunError(
        f"run_mindspore_local({target!r}, world_size={world_size}): " + "\n".join(parts),
        sorted(set(tracebacks) | set(dead) | set(unfinished)),
        values,
        tracebacks,
    )
