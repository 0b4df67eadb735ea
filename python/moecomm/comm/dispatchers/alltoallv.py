"""alltoallv: token-level all-to-all-v: each kept token crosses once per destination rank, not once per pair.

Dispatch: after the count exchange (which also shares every rank's tokens-per-destination counts), rank s
sends each token that has a kept pair on rank d once to d, with that token's (local expert id, weight) pairs
for d's experts (``-1`` / 0 for pairs elsewhere or dropped). Over a collective transport rank d lays the
received token rows out expert-major for its local experts (local expert, then source rank, token, k: the
contract of every dispatcher). Over ``shm`` the senders write each kept pair's row straight into its
expert-major slot in d's region (the count exchange gives every rank every slot), reading each token once
for all destinations; only the per-token metadata travels as token rows (and, under ``dispatch_quant``, the
quantized token rows, dequantized once per token by the receiver).

Combine: rank d reduces, per received token row, the weighted outputs of its own experts (float32
accumulation, rounded once to the expert output's dtype) and sends one row per (token, source) back; the
source sums its partial rows (float32 accumulation). Token drop keeps its exact semantics: the same plan, the
same kept pairs, and a dropped pair is never sent (a token whose pairs on d are all dropped does not go to d).

With ``dispatch_quant`` the rows cross as quantized wire rows (each token quantized once, straight into the
send buffer or the peers' regions) and are dequantized into ``expert_x`` on the receiver (or kept quantized).

Buffers reused across steps: ``expert_x``, plus the exchange's (``send``, ``recv`` and ``partial`` over
collectives; over ``shm`` the shared regions: ``expert_x`` is then a view of this rank's region, valid until the
next dispatch, and combine reduces each source's partial rows straight into its region).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from moecomm.comm.dispatchers.base import Dispatcher
from moecomm.comm.dispatchers.token_exchange import token_exchange
from moecomm.comm.handle import DispatchHandle
from moecomm.comm.row_codec import QuantizedRows
from moecomm.ops.layout import RouteLayout


@dataclass(frozen=True)
class AlltoallvHandle(DispatchHandle):
    """DispatchHandle plus the token-level exchange's layouts.

    Attributes:
        send_splits: token rows this rank sent to each rank (list of R ints).
        recv_splits: token rows this rank received from each rank (list of R ints).
        token_counts: ``[R, R]`` int64 token rows every (source, destination) pair exchanged.
        dest_layout: layout of this rank's ``[T, R]`` (token, destination rank) pairs: row of each in the send
            order (destination, then token); None with one rank.
        recv_layout: layout of the received token rows' ``[N_tok, K]`` (row, k) pairs over the local experts.
        recv_weights: ``[N_tok, K]`` float32 weights of those pairs (0 where the pair is not here).
    """

    send_splits: list[int]
    recv_splits: list[int]
    token_counts: torch.Tensor
    dest_layout: RouteLayout | None
    recv_layout: RouteLayout
    recv_weights: torch.Tensor

    def unit_weights(self) -> AlltoallvHandle:
        """See :meth:`DispatchHandle.unit_weights` (the expert side's pair weights too)."""
        return dataclasses.replace(
            self,
            topk_weights=self.is_kept.to(torch.float32),
            recv_weights=(self.recv_layout.row_of_pair >= 0).to(torch.float32),
        )


def token_destinations(ids: torch.Tensor, is_kept: torch.Tensor, experts_per_rank: int, num_ranks: int) -> torch.Tensor:
    """``[T, R]`` bool: token t has at least one kept pair among rank r's experts (``ids [T, K]``, ``is_kept [T, K]``)."""
    dest = torch.div(ids.to(torch.int64), experts_per_rank, rounding_mode="floor")
    hits = torch.zeros((ids.shape[0], num_ranks), dtype=torch.int32, device=ids.device)
    return hits.scatter_add_(1, dest, is_kept.to(torch.int32)) > 0


class AlltoallvDispatcher(Dispatcher):
    """Token-level variable-split all-to-all (host sync on the split sizes; see the module docstring).

    Over the ``shm`` transport the rows go straight into the peers' shared regions
    (:class:`~moecomm.comm.dispatchers.token_exchange.RegionTokenExchange`); over any other through its
    ``all_to_all``.
    """

    name = "alltoallv"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exchange = token_exchange(self.transport, self.workspace)

    def _routing_metadata(
        self, ids: torch.Tensor, is_kept: torch.Tensor, weights: torch.Tensor, dest_mask: torch.Tensor
    ) -> torch.Tensor:
        """``[N_send, 2K]`` int32 per sent token row, in the send order (destination, then token: the order of the
        destination layout): its K local expert ids on the destination (-1 where the pair is not for it or
        dropped), then its K float32 weights (bit-cast to int32). ``dest_mask [T, R]``: rows sent."""
        num_ranks, experts = dest_mask.shape[1], self.num_local_experts
        ids64 = ids.to(torch.int64)
        dest = torch.div(ids64, experts, rounding_mode="floor")
        ranks = torch.arange(num_ranks, device=ids.device).view(num_ranks, 1, 1)
        here = (dest.unsqueeze(0) == ranks) & is_kept.unsqueeze(0)  # [R, T, K]
        local_ids = torch.where(here, (ids64 - dest * experts).to(torch.int32).unsqueeze(0), -1)
        pair_weights = torch.where(here, weights.to(torch.float32).unsqueeze(0), 0.0)
        sent = dest_mask.t()  # [R, T]: boolean indexing keeps (destination, token) order
        return torch.cat([local_ids[sent], pair_weights[sent].view(torch.int32)], dim=1)

    def dispatch(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, *, dequantize: bool = True
    ) -> tuple[torch.Tensor | QuantizedRows, AlltoallvHandle]:
        """See :meth:`Dispatcher.dispatch`: ``x [T, H]``, ``topk_ids [T, K]``, ``topk_weights [T, K]``."""
        x, ids, weights = self.check_inputs(x, topk_ids, topk_weights)
        dequantize = self.check_dequantize(dequantize)
        backend = self.backend_for(x)
        num_ranks, top_k = self.world_size, ids.shape[1]
        masks: list[torch.Tensor] = []

        def tokens_per_destination(layout: RouteLayout, is_kept: torch.Tensor) -> torch.Tensor:
            masks.append(token_destinations(ids, is_kept, self.num_local_experts, num_ranks))
            return masks[-1].sum(dim=0)

        plan = self.plan_step(x, ids, weights, extra_counts=tokens_per_destination)
        if num_ranks == 1:  # nothing crosses: the token rows are x itself
            fields = self.handle_fields(x.shape[0], plan)
            handle = AlltoallvHandle(
                **fields,
                send_splits=[x.shape[0]],
                recv_splits=[x.shape[0]],
                token_counts=plan.extra_counts,
                dest_layout=None,
                recv_layout=plan.layout,
                recv_weights=plan.topk_weights,
            )
            rows = self.encode_rows(backend, x, None)
            return self.expert_rows(backend, rows, plan.layout, x, dequantize), handle
        dest_mask = masks[-1]
        counts = plan.extra_counts  # [R, R] token rows (source, destination)
        send_splits, recv_splits = counts[self.rank].tolist(), counts[:, self.rank].tolist()
        dest_ids = torch.arange(num_ranks, device=x.device).expand(x.shape[0], num_ranks).contiguous()
        dest_layout = backend.route_layout(dest_ids, num_ranks, num_ranks, dest_mask)
        metadata = self._routing_metadata(ids, plan.is_kept, plan.topk_weights, dest_mask)
        with self.refused_rows_break_transport():
            received_rows, received_metadata = self.exchange.send_tokens(
                backend, self.codec, x, dest_layout, metadata, counts, plan.layout, plan.kept_counts
            )
        local_ids = received_metadata[:, :top_k]
        recv_weights = received_metadata[:, top_k:].contiguous().view(torch.float32)
        recv_kept = local_ids >= 0
        recv_layout = backend.route_layout(
            torch.where(recv_kept, local_ids, torch.zeros_like(local_ids)), self.num_local_experts, 1, recv_kept
        )
        fields = self.handle_fields(x.shape[0], plan)
        if not torch.equal(recv_layout.tokens_per_expert.cpu(), fields["tokens_per_local_expert"]):
            raise self.transport.fail(
                "dispatch",
                "routing exchange",
                f"received routing names {recv_layout.tokens_per_expert.tolist()} rows per local expert, the count "
                f"exchange promised {fields['tokens_per_local_expert'].tolist()}",
            )
        row_bytes = self.crossing_row_bytes(x) + metadata.shape[1] * metadata.element_size()
        crossed = sum(send_splits) - send_splits[self.rank]
        fields["stats"] = dataclasses.replace(plan.stats, rows_sent=crossed, bytes_sent=crossed * row_bytes)
        handle = AlltoallvHandle(
            **fields,
            send_splits=send_splits,
            recv_splits=recv_splits,
            token_counts=counts,
            dest_layout=dest_layout,
            recv_layout=recv_layout,
            recv_weights=recv_weights,
        )
        rows_layout = None if self.exchange.rows_are_expert_major(self.codec) else recv_layout
        return self.expert_rows(backend, received_rows, rows_layout, x, dequantize), handle

    def combine(self, expert_y: torch.Tensor, handle: AlltoallvHandle) -> torch.Tensor:
        """See :meth:`Dispatcher.combine`: ``expert_y [N_recv, H]`` -> ``[T, H]``."""
        expert_y = self.check_combine(expert_y, handle, AlltoallvHandle)
        backend = self.backend_for(expert_y)
        if handle.dest_layout is None:
            return backend.unpermute(expert_y, handle.recv_layout, handle.recv_weights)
        returned = self.exchange.combine_partials(
            backend, expert_y, handle.recv_layout, handle.recv_weights, handle.token_counts
        )
        ones = torch.ones(handle.dest_layout.row_of_pair.shape, dtype=torch.float32, device=expert_y.device)
        return backend.unpermute(returned, handle.dest_layout, ones)
