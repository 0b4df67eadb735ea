"""alltoall: fixed per-(source, destination) capacity, zero-padded buffers, equal splits.

The exchange's sizes depend only on the config (``max_tokens_per_rank``, ``capacity_factor``, K, R),
never on the data, so the row exchange needs no host synchronisation (graph-capturable on GPUs).
Pairs beyond a destination's buffer rows are dropped on the sender by ``drop_policy``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from moecomm import ops
from moecomm.comm.dispatchers.alltoallv_pairs import pair_rows_sent
from moecomm.comm.dispatchers.base import Dispatcher
from moecomm.comm.handle import DispatchHandle
from moecomm.comm.row_codec import QuantizedRows


@dataclass(frozen=True)
class AlltoallHandle(DispatchHandle):
    """DispatchHandle plus the padded exchange's layout.

    Attributes:
        pair_capacity: rows per (source, destination) buffer.
        send_counts: ``[R]`` int64 valid rows this rank sent to each rank.
        recv_counts: ``[R]`` int64 valid rows this rank received from each rank.
    """

    pair_capacity: int
    send_counts: torch.Tensor
    recv_counts: torch.Tensor


class AlltoallDispatcher(Dispatcher):
    """Padded all-to-all with ``ceil(f * max_tokens_per_rank * K / R)`` rows per (source, destination).

    ``capacity_factor=None`` means f = R: every pair fits (never drops) at R times the mean buffer.
    Buffers reused across steps: ``send`` (kept rows), ``padded_send`` / ``padded_recv`` (``[R, C, H]``),
    ``recv`` (unpadded received rows) and ``expert_x``.
    """

    name = "alltoall"

    def pair_capacity(self, top_k: int) -> int:
        """Rows per (source, destination) buffer for K = ``top_k``."""
        factor = self.config.capacity_factor
        factor = float(self.world_size) if factor is None else factor
        return ops.capacity_from_factor(self.config.max_tokens_per_rank, top_k, self.world_size, factor)

    def check_inputs(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The common checks plus ``T <= max_tokens_per_rank``."""
        x, ids, weights = super().check_inputs(x, topk_ids, topk_weights)
        if x.shape[0] > self.config.max_tokens_per_rank:
            raise ValueError(
                f"x: {x.shape[0]} tokens exceed max_tokens_per_rank={self.config.max_tokens_per_rank} "
                "of the alltoall dispatcher (raise it in MoECommConfig)"
            )
        return x, ids, weights

    def _padded(self, name: str, capacity: int, like: torch.Tensor) -> torch.Tensor:
        return self.workspace.buffer(name, (self.world_size, capacity, like.shape[1]), like.dtype, like.device)

    def _exchange(
        self,
        phase: str,
        rows: torch.Tensor,
        counts: torch.Tensor,
        capacity: int,
        out_rows: str,
        out_counts: torch.Tensor,
    ) -> torch.Tensor:
        """Pads ``rows`` into ``[R, C, H]`` by ``counts``, exchanges equal parts, unpads by ``out_counts``."""
        backend = self.backend_for(rows)
        padded = backend.pack_padded(rows, counts, capacity, out=self._padded("padded_send", capacity, rows))
        received = self.transport.all_to_all(
            phase,
            "padded row exchange",
            padded,
            self.world_size,
            out=None if self.world_size == 1 else self._padded("padded_recv", capacity, rows),
        )
        return backend.unpack_padded(received, out_counts, out=self.buffer(out_rows, int(out_counts.sum()), rows))

    def dispatch(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, *, dequantize: bool = True
    ) -> tuple[torch.Tensor | QuantizedRows, AlltoallHandle]:
        """See :meth:`Dispatcher.dispatch`: ``x [T, H]``, ``topk_ids [T, K]``, ``topk_weights [T, K]``."""
        x, ids, weights = self.check_inputs(x, topk_ids, topk_weights)
        dequantize = self.check_dequantize(dequantize)
        backend = self.backend_for(x)
        capacity = self.pair_capacity(ids.shape[1])
        plan = self.plan_step(x, ids, weights)
        send_counts = plan.layout.tokens_per_rank
        recv_counts = self.received_from_rank(plan).sum(dim=1)
        rows = self.encode_rows(backend, x, plan.layout)
        received = self._exchange("dispatch", rows, send_counts, capacity, "recv", recv_counts)
        # The padded exchange puts all C rows of every other rank's buffer on the wire, padding included.
        row_bytes = self.crossing_row_bytes(x)
        rows_sent = pair_rows_sent(send_counts.tolist(), self.rank, row_bytes)["rows_sent"]
        stats = dataclasses.replace(
            plan.stats, rows_sent=rows_sent, bytes_sent=(self.world_size - 1) * capacity * row_bytes
        )
        handle = AlltoallHandle(
            **{**self.handle_fields(x.shape[0], plan), "stats": stats},
            pair_capacity=capacity,
            send_counts=send_counts,
            recv_counts=recv_counts,
        )
        return self.expert_rows(backend, self.to_expert_major(backend, received, handle), None, x, dequantize), handle

    def combine(self, expert_y: torch.Tensor, handle: AlltoallHandle) -> torch.Tensor:
        """See :meth:`Dispatcher.combine`: ``expert_y [N_recv, H]`` -> ``[T, H]``."""
        expert_y = self.check_combine(expert_y, handle, AlltoallHandle)
        backend = self.backend_for(expert_y)
        source_major = self.to_source_major(backend, expert_y, handle)
        returned = self._exchange(
            "combine", source_major, handle.recv_counts, handle.pair_capacity, "send", handle.send_counts
        )
        return backend.unpermute(returned, handle.layout, handle.topk_weights)
