"""Megatron-Core's token dispatchers as benchmark peers, behind moecomm's dispatch / combine interface.

``MoEAlltoAllTokenDispatcher`` and ``MoEAllGatherTokenDispatcher`` (megatron-core 0.16) are written for
CUDA. On a CPU gloo group they run once four ``torch.cuda`` names are stood in for by host versions
(:func:`host_cuda`: ``Stream``, ``current_stream``, ``stream``, ``current_device``), the split sizes
handed to ``all_to_all_single`` are plain lists, and Megatron's global memory buffer exists. All of
that lives here, in the benchmark; moecomm itself never imports Megatron.

Megatron applies the gate weights inside its experts (the permuted probs scale each expert's rows);
moecomm applies them in combine. So that both compute ``y[t] = sum_k w[t,k] * expert_k(x[t])`` behind
one interface, :meth:`MegatronPeer.combine` scales the expert rows by Megatron's permuted probs before
handing them back to Megatron: one elementwise multiply per received row, part of the timed step.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from moecomm.bench.kernels import dense_routing, load_megatron_module
from moecomm.checks import check_topk_ids, check_topk_weights, check_topology

#: Bench case name -> Megatron-Core dispatcher class name.
MEGATRON_DISPATCHERS = {
    "megatron-alltoall": "MoEAlltoAllTokenDispatcher",
    "megatron-allgather": "MoEAllGatherTokenDispatcher",
}


class _HostEvent:
    """Stands in for ``torch.cuda.Event``: host work is already finished when recorded."""

    def synchronize(self) -> None:
        return None


class _HostStream:
    """Stands in for ``torch.cuda.Stream``: one stream, in program order."""

    def wait_stream(self, other: object) -> None:
        return None

    def record_event(self, event: object = None) -> _HostEvent:
        return _HostEvent()


HOST_STREAM = _HostStream()
HOST_CUDA = {
    "Stream": lambda *args, **kwargs: HOST_STREAM,
    "current_stream": lambda *args, **kwargs: HOST_STREAM,
    "stream": lambda *args, **kwargs: contextlib.nullcontext(),
    "current_device": lambda: torch.device("cpu"),
}


@contextlib.contextmanager
def host_cuda() -> Iterator[None]:
    """Replaces ``torch.cuda.Stream / current_stream / stream / current_device`` with host stand-ins
    for the duration of the block (restored after, also on error); silences Megatron's warnings."""
    saved = {name: getattr(torch.cuda, name) for name in HOST_CUDA}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for name, value in HOST_CUDA.items():
                setattr(torch.cuda, name, value)
            yield
        finally:
            for name, value in saved.items():
                setattr(torch.cuda, name, value)


def megatron_available() -> bool:
    """True when megatron-core's token dispatchers import."""
    return load_megatron_module("megatron.core.transformer.moe.token_dispatcher") is not None


@dataclass
class MegatronHandle:
    """What :meth:`MegatronPeer.combine` needs besides the Megatron dispatcher's own state.

    Attributes:
        permuted_probs: ``[N_recv]`` float32, gate weight of each received row (Megatron's order).
        tokens_per_local_expert: ``[E_local]`` int64.
    """

    permuted_probs: torch.Tensor
    tokens_per_local_expert: torch.Tensor


class MegatronPeer:
    """One of Megatron-Core's token dispatchers (dropless, EP only: TP = 1) with moecomm's interface.

    ``dispatch`` and ``combine`` must alternate (Megatron keeps the step's routing in the dispatcher).
    """

    def __init__(
        self, name: str, num_experts: int, top_k: int, hidden: int, group: dist.ProcessGroup | None = None
    ) -> None:
        """``group``: the EP group (None: the default group, which must be initialised)."""
        if name not in MEGATRON_DISPATCHERS:
            raise ValueError(f"name: expected one of {', '.join(MEGATRON_DISPATCHERS)}, got {name!r}")
        if not dist.is_initialized():
            raise ValueError("group: Megatron-Core's token dispatchers need an initialised torch.distributed group")
        world_size = dist.get_world_size(group)
        rank = dist.get_rank(group)
        self.num_experts, _ = check_topology(num_experts, world_size)
        self.top_k = top_k
        self.num_local_experts = num_experts // world_size
        with host_cuda():
            from megatron.core import parallel_state
            from megatron.core.process_groups_config import ProcessGroupCollection
            from megatron.core.transformer import transformer_config
            from megatron.core.transformer.moe import token_dispatcher

            if parallel_state._GLOBAL_MEMORY_BUFFER is None:
                parallel_state._set_global_memory_buffer()
            config = transformer_config.TransformerConfig(
                num_layers=1,
                hidden_size=hidden,
                num_attention_heads=1,
                num_moe_experts=num_experts,
                moe_router_topk=top_k,
                moe_permute_fusion=False,
                use_cpu_initialization=True,
                moe_token_dispatcher_type=name.removeprefix("megatron-"),
            )
            ep_group = group if group is not None else dist.group.WORLD
            groups = ProcessGroupCollection(ep=ep_group, expt_tp=None, tp_ep=ep_group, tp=None)
            local = list(range(rank * self.num_local_experts, (rank + 1) * self.num_local_experts))
            self.dispatcher = getattr(token_dispatcher, MEGATRON_DISPATCHERS[name])(
                self.num_local_experts, local, config, pg_collection=groups
            )

    def dispatch(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[torch.Tensor, MegatronHandle]:
        """Sends each ``x [T, H]`` row to the ranks of its ``topk_ids [T, K]`` experts (int, distinct per
        row); ``topk_weights [T, K]`` float32 become Megatron's ``probs [T, E]``. Returns
        ``expert_x [N_recv, H]`` (x's dtype) grouped by local expert, and the handle."""
        ids = check_topk_ids(topk_ids, self.num_experts).to(torch.int64)
        weights = check_topk_weights(topk_weights, ids)
        if ids.shape[1] != self.top_k:
            raise ValueError(f"topk_ids: expected {self.top_k} experts per token, got {ids.shape[1]}")
        routing_map, probs = dense_routing(ids, weights.float(), self.num_experts)
        d = self.dispatcher
        with host_cuda():
            rows, row_probs = d.dispatch_preprocess(x, routing_map, probs)
            for name in ("input_splits", "output_splits"):  # gloo's all_to_all_single takes lists
                if torch.is_tensor(getattr(d, name, None)):
                    setattr(d, name, getattr(d, name).tolist())
            rows, row_probs = d.token_dispatch(rows, row_probs)
            expert_x, tokens_per_expert, row_probs = d.dispatch_postprocess(rows, row_probs)
        return expert_x, MegatronHandle(row_probs.float(), torch.as_tensor(tokens_per_expert, dtype=torch.int64))

    def combine(self, expert_y: torch.Tensor, handle: MegatronHandle) -> torch.Tensor:
        """Returns ``y [T, H]`` (expert_y's dtype) = sum over k of w[t,k] * expert_y[row(t,k)].

        ``expert_y [N_recv, H]`` is in the order :meth:`dispatch` returned; its rows are scaled by their
        gate weights here (where Megatron's experts would), then Megatron combines them."""
        scaled = (expert_y.float() * handle.permuted_probs.unsqueeze(1)).to(expert_y.dtype)
        d = self.dispatcher
        with host_cuda():
            rows = d.combine_preprocess(scaled)
            rows = d.token_combine(rows)
            return d.combine_postprocess(rows)
