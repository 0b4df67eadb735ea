"""2 MindSpore CPU workers: moecomm's dispatchers over the shm transport (bootstrapped over MindSpore's
AllGather) and over MindSpore's all-gather collectives equal a dense single-process reference, with and
without a drop ratio; the MindSpore transport's collectives equal their dense results (every dtype, empty and
uneven splits); nothing of moecomm is left in /dev/shm."""

from __future__ import annotations

import os

import pytest
import torch
from byte_cases import byte_cases
from comm_reference import dense_output
from comm_workers import make_batch
from ms_env import needs_mindspore, worker_env
from shm_workers import expected_result
from test_shm_semantics import _check

from moecomm.integrations.mindspore import run_mindspore_local

pytestmark = pytest.mark.mindspore

WORLD = 2
BASE = {"seed": 3, "experts": 8, "top_k": 2, "hidden": 24, "tokens": [13, 6], "routing": "skew"}
DISPATCHERS = ("alltoallv", "allgather", "alltoall")
SEED = 17


def _cases() -> list[dict]:
    cases = []
    for transport in ("shm", "mindspore"):
        for dispatcher in DISPATCHERS:
            for ratio in (0.0, 0.3):
                config = {"dispatcher": dispatcher, "transport": transport, "token_drop_ratio": ratio, "timeout_s": 30}
                if dispatcher == "alltoall":
                    config["max_tokens_per_rank"] = max(BASE["tokens"])
                cases.append({**BASE, "config": config})
    cases.append({**BASE, "dtype": "bfloat16", "config": {"dispatcher": "alltoallv", "transport": "auto"}})
    return cases


def _segments() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith("moecomm-")}


@pytest.fixture(scope="module")
def outcomes() -> tuple[list[dict], list[list[dict]], set[str]]:
    python = needs_mindspore()
    cases = _cases()
    before = _segments()
    results = run_mindspore_local(
        "ms_workers:dispatch_and_collectives", WORLD, cases, SEED, python=python, env=worker_env(), timeout_s=240
    )
    return cases, results, _segments() - before


def test_dispatch_combine_equal_the_dense_reference(outcomes):
    cases, everything, _ = outcomes
    results = [rank["roundtrips"] for rank in everything]
    for index, case in enumerate(cases):
        batch = make_batch(case, WORLD)
        config = case["config"]
        expected_transport = "shm" if config["transport"] == "auto" else config["transport"]
        for rank in range(WORLD):
            got = results[rank][index]
            assert got["transport"] == expected_transport, (config, got["chosen_because"])
            inputs = batch[rank]
            reference = dense_output(inputs["x"], inputs["topk_ids"], inputs["topk_weights"], got["is_kept"], False)
            tolerance = 2e-2 if case.get("dtype") == "bfloat16" else 1e-5
            torch.testing.assert_close(got["y"].double(), reference, atol=tolerance, rtol=tolerance, msg=str(config))
            assert got["stats"]["local_dropped_pairs"] == int((~got["is_kept"]).sum()), config
        dropped = sum(int((~results[rank][index]["is_kept"]).sum()) for rank in range(WORLD))
        total_pairs = sum(t * case["top_k"] for t in case["tokens"])
        ratio = case["config"].get("token_drop_ratio", 0.0)
        assert [results[rank][index]["stats"]["dropped_pairs"] for rank in range(WORLD)] == [dropped] * WORLD
        assert results[0][index]["stats"]["total_pairs"] == total_pairs
        # at most floor(r x routed pairs) dropped, and the skewed routing makes the ratio bite
        assert dropped <= int(ratio * total_pairs), case["config"]
        assert (dropped > 0) == (ratio > 0), case["config"]


def test_mindspore_transport_collectives_equal_their_dense_results(outcomes):
    _, everything, _ = outcomes
    _check([rank["collectives"]["standard"] for rank in everything], WORLD, SEED, "mindspore")
    for rank in range(WORLD):
        for case, got in zip(byte_cases(WORLD, SEED), everything[rank]["collectives"]["bytes"], strict=True):
            assert torch.equal(got, expected_result(case, rank, WORLD)), (rank, case["op"], case["dtype"])


def test_no_segments_left_in_dev_shm(outcomes):
    _, _, left = outcomes
    assert not left, f"moecomm segments left in /dev/shm: {sorted(left)}"
