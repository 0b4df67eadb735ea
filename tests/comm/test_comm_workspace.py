"""Buffers reused across steps, stale handles, and combine's cross-rank agreement (1 and 2 gloo ranks)."""

from __future__ import annotations

import pytest
import torch
from comm_reference import dense_output
from comm_workers import make_batch
from step_workers import disagreeing_outputs, reuse_steps, stale_handle

from moecomm.testing.launch import run_local

CASE = {"kind": "roundtrip", "tokens": [40, 24], "seed": 3, "hidden": 16, "experts": 8, "top_k": 3}


def _case(dispatcher: str) -> dict:
    config = {"dispatcher": dispatcher, "transport": "torch"}
    if dispatcher == "alltoall":
        config["max_tokens_per_rank"] = 48
    return {**CASE, "config": config}


@pytest.mark.parametrize("dispatcher", ["alltoallv", "alltoall", "allgather"])
def test_comm_workspace_buffers_are_reused_and_results_unchanged(dispatcher: str) -> None:
    case = _case(dispatcher)
    reused = run_local(reuse_steps, 2, case, False, timeout_s=120.0)
    fresh = run_local(reuse_steps, 2, case, True, timeout_s=120.0)
    batch = make_batch(case, 2)
    for rank in range(2):
        inputs = batch[rank]
        ones = torch.ones_like(inputs["topk_ids"], dtype=torch.bool)
        reference = dense_output(inputs["x"], inputs["topk_ids"], inputs["topk_weights"], ones, False)
        for step in range(4):
            torch.testing.assert_close(reused[rank]["outputs"][step].double(), reference, rtol=1e-5, atol=1e-5)
            assert torch.equal(reused[rank]["outputs"][step], fresh[rank]["outputs"][step])
        # the same arenas serve every step after the first
        pointers = reused[rank]["pointers"]
        assert pointers[0] and all(p == pointers[0] for p in pointers[1:]), pointers
        assert reused[rank]["workspace_bytes"] > 0 and fresh[rank]["workspace_bytes"] == 0
        # expert_x is a view into the workspace: the next dispatch overwrites it (documented); fresh keeps it
        assert fresh[rank]["first_expert_x_kept"]


@pytest.mark.parametrize("world_size", [1, 2])
def test_comm_stale_handle_is_refused_on_every_rank(world_size: int) -> None:
    results = run_local(stale_handle, world_size, _case("alltoallv"), timeout_s=120.0)
    for _rank, errors in enumerate(results):
        assert errors["all_stale"].startswith("ValueError") and "stale handle" in errors["all_stale"], errors
        if world_size > 1:
            assert errors["one_stale"].startswith("ValueError"), errors
            assert "rank(s) [1]" in errors["one_stale"], errors
        assert errors["after"] == "no error", errors


@pytest.mark.parametrize("dispatcher", ["alltoallv", "alltoall", "allgather"])
def test_comm_combine_refuses_disagreeing_expert_outputs_on_every_rank(dispatcher: str) -> None:
    results = run_local(disagreeing_outputs, 2, _case(dispatcher), timeout_s=120.0)
    for _rank, errors in enumerate(results):
        assert errors["dtype"].startswith("ValueError") and "expert_y dtype differs" in errors["dtype"], errors
        assert "rank 0: bfloat16" not in errors["dtype"] and "rank 1: float16" in errors["dtype"], errors
        assert errors["width"].startswith("ValueError") and "hidden size differs" in errors["width"], errors
        assert errors["rows"].startswith("ValueError") and "rank(s) [1]" in errors["rows"], errors
        assert errors["after"] == "no error", errors
    assert "expected" in results[1]["rows"] and "rows" in results[1]["rows"]
