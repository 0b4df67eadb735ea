"""Quantized dispatch (``dispatch_quant``) at 1, 2 and 4 ranks, every dispatcher, both transports: the
dispatch equals the unquantized dispatch of ``dequantize(quantize(x))`` exactly (expert rows and combined
output), ``dequantize=False`` hands over the codes and scales of those rows, and ``bytes_sent`` counts the
quantized size."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from quant_workers import non_finite_row, quantized_vs_reference

from moecomm import ops
from moecomm.config import MoECommConfig
from moecomm.ops import reference
from moecomm.testing.launch import run_local

DISPATCHERS = ("alltoallv", "alltoallv-pairs", "alltoall", "allgather")
HIDDEN = 200  # fp8: blocks of 128 and 72 columns; int8 wire rows 204 bytes


def _cases(world_size: int) -> list[dict[str, Any]]:
    tokens = {1: [19], 2: [17, 0], 4: [9, 0, 14, 6]}[world_size]
    cases = []
    for index, (dispatcher, transport, kind) in enumerate(
        (d, t, k) for d in DISPATCHERS for t in ("torch", "shm") for k in ("int8", "fp8")
    ):
        config: dict[str, Any] = {"dispatcher": dispatcher, "transport": transport}
        if dispatcher == "alltoall":
            config["max_tokens_per_rank"] = max(tokens) + 2
        if index % 3 == 1:
            config["token_drop_ratio"] = 0.2
        cases.append(
            {
                "config": config,
                "quant": kind,
                "tokens": tokens,
                "seed": 100 + index,
                "hidden": HIDDEN,
                "experts": 8,
                "top_k": 3,
                "dtype": "bfloat16" if index % 2 else "float32",
                "routing": "skew" if index % 4 == 3 else "random",
            }
        )
    return cases


_RESULTS: dict[int, list[list[dict[str, Any]]]] = {}


def _results(world_size: int) -> list[list[dict[str, Any]]]:
    if world_size not in _RESULTS:
        per_rank = run_local(
            quantized_vs_reference, world_size, _cases(world_size), timeout_s=300.0, group_timeout_s=60.0
        )
        _RESULTS[world_size] = [[per_rank[r][i] for r in range(world_size)] for i in range(len(per_rank[0]))]
    return _RESULTS[world_size]


def _params() -> list[Any]:
    return [
        pytest.param(w, i, id=f"R{w}-{c['config']['dispatcher']}-{c['config']['transport']}-{c['quant']}-{i}")
        for w in (1, 2, 4)
        for i, c in enumerate(_cases(w))
    ]


@pytest.mark.parametrize("world_size,index", _params())
def test_quantized_dispatch_equals_unquantized_dispatch_of_rounded_rows(world_size: int, index: int) -> None:
    case = _cases(world_size)[index]
    kind = case["quant"]
    fmt = ops.wire_format(HIDDEN, kind)
    for rank, result in enumerate(_results(world_size)[index]):
        quantized, plain = result["quantized"], result["plain"]
        assert torch.equal(quantized["expert_x"], plain["expert_x"]), f"rank {rank}: expert rows differ"
        assert torch.equal(quantized["y"], plain["y"]), f"rank {rank}: combined outputs differ"
        # dequantize=False: the codes and scales of exactly those rows (re-quantizing a rounded row is exact)
        assert torch.equal(result["kept_dequantized"], plain["expert_x"])
        codes, scales = reference.quantize_rows(plain["expert_x"], kind)
        assert torch.equal(result["kept_codes"].view(torch.uint8), codes.view(torch.uint8))
        assert torch.equal(result["kept_scales"], scales)
        # the same rows crossed; each is W bytes instead of H * element size
        q_stats, p_stats = quantized["stats"], plain["stats"]
        assert q_stats["rows_sent"] == p_stats["rows_sent"]
        element = 2 if case["dtype"] == "bfloat16" else 4
        if case["config"]["dispatcher"] == "alltoall":
            capacity_rows = p_stats["bytes_sent"] // (HIDDEN * element)
            assert q_stats["bytes_sent"] == capacity_rows * fmt.row_bytes
        else:
            extra = p_stats["bytes_sent"] - p_stats["rows_sent"] * HIDDEN * element  # routing metadata
            assert q_stats["bytes_sent"] == q_stats["rows_sent"] * fmt.row_bytes + extra


def test_dispatch_quant_is_validated() -> None:
    assert MoECommConfig(dispatch_quant="int8").dispatch_quant == "int8"
    assert MoECommConfig.from_dict({"dispatch_quant": None}).dispatch_quant is None
    with pytest.raises(ValueError, match="dispatch_quant"):
        MoECommConfig(dispatch_quant="int4")
    with pytest.raises(ValueError, match="dispatch_quant"):
        MoECommConfig(dispatch_quant=8)  # type: ignore[arg-type]


@pytest.mark.parametrize("dispatcher", ["alltoallv", "alltoallv-pairs"])
@pytest.mark.parametrize("transport", ["torch", "shm"])
def test_a_row_with_nan_is_named_and_peers_fail_within_the_timeout(dispatcher: str, transport: str) -> None:
    timeout_s = 3.0
    results = run_local(non_finite_row, 2, dispatcher, transport, timeout_s, timeout_s=120.0)
    assert "x: row 2 contains inf or NaN" in results[0]["error"], results[0]
    assert "rank 0" in results[0]["error"] and "row quantization" in results[0]["error"]
    # the peer fails in a named dispatch step (waiting for rank 0, or told by gloo that rank 0 left)
    assert results[1]["error"].startswith("CommStepError: rank 1: ") and "dispatch step" in results[1]["error"]
    assert results[1]["elapsed"] < timeout_s + 5.0, results[1]


def test_dequantize_flag_is_checked() -> None:
    from moecomm.comm import make_dispatcher

    x, ids, weights = torch.randn(3, 4), torch.tensor([[0], [1], [2]]), torch.ones(3, 1)
    with pytest.raises(ValueError, match="dequantize: False needs MoECommConfig\\(dispatch_quant="):
        make_dispatcher(MoECommConfig(), 4).dispatch(x, ids, weights, dequantize=False)
    with pytest.raises(TypeError, match="dequantize: expected True or False"):
        make_dispatcher(MoECommConfig(dispatch_quant="int8"), 4).dispatch(x, ids, weights, dequantize="no")
