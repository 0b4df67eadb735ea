"""The shm transport matches the torch transport and a single-process computation, case by case.

Both transports run the same cases (every dtype, empty tensors, uneven and zero-row splits, equal
splits, ``out=``, windows that grow) at 1, 2 and 4 ranks; the parent checks every rank's result against
the dense computation of :func:`shm_workers.expected_result`.
"""

from __future__ import annotations

import pytest
import torch
from shm_segments import assert_no_new_segments, moecomm_segments
from shm_workers import collective_inputs, expected_result, run_collectives

from moecomm.comm.transports.shm import ShmTransport
from moecomm.registry import TRANSPORTS
from moecomm.testing.launch import run_local


def _check(results: list[list[torch.Tensor | None]], world_size: int, seed: int, transport: str) -> None:
    cases = collective_inputs(world_size, seed)
    for rank, rank_results in enumerate(results):
        assert len(rank_results) == len(cases)
        for case, got in zip(cases, rank_results):
            want = expected_result(case, rank, world_size)
            where = f"{transport} rank {rank} {case['op']} {case.get('dtype')} out={case.get('out')}"
            if want is None:
                assert got is None, where
                continue
            assert got.dtype == want.dtype and got.shape == want.shape, f"{where}: {got.dtype}{list(got.shape)}"
            if case["op"] == "reduce_scatter" and want.dtype in (torch.float16, torch.bfloat16):
                # a sum of R values rounded once (ours) or per addition (gloo): within R ulps
                torch.testing.assert_close(
                    got.float(), want.float(), rtol=world_size * 8e-3, atol=world_size * 8e-3, msg=where
                )
            elif case["op"] == "reduce_scatter" and want.dtype == torch.float32:
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=where)
            else:
                assert torch.equal(got, want), where


@pytest.mark.parametrize("world_size", [1, 2, 4])
@pytest.mark.parametrize("transport", ["shm", "torch"])
def test_shm_transport_matches_dense_reference(transport: str, world_size: int) -> None:
    before = moecomm_segments()
    seed = 100 + world_size
    results = run_local(run_collectives, world_size, transport, seed, timeout_s=240.0)
    _check(results, world_size, seed, transport)
    assert_no_new_segments(before)


def test_shm_transport_registered_and_one_process_works() -> None:
    assert TRANSPORTS["shm"] == "moecomm.comm.transports.shm:ShmTransport"
    before = moecomm_segments()
    transport = ShmTransport(None, 5.0, "test")
    x = torch.arange(12, dtype=torch.float32).view(3, 4)
    assert torch.equal(transport.all_gather("p", "s", x), x.unsqueeze(0))
    assert torch.equal(transport.all_to_all("p", "s", x, 3), x)
    assert torch.equal(transport.reduce_scatter("p", "s", x), x)
    transport.barrier("p", "s")
    transport.check_same_settings({"a": 1})
    transport.close()
    assert_no_new_segments(before)


def test_shm_transport_rejects_bad_arguments_by_name() -> None:
    transport = ShmTransport(None, 5.0, "test")
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="input_splits"):
        transport.all_to_all("p", "s", x, 4, [4], [3])
    with pytest.raises(ValueError, match="output_splits"):
        transport.all_to_all("p", "s", x, 4, [5], [4])
    with pytest.raises(ValueError, match="out"):
        transport.all_to_all("p", "s", x, 4, out=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="out"):
        transport.reduce_scatter("p", "s", x, out=torch.zeros(4, 2, dtype=torch.float16))
    with pytest.raises(TypeError, match="tensor"):
        transport.reduce_scatter("p", "s", torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="region"):
        transport.ensure_region("__collective__", 10)
    with pytest.raises(ValueError, match="region"):
        transport.region(0, "never-created")
    with pytest.raises(ValueError, match="nbytes"):
        transport.ensure_region("dispatch", -1)
    assert not transport.is_broken  # argument errors never break the transport
    transport.close()
    with pytest.raises(ValueError, match="closed"):
        transport.barrier("p", "s")


def test_shm_is_available_one_process() -> None:
    ok, reason = ShmTransport.is_available(None)
    assert ok, reason
