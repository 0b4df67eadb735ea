"""alltoallv: count exchange, then a variable-split all-to-all of exactly the kept rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moecomm import ops
from moecomm.comm.base import Dispatcher
from moecomm.comm.handle import DispatchHandle


@dataclass(frozen=True)
class AlltoallvHandle(DispatchHandle):
    """DispatchHandle plus the split sizes of the exchange.

    Attributes:
        send_splits: rows this rank sent to each rank (list of R ints).
        recv_splits: rows this rank received from each rank (list of R ints).
    """

    send_splits: list[int]
    recv_splits: list[int]


class AlltoallvDispatcher(Dispatcher):
    """Variable-split all-to-all: sends exactly the kept rows (host sync on the split sizes)."""

    name = "alltoallv"

    def dispatch(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[torch.Tensor, AlltoallvHandle]:
        """See :meth:`Dispatcher.dispatch`: ``x [T, H]``, ``topk_ids [T, K]``, ``topk_weights [T, K]``."""
        x, ids, weights = self.check_inputs(x, topk_ids, topk_weights)
        plan = self.plan_step(x, ids, weights)
        received = self.received_from_rank(plan)
        send_splits = plan.layout.tokens_per_rank.tolist()
        recv_splits = received.sum(dim=1).tolist()
        rows = ops.permute(x, plan.layout)  # (destination rank, local expert, token, k) order
        received_rows = self.ep.all_to_all(
            "dispatch", "row exchange", rows, sum(recv_splits), recv_splits, send_splits
        )
        handle = AlltoallvHandle(
            **self.handle_fields(x.shape[0], plan),
            send_splits=send_splits,
            recv_splits=recv_splits,
        )
        return self.to_expert_major(received_rows, handle), handle

    def combine(self, expert_y: torch.Tensor, handle: AlltoallvHandle) -> torch.Tensor:
        """See :meth:`Dispatcher.combine`: ``expert_y [N_recv, H]`` -> ``[T, H]``."""
        self.check_handle(handle, AlltoallvHandle)
        expert_y = self.check_expert_output(expert_y, handle)
        source_major = self.to_source_major(expert_y, handle)
        returned = self.ep.all_to_all(
            "combine", "row exchange", source_major, sum(handle.send_splits), handle.send_splits, handle.recv_splits
        )
        return ops.unpermute(returned, handle.layout, handle.topk_weights)
