"""Rank functions for the workspace, combine-agreement and broken-transport tests (spawned through run_local)."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from comm_workers import _expect_error, make_batch, run_expert

from moecomm.comm import make_dispatcher
from moecomm.config import MoECommConfig


def _group(world_size: int) -> Any:
    return dist.group.WORLD if world_size > 1 else None


def reuse_steps(rank: int, world_size: int, case: dict[str, Any], fresh: bool) -> dict[str, Any]:
    """Runs 4 steps; returns outputs, the workspace's arena pointers per step and whether step 1's expert_x
    still held its rows after step 2's dispatch."""
    dispatcher = make_dispatcher(
        MoECommConfig.from_dict(case["config"]), case["experts"], _group(world_size), fresh_buffers=fresh
    )
    inputs = make_batch(case, world_size)[rank]
    outputs, pointers = [], []
    first_expert_x = None
    first_copy = None
    for step in range(4):
        expert_x, handle = dispatcher.dispatch(inputs["x"], inputs["topk_ids"], inputs["topk_weights"])
        if step == 0:
            first_expert_x, first_copy = expert_x, expert_x.clone()
        expert_y = run_expert(expert_x, handle.tokens_per_local_expert, dispatcher.local_experts.start)
        outputs.append(dispatcher.combine(expert_y, handle))
        pointers.append(sorted(a.data_ptr() for a in dispatcher.workspace._arenas.values()))
    return {
        "outputs": outputs,
        "pointers": pointers,
        "workspace_bytes": dispatcher.workspace.nbytes,
        "first_expert_x_kept": bool(torch.equal(first_expert_x, first_copy)),
    }


def stale_handle(rank: int, world_size: int, case: dict[str, Any]) -> dict[str, str]:
    """Combine with the handle of an older dispatch (on every rank, or on one rank only) must be refused on
    every rank; the dispatcher keeps working afterwards."""
    dispatcher = make_dispatcher(MoECommConfig.from_dict(case["config"]), case["experts"], _group(world_size))
    inputs = make_batch(case, world_size)[rank]
    args = (inputs["x"], inputs["topk_ids"], inputs["topk_weights"])
    old_x, old_handle = dispatcher.dispatch(*args)
    new_x, new_handle = dispatcher.dispatch(*args)
    errors = {"all_stale": _expect_error(lambda: dispatcher.combine(old_x, old_handle))}
    one_stale = old_handle if rank == world_size - 1 else new_handle
    one_rows = old_x if rank == world_size - 1 else new_x
    errors["one_stale"] = _expect_error(lambda: dispatcher.combine(one_rows, one_stale))
    x, handle = dispatcher.dispatch(*args)
    errors["after"] = _expect_error(lambda: dispatcher.combine(x, handle))
    return errors


def disagreeing_outputs(rank: int, world_size: int, case: dict[str, Any]) -> dict[str, str]:
    """The last rank's experts return another dtype / width / row count; every rank must refuse the combine."""
    dispatcher = make_dispatcher(MoECommConfig.from_dict(case["config"]), case["experts"], _group(world_size))
    inputs = make_batch(case, world_size)[rank]
    args = (inputs["x"], inputs["topk_ids"], inputs["topk_weights"])
    odd = rank == world_size - 1
    errors = {}
    for name, change in (
        ("dtype", lambda y: y.to(torch.float16)),
        ("width", lambda y: torch.cat([y, y[:, :1]], dim=1)),
        ("rows", lambda y: torch.cat([y, y[:1]], dim=0) if y.shape[0] else torch.zeros(1, y.shape[1], dtype=y.dtype)),
    ):
        expert_x, handle = dispatcher.dispatch(*args)
        expert_y = expert_x.clone()
        errors[name] = _expect_error(lambda: dispatcher.combine(change(expert_y) if odd else expert_y, handle))
    expert_x, handle = dispatcher.dispatch(*args)
    errors["after"] = _expect_error(lambda: dispatcher.combine(expert_x, handle))
    return errors


def late_setup(rank: int, world_size: int, case: dict[str, Any], late_s: float, timeout_s: float) -> dict[str, Any]:
    """The last rank joins ``make_dispatcher`` ``late_s`` seconds late; the others wait at most ~timeout_s."""
    if rank == world_size - 1:
        time.sleep(late_s)
        return {"error": "late rank", "seconds": 0.0}
    start = time.monotonic()
    config = MoECommConfig.from_dict({**case["config"], "timeout_s": timeout_s})
    error = _expect_error(lambda: make_dispatcher(config, case["experts"], _group(world_size)))
    return {"error": error, "seconds": time.monotonic() - start}


def broken_after_timeout(rank: int, world_size: int, case: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """The last rank stops answering after setup; the others' step times out, then every reuse is refused."""
    config = MoECommConfig.from_dict({**case["config"], "timeout_s": timeout_s})
    dispatcher = make_dispatcher(config, case["experts"], _group(world_size))
    inputs = make_batch(case, world_size)[rank]
    args = (inputs["x"], inputs["topk_ids"], inputs["topk_weights"])
    if rank == world_size - 1:
        time.sleep(3 * timeout_s + 2)
        return {"first": "late rank", "again": "late rank", "seconds": 0.0}
    start = time.monotonic()
    first = _expect_error(lambda: dispatcher.dispatch(*args))
    seconds = time.monotonic() - start
    start = time.monotonic()
    again = _expect_error(lambda: dispatcher.dispatch(*args))
    return {"first": first, "again": again, "seconds": seconds, "again_seconds": time.monotonic() - start}


def transport_choice(rank: int, world_size: int, transport: str, fake_other_host: bool) -> dict[str, str]:
    """Which transport ``transport`` ends up as (and why); ``fake_other_host``: the last rank claims another host."""
    import logging

    from moecomm.comm.transports import shm

    if fake_other_host and rank == world_size - 1:
        shm.host_identity = lambda: b"another host".ljust(32, b"\0")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("moecomm").addHandler(handler)
    logging.getLogger("moecomm").setLevel(logging.INFO)
    config = MoECommConfig(transport=transport)
    dispatcher = make_dispatcher(config, 4, _group(world_size))
    x = torch.randn(6, 8)
    ids = torch.randint(0, 4, (6, 2))
    expert_x, handle = dispatcher.dispatch(x, ids, torch.rand(6, 2))
    y = dispatcher.combine(expert_x, handle)
    dispatcher.close()
    return {
        "name": dispatcher.transport.name,
        "why": dispatcher.transport.chosen_because,
        "log": records,
        "y_shape": list(y.shape),
    }


def raise_after_timeout(rank: int, world_size: int, timeout_s: float) -> str:
    """Rank 0's step times out (rank 1 never arrives) and raises; rank 1 sleeps far past the run."""
    config = MoECommConfig(transport="torch", timeout_s=timeout_s)
    dispatcher = make_dispatcher(config, 4, _group(world_size))
    if rank == 1:
        time.sleep(120)
        return "late rank"
    dispatcher.dispatch(torch.randn(6, 8), torch.randint(0, 4, (6, 2)), torch.rand(6, 2))
    return "no error"
