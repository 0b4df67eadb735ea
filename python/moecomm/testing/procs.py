"""Subprocess helpers shared by the benchmarks and the end-to-end tests that start vLLM engines."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator


def kill_process_group(proc: subprocess.Popen) -> None:
    """Ends the process group led by ``proc`` (started with ``start_new_session=True``), workers included, and
    removes the ``/dev/shm`` files its processes had mapped that no process outside it maps (a killed vLLM
    engine leaves its ``psm_*`` message queues behind). Named semaphores (``sem.mp-*``) stay: glibc maps them
    under a temporary name, so nothing ties one to the group.

    SIGTERM first (20 s to exit), then SIGKILL; the group is SIGKILLed once more at the end because
    worker processes may outlive their leader for a moment.
    """
    group_shm = set().union(*(_mapped_shm_files(pid) for pid in _group_members(proc.pid)))
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
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _group_members(proc.pid) and time.monotonic() < deadline:  # SIGKILLed workers vanish soon after
        time.sleep(0.05)
    still_mapped = set().union(*(_mapped_shm_files(pid) for pid in _live_pids()))
    for path in group_shm - still_mapped:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _live_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after ``pid (comm)`` (state, ppid, pgrp, ...); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def is_running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (zombies excluded)."""
    members = []
    for pid in _live_pids():
        fields = _stat_fields(pid)
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(pid)
    return members


def _mapped_shm_files(pid: int) -> set[str]:
    """The ``/dev/shm`` files process ``pid`` maps (unlinked ones excluded); empty if it is gone or not ours."""
    paths = set()
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
                path = fields[5].strip() if len(fields) == 6 else ""
                if path.startswith(SHM_DIR + "/") and not path.endswith(" (deleted)"):
                    paths.add(path)
    return paths


SHM_DIR = "/dev/shm"


@contextlib.contextmanager
def engine_env(env: dict | None = None) -> Iterator[dict]:
    """``env`` (default: this process's) with TMPDIR set to a fresh directory for vLLM engines to run in.

    A vLLM CPU engine names its shared-memory segments ``/dev/shm/vllm_dist_<id>-...`` after the file store
    ``$TMPDIR/vllm_dist_<id>`` it creates (and deletes at shutdown), and leaves the segments behind when its
    workers are killed. A thread notes the stores while the engines run; on exit this removes their segments
    (only those: other engines on the machine keep theirs), then the directory.
    """
    tmp = tempfile.mkdtemp(prefix="moecomm-vllm-")
    stores: set[str] = set()
    stop = threading.Event()

    def note_stores() -> None:
        with contextlib.suppress(FileNotFoundError):
            stores.update(name for name in os.listdir(tmp) if name.startswith("vllm_dist_"))

    def watch() -> None:
        while not stop.wait(0.5):
            note_stores()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield dict(env if env is not None else os.environ, TMPDIR=tmp)
    finally:
        stop.set()
        watcher.join()
        note_stores()
        if stores and os.path.isdir(SHM_DIR):
            for name in os.listdir(SHM_DIR):
                if any(name.startswith(store + "-") for store in stores):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(SHM_DIR, name))
        shutil.rmtree(tmp, ignore_errors=True)


def dp_rank_env(rank: int, size: int, master_port: int) -> dict[str, str]:
    """The environment of DP rank ``rank`` of ``size`` in vLLM's offline data parallel (one process per DP rank,
    all on 127.0.0.1; ``VLLM_CPU_OMP_THREADS_BIND`` "a|b|..." then gives DP rank r its r-th entry)."""
    return {
        "VLLM_DP_RANK": str(rank),
        "VLLM_DP_RANK_LOCAL": str(rank),
        "VLLM_DP_SIZE": str(size),
        "VLLM_DP_MASTER_IP": "127.0.0.1",
        "VLLM_DP_MASTER_PORT": str(master_port),
    }


def wait_for_dp_peers(done_dir: str, rank: int, size: int, timeout_s: float) -> None:
    """Marks DP rank ``rank`` done in ``done_dir`` and waits (at most ``timeout_s``) until all ``size`` ranks are.

    An offline DP rank must not shut its engine down while another rank still runs steps: its engine joins
    them (with dummy batches when it has nothing left), and the others would wait for it in a collective.

    Raises:
        TimeoutError: naming this rank and the ranks not done.
    """
    open(os.path.join(done_dir, f"rank{rank}"), "w").close()
    deadline = time.monotonic() + timeout_s
    while True:
        done = {name for name in os.listdir(done_dir) if name.startswith("rank")}
        if len(done) >= size:
            return
        if time.monotonic() > deadline:
            missing = sorted(set(range(size)) - {int(name[4:]) for name in done})
            raise TimeoutError(f"DP rank {rank}: DP ranks {missing} did not finish within {timeout_s} s")
        time.sleep(0.5)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a server or a DP master)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
