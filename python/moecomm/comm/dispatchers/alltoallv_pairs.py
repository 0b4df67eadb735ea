"""alltoallv-pairs: count exchange, then a variable-split all-to-all of one row per kept (token, expert) pair.

The pair-level wire pattern (what Megatron-Core's alltoall dispatcher sends): a token routed to k experts of one
rank crosses k times. :mod:`.alltoallv` sends it once per destination rank instead; this one stays as a peer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from moecomm.comm.dispatchers.base import Dispatcher
from moecomm.comm.handle import DispatchHandle
from moecomm.comm.row_codec import QuantizedRows


@dataclass(frozen=True)
class AlltoallvPairsHandle(DispatchHandle):
    """DispatchHandle plus the split sizes of the exchange.

    Attributes:
        send_splits: rows this rank sent to each rank (list of R ints).
        recv_splits: rows this rank received from each rank (list of R ints).
    """

    send_splits: list[int]
    recv_splits: list[int]


def pair_rows_sent(send_splits: list[int], rank: int, row_bytes: int) -> dict[str, int]:
    """``rows_sent`` / ``bytes_sent`` of a pair-level exchange: every row except those to this rank itself."""
    rows = sum(send_splits) - send_splits[rank]
    return {"rows_sent": rows, "bytes_sent": rows * row_bytes}


class AlltoallvPairsDispatcher(Dispatcher):
    """Variable-split all-to-all: sends exactly the kept rows (host sync on the split sizes).

    Buffers reused across steps: ``send`` (rows in (destination rank, local expert) order, later the rows
    combine gets back), ``recv`` (rows as received, later the expert outputs in source order) and
    ``expert_x`` (what :meth:`dispatch` returns).
    """

    name = "alltoallv-pairs"

    def dispatch(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, *, dequantize: bool = True
    ) -> tuple[torch.Tensor | QuantizedRows, AlltoallvPairsHandle]:
        """See :meth:`Dispatcher.dispatch`: ``x [T, H]``, ``topk_ids [T, K]``, ``topk_weights [T, K]``."""
        x, ids, weights = self.check_inputs(x, topk_ids, topk_weights)
        dequantize = self.check_dequantize(dequantize)
        backend = self.backend_for(x)
        plan = self.plan_step(x, ids, weights)
        received = self.received_from_rank(plan)
        send_splits = plan.layout.tokens_per_rank.tolist()
        recv_splits = received.sum(dim=1).tolist()
        rows = self.encode_rows(backend, x, plan.layout)
        received_rows = self.transport.all_to_all(
            "dispatch",
            "row exchange",
            rows,
            sum(recv_splits),
            recv_splits,
            send_splits,
            out=None if self.world_size == 1 else self.wire_buffer("recv", sum(recv_splits), x),
        )
        stats = dataclasses.replace(plan.stats, **pair_rows_sent(send_splits, self.rank, self.crossing_row_bytes(x)))
        handle = AlltoallvPairsHandle(
            **{**self.handle_fields(x.shape[0], plan), "stats": stats},
            send_splits=send_splits,
            recv_splits=recv_splits,
        )
        return self.expert_rows(
            backend, self.to_expert_major(backend, received_rows, handle), None, x, dequantize
        ), handle

    def combine(self, expert_y: torch.Tensor, handle: AlltoallvPairsHandle) -> torch.Tensor:
        """See :meth:`Dispatcher.combine`: ``expert_y [N_recv, H]`` -> ``[T, H]``."""
        expert_y = self.check_combine(expert_y, handle, AlltoallvPairsHandle)
        backend = self.backend_for(expert_y)
        source_major = self.to_source_major(backend, expert_y, handle)
        returned = self.transport.all_to_all(
            "combine",
            "row exchange",
            source_major,
            sum(handle.send_splits),
            handle.send_splits,
            handle.recv_splits,
            out=None if self.world_size == 1 else self.buffer("send", sum(handle.send_splits), expert_y),
        )
        return backend.unpermute(returned, handle.layout, handle.topk_weights)
