"""The layer benchmark (issue 4): well-formed records from a tiny run, and EP=2 EPMoE == transformers block."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from moecomm.bench.layer import (
    SINGLE_EPMOE,
    LayerBenchConfig,
    ep_case,
    hf_case,
    hf_forward,
    make_global_tokens,
    make_qwen3_block,
    run_layer_bench,
)

TINY = LayerBenchConfig(
    num_tokens=16,
    hidden=64,
    intermediate=32,
    num_experts=8,
    top_k=2,
    drop_ratio=0.25,
    repeats=3,
    warmup=0,
    timeout_s=120.0,
)
SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "layer_forward.py"


@pytest.mark.timeout(180)
def test_tiny_run_gives_well_formed_records_and_sane_checks() -> None:
    result = run_layer_bench(TINY, progress=False)
    records = {record["name"]: record for record in result["records"]}
    dropless, dropping = ep_case(TINY, dropping=False), ep_case(TINY, dropping=True)
    hf_names = [hf_case(impl, batch) for impl in TINY.hf_impls for batch in ("global", "per-rank")]
    assert set(records) == {dropless, dropping, SINGLE_EPMOE, *hf_names}
    for name, record in records.items():
        assert record["section"] == "layer"
        assert record["config"]["num_experts"] == TINY.num_experts and record["config"]["hf_impls"] == list(
            TINY.hf_impls
        )
        assert len(record["samples_s"]) == TINY.repeats and all(s > 0 for s in record["samples_s"])
        assert record["p10_s"] <= record["median_s"] <= record["p90_s"]
        assert min(record["samples_s"]) <= record["p10_s"] and record["p90_s"] <= max(record["samples_s"])
        expected_tokens = (
            TINY.num_tokens if name.startswith("epmoe/ep") or name.endswith("per-rank") else 2 * TINY.num_tokens
        )
        assert record["tokens_per_process"] == expected_tokens
        assert math.isfinite(record["max_abs_diff_vs_hf_eager_global"])
    # speedups: peer median / own median, for every transformers peer of the case's batches
    for name in (dropless, dropping):
        assert set(records[name]["ratios"]) >= {f"speedup_vs_{peer}" for peer in hf_names}
    assert set(records[SINGLE_EPMOE]["ratios"]) == {f"speedup_vs_{hf_case(i, 'global')}" for i in TINY.hf_impls}
    for record in records.values():
        for key, value in record["ratios"].items():
            peer = records[key.removeprefix("speedup_vs_")]
            assert value == pytest.approx(peer["median_s"] / record["median_s"])
    assert records[dropping]["ratios"][f"speedup_vs_{dropless}"] > 0
    # the sanity column: dropless EP, one-process EPMoE and the other HF paths match the eager block;
    # dropping changes the output, and the drop statistics say by how many pairs
    for name in (dropless, SINGLE_EPMOE, *hf_names):
        assert records[name]["max_abs_diff_vs_hf_eager_global"] < 1e-5, name
    total_pairs = TINY.num_ranks * TINY.num_tokens * TINY.top_k
    assert records[dropless]["dropped_share"] == 0.0
    assert sum(records[dropless]["received_per_rank"]) == total_pairs
    assert 0 < records[dropping]["dropped_share"] <= TINY.drop_ratio
    assert sum(records[dropping]["received_per_rank"]) == round(total_pairs * (1 - records[dropping]["dropped_share"]))
    assert records[dropping]["max_abs_diff_vs_hf_eager_global"] > 1e-3
    assert records[hf_case("eager", "global")]["max_abs_output"] > 1e-3
    for name in records:
        assert f"| {name} |" in result["table"]
    assert "max abs diff" in result["table"]


def ep_forward(rank: int, world_size: int, config: LayerBenchConfig) -> torch.Tensor:
    """EP rank: the benchmark's block adopted by EPMoE over the default group, on this rank's tokens."""
    import torch.distributed as dist

    from moecomm.layer.ep_moe import EPMoE

    layer = EPMoE.from_module(make_qwen3_block(config), dist.group.WORLD, {"dispatcher": "alltoallv"})
    tokens = make_global_tokens(config)[rank * config.num_tokens : (rank + 1) * config.num_tokens]
    with torch.no_grad():
        return layer(tokens)


@pytest.mark.timeout(120)
def test_ep2_layer_equals_transformers_block_on_the_global_batch() -> None:
    from moecomm.testing.launch import run_local

    config = LayerBenchConfig(num_tokens=24, hidden=32, intermediate=16, num_experts=8, top_k=3, seed=5)
    outputs = run_local(ep_forward, 2, config, timeout_s=90.0)
    with torch.no_grad():
        expected = hf_forward(make_qwen3_block(config), make_global_tokens(config), "eager")
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(torch.cat(outputs), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "argument"),
    [
        ({"num_ranks": 1}, "num_ranks"),
        ({"num_experts": 7}, "num_experts"),
        ({"top_k": 33}, "top_k"),
        ({"num_tokens": 0}, "num_tokens"),
        ({"dtype": "int8"}, "dtype"),
        ({"drop_ratio": 0.0}, "drop_ratio"),
        ({"drop_ratio": 1.0}, "drop_ratio"),
        ({"hf_impls": ("eager", "sonic")}, "hf_impls"),
        ({"hf_impls": ()}, "hf_impls"),
        ({"repeats": 0}, "repeats"),
        ({"timeout_s": 0}, "timeout_s"),
    ],
)
def test_config_rejects_bad_values_naming_the_argument(overrides: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        LayerBenchConfig(**overrides)


@pytest.mark.parametrize(
    "argv",
    [["--drop-ratio", "0"], ["--tokens", "-3"], ["--hf-impls", "eager,nope"], ["--experts", "7"], ["--dtype", "int8"]],
)
def test_script_rejects_bad_flags_with_exit_code_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("layer_forward_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip()
