"""alltoall: fixed per-(source, destination) capacity, zero-padded buffers, equal splits.

The exchange's sizes depend only on the config (``max_tokens_per_rank``, ``capacity_factor``, K, R),
never on the data, so the row exchange needs no host synchronisation (graph-capturable on GPUs).
Pairs beyond a destination's buffer rows are dropped on the sender by ``drop_policy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moecomm import ops
from moecomm.comm.base import Dispatcher
from moecomm.comm.handle import DispatchHandle


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

    def dispatch(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[torch.Tensor, AlltoallHandle]:
        """See :meth:`Dispatcher.dispatch`: ``x [T, H]``, ``topk_ids [T, K]``, ``topk_weights [T, K]``."""
        x, ids, weights = self.check_inputs(x, topk_ids, topk_weights)
        capacity = self.pair_capacity(ids.shape[1])
        plan = self.plan_step(x, ids, weights)
        received = self.received_from_rank(plan)
        send_counts = plan.layout.tokens_per_rank
        recv_counts = received.sum(dim=1)
        send_buffer = ops.pack_padded(ops.permute(x, plan.layout), send_counts, capacity)  # [R, C, H]
        recv_buffer = self.ep.all_to_all("dispatch", "padded row exchange", send_buffer, self.world_size)
        handle = AlltoallHandle(
            **self.handle_fields(x.shape[0], plan),
            pair_capacity=capacity,
            send_counts=send_counts,
            recv_counts=recv_counts,
        )
        return self.to_expert_major(ops.unpack_padded(recv_buffer, recv_counts), handle), handle

    def combine(self, expert_y: torch.Tensor, handle: AlltoallHandle) -> torch.Tensor:
        """See :meth:`Dispatcher.combine`: ``expert_y [N_recv, H]`` -> ``[T, H]``."""
        self.check_handle(handle, AlltoallHandle)
        expert_y = self.check_expert_output(expert_y, handle)
        source_major = self.to_source_major(expert_y, handle)
        send_buffer = ops.pack_padded(source_major, handle.recv_counts, handle.pair_capacity)
        recv_buffer = self.ep.all_to_all("combine", "padded row exchange", send_buffer, self.world_size)
        return ops.unpermute(ops.unpack_padded(recv_buffer, handle.send_counts), handle.layout, handle.topk_weights)
