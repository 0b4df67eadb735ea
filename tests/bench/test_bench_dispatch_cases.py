"""`moecomm bench dispatch` cases: transports, the guarded fresh-buffers case, and one tiny 2-rank run
whose records are checked field by field against direct computations."""

from __future__ import annotations

import pytest

from moecomm.bench import dispatch_cases
from moecomm.bench.dispatch import DispatchBenchConfig, rank_seed, run_dispatch
from moecomm.bench.dispatch_cases import DISPATCHERS, case_name, plan_cases
from moecomm.bench.routing import make_routing
from moecomm.bench.traffic import PAGE_BYTES


def test_plan_names_cases_per_transport_and_skips_with_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    cases, notes = plan_cases(("alltoallv", "alltoallv-pairs-fresh", "torch-alltoallv", "shm-copy"), ("torch", "shm"))
    assert cases == [
        ("alltoallv/torch", "alltoallv", "torch"),
        ("alltoallv/shm", "alltoallv", "shm"),
        ("alltoallv-pairs-fresh/torch", "alltoallv-pairs-fresh", "torch"),
        ("alltoallv-pairs-fresh/shm", "alltoallv-pairs-fresh", "shm"),
        ("torch-alltoallv", "torch-alltoallv", None),
        ("shm-copy", "shm-copy", None),
    ]
    assert notes == []
    monkeypatch.setattr(dispatch_cases, "megatron_available", lambda: False)
    cases, notes = plan_cases(("megatron-alltoall",), ("torch",))
    assert cases == [] and notes[0].startswith("megatron-alltoall: skipped")
    with pytest.raises(ValueError, match="dispatchers"):
        plan_cases(("nccl",), ("torch",))
    assert case_name("alltoall", "shm") == "alltoall/shm" and case_name("shm-copy", "torch") == "shm-copy"


TINY = DispatchBenchConfig(
    num_ranks=2, num_tokens=48, hidden=64, num_experts=8, top_k=3, dtype="bf16", repeats=2, warmup=1, timeout_s=240.0
)


@pytest.fixture(scope="module")
def tiny_run() -> dict:
    return run_dispatch(TINY, progress=False)


@pytest.mark.timeout(300)
def test_tiny_run_has_every_case_with_errors_against_the_dense_reference(tiny_run: dict) -> None:
    records = {r["name"]: r for r in tiny_run["records"]}
    expected, notes = plan_cases(DISPATCHERS, TINY.transports)
    assert list(records) == [name for name, _, _ in expected] and tiny_run["notes"] == notes
    assert {
        "alltoallv/torch",
        "alltoallv/shm",
        "alltoallv-pairs-fresh/torch",
        "alltoall/torch",
        "allgather/torch",
        "torch-alltoallv",
        "shm-copy",
    } <= set(records)
    if dispatch_cases.megatron_available():
        assert {"megatron-alltoall", "megatron-allgather"} <= set(records)
    for name, record in records.items():
        assert record["kind"] == ("peer" if record["dispatcher"] in dispatch_cases.PEERS else "moecomm")
        assert (record["transport"] is None) == (record["dispatcher"] not in dispatch_cases.TRANSPORTED)
        if name == "shm-copy":
            assert record["relative_error_vs_dense"] is None
        else:  # bf16 rows; Megatron rounds w * row to bf16 before its sum
            assert 0 <= record["relative_error_vs_dense"] < 1e-2, name
        assert len(record["minor_faults_samples"]) == TINY.repeats
        assert all(isinstance(f, int) and f >= 0 for f in record["minor_faults_samples"])
        assert record["faults_per_moved_page"] == pytest.approx(record["minor_faults_per_step"] / record["moved_pages"])
        assert record["effective_gib_per_s"] == pytest.approx(
            record["bytes_must_cross_per_step"] / record["median_s"] / 2**30
        )
        for key, value in record["ratios"].items():
            peer = key.removeprefix("speedup_vs_").removeprefix("bandwidth_vs_")
            if key.startswith("speedup_vs_"):
                assert value == pytest.approx(records[peer]["median_s"] / record["median_s"])
            else:
                assert value == pytest.approx(record["effective_gib_per_s"] / records[peer]["effective_gib_per_s"])
        assert f"| {name} |" in tiny_run["table"]
    assert "bandwidth_vs_shm-copy" in records["alltoallv/torch"]["ratios"]
    assert "speedup_vs_torch-alltoallv" in records["alltoallv/torch"]["ratios"]
    assert not records["shm-copy"]["ratios"]


def test_tiny_run_traffic_and_pages_match_the_routing(tiny_run: dict) -> None:
    routings = [
        make_routing(TINY.num_tokens, TINY.num_experts, TINY.top_k, seed=rank_seed(TINY, r), popularity_seed=TINY.seed)
        for r in range(TINY.num_ranks)
    ]
    row_bytes = TINY.hidden * 2
    pair_out, token_out, received_pairs, received_tokens = [0, 0], [0, 0], [0, 0], [0, 0]
    for source, routing in enumerate(routings):
        for row in routing.topk_ids.tolist():
            ranks = [expert // (TINY.num_experts // TINY.num_ranks) for expert in row]
            for destination in ranks:
                received_pairs[destination] += 1
                if destination != source:
                    pair_out[source] += 1
            for destination in set(ranks) - {source}:
                token_out[source] += 1
                received_tokens[destination] += 1
    token_bytes = [row_bytes * (token_out[r] + received_tokens[r]) for r in range(2)]
    total_tokens = TINY.num_ranks * TINY.num_tokens
    for record in tiny_run["records"]:
        assert record["received_rows_per_rank"] == received_pairs
        assert record["crossing_bytes_per_rank_token"] == token_bytes
        assert record["bytes_must_cross_per_step"] == max(token_bytes)
        assert record["crossing_rows_per_token_pair"] == pytest.approx(sum(pair_out) / total_tokens)
        assert record["crossing_rows_per_token_token"] == pytest.approx(sum(token_out) / total_tokens)
        assert record["crossing_bytes_per_token_token"] == pytest.approx(row_bytes * sum(token_out) / total_tokens)
        moved = [2 * (TINY.num_tokens * TINY.top_k + n) * row_bytes for n in received_pairs]
        assert record["moved_pages"] == max(-(-m // PAGE_BYTES) for m in moved)
    assert "per (token, destination rank)" in tiny_run["table"]
