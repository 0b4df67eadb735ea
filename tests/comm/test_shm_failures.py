"""The shm transport never hangs and never leaks: a killed, late or failing rank is named within
timeout_s, and /dev/shm holds no moecomm segment afterwards."""

from __future__ import annotations

import pytest
from shm_segments import assert_no_new_segments, moecomm_segments
from shm_workers import (
    killed_before_setup,
    killed_during_growth,
    killed_mid_collective,
    late_rank,
    many_small_steps,
    raise_after_collective,
)

from moecomm.comm.launch import LocalRunError, run_local

TIMEOUT_S = 4.0
SLACK_S = 1.5


def _survivors(fn: object, world_size: int, *args: object) -> dict[int, dict]:
    with pytest.raises(LocalRunError) as info:
        # survivors may wait timeout_s in a step and again in close(): give them well past both to report
        run_local(fn, world_size, *args, timeout_s=120.0, group_timeout_s=30.0, failure_grace_s=30.0)
    assert not info.value.tracebacks, f"a surviving rank raised instead of reporting: {info.value}"
    return info.value.results


@pytest.mark.parametrize("world_size,victim", [(2, 1), (3, 0)])
def test_shm_sigkill_mid_collective_names_dead_rank_fast(world_size: int, victim: int) -> None:
    before = moecomm_segments()
    results = _survivors(killed_mid_collective, world_size, victim, TIMEOUT_S)
    assert sorted(results) == [r for r in range(world_size) if r != victim]
    for rank, outcome in results.items():
        assert outcome["error"] is not None, rank
        assert f"rank {victim} (pid" in outcome["error"] and "exited" in outcome["error"], outcome["error"]
        assert f"rank {rank}: shm-test dispatch step 'tokens' failed" in outcome["error"], outcome["error"]
        assert outcome["elapsed"] < TIMEOUT_S + SLACK_S, outcome
        assert outcome["broken"]
    assert_no_new_segments(before)


def test_shm_sigkill_during_growth_leaks_nothing() -> None:
    before = moecomm_segments()
    results = _survivors(killed_during_growth, 2, 1, TIMEOUT_S)
    assert "rank 1 (pid" in results[0]["error"] and results[0]["elapsed"] < TIMEOUT_S + SLACK_S, results
    assert_no_new_segments(before)


def test_shm_sigkill_before_setup_times_out_naming_rank() -> None:
    before = moecomm_segments()
    results = _survivors(killed_before_setup, 2, 1, TIMEOUT_S)
    error = results[0]["error"]
    assert "rank 1 did not create its shared-memory segment" in error and "setup" in error, error
    assert results[0]["elapsed"] < TIMEOUT_S + SLACK_S
    assert_no_new_segments(before)


def test_shm_late_rank_named_within_timeout() -> None:
    before = moecomm_segments()
    results = run_local(late_rank, 2, 1, TIMEOUT_S, timeout_s=120.0)
    on_time = results[0]
    assert "rank 1 (pid" in on_time["error"] and "did not arrive" in on_time["error"], on_time
    assert "dispatch step 'count exchange'" in on_time["error"]
    assert TIMEOUT_S - 0.1 <= on_time["elapsed"] < TIMEOUT_S + SLACK_S
    # the late rank fails too (its peer gave up), instead of hanging
    assert results[1]["error"] is not None
    assert_no_new_segments(before)


def test_shm_exception_without_close_leaks_nothing() -> None:
    before = moecomm_segments()
    with pytest.raises(LocalRunError) as info:
        run_local(raise_after_collective, 2, timeout_s=120.0)
    assert "deliberate failure on rank 0" in str(info.value)
    assert_no_new_segments(before)


def test_shm_four_ranks_on_two_cores_do_not_starve() -> None:
    before = moecomm_segments()
    steps = 300
    results = run_local(many_small_steps, 4, steps, timeout_s=120.0)
    for outcome in results:
        assert outcome["correct"]
        # 300 barriers and 300 count exchanges among 4 ranks sharing 2 cores: sleeping waiters hand the
        # cores to the ranks they wait for (pure spinning took seconds per hundred steps here)
        assert outcome["barriers_s"] < 3.0 and outcome["exchanges_s"] < 3.0, outcome
    assert_no_new_segments(before)
