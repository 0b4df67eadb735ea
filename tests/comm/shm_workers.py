"""Rank functions for the shm transport tests (spawned through run_local) and their shared inputs.

Every rank derives every rank's inputs from one seed (:func:`collective_inputs`), so the parent computes
the expected results in one process, independently of any transport.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import torch
import torch.distributed as dist

from moecomm.comm.transports.base import CommStepError
from moecomm.registry import TRANSPORTS, load

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64]


def _values(gen: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.int64:
        return torch.randint(-1000, 1000, shape, generator=gen)
    return torch.randn(shape, generator=gen).to(dtype)


def collective_inputs(world_size: int, seed: int) -> list[dict[str, Any]]:
    """Cases (same on every rank): ``{"op", "dtype", "inputs": [per-rank tensors], ...}``.

    Covers every dtype, empty tensors, uneven and zero-row splits, equal splits (None) and
    messages larger than a fresh window (so the window grows mid-run)."""
    gen = torch.Generator().manual_seed(seed)
    R = world_size
    cases: list[dict[str, Any]] = []
    for dtype in DTYPES:
        for rows in (0, 5):
            cases.append(
                {"op": "all_gather", "dtype": dtype, "inputs": [_values(gen, (rows, 3), dtype) for _ in range(R)]}
            )
        # uneven splits with zero-row parts: splits[s][d] rows from rank s to rank d
        splits = torch.randint(0, 4, (R, R), generator=gen)
        splits[0, R - 1] = 0
        inputs = [_values(gen, (int(splits[s].sum()), 2, 3), dtype) for s in range(R)]
        for use_out in (False, True):
            cases.append(
                {"op": "all_to_all", "dtype": dtype, "inputs": inputs, "splits": splits.tolist(), "out": use_out}
            )
        cases.append(
            {
                "op": "all_to_all",
                "dtype": dtype,
                "inputs": [_values(gen, (2 * R, 4), dtype) for _ in range(R)],
                "splits": None,
                "out": False,
            }
        )
        for rows_per_rank in (0, 3):
            for use_out in (False, True):
                cases.append(
                    {
                        "op": "reduce_scatter",
                        "dtype": dtype,
                        "out": use_out,
                        "inputs": [_values(gen, (R * rows_per_rank, 5), dtype) for _ in range(R)],
                    }
                )
    # bigger than the initial 64 KiB window: the window grows between collectives
    for rows in (20_000, 70_000):
        cases.append(
            {
                "op": "all_gather",
                "dtype": torch.float32,
                "inputs": [_values(gen, (rows,), torch.float32) for _ in range(R)],
            }
        )
    big = torch.full((R, R), 9000)
    cases.append(
        {
            "op": "all_to_all",
            "dtype": torch.float32,
            "splits": big.tolist(),
            "out": True,
            "inputs": [_values(gen, (int(big[s].sum()), 4), torch.float32) for s in range(R)],
        }
    )
    cases.append({"op": "barrier"})
    return cases


def expected_result(case: dict[str, Any], rank: int, world_size: int) -> torch.Tensor | None:
    """The single-process result of ``case`` on ``rank`` (float32 accumulation for 16-bit sums)."""
    op, inputs = case["op"], case.get("inputs")
    if op == "all_gather":
        return torch.stack(inputs)
    if op == "all_to_all":
        splits = case["splits"]
        if splits is None:
            return torch.cat([x.chunk(world_size)[rank] for x in inputs])
        parts = []
        for s, x in enumerate(inputs):
            start = sum(splits[s][:rank])
            parts.append(x[start : start + splits[s][rank]])
        return torch.cat(parts)
    if op == "reduce_scatter":
        acc_dtype = torch.int64 if case["dtype"] == torch.int64 else torch.float32
        total = torch.stack([x.to(acc_dtype) for x in inputs]).sum(0)
        return total.chunk(world_size)[rank].to(case["dtype"]) if total.shape[0] else total.to(case["dtype"])
    return None


def _run_case(transport: Any, case: dict[str, Any], rank: int, world_size: int) -> torch.Tensor | None:
    op = case["op"]
    if op == "barrier":
        transport.barrier("test", "barrier")
        return None
    x = case["inputs"][rank]
    if op == "all_gather":
        return transport.all_gather("test", "all_gather", x)
    if op == "all_to_all":
        splits = case["splits"]
        input_splits = None if splits is None else splits[rank]
        output_splits = None if splits is None else [splits[s][rank] for s in range(world_size)]
        rows = sum(output_splits) if output_splits is not None else x.shape[0]
        out = torch.full((rows, *x.shape[1:]), 7, dtype=x.dtype) if case["out"] else None
        result = transport.all_to_all("test", "all_to_all", x, rows, output_splits, input_splits, out=out)
        assert out is None or result is out
        return result.clone()
    out = torch.full((x.shape[0] // world_size, *x.shape[1:]), 7, dtype=x.dtype) if case["out"] else None
    result = transport.reduce_scatter("test", "reduce_scatter", x, out=out)
    assert out is None or result is out
    return result


def make_transport(name: str, world_size: int, timeout_s: float) -> Any:
    group = dist.group.WORLD if world_size > 1 or dist.is_initialized() else None
    return load(TRANSPORTS, name)(group, timeout_s, f"{name}-test")


def run_collectives(rank: int, world_size: int, transport_name: str, seed: int) -> list[torch.Tensor | None]:
    """Runs every case of :func:`collective_inputs` through the named transport; results in case order."""
    transport = make_transport(transport_name, world_size, 30.0)
    transport.check_same_settings({"dispatcher": "alltoallv", "ranks": world_size})
    results = [_run_case(transport, case, rank, world_size) for case in collective_inputs(world_size, seed)]
    transport.close()
    return results


def _error_of(action: Any) -> dict[str, Any]:
    start = time.monotonic()
    try:
        action()
    except CommStepError as error:
        return {"error": str(error), "elapsed": time.monotonic() - start}
    return {"error": None, "elapsed": time.monotonic() - start}


def killed_mid_collective(rank: int, world_size: int, victim: int, timeout_s: float) -> dict[str, Any]:
    """The victim finishes one all_gather, then SIGKILLs itself while the others wait in the next one."""
    transport = make_transport("shm", world_size, timeout_s)
    token = torch.arange(4, dtype=torch.float32)
    transport.all_gather("warmup", "first", token)
    if rank == victim:
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
    outcome = _error_of(lambda: transport.all_to_all("dispatch", "tokens", token.repeat(world_size), 4 * world_size))
    outcome["broken"] = transport.is_broken
    transport.close()
    return outcome


def killed_during_growth(rank: int, world_size: int, victim: int, timeout_s: float) -> dict[str, Any]:
    """The victim grows its region (a fresh segment its peers have not mapped yet), then SIGKILLs itself."""
    transport = make_transport("shm", world_size, timeout_s)
    transport.ensure_region("dispatch", 1000)
    if rank == victim:
        transport.sync("dispatch", "sizes")
        transport.ensure_region("dispatch", 10_000_000)
        transport.ensure_region("combine", 5000)
        os.kill(os.getpid(), signal.SIGKILL)
    # A slow survivor may still be mapping the victim's regions at the end of 'sizes' when the victim
    # grows and dies: then that sync names the dead rank, otherwise the next one does.
    outcome = _error_of(lambda: transport.sync("dispatch", "sizes"))
    if outcome["error"] is None:
        time.sleep(0.3)
        outcome = _error_of(lambda: transport.sync("dispatch", "after growth"))
    transport.close()
    return outcome


def killed_before_setup(rank: int, world_size: int, victim: int, timeout_s: float) -> dict[str, Any]:
    """The victim exchanges names, then SIGKILLs itself before creating its segment."""
    if rank == victim:
        # Take part in the name exchange the others expect, then die before the native setup.
        record = torch.zeros(72, dtype=torch.uint8)
        record[:41] = torch.frombuffer(bytearray(b"/moecomm-" + b"ab" * 16), dtype=torch.uint8)
        dist.all_gather_into_tensor(torch.empty(world_size * 72, dtype=torch.uint8), record)
        os.kill(os.getpid(), signal.SIGKILL)
    return _error_of(lambda: make_transport("shm", world_size, timeout_s))


def late_rank(rank: int, world_size: int, late: int, timeout_s: float) -> dict[str, Any]:
    """The late rank sleeps longer than timeout_s before a barrier."""
    transport = make_transport("shm", world_size, timeout_s)
    transport.barrier("setup", "first")
    if rank == late:
        time.sleep(timeout_s + 1.5)
    outcome = _error_of(lambda: transport.barrier("dispatch", "count exchange"))
    transport.close()
    return outcome


def raise_after_collective(rank: int, world_size: int) -> None:
    """Every rank runs a collective with a grown window, then raises without closing the transport."""
    transport = make_transport("shm", world_size, 20.0)
    transport.all_gather("test", "big", torch.zeros(100_000))
    transport.ensure_region("dispatch", 200_000)
    raise RuntimeError(f"deliberate failure on rank {rank}")


def many_small_steps(rank: int, world_size: int, steps: int) -> dict[str, float]:
    """Barriers and small all_to_alls back to back (the count exchange pattern): seconds per kind."""
    transport = make_transport("shm", world_size, 30.0)
    counts = torch.arange(world_size * 8, dtype=torch.int64) + rank
    transport.barrier("warmup", "barrier")
    start = time.monotonic()
    for _ in range(steps):
        transport.barrier("test", "barrier")
    barriers = time.monotonic() - start
    start = time.monotonic()
    for _ in range(steps):
        received = transport.all_to_all("test", "counts", counts, world_size * 8)
    exchanges = time.monotonic() - start
    expected = torch.cat([(torch.arange(world_size * 8) + s).chunk(world_size)[rank] for s in range(world_size)])
    transport.close()
    return {"barriers_s": barriers, "exchanges_s": exchanges, "correct": bool(torch.equal(received, expected))}


def push_through_regions(rank: int, world_size: int) -> dict[str, Any]:
    """Push model: every rank writes a tagged block into every peer's region, syncs, reads its own."""
    transport = make_transport("shm", world_size, 30.0)
    block = 64
    transport.ensure_region("dispatch", block * world_size)
    transport.sync("dispatch", "sizes")
    for peer in range(world_size):
        view = transport.region(peer, "dispatch")
        view[rank * block : (rank + 1) * block] = rank + 1
    transport.sync("dispatch", "written")
    own = transport.region(rank, "dispatch")
    first = [bool((own[s * block : (s + 1) * block] == s + 1).all()) for s in range(world_size)]
    # Grow past the initial generation: contents are kept, peers see the new size after sync.
    big = 600_000 + 4096 * rank
    old_view = own
    transport.ensure_region("dispatch", big)
    kept = bool(torch.equal(transport.region(rank, "dispatch")[: block * world_size], old_view[: block * world_size]))
    transport.sync("dispatch", "grown")
    sizes = [transport.region(peer, "dispatch").numel() for peer in range(world_size)]
    for peer in range(world_size):
        view = transport.region(peer, "dispatch")
        view[view.numel() - (rank + 1) * block : view.numel() - rank * block] = 100 + rank
    transport.sync("dispatch", "written again")
    own = transport.region(rank, "dispatch")
    n = own.numel()
    second = [bool((own[n - (s + 1) * block : n - s * block] == 100 + s).all()) for s in range(world_size)]
    stale_read = int(old_view[0])  # an old view stays mapped (stale, never dangling)
    transport.close()
    return {"first": first, "sizes": sizes, "big": big, "kept": kept, "second": second, "stale": stale_read}
