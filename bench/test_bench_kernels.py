"""pytest-benchmark: moecomm's kernels vs the pure-torch reference, Megatron-Core and memcpy.

``pytest bench/ --benchmark-only`` (shapes via MOECOMM_BENCH_TOKENS / _HIDDEN / _EXPERTS / _TOPK / _DTYPE;
defaults: issue 2's T=4096 H=4096 E=64 K=8 bf16). The cases are the same callables ``moecomm bench
kernels`` times interleaved; here pytest-benchmark times each case on its own.
"""

from __future__ import annotations

import os

import pytest

from moecomm.bench.kernels import KernelBenchConfig, build_cases


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


CONFIG = KernelBenchConfig(
    num_tokens=env_int("MOECOMM_BENCH_TOKENS", 4096),
    hidden=env_int("MOECOMM_BENCH_HIDDEN", 4096),
    num_experts=env_int("MOECOMM_BENCH_EXPERTS", 64),
    top_k=env_int("MOECOMM_BENCH_TOPK", 8),
    dtype=os.environ.get("MOECOMM_BENCH_DTYPE", "bf16"),
)
CASE_NAMES = [
    "route_layout/native",
    "route_layout/reference",
    "select_kept/native",
    "select_kept/reference",
    "select_kept/megatron",
    "memcpy/prealloc",
    "memcpy/alloc",
    "permute/native",
    "permute/native-out",
    "permute/reference",
    "permute/megatron",
    "unpermute/native",
    "unpermute/native-out",
    "unpermute/reference",
    "unpermute/megatron",
]


@pytest.fixture(scope="module")
def kernel_cases() -> tuple[dict, dict]:
    return build_cases(CONFIG)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bench_kernel(benchmark: pytest.FixtureRequest, kernel_cases: tuple[dict, dict], case: str) -> None:
    cases, facts = kernel_cases
    if case not in cases:
        pytest.skip(f"{case}: peer not available (megatron-core not installed)")
    benchmark.group = case.split("/")[0] if not case.startswith("memcpy") else "permute"
    benchmark.extra_info["bytes_moved"] = facts["bytes"][case.split("/")[0]]
    benchmark.pedantic(cases[case], rounds=5, warmup_rounds=1)
