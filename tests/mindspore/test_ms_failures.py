"""Failures of a MindSpore job: a killed worker makes the other raise within the timeout over both
transports; a config that disagrees or names a transport MindSpore jobs lack is refused; the launcher's own
limits hold and it leaves no process behind."""

from __future__ import annotations

import os
import sys
import time

import pytest
from ms_env import needs_mindspore, worker_env

from moecomm.integrations.mindspore import run_mindspore_local
from moecomm.testing import LocalRunError
from moecomm.testing.procs import is_running

pytestmark = pytest.mark.mindspore

TIMEOUT_S = 5.0


def _segments() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith("moecomm-")}


@pytest.mark.parametrize("transport", ["shm", "mindspore"])
def test_killed_worker_makes_the_survivor_raise_within_the_timeout(transport):
    python = needs_mindspore()
    before = _segments()
    with pytest.raises(LocalRunError) as raised:
        run_mindspore_local(
            "ms_workers:killed_mid_step",
            2,
            transport,
            1,
            TIMEOUT_S,
            python=python,
            env=worker_env(),
            timeout_s=120,
            failure_grace_s=3 * TIMEOUT_S,
        )
    error = raised.value
    assert error.failed_ranks == [1], str(error)
    assert "rank 1 exited with code -9 without a result" in str(error)
    survivor = error.results[0]
    assert survivor["name"] == transport
    assert survivor["error"] is not None and survivor["error"].startswith("rank 0: kill-test dispatch step"), survivor
    assert survivor["broken"]
    assert survivor["elapsed"] < TIMEOUT_S + 3.0, survivor
    assert not _segments() - before


def test_config_disagreement_and_torch_transport_are_refused():
    python = needs_mindspore()
    outcome = run_mindspore_local("ms_workers:refused_configs", 2, python=python, env=worker_env(), timeout_s=120)
    for rank, errors in enumerate(outcome):
        assert errors["disagree"].startswith(f"rank {rank}: alltoallv setup: the configuration differs"), errors
        assert "token_drop_ratio (rank 0=0.0, rank 1=0.1)" in errors["disagree"]
        assert errors["torch"].startswith("transport: a MindSpore job uses one of 'auto', 'shm', 'mindspore'")


#: Limit of the timeout test's run: the cluster's start (~10-15 s on a loaded 2-core machine) must fit in it.
RUN_LIMIT_S = 35


def test_launcher_times_out_kills_every_process_and_names_the_ranks():
    python = needs_mindspore()
    start = time.monotonic()
    with pytest.raises(LocalRunError) as raised:
        run_mindspore_local(
            "ms_workers:sleep_on_rank", 2, 0, 600.0, python=python, env=worker_env(), timeout_s=RUN_LIMIT_S
        )
    elapsed = time.monotonic() - start
    assert raised.value.failed_ranks == [0]
    assert f"ranks [0] did not finish (timed out; limit {RUN_LIMIT_S} s)" in str(raised.value)
    assert elapsed < RUN_LIMIT_S + 30, elapsed  # the kill may wait on SIGTERM before SIGKILL
    pids = raised.value.results[1]
    for pid in pids:
        assert not is_running(pid), f"process {pid} outlived the run"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target": "ms_workers.sleep_on_rank", "world_size": 2}, r"^target: expected 'package.module:function'"),
        ({"target": "ms_workers:sleep_on_rank", "world_size": 0}, r"^world_size: expected an int >= 1, got 0$"),
        ({"target": "ms_workers:sleep_on_rank", "world_size": True}, r"^world_size: expected an int >= 1, got True$"),
        ({"target": "m:f", "world_size": 1, "timeout_s": 0}, r"^timeout_s: expected a number > 0, got 0$"),
        ({"target": "m:f", "world_size": 1, "failure_grace_s": -1}, r"^failure_grace_s: expected a number > 0"),
    ],
)
def test_launcher_arguments_are_checked_before_anything_starts(kwargs, match):
    target, world_size = kwargs.pop("target"), kwargs.pop("world_size")
    with pytest.raises(ValueError, match=match):
        run_mindspore_local(target, world_size, python=sys.executable, **kwargs)


def test_launcher_refuses_a_missing_interpreter():
    with pytest.raises(ValueError, match=r"^python: no interpreter at '/nonexistent/python'"):
        run_mindspore_local("m:f", 1, python="/nonexistent/python")
