"""Collective cases in dtypes MindSpore's CPU AllGather lacks, for the MindSpore transport's tests (torch only)."""

from __future__ import annotations

from typing import Any

import torch


def byte_cases(world_size: int, seed: int) -> list[dict[str, Any]]:
    """all_gather / all_to_all cases in dtypes MindSpore's CPU AllGather lacks (bool, int8, uint8), with
    rows whose byte width is not a multiple of 4 (``shm_workers.collective_inputs`` has the others)."""
    gen = torch.Generator().manual_seed(seed)
    cases: list[dict[str, Any]] = []
    for dtype in (torch.bool, torch.int8, torch.uint8):

        def values(shape: tuple[int, ...], dtype: torch.dtype = dtype) -> torch.Tensor:
            return torch.randint(0, 2 if dtype == torch.bool else 100, shape, generator=gen).to(dtype)

        cases.append({"op": "all_gather", "dtype": dtype, "inputs": [values((3, 5)) for _ in range(world_size)]})
        splits = torch.randint(0, 3, (world_size, world_size), generator=gen)
        inputs = [values((int(splits[s].sum()), 7)) for s in range(world_size)]
        cases.append({"op": "all_to_all", "dtype": dtype, "inputs": inputs, "splits": splits.tolist(), "out": False})
    return cases
