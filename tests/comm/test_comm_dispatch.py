"""Multi-process dispatch -> experts -> combine against a dense single-process reference (gloo, 1/2/4 ranks).

One spawn per world size runs every case (spawning is the slow part); each case is then checked here.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from comm_reference import (
    bucket_of,
    dense_output,
    drop_budget,
    expected_expert_rows,
    expected_rows_sent,
    min_cap_for_budget,
    per_bucket_policy_ok,
    summarize,
)
from comm_workers import make_batch, run_cases

from moecomm.testing.launch import run_local

DISPATCHERS = ("alltoallv", "alltoallv-pairs", "alltoall", "allgather")
#: (transport, kernel_backend) every case runs under: the suite must give the same results on each.
AXES = (("torch", "auto"), ("torch", "torch"), ("shm", "auto"))


def _case(dispatcher: str, tokens: list[int], seed: int, kind: str = "roundtrip", **options: Any) -> dict[str, Any]:
    config = {"dispatcher": dispatcher, **options.pop("config", {})}
    if dispatcher == "alltoall":
        config.setdefault("max_tokens_per_rank", max(max(tokens), 1) + 3)
    return {
        "kind": kind,
        "config": config,
        "tokens": tokens,
        "seed": seed,
        "hidden": 8,
        "experts": 8,
        "top_k": 2,
        **options,
    }


def _cases(world_size: int) -> list[dict[str, Any]]:
    """Every base case under every (transport, kernel backend) of :data:`AXES`."""
    return [
        {**case, "config": {**case["config"], "transport": transport, "kernel_backend": backend}}
        for transport, backend in AXES
        for case in _base_cases(world_size)
    ]


def _base_cases(world_size: int) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    tokens = {1: [23], 2: [21, 0], 4: [10, 0, 25, 7]}[world_size]
    for seed, name in enumerate(DISPATCHERS):
        cases.append(_case(name, tokens, seed, steps=2))  # dropless fp32, a rank with T = 0
        cases.append(_case(name, [t + 4 for t in tokens], seed + 10, dtype="bfloat16"))
        cases.append(_case(name, tokens, seed + 20, routing="one_rank"))
        cases.append(
            _case(
                name,
                [16] * world_size,
                seed + 30,
                routing="skew",
                config={"token_drop_ratio": 0.2, "drop_scope": "rank", "drop_policy": "position"},
            )
        )
        cases.append(
            _case(
                name,
                [17] * world_size,
                seed + 40,
                routing="skew",
                random_weights=True,
                config={"token_drop_ratio": 0.3, "drop_scope": "expert", "drop_policy": "probs"},
            )
        )
    if world_size == 1:
        return cases
    mixed = {2: [30, 12], 4: [30, 12, 0, 19]}[world_size]
    cases += [
        _case("alltoallv", mixed, 50, config={"token_drop_ratio": 0.1, "renormalize_kept": True}),
        _case("alltoallv", mixed, 51, random_weights=True, config={"capacity_factor": 0.75, "drop_policy": "probs"}),
        _case("allgather", mixed, 52, config={"capacity_factor": 1.0, "drop_policy": "position"}),
        _case("alltoall", mixed, 53, config={"capacity_factor": 0.6}),
        _case(
            "alltoall",
            mixed,
            54,
            routing="skew",
            dtype="bfloat16",
            config={"capacity_factor": 1.5, "token_drop_ratio": 0.15, "drop_scope": "expert"},
        ),
        _case("alltoallv", mixed, 55, kind="config_mismatch"),
        # the transport choice is collective: a rank on another transport is stopped before any path splits
        _case("alltoallv", mixed, 58, kind="config_mismatch", mismatch={"transport": "auto"}),
        _case("alltoall", [t + 1 for t in mixed], 56, kind="bad_inputs"),
        _case("allgather", mixed, 57, kind="bad_inputs"),
    ]
    return cases


_RESULTS: dict[int, list[list[Any]]] = {}


def _results(world_size: int) -> list[list[Any]]:
    """Per case, each rank's result (one spawn per world size, cached)."""
    if world_size not in _RESULTS:
        per_rank = run_local(run_cases, world_size, _cases(world_size), timeout_s=240.0, group_timeout_s=60.0)
        _RESULTS[world_size] = [[per_rank[r][i] for r in range(world_size)] for i in range(len(per_rank[0]))]
    return _RESULTS[world_size]


def _params() -> list[Any]:
    return [
        pytest.param(world_size, index, id=f"R{world_size}-{index}-{summarize(case)}")
        for world_size in (1, 2, 4)
        for index, case in enumerate(_cases(world_size))
    ]


def _drop_bucket_scope(config: dict[str, Any]) -> str | None:
    """Which buckets the configured drop caps: ``rank``, ``expert`` or None (dropless)."""
    if config.get("token_drop_ratio", 0) > 0:
        return config.get("drop_scope", "rank")
    if config["dispatcher"] == "alltoall":
        return "rank"  # per-(source, destination) buffer rows
    return "expert" if config.get("capacity_factor") is not None else None


def _check_roundtrip(case: dict[str, Any], world_size: int, results: list[dict[str, Any]]) -> None:
    config = case["config"]
    experts, top_k = case["experts"], case["top_k"]
    batch = make_batch(case, world_size)
    kept = [r["is_kept"] for r in results]
    renormalize = config.get("renormalize_kept", False)
    bf16 = case.get("dtype") == "bfloat16"

    # Output == dense reference with exactly handle.is_kept masked; expert rows in the contracted order.
    for rank, (inputs, result) in enumerate(zip(batch, results)):
        assert result["repeat_equal"], "a repeated step gave a different output"
        assert result["y"].shape == inputs["x"].shape and result["y"].dtype == inputs["x"].dtype
        ref = dense_output(inputs["x"], inputs["topk_ids"], inputs["topk_weights"], kept[rank], renormalize)
        tol = {"rtol": 2e-2, "atol": 6e-2} if bf16 else {"rtol": 1e-5, "atol": 1e-5}
        torch.testing.assert_close(result["y"].double(), ref, **tol, msg=lambda m: f"rank {rank}: {m}")
        expected_rows = expected_expert_rows(batch, kept, rank, result["num_local_experts"])
        assert torch.equal(result["expert_x"], expected_rows.reshape(result["expert_x"].shape))
        local = range(rank * result["num_local_experts"], (rank + 1) * result["num_local_experts"])
        counts = [sum(int(((b["topk_ids"] == e) & kept[s]).sum()) for s, b in enumerate(batch)) for e in local]
        assert result["tokens_per_local_expert"].tolist() == counts

    # Stats agree on every rank and match the masks.
    stats = [r["stats"] for r in results]
    scope = _drop_bucket_scope(config)
    # capacity_factor caps each source by its own T; every other figure is global and identical.
    local_keys = {"local_dropped_pairs", "rows_sent", "bytes_sent"} | (
        {"cap"} if scope == "expert" and "token_drop_ratio" not in config else set()
    )
    for other in stats[1:]:
        assert {k: v for k, v in other.items() if k not in local_keys} == {
            k: v for k, v in stats[0].items() if k not in local_keys
        }
    total = sum(b["topk_ids"].numel() for b in batch)
    dropped = sum(int((~k).sum()) for k in kept)
    assert stats[0]["total_pairs"] == total and stats[0]["dropped_pairs"] == dropped
    for rank in range(world_size):
        assert stats[rank]["local_dropped_pairs"] == int((~kept[rank]).sum())
        assert stats[rank]["rows_sent"] == expected_rows_sent(
            config["dispatcher"],
            batch,
            kept,
            rank,
            experts,
            world_size,
            token_level=config["dispatcher"] == "alltoallv",
        )
    all_ids = torch.cat([b["topk_ids"] for b in batch])
    all_kept = torch.cat(kept)
    received = torch.bincount(bucket_of(all_ids[all_kept], "rank", experts, world_size), minlength=world_size)
    assert stats[0]["received_per_rank"] == received.tolist()

    if scope is None:
        assert dropped == 0
        return
    policy = config.get("drop_policy", "position")
    for rank, inputs in enumerate(batch):
        buckets = bucket_of(inputs["topk_ids"], scope, experts, world_size)
        assert per_bucket_policy_ok(inputs["topk_ids"], inputs["topk_weights"], kept[rank], buckets, policy) == []

    ratio = config.get("token_drop_ratio", 0.0)
    if ratio > 0:
        loads = torch.bincount(
            bucket_of(all_ids.flatten(), scope, experts, world_size),
            minlength=experts if scope == "expert" else world_size,
        )
        budget = drop_budget(total, ratio)
        cap = min_cap_for_budget(loads.tolist(), budget)
        assert stats[0]["cap"] == cap, "the cap is not the water-filling cap"
        kept_loads = torch.bincount(bucket_of(all_ids[all_kept], scope, experts, world_size), minlength=loads.numel())
        assert bool((kept_loads <= cap).all()), f"a bucket holds more than C={cap}: {kept_loads.tolist()}"
        if scope == "rank":
            assert max(stats[0]["received_per_rank"]) <= cap
        if config["dispatcher"] != "alltoall" or config.get("capacity_factor") is None:
            # nothing beyond the configured amount: exactly the water-filling excess is dropped
            assert dropped <= budget
            assert dropped == int((loads - cap).clamp_min(0).sum())
        else:  # alltoall buffers may cut further: no (source, destination) pair exceeds its rows
            pair_rows = math.ceil(config["max_tokens_per_rank"] * top_k / world_size * config["capacity_factor"])
            for rank, inputs in enumerate(batch):
                dest = bucket_of(inputs["topk_ids"][kept[rank]], "rank", experts, world_size)
                assert int(torch.bincount(dest, minlength=world_size).max()) <= pair_rows
    elif config["dispatcher"] == "alltoall":
        factor = config.get("capacity_factor") or world_size
        pair_rows = math.ceil(config["max_tokens_per_rank"] * top_k / world_size * factor)
        assert stats[0]["cap"] == pair_rows
        for rank, inputs in enumerate(batch):
            dest = bucket_of(inputs["topk_ids"], "rank", experts, world_size)
            sent = torch.bincount(dest[kept[rank]], minlength=world_size)
            wanted = torch.bincount(dest.flatten(), minlength=world_size)
            assert sent.tolist() == wanted.clamp_max(pair_rows).tolist()
    else:  # capacity_factor: Megatron-Core's per-expert capacity on each source rank
        from megatron.core.transformer.moe.moe_utils import get_capacity

        for rank, inputs in enumerate(batch):
            tokens = inputs["topk_ids"].shape[0]
            cap = get_capacity(
                num_tokens=tokens * top_k, num_experts=experts, capacity_factor=config["capacity_factor"]
            )
            assert stats[rank]["cap"] == cap
            sent = torch.bincount(inputs["topk_ids"][kept[rank]], minlength=experts)
            wanted = torch.bincount(inputs["topk_ids"].flatten(), minlength=experts)
            assert sent.tolist() == wanted.clamp_max(cap).tolist()


@pytest.mark.parametrize(("world_size", "index"), _params())
def test_comm_dispatch_case(world_size: int, index: int) -> None:
    case = _cases(world_size)[index]
    results = _results(world_size)[index]
    if case["kind"] == "roundtrip":
        _check_roundtrip(case, world_size, results)
    elif case["kind"] == "config_mismatch":
        key, value = next(iter(case.get("mismatch", {"token_drop_ratio": 0.25}).items()))
        for rank, message in enumerate(results):
            assert message.startswith("ValueError") and key in message, f"rank {rank}: {message}"
            assert (
                f"rank {world_size - 1}={value!r}" in message and f"rank 0={case['config'].get(key, 0.0)!r}" in message
            )
    else:  # bad_inputs: each raised a clear error locally, on every rank
        expected = {
            "id_range": ("ValueError", "topk_ids"),
            "ids_dtype": ("TypeError", "topk_ids"),
            "weights_shape": ("ValueError", "topk_weights"),
            "x_rows": ("ValueError", "x:"),
            "x_dtype": ("TypeError", "x:"),
            "x_device": ("ValueError", "x:"),
            "wrong_rows_in_combine": ("ValueError", "expert_y"),
        }
        for rank, errors in enumerate(results):
            tokens = case["tokens"][rank]
            for name, (kind, word) in expected.items():
                if tokens == 0 and name in ("id_range", "x_rows"):
                    continue  # nothing to corrupt / no row to remove on an empty rank
                assert errors[name].startswith(kind) and word in errors[name], f"rank {rank} {name}: {errors[name]}"
