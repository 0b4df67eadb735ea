"""Helpers of `moecomm bench kernels`: the memcpy peer, Megatron's routing inputs, peer ratios."""

from __future__ import annotations

import pytest
import torch

from moecomm.bench.kernels import dense_routing, kernel_ratios, memcpy
from moecomm.bench.timing import Timing


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_bench_cli_kernels_memcpy_copies_exactly(dtype: torch.dtype) -> None:
    src = torch.randn(33, 17).to(dtype)
    dst = torch.zeros_like(src)
    assert memcpy(dst, src) is dst and torch.equal(dst, src)
    with pytest.raises(ValueError, match="dst"):
        memcpy(torch.empty(33, 16, dtype=dtype), src)
    with pytest.raises(ValueError, match="dst"):
        memcpy(torch.empty(17, 33, dtype=dtype).t(), src)


def test_bench_cli_kernels_dense_routing_matches_a_loop() -> None:
    ids = torch.tensor([[2, 0], [1, 3], [3, 2]])
    weights = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.9, 0.1]])
    routing_map, probs = dense_routing(ids, weights, 4)
    for t in range(3):
        for e in range(4):
            hits = [k for k in range(2) if int(ids[t, k]) == e]
            assert bool(routing_map[t, e]) == bool(hits)
            assert float(probs[t, e]) == (float(weights[t, hits[0]]) if hits else 0.0)


def test_bench_cli_kernels_ratios_are_median_quotients() -> None:
    def timing(median: float) -> Timing:
        return Timing((median * 0.9, median, median * 1.1))

    timings = {
        "route_layout/native": timing(1.0),
        "memcpy/prealloc": timing(10.0),
        "memcpy/alloc": timing(30.0),
        "permute/native": timing(20.0),
        "permute/reference": timing(80.0),
        "permute/megatron": timing(42.0),
        "unpermute/native": timing(5.0),
        "unpermute/megatron": timing(100.0),
    }
    ratios = kernel_ratios(timings)
    assert ratios["permute/native"] == pytest.approx(
        {
            "speedup_vs_reference": 4.0,
            "speedup_vs_megatron": 2.1,
            "bandwidth_vs_memcpy": 0.5,
            "bandwidth_vs_memcpy_alloc": 1.5,
            "speedup_vs_megatron_incl_layout": 2.0,
        }
    )
    assert ratios["unpermute/native"] == pytest.approx({"speedup_vs_megatron": 20.0})
    assert "permute/reference" not in ratios


def test_bench_cli_kernels_quant_bandwidth_is_a_gb_per_s_quotient() -> None:
    def timing(median: float) -> Timing:
        return Timing((median * 0.9, median, median * 1.1))

    timings = {
        "memcpy_x/prealloc": timing(2.0),
        "quantize_int8/native": timing(3.0),
        "quantize_int8/reference": timing(60.0),
        "dequantize_fp8/native-out": timing(1.5),
    }
    moved = {"memcpy_x": 200, "quantize_int8": 150, "dequantize_fp8": 150}
    ratios = kernel_ratios(timings, moved)
    # memcpy: 100 B/s; quantize: 50 B/s; dequantize: 100 B/s
    assert ratios["quantize_int8/native"] == pytest.approx({"speedup_vs_reference": 20.0, "bandwidth_vs_memcpy": 0.5})
    assert ratios["dequantize_fp8/native-out"] == pytest.approx({"bandwidth_vs_memcpy": 1.0})
    assert "bandwidth_vs_memcpy" not in kernel_ratios(timings)["quantize_int8/native"]
