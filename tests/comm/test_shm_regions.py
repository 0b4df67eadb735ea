"""The raw region API (push model): writes into peers' regions are visible after sync, regions grow
keeping their contents, peers see new generations after sync, and nothing is left in /dev/shm."""

from __future__ import annotations

import pytest
from shm_segments import assert_no_new_segments, moecomm_segments
from shm_workers import push_through_regions

from moecomm.comm.launch import run_local


@pytest.mark.parametrize("world_size", [2, 3])
def test_shm_regions_push_sync_grow(world_size: int) -> None:
    before = moecomm_segments()
    results = run_local(push_through_regions, world_size, timeout_s=180.0)
    for rank, outcome in enumerate(results):
        assert outcome["first"] == [True] * world_size, (rank, outcome)
        assert outcome["kept"], rank
        # every peer's region as this rank sees it after the sync is at least what that peer asked for
        for peer, size in enumerate(outcome["sizes"]):
            assert size >= results[peer]["big"] and size % 4096 == 0, (rank, peer, outcome["sizes"])
        assert outcome["second"] == [True] * world_size, (rank, outcome)
        assert outcome["stale"] == rank + 1 or outcome["stale"] == 1  # old view still readable
    assert_no_new_segments(before)
