"""run_local and the dispatchers never hang: failures and timeouts raise, naming the rank and the step."""

from __future__ import annotations

import pytest
from comm_workers import exit_mid_step, raise_on_rank, rank_identity, sleep_on_rank

from moecomm.testing.launch import LocalRunError, run_local


def test_comm_run_local_returns_in_rank_order() -> None:
    assert run_local(rank_identity, 2, 10, timeout_s=90.0) == [(0, 2, 10, 1), (1, 2, 11, 1)]


def test_comm_run_local_names_failing_rank_with_traceback() -> None:
    with pytest.raises(LocalRunError) as info:
        run_local(raise_on_rank, 2, 1, timeout_s=90.0)
    assert info.value.failed_ranks == [1]
    assert info.value.results == {0: 0}
    assert "rank 1 raised" in str(info.value) and "KeyError" in str(info.value) and "boom on 1" in str(info.value)


def test_comm_run_local_hard_timeout_kills_and_names_ranks() -> None:
    with pytest.raises(LocalRunError) as info:
        run_local(sleep_on_rank, 2, 0, 600.0, timeout_s=15.0)
    assert 0 in info.value.failed_ranks
    assert "did not finish (timed out" in str(info.value)


@pytest.mark.parametrize("dispatcher", ["alltoallv", "allgather"])
def test_comm_rank_exit_mid_step_raises_naming_step(dispatcher: str) -> None:
    case = {"config": {"dispatcher": dispatcher}, "tokens": [8, 8], "seed": 0, "hidden": 4, "experts": 4, "top_k": 2}
    with pytest.raises(LocalRunError) as info:
        run_local(exit_mid_step, 2, case, 3.0, timeout_s=90.0, group_timeout_s=3.0)
    assert info.value.failed_ranks == [1]
    assert "rank 1 exited with code 0 without a result" in str(info.value)
    error = info.value.results[0]["error"]
    assert error.startswith("CommStepError") and f"rank 0: {dispatcher} dispatch step 'count exchange' failed" in error


@pytest.mark.parametrize("mode", ["dispatcher", "transport"])
def test_process_exits_promptly_after_an_abandoned_gloo_step(tmp_path, mode: str) -> None:
    """A rank whose step timed out (its gloo collective left pending) still exits promptly and cleanly when it
    returns; by the time the step raised, gloo's worker holds no reference to the caller's tensors (its release
    of the last one takes the GIL, which aborted the process when it came during interpreter shutdown)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = Path(__file__).with_name("abandoned_step_exit.py")
    init_file = tmp_path / "init"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), "2", str(init_file), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        line = procs[0].stdout.readline()  # blocks until rank 0 reports (bounded by the pytest timeout)
        raised_at = time.monotonic()
        assert line.startswith("RAISED "), line + procs[0].stdout.read()
        assert float(line.split()[1]) < 2.0 + 3.0, line
        step = "alltoallv dispatch step 'count exchange'" if mode == "dispatcher" else "abandoned dispatch step 'rows'"
        assert f"rank 0: {step} failed" in line, line
        if mode == "transport":
            counts = procs[0].stdout.readline()
            assert counts.split() == ["USE_COUNTS", "1", "1"], counts
        code = procs[0].wait(timeout=30)
        exit_seconds = time.monotonic() - raised_at
        assert code == 0, procs[0].stdout.read()  # a clean exit, not an abort on a still-running gloo thread
        assert exit_seconds < 10.0, f"rank 0 took {exit_seconds:.1f} s to exit after its step failed"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
