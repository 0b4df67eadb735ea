"""Workspace: a dispatcher's buffers that live across steps (no fresh pages in the steady state).

Each named buffer is a byte arena grown geometrically when a step needs more, and reused otherwise, so
after warm-up a step touches no fresh memory (a first touch of a page costs more than the copy into it
on many hosts). ``fresh=True`` allocates anew on every request: the old behaviour, kept as a
benchmark peer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Growth factor when a request exceeds a buffer's capacity.
GROWTH = 1.5

Allocator = Callable[[tuple[int, ...], torch.dtype, torch.device], torch.Tensor]


class Workspace:
    """Named, reusable buffers on one device.

    Args:
        allocate: ``(shape, dtype, device) -> tensor``, the backend's allocator (uninitialised memory).
        fresh: allocate a new buffer on every request (no reuse).
    """

    def __init__(self, allocate: Allocator, *, fresh: bool = False) -> None:
        self.allocate = allocate
        self.fresh = fresh
        self._arenas: dict[str, torch.Tensor] = {}

    def buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A contiguous ``shape`` tensor of ``dtype`` on ``device``, uninitialised, valid until the next
        request of the same ``name`` (which may overwrite or replace it)."""
        numel = 1
        for size in shape:
            numel *= int(size)
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if self.fresh:
            return self.allocate(tuple(shape), dtype, device)
        arena = self._arenas.get(name)
        if arena is None or arena.numel() < nbytes or arena.device != torch.device(device):
            capacity = (
                nbytes
                if arena is None or arena.device != torch.device(device)
                else max(nbytes, int(arena.numel() * GROWTH))
            )
            capacity = max(64, -(-capacity // 64) * 64)  # keep every dtype's view aligned
            arena = self.allocate((capacity,), torch.uint8, device)
            self._arenas[name] = arena
        return arena[:nbytes].view(dtype).view(shape)

    @property
    def nbytes(self) -> int:
        """Bytes held across steps."""
        return sum(a.numel() for a in self._arenas.values())

    def release(self) -> None:
        """Drops every buffer (the next step allocates again)."""
        self._arenas.clear()
