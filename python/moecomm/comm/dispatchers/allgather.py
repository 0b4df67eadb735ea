"""allgather: every rank gathers all tokens, runs its experts on what it owns, reduce-scatters back.

The baseline: moves R times more data than alltoallv but has no data-dependent exchange sizes
beyond the token-count padding (each rank's tokens are padded to the largest T of the step).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from moecomm import ops
from moecomm.comm.dispatchers.base import Dispatcher
from moecomm.comm.handle import DispatchHandle
from moecomm.comm.row_codec import QuantizedRows


@dataclass(frozen=True)
class AllgatherHandle(DispatchHandle):
    """DispatchHandle plus the gathered batch's layout.

    Attributes:
        max_tokens: rows each rank's tokens were padded to (largest T of the step).
        gathered_layout: RouteLayout over the gathered ``[R * max_tokens, K]`` ids, local experts only.
        gathered_weights: ``[R * max_tokens, K]`` float32 weights of the gathered pairs.
    """

    max_tokens: int
    gathered_layout: ops.RouteLayout
    gathered_weights: torch.Tensor

    def unit_weights(self) -> AllgatherHandle:
        """See :meth:`DispatchHandle.unit_weights` (the gathered pairs' weights too)."""
        return dataclasses.replace(
            self,
            topk_weights=self.is_kept.to(torch.float32),
            gathered_weights=(self.gathered_layout.row_of_pair >= 0).to(torch.float32),
        )


def _pad_rows(tensor: torch.Tensor, rows: int, value: float | int) -> torch.Tensor:
    """Pads ``tensor [T, *S]`` to ``[rows, *S]`` with ``value``."""
    if tensor.shape[0] == rows:
        return tensor
    out = tensor.new_full((rows, *tensor.shape[1:]), value)
    out[: tensor.shape[0]] = tensor
    return out


class AllgatherDispatcher(Dispatcher):
    """All-gather tokens, ids and weights; local experts; reduce-scatter the partial outputs.

    Buffers reused across steps: ``gathered`` (every rank's tokens), ``expert_x`` (the gathered rows of the local
    experts) and ``partial``
    (the weighted partial outputs of every gathered token before the reduce-scatter).
    """

    name = "allgather"

    def dispatch(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, *, dequantize: bool = True
    ) -> tuple[torch.Tensor | QuantizedRows, AllgatherHandle]:
        """See :meth:`Dispatcher.dispatch`: ``x [T, H]``, ``topk_ids [T, K]``, ``topk_weights [T, K]``."""
        x, ids, weights = self.check_inputs(x, topk_ids, topk_weights)
        dequantize = self.check_dequantize(dequantize)
        backend = self.backend_for(x)
        plan = self.plan_step(x, ids, weights)
        max_tokens = int(plan.num_tokens_per_rank.max())
        sent_ids = torch.where(plan.is_kept, ids.to(torch.int64), torch.full_like(ids, -1, dtype=torch.int64))
        rows = self.encode_rows(backend, x, None)
        gathered = self.workspace.buffer("gathered", (self.world_size, max_tokens, rows.shape[1]), rows.dtype, x.device)
        all_rows = self.transport.all_gather(
            "dispatch", "token gather", _pad_rows(rows, max_tokens, 0), out=gathered
        ).flatten(0, 1)
        all_ids = self.transport.all_gather("dispatch", "id gather", _pad_rows(sent_ids, max_tokens, -1)).flatten(0, 1)
        all_weights = self.transport.all_gather(
            "dispatch", "weight gather", _pad_rows(plan.topk_weights, max_tokens, 0)
        ).flatten(0, 1)
        first = self.local_experts.start
        is_mine = (all_ids >= first) & (all_ids < self.local_experts.stop)
        local_ids = torch.where(is_mine, all_ids - first, torch.zeros_like(all_ids))
        gathered_layout = backend.route_layout(local_ids, self.num_local_experts, 1, is_mine)
        row_bytes = self.crossing_row_bytes(x) + ids.shape[1] * (8 + 4)
        stats = dataclasses.replace(
            plan.stats,
            rows_sent=(self.world_size - 1) * max_tokens,
            bytes_sent=(self.world_size - 1) * max_tokens * row_bytes,
        )
        handle = AllgatherHandle(
            **{**self.handle_fields(x.shape[0], plan, gathered_layout.tokens_per_expert), "stats": stats},
            max_tokens=max_tokens,
            gathered_layout=gathered_layout,
            gathered_weights=all_weights,
        )
        # Gathered rows are in (source rank, token) order, so expert-major is (local expert, source rank).
        return self.expert_rows(backend, all_rows, gathered_layout, x, dequantize), handle

    def combine(self, expert_y: torch.Tensor, handle: AllgatherHandle) -> torch.Tensor:
        """See :meth:`Dispatcher.combine`: ``expert_y [N_recv, H]`` -> ``[T, H]``."""
        expert_y = self.check_combine(expert_y, handle, AllgatherHandle)
        backend = self.backend_for(expert_y)
        partial = backend.unpermute(  # [R * max_T, H]
            expert_y,
            handle.gathered_layout,
            handle.gathered_weights,
            out=self.workspace.buffer(
                "partial", (handle.gathered_weights.shape[0], expert_y.shape[1]), expert_y.dtype, expert_y.device
            ),
        )
        mine = self.transport.reduce_scatter("combine", "output reduce-scatter", partial)
        return mine[: handle.num_tokens]
