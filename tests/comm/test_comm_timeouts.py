"""Setup and steps are bounded by timeout_s, and a timed-out dispatcher refuses further use (2 gloo ranks)."""

from __future__ import annotations

import time

from step_workers import broken_after_timeout, late_setup, raise_after_timeout

from moecomm.testing.launch import LocalRunError, run_local

CASE = {
    "kind": "roundtrip",
    "tokens": [12, 12],
    "seed": 5,
    "hidden": 8,
    "experts": 4,
    "top_k": 2,
    "config": {"dispatcher": "alltoallv", "transport": "torch"},
}


def _first_rank(fn, *args):  # noqa: ANN001, ANN202
    try:
        return run_local(fn, 2, CASE, *args, timeout_s=60.0)[0]
    except LocalRunError as error:  # the late rank may be killed once rank 0 is done
        return error.results[0]


def test_comm_config_agreement_is_bounded_by_timeout() -> None:
    result = _first_rank(late_setup, 8.0, 1.5)
    assert result["error"].startswith("CommStepError"), result
    assert "setup step 'config agreement" in result["error"], result
    assert result["seconds"] < 6.0, result


def test_comm_timed_out_dispatcher_refuses_reuse_at_once() -> None:
    result = _first_rank(broken_after_timeout, 1.5)
    assert result["first"].startswith("CommStepError") and "count exchange" in result["first"], result
    assert result["seconds"] < 6.0, result
    assert result["again"].startswith("CommStepError") and "is broken" in result["again"], result
    assert result["again_seconds"] < 0.5, result


def test_run_local_reports_the_ranks_own_error_after_a_timed_out_step() -> None:
    start = time.monotonic()
    try:
        run_local(raise_after_timeout, 2, 1.5, timeout_s=60.0)
    except LocalRunError as error:
        message = str(error)
    else:
        raise AssertionError("run_local returned although rank 0 raised")
    assert "rank 0 raised" in message and "CommStepError" in message and "count exchange" in message, message
    assert time.monotonic() - start < 30.0
