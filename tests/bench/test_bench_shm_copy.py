"""The plain shared-memory copy peer: every byte lands where its receiver reads it; no file outlives it."""

from __future__ import annotations

import os

import pytest
import torch

from moecomm.bench.shm_copy import SharedMemoryCopy
from moecomm.testing.launch import run_local

ROWS = torch.tensor([[3, 2, 0], [5, 1, 4], [1, 0, 2]])  # source x destination, diagonal stays home
HIDDEN = 5


def rows_of(source: int, destination: int, phase: str) -> torch.Tensor:
    """Deterministic rows ``source`` writes for ``destination`` in ``phase`` (any rank can rebuild them)."""
    count = int(ROWS[source, destination] if phase == "dispatch" else ROWS[destination, source])
    seed = 1000 * source + 10 * destination + (phase == "combine")
    return torch.randn((count, HIDDEN), generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)


def copy_rank(rank: int, world_size: int) -> str:
    import torch.distributed as dist

    rows = ROWS[:world_size, :world_size]
    others = [r for r in range(world_size) if r != rank]
    send = torch.cat([rows_of(rank, d, "dispatch") for d in others])
    returned = torch.cat([rows_of(rank, s, "combine") for s in others])
    with pytest.raises(ValueError, match="send_rows"):
        SharedMemoryCopy(rows, send[1:], returned)  # checked before any collective
    copier = SharedMemoryCopy(rows, send, returned)
    assert copier.step_bytes == (send.numel() + returned.numel()) * 2
    assert copier.path.startswith("/dev/shm/moecomm-bench-") and not os.path.exists(copier.path)
    for _ in range(2):  # the mapping is reused across steps
        copier.step()
    dist.barrier()
    for source in others:
        got = copier.received(source, "dispatch").clone().view(torch.bfloat16).view(-1, HIDDEN)
        assert torch.equal(got, rows_of(source, rank, "dispatch"))
        got = copier.received(source, "combine").clone().view(torch.bfloat16).view(-1, HIDDEN)
        assert torch.equal(got, rows_of(source, rank, "combine"))
    copier.close()
    return copier.path


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world_size", [2, 3])
def test_shm_copy_delivers_every_row_and_unlinks_its_files(world_size: int) -> None:
    before = {name for name in os.listdir("/dev/shm") if name.startswith("moecomm-bench-")}
    paths = run_local(copy_rank, world_size, timeout_s=100)
    assert len(set(paths)) == world_size  # one file per rank, unlinked once every rank had mapped it
    after = {name for name in os.listdir("/dev/shm") if name.startswith("moecomm-bench-")}
    assert after <= before


def test_shm_copy_rejects_bad_shapes_naming_them() -> None:
    import torch.distributed as dist

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="rows"):
            SharedMemoryCopy(torch.zeros(2, 2, dtype=torch.int64), torch.zeros(0, 4), torch.zeros(0, 4))
        with pytest.raises(ValueError, match="returned_rows"):
            SharedMemoryCopy(torch.zeros(1, 1, dtype=torch.int64), torch.zeros(0, 4), torch.zeros(0, 3))
        with pytest.raises(ValueError, match="send_rows"):
            SharedMemoryCopy(torch.zeros(1, 1, dtype=torch.int64), torch.zeros(4), torch.zeros(0, 4))
        copier = SharedMemoryCopy(torch.ones(1, 1, dtype=torch.int64), torch.zeros(0, 4), torch.zeros(0, 4))
        copier.step()  # one rank: nothing crosses
        assert copier.step_bytes == 0
        with pytest.raises(ValueError, match="phase"):
            copier.received(0, "both")
        copier.close()
    finally:
        dist.destroy_process_group()
