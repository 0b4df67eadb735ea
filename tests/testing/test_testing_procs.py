"""moecomm.testing.procs: killing an engine's process group also removes the /dev/shm files it left behind."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from moecomm.testing.procs import SHM_DIR, is_running, kill_process_group

# A leader that maps its files and starts a worker (same process group) mapping them too, then both sleep:
# like a vLLM engine whose message queues live in /dev/shm, killed before it can unlink them.
_GROUP = r"""
import mmap, os, subprocess, sys, time
role, paths = sys.argv[1], sys.argv[2:]
maps = []
for path in paths:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(fd, 4096)
    maps.append(mmap.mmap(fd, 4096))
if role == "leader":
    worker = subprocess.Popen([sys.executable, __file__, "worker", *paths], stdout=subprocess.PIPE, text=True)
    assert worker.stdout.readline().strip() == "ready"
    print("worker", worker.pid, flush=True)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture
def shm_paths():
    paths = [os.path.join(SHM_DIR, f"moecomm-test-{uuid.uuid4().hex}-{name}") for name in ("engine", "shared")]
    yield paths
    for path in paths:
        if os.path.exists(path):
            os.remove(path)


def test_kill_process_group_removes_the_groups_shm_files_only(tmp_path: Path, shm_paths: list[str]) -> None:
    engine_file, shared_file = shm_paths
    script = tmp_path / "group.py"
    script.write_text(_GROUP)
    # This process maps shared_file too: it is not the group's to remove.
    fd = os.open(shared_file, os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(fd, 4096)
    ours = mmap.mmap(fd, 4096)
    os.close(fd)
    leader = subprocess.Popen(
        [sys.executable, str(script), "leader", engine_file, shared_file],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        worker_pid = int(leader.stdout.readline().split()[1])
        assert leader.stdout.readline().strip() == "ready"
    finally:
        kill_process_group(leader)
    assert leader.returncode is not None
    assert not is_running(worker_pid), "the group's worker outlived the kill"
    assert not os.path.exists(engine_file), "the killed group's shm file was left behind"
    assert os.path.exists(shared_file), "a file this process still maps was removed"
    ours.close()


def test_kill_process_group_of_an_exited_process_is_a_no_op() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait()
    kill_process_group(proc)
    assert proc.returncode == 0
