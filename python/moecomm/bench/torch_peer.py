"""The pure-torch all-to-all-v benchmark peer of `moecomm bench dispatch`.

:class:`TorchAllToAllV` is the straightforward all-to-all-v a PyTorch user would write: argsort by
expert, ``index_select``, ``all_to_all_single`` with split sizes, regroup, and ``index_add`` to combine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from moecomm.checks import check_topk_ids, check_topk_weights, check_topology


@dataclass
class TorchAllToAllVHandle:
    """What :meth:`TorchAllToAllV.combine` needs.

    Attributes:
        token_of_row: ``[T*K]`` int64, source token of each sent row (expert-major order).
        weight_of_row: ``[T*K]`` float32, gate weight of each sent row.
        send_splits / recv_splits: rows sent to / received from each rank.
        regroup: ``[N_recv]`` int64, received row (source-major) of each expert-major row.
        tokens_per_local_expert: ``[E_local]`` int64.
        num_tokens: T.
    """

    token_of_row: torch.Tensor
    weight_of_row: torch.Tensor
    send_splits: list[int]
    recv_splits: list[int]
    regroup: torch.Tensor
    tokens_per_local_expert: torch.Tensor
    num_tokens: int


class TorchAllToAllV:
    """Pure-torch all-to-all-v dispatcher (the benchmark peer; dropless, same interface as moecomm's)."""

    def __init__(self, num_experts: int, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.world_size = dist.get_world_size(group) if dist.is_initialized() else 1
        self.rank = dist.get_rank(group) if dist.is_initialized() else 0
        self.num_experts, _ = check_topology(num_experts, self.world_size)
        self.num_local_experts = num_experts // self.world_size

    def dispatch(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[torch.Tensor, TorchAllToAllVHandle]:
        """Sends each ``x [T, H]`` row to the ranks of its ``topk_ids [T, K]`` experts.

        ``topk_weights [T, K]`` float is kept for combine. Returns ``expert_x [N_recv, H]`` (x's dtype),
        rows grouped by local expert then source rank, and the handle."""
        ids = check_topk_ids(topk_ids, self.num_experts).to(torch.int64)
        weights = check_topk_weights(topk_weights, ids)
        top_k = ids.shape[1]
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token_of_row = torch.div(order, top_k, rounding_mode="floor")
        send = x.index_select(0, token_of_row)
        counts = torch.bincount(flat, minlength=self.num_experts)
        recv_counts = torch.empty_like(counts)
        if self.world_size > 1:
            dist.all_to_all_single(recv_counts, counts, group=self.group)
        else:
            recv_counts.copy_(counts)
        send_splits = counts.view(self.world_size, -1).sum(1).tolist()
        recv_splits = recv_counts.view(self.world_size, -1).sum(1).tolist()
        recv = x.new_empty((sum(recv_splits), x.shape[1]))
        if self.world_size > 1:
            dist.all_to_all_single(recv, send, recv_splits, send_splits, group=self.group)
        else:
            recv.copy_(send)
        local_expert_of_row = (
            torch.arange(self.num_local_experts).repeat(self.world_size).repeat_interleave(recv_counts)
        )
        regroup = torch.argsort(local_expert_of_row, stable=True)
        handle = TorchAllToAllVHandle(
            token_of_row=token_of_row,
            weight_of_row=weights.reshape(-1).index_select(0, order).float(),
            send_splits=send_splits,
            recv_splits=recv_splits,
            regroup=regroup,
            tokens_per_local_expert=recv_counts.view(self.world_size, -1).sum(0),
            num_tokens=ids.shape[0],
        )
        return recv.index_select(0, regroup), handle

    def combine(self, expert_y: torch.Tensor, handle: TorchAllToAllVHandle) -> torch.Tensor:
        """Returns ``[T, H]`` (expert_y's dtype) = sum over k of w[t,k] * expert_y[row(t,k)], float32 sums.

        ``expert_y [N_recv, H]`` is in the order :meth:`dispatch` returned."""
        source_major = torch.empty_like(expert_y)
        source_major.index_copy_(0, handle.regroup, expert_y)
        returned = expert_y.new_empty((sum(handle.send_splits), expert_y.shape[1]))
        if self.world_size > 1:
            dist.all_to_all_single(returned, source_major, handle.send_splits, handle.recv_splits, group=self.group)
        else:
            returned.copy_(source_major)
        out = torch.zeros((handle.num_tokens, expert_y.shape[1]), dtype=torch.float32)
        out.index_add_(0, handle.token_of_row, returned.float() * handle.weight_of_row.unsqueeze(1))
        return out.to(expert_y.dtype)
