"""The plain shared-memory copy peer: the bandwidth ceiling of a shared-memory transport on this host.

Every rank owns one file in ``/dev/shm`` (mode 0600, an unguessable name), mapped by every rank of the
group and reused across steps. One step copies (glibc ``memcpy``) the rows a rank's all-to-all must
send across ranks into its destinations' files (dispatch), then the rows it received back into their
sources' files (combine): the same bytes, with nothing else around them (no layout, no permute, no
synchronisation between the two phases). The files are unlinked as soon as every rank has mapped
them, so they never outlive the group, even if a rank dies.
"""

from __future__ import annotations

import mmap
import os
import secrets

import torch
import torch.distributed as dist

from moecomm.bench.kernels import memcpy
from moecomm.bench.traffic import PAGE_BYTES

SHM_DIR = "/dev/shm"


def _flat_bytes(rows: torch.Tensor) -> torch.Tensor:
    """``rows [N, H]`` (contiguous) as a flat uint8 view."""
    return rows.contiguous().view(torch.uint8).reshape(-1)


class SharedMemoryCopy:
    """Copies one step's crossing rows between the ranks of ``group`` through shared memory.

    Args:
        rows: ``[R, R]`` int64, rows from source rank s (row) to destination d (column) in dispatch;
            identical on every rank. Combine sends ``rows[s, d]`` back from d to s.
        send_rows: ``[sum_{d != r} rows[r, d], H]`` this rank's dispatch rows, grouped by destination
            rank in rank order (any dtype; contiguous).
        returned_rows: ``[sum_{s != r} rows[s, r], H]`` the rows this rank sends back in combine,
            grouped by source rank, same dtype and H.
        group: the process group (every member constructs this together).
    """

    def __init__(
        self,
        rows: torch.Tensor,
        send_rows: torch.Tensor,
        returned_rows: torch.Tensor,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        num_ranks = self.world_size
        if tuple(rows.shape) != (num_ranks, num_ranks):
            raise ValueError(f"rows: expected shape ({num_ranks}, {num_ranks}), got {tuple(rows.shape)}")
        crossing = (rows - torch.diag(torch.diag(rows))).tolist()
        if send_rows.dim() != 2 or returned_rows.dim() != 2:
            raise ValueError("send_rows / returned_rows: expected 2-D [rows, H] tensors")
        if send_rows.dtype != returned_rows.dtype or send_rows.shape[1] != returned_rows.shape[1]:
            raise ValueError("returned_rows: expected send_rows' dtype and H")
        self.row_bytes = send_rows.shape[1] * send_rows.element_size()
        me = self.rank
        if send_rows.shape[0] != sum(crossing[me]) or returned_rows.shape[0] != sum(r[me] for r in crossing):
            raise ValueError(
                f"send_rows / returned_rows: expected {sum(crossing[me])} and "
                f"{sum(r[me] for r in crossing)} rows on rank {me}, got {send_rows.shape[0]} "
                f"and {returned_rows.shape[0]}"
            )
        # File of rank d: [rows from each source s (dispatch)] + [rows d sent to each t, returned (combine)].
        self.dispatch_offset = [[0] * num_ranks for _ in range(num_ranks)]  # [source][destination]
        self.combine_offset = [[0] * num_ranks for _ in range(num_ranks)]  # [returner][owner]
        sizes = []
        for d in range(num_ranks):
            offset = 0
            for s in range(num_ranks):
                self.dispatch_offset[s][d] = offset
                offset += crossing[s][d] * self.row_bytes
            for t in range(num_ranks):
                self.combine_offset[t][d] = offset
                offset += crossing[d][t] * self.row_bytes
            sizes.append(offset)
        self.crossing = crossing
        self.send_bytes = _flat_bytes(send_rows)
        self.returned_bytes = _flat_bytes(returned_rows)
        self.path = ""  # this rank's file (already unlinked once the constructor returns)
        self.maps: list[mmap.mmap] = []
        self.files: list[torch.Tensor] = []
        self.copies: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._map_files(sizes)

    def _map_files(self, sizes: list[int]) -> None:
        self.path = path = os.path.join(SHM_DIR, f"moecomm-bench-{secrets.token_hex(16)}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, max(sizes[self.rank], PAGE_BYTES))
        finally:
            os.close(fd)
        paths: list[str | None] = [None] * self.world_size
        try:
            dist.all_gather_object(paths, path, group=self.group)
            for owner, owner_path in enumerate(paths):
                fd = os.open(owner_path, os.O_RDWR)
                try:
                    self.maps.append(mmap.mmap(fd, max(sizes[owner], PAGE_BYTES)))
                finally:
                    os.close(fd)
                self.files.append(torch.frombuffer(self.maps[-1], dtype=torch.uint8))
            dist.barrier(group=self.group)  # every rank has mapped every file
        finally:
            os.unlink(path)
        self.copies = self._plan_copies()

    def _plan_copies(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(destination view in a peer's file, source view) of every copy of a step, in order."""
        me, row = self.rank, self.row_bytes
        regions = [
            (d, self.dispatch_offset[me][d], self.crossing[me][d] * row, self.send_bytes)
            for d in range(self.world_size)
        ]
        regions += [
            (s, self.combine_offset[me][s], self.crossing[s][me] * row, self.returned_bytes)
            for s in range(self.world_size)
        ]
        copies, read = [], {id(self.send_bytes): 0, id(self.returned_bytes): 0}
        for owner, at, size, source in regions:
            if size:
                start = read[id(source)]
                copies.append((self.files[owner][at : at + size], source[start : start + size]))
                read[id(source)] = start + size
        return copies

    def step(self) -> None:
        """Dispatch: this rank's rows to each destination's file; combine: received rows back to each
        source's file (the bytes of ``step_bytes``)."""
        for destination, source in self.copies:
            memcpy(destination, source)

    @property
    def step_bytes(self) -> int:
        """Bytes this rank copies per step (dispatch + combine)."""
        return int(self.send_bytes.numel() + self.returned_bytes.numel())

    def received(self, source: int, phase: str) -> torch.Tensor:
        """Flat uint8 view of this rank's file: the dispatch rows from ``source``, or (``phase="combine"``)
        the rows ``source`` returned."""
        me, row = self.rank, self.row_bytes
        if phase == "dispatch":
            at, size = self.dispatch_offset[source][me], self.crossing[source][me] * row
        elif phase == "combine":
            at, size = self.combine_offset[source][me], self.crossing[me][source] * row
        else:
            raise ValueError(f"phase: expected 'dispatch' or 'combine', got {phase!r}")
        return self.files[me][at : at + size]

    def close(self) -> None:
        """Unmaps every file (the files themselves were unlinked when mapped)."""
        self.copies.clear()
        self.files.clear()
        for mapping in self.maps:
            mapping.close()
        self.maps.clear()
