"""EPMoE as a ``mindspore.nn.Cell``: router -> dispatch -> local SwiGLU experts -> combine (+ shared experts).

The Cell owns its weights as MindSpore Parameters (named as ``moecomm.EPMoE``'s parameters and buffers:
``router.weight``, ``w13``, ``w2``, ``shared_experts.*``; ``w13 [E_local, 2*I, H]``, ``w2 [E_local, H, I]``
hold this rank's experts only). Each forward bridges the Parameters and the input to torch views of the
same memory (DLPack, no copy) and runs ``moecomm.EPMoE``'s own forward on them, so the routing, the drop
plan, the dispatch, the experts and the combine are the PyTorch layer's, and for the same weights and
inputs the outputs are equal. The dispatcher runs over :func:`make_mindspore_transport` (``shm`` between
ranks of one host, else MindSpore's collectives). All ranks of the group must call the Cell the same
number of times.
"""

from __future__ import annotations

from typing import Any

import torch

import mindspore as ms
from moecomm.config import MoECommConfig
from moecomm.integrations.mindspore.bridge import check_ms_tensor, to_mindspore, to_torch, torch_dtype_of
from moecomm.integrations.mindspore.comm import agreed_mindspore_transport
from moecomm.layer.ep_moe import EPMoE as TorchEPMoE


class EPMoE(ms.nn.Cell):
    """Expert-parallel MoE layer with SwiGLU experts, for MindSpore tensors (CPU).

    Args:
        hidden_size / intermediate_size / num_experts / top_k: as :class:`moecomm.EPMoE`.
        group: the MindSpore communication group of the EP ranks (None: the world group, after
            ``mindspore.communication.init()``); each rank holds E / group size experts.
        config: a :class:`moecomm.MoECommConfig` (or a dict of its fields), passed unchanged to moecomm's
            dispatcher; ``transport`` is ``"auto"``, ``"shm"`` or ``"mindspore"``.
        dtype: parameter dtype (a MindSpore dtype; default float32); the Cell takes inputs of this dtype.
        **options: the router and shared-expert options of :class:`moecomm.EPMoE` (``scoring``,
            ``renormalize``, ``n_group``, ``topk_group``, ``use_score_correction_bias``,
            ``routed_scaling_factor``, ``fp32_logits``, ``shared_intermediate_size``, ``shared_expert_gate``).

    Attributes:
        last_stats: the dispatcher's ``DropStats`` of the last forward (None before the first).
        torch_layer: the ``moecomm.EPMoE`` whose forward runs on views of this Cell's Parameters.
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_experts: int,
        top_k: int,
        *,
        group: str | None = None,
        config: MoECommConfig | dict[str, Any] | None = None,
        dtype: ms.dtype.Type | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        config = config if isinstance(config, MoECommConfig) else MoECommConfig.from_dict(config)
        torch_dtype = torch.float32 if dtype is None else torch_dtype_of("dtype", dtype)
        transport = agreed_mindspore_transport(config, num_experts, group)
        self.torch_layer = TorchEPMoE(
            hidden_size,
            intermediate_size,
            num_experts,
            top_k,
            config=config,
            transport=transport,
            dtype=torch_dtype,
            **options,
        )
        for name, tensor in self._torch_tensors():
            is_parameter = isinstance(tensor, torch.nn.Parameter)
            parameter = ms.Parameter(to_mindspore(tensor.detach().clone()), name=name, requires_grad=is_parameter)
            self.insert_param_to_cell(name.replace(".", "_"), parameter)

    def _torch_tensors(self) -> list[tuple[str, torch.Tensor]]:
        layer = self.torch_layer
        return [*layer.named_parameters(), *((n, b) for n, b in layer.named_buffers() if b is not None)]

    def _attach(self) -> None:
        """Points the torch layer's parameters and buffers at the current memory of this Cell's Parameters
        (``Parameter.set_data`` may have moved it)."""
        mine = self.parameters_dict()
        with torch.no_grad():
            for name, tensor in self._torch_tensors():
                tensor.data = to_torch(name, mine[name])

    @property
    def config(self) -> MoECommConfig:
        return self.torch_layer.config

    @property
    def rank(self) -> int:
        return self.torch_layer.rank

    @property
    def world_size(self) -> int:
        return self.torch_layer.world_size

    @property
    def local_experts(self) -> range:
        """Global ids of the experts this rank holds."""
        return self.torch_layer.local_experts

    @property
    def last_stats(self) -> Any:
        return self.torch_layer.last_stats

    def load_expert_weights(
        self,
        *,
        w2: ms.Tensor,
        w13: ms.Tensor | None = None,
        gate_proj: ms.Tensor | None = None,
        up_proj: ms.Tensor | None = None,
    ) -> None:
        """Loads the routed experts from full (global) MindSpore tensors, keeping this rank's shard.

        Args:
            w2: ``[E, H, I]`` float, every expert's down projection.
            w13: ``[E, 2*I, H]`` float, gate then up projections; or instead both of
            gate_proj / up_proj: ``[E, I, H]`` float each.
        """
        given = {"w2": w2, "w13": w13, "gate_proj": gate_proj, "up_proj": up_proj}
        views = {name: None if value is None else to_torch(name, value) for name, value in given.items()}
        self._attach()
        self.torch_layer.load_expert_weights(**views)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        """Runs the MoE layer on this rank's tokens.

        Args:
            x: ``[..., H]`` float MindSpore CPU tensor in the layer's dtype (any leading shape, may be empty).
        Returns:
            ``[..., H]`` in x's dtype: routed experts' weighted sum (+ shared experts).
        """
        check_ms_tensor("x", x)
        self._attach()
        with torch.no_grad():
            return to_mindspore(self.torch_layer(to_torch("x", x)))

    def close(self) -> None:
        """Releases the dispatcher's buffers and transport (MindSpore's cluster stays)."""
        self.torch_layer.dispatcher.close()
