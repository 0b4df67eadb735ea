"""The out-of-tree MoE method: vLLM's unquantized fused MoE with its expert parallel run through moecomm.

vLLM builds every unquantized MoE layer with ``UnquantizedFusedMoEMethod``; :func:`register` makes it build
:class:`MoeCommFusedMoEMethod` instead. Without ``--enable-expert-parallel`` it is the parent class, unchanged.
With it, each forward of a layer (``apply``) does, on every EP rank:

1. take this TP rank's slice of the layer's tokens (see :mod:`.ownership`);
2. ``dispatch`` the slice over vLLM's EP process group with a moecomm dispatcher (drops per the config);
3. run the local experts (``moecomm.layer.experts.swiglu_experts``) on the layer's own ``w13_weight`` /
   ``w2_weight`` (vLLM keeps only this rank's experts: ``[E_local, 2I, H]`` and ``[E_local, H, I]``);
4. ``combine`` back to the slice's tokens and all-gather the slices over the TP group.

With ``"expert_parallel": N`` below TP x DP (see :mod:`.layout`), dispatch runs over an EP group of N ranks and
the M = TP x DP / N ranks of an expert block each hold a slice of its experts: between steps 1 and 2 they
pool their tokens, and after step 4's combine they sum their partial outputs (:mod:`.moe_tp`).

The output is then complete on every rank, so the method tells vLLM's MoE runner not to all-reduce it again
(:class:`ReducedOutputMarker`). The CPU backend's weight prepacking is skipped: moecomm needs the plain layout.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from vllm.config import get_current_vllm_config
from vllm.model_executor.layers.fused_moe.config import FusedMoEConfig
from vllm.model_executor.layers.fused_moe.fused_moe_method_base import FusedMoEMethodBase
from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import UnquantizedFusedMoEMethod

from moecomm.comm.transports.base import Transport
from moecomm.integrations.vllm.forward import ep_moe_forward
from moecomm.integrations.vllm.layout import MoELayout, dispatch_token_bound
from moecomm.integrations.vllm.moe_groups import moe_layout_groups
from moecomm.integrations.vllm.settings import parse_plugin_config
from moecomm.integrations.vllm.stats_log import DropStatsLog, logger, process_stats_log

_logged_once: set[str] = set()


def log_once(key: str, message: str, level: int = logging.INFO) -> None:
    """Logs ``message`` the first time ``key`` is seen in this process."""
    if key not in _logged_once:
        _logged_once.add(key)
        logger.log(level, message)


class ReducedOutputMarker:
    """Stands in for vLLM's ``moe_kernel`` to say "the MoE output is already complete on every rank".

    vLLM 0.32's MoE runner all-reduces the routed output over the TP group unless
    ``quant_method.moe_kernel.output_is_reduced()``; the other attributes are the ones the runner and the
    method base class read from a kernel, answered for a non-monolithic kernel without its own
    shared-expert overlap, index dtype or expert mask.
    """

    is_monolithic = False
    can_overlap_shared_experts = False

    class _PrepareFinalize:
        @staticmethod
        def topk_indices_dtype() -> None:
            return None

    class _FusedExperts:
        consumes_expert_mask = False

    prepare_finalize = _PrepareFinalize()
    fused_experts = _FusedExperts()

    @staticmethod
    def output_is_reduced() -> bool:
        return True


def real_token_count(num_rows: int) -> int:
    """How many of a layer's ``num_rows`` input rows are real tokens (the rest: vLLM's padding).

    With data parallel, vLLM pads every DP rank's batch to the same size and runs dummy batches (all padding)
    on idle DP ranks; ``ForwardContext.is_padding`` marks those rows (a suffix). Their activations are not
    tokens (they can hold NaN router weights), so the plugin dispatches only the real rows: an idle rank
    joins the step with zero tokens.
    """
    from vllm.forward_context import get_forward_context, is_forward_context_available

    padding = get_forward_context().is_padding if is_forward_context_available() else None
    if padding is None:
        return num_rows
    padding = padding[:num_rows].cpu()
    num_real = num_rows - int(padding.sum())
    if bool(padding[:num_real].any()):
        raise RuntimeError(
            "moecomm vLLM plugin: ForwardContext.is_padding marks padding rows that are not a suffix of the batch"
        )
    return num_real


class MoeCommFusedMoEMethod(UnquantizedFusedMoEMethod):
    """``UnquantizedFusedMoEMethod`` whose expert parallel goes through moecomm (see the module docstring).

    Args:
        moe: vLLM's ``FusedMoEConfig`` of the layer.
    """

    def __init__(self, moe: FusedMoEConfig) -> None:
        super().__init__(moe)
        vllm_config = get_current_vllm_config()
        parallel = vllm_config.parallel_config
        tokens = vllm_config.scheduler_config.max_num_batched_tokens
        moe_tp_size = moe.moe_parallel_config.tp_size if moe.moe_parallel_config.use_ep else 1
        # Validate even when inactive: a bad --additional-config must stop startup either way.
        self.moecomm_config = parse_plugin_config(
            vllm_config.additional_config,
            default_max_tokens_per_rank=dispatch_token_bound(tokens, parallel.tensor_parallel_size, moe_tp_size),
        )
        self.moecomm_active = bool(parallel.enable_expert_parallel)
        if not self.moecomm_active:
            log_once(
                "inactive",
                "moecomm: --enable-expert-parallel is not set; MoE layers keep vLLM's own path "
                "(moecomm settings are not used)",
            )
            return
        self._check_supported(moe)
        self._dispatcher = None
        self._tp_group: dist.ProcessGroup | None = None
        self._tp_rank, self._tp_size = 0, 1
        self._inner: Transport | None = None
        self._stats_log: DropStatsLog | None = None

    @staticmethod
    def _check_supported(moe: FusedMoEConfig) -> None:
        activation = getattr(moe.activation, "value", moe.activation)
        problems = []
        if activation != "silu" or not moe.is_act_and_mul:
            problems.append(f"activation {activation!r} (moecomm runs SwiGLU experts: 'silu' gated)")
        if moe.has_bias:
            problems.append("expert biases")
        parallel = moe.moe_parallel_config
        if parallel.enable_eplb:
            problems.append("EPLB (--enable-eplb)")
        if parallel.pcp_size > 1:
            problems.append("prefill context parallel")
        if parallel.is_sequence_parallel:
            problems.append("sequence-parallel MoE")
        if problems:
            raise NotImplementedError(
                "moecomm vLLM plugin: this MoE layer uses " + ", ".join(problems) + ", which moecomm does not "
                "support; run without --enable-expert-parallel to use vLLM's own MoE path"
            )

    # --- what vLLM's runner asks of the method -------------------------------------------------------------

    @property
    def supports_internal_mk(self) -> bool:
        # True: vLLM must not all-gather DP ranks' tokens before the layer (moecomm moves them itself).
        return True if self.moecomm_active else super().supports_internal_mk

    @property
    def is_monolithic(self) -> bool:
        return False if self.moecomm_active else super().is_monolithic

    def process_weights_after_loading(self, layer) -> None:
        """Keeps vLLM's weight layout (no CPU prepack) and builds the dispatcher over vLLM's EP group."""
        if not self.moecomm_active:
            super().process_weights_after_loading(layer)
            return
        FusedMoEMethodBase.process_weights_after_loading(self, layer)
        from vllm.distributed import get_ep_group, get_tp_group

        from moecomm import make_dispatcher
        from moecomm.comm.transports.torch_dist import TorchTransport

        parallel = self.moe.moe_parallel_config
        ep_group = get_ep_group()
        # vLLM's EP group spans all TP x DP ranks; the layout may split them into EP groups and MoE-TP groups.
        layout = MoELayout(
            flat_rank=parallel.ep_rank * parallel.tp_size + parallel.tp_rank,
            flat_size=parallel.ep_size * parallel.tp_size,
            ep_size=parallel.ep_size,
        )
        if (layout.flat_rank, layout.flat_size) != (ep_group.rank_in_group, ep_group.world_size):
            raise RuntimeError(
                f"moecomm vLLM plugin: layer {layer.layer_name}: the MoE layout puts this rank at {layout.flat_rank} "
                f"of {layout.flat_size} but vLLM's EP group at {ep_group.rank_in_group} of {ep_group.world_size}"
            )
        num_experts = self.moe.num_experts
        num_local = layer.w13_weight.shape[0]
        if num_local * layout.ep_size != num_experts:
            raise ValueError(
                f"moecomm vLLM plugin: layer {layer.layer_name} holds {num_local} experts on each of "
                f"{layout.ep_size} EP ranks but the model has {num_experts}; moecomm needs the experts split evenly"
            )
        self._check_expert_placement(layer, layout.ep_rank, num_local)
        dispatch_group, inner_group = moe_layout_groups(ep_group, layout, self.moecomm_config.timeout_s)
        self._dispatcher = make_dispatcher(self.moecomm_config, num_experts=num_experts, group=dispatch_group)
        if inner_group is not None:
            self._inner = TorchTransport(inner_group, self.moecomm_config.timeout_s, owner="moecomm vLLM MoE-TP")
        tp_group = get_tp_group()
        self._tp_size, self._tp_rank = tp_group.world_size, tp_group.rank_in_group
        self._tp_group = tp_group.device_group if self._tp_size > 1 else None
        # With TP > 1 the all-gathered output is complete: vLLM must not all-reduce it. A model that asked for
        # reduce_results=False sums the output itself, so there every rank returns its slice zero-padded.
        self._gather_output = self._tp_size > 1 and not self.moe.skip_final_all_reduce
        self.moe_kernel = ReducedOutputMarker() if self._gather_output else None
        self._stats_log = process_stats_log(self.moecomm_config.log_stats_every, rank=layout.flat_rank)
        log_once(
            "active",
            f"moecomm: MoE expert parallel through moecomm on EP rank {layout.ep_rank}/{layout.ep_size} "
            f"(MoE-TP {layout.moe_tp_rank}/{layout.moe_tp_size}, TP {self._tp_rank}/{self._tp_size}, "
            f"DP {parallel.dp_rank}/{parallel.dp_size}); {layout.describe(num_local, num_experts)}; "
            f"{self._dispatcher.transport.name} transport ({self._dispatcher.transport.chosen_because}); "
            f"config {self.moecomm_config.to_dict()}",
        )

    @staticmethod
    def _check_expert_placement(layer, ep_rank: int, num_local: int) -> None:
        expert_map = layer.expert_map
        if expert_map is None:
            return
        expected = torch.full_like(expert_map, -1)
        first = ep_rank * num_local
        expected[first : first + num_local] = torch.arange(num_local, dtype=expert_map.dtype)
        if not torch.equal(expert_map.cpu(), expected.cpu()):
            raise ValueError(
                f"moecomm vLLM plugin: layer {layer.layer_name} on EP rank {ep_rank} does not own the contiguous "
                f"expert block [{first}, {first + num_local}); moecomm needs --expert-placement-strategy linear"
            )

    def apply(
        self,
        layer,
        x: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_ids: torch.Tensor,
        shared_experts=None,
        shared_experts_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The routed experts' output for this rank's tokens.

        Args:
            layer: vLLM's ``RoutedExperts`` (holds ``w13_weight [E_local, 2I/M, H]``, ``w2_weight [E_local, H, I/M]``;
                M: the MoE-TP degree, 1 unless ``expert_parallel`` < TP x DP).
            x: ``[T, H]`` activations (float32/bfloat16/float16), the same on every TP rank of a DP rank; rows
                vLLM marks as padding are not dispatched (see :func:`real_token_count`) and come back as zeros.
            topk_weights: ``[T, K]`` float32 router weights.
            topk_ids: ``[T, K]`` int32/int64 global expert ids.
            shared_experts, shared_experts_input: unused here (vLLM's runner runs shared experts itself).

        Returns:
            ``[T, H]`` in x's dtype: complete (all-gathered) with TP > 1, unless the model reduces it itself
            (then this rank's slice, zeros elsewhere).
        """
        if not self.moecomm_active:
            return super().apply(layer, x, topk_weights, topk_ids, shared_experts, shared_experts_input)
        if self._dispatcher is None:
            raise RuntimeError("moecomm vLLM plugin: apply() before process_weights_after_loading()")
        num_rows = x.shape[0]
        num_real = real_token_count(num_rows)
        out, handle = ep_moe_forward(
            self._dispatcher,
            x[:num_real],
            topk_ids[:num_real],
            topk_weights[:num_real],
            layer.w13_weight,
            layer.w2_weight,
            tp_rank=self._tp_rank,
            tp_size=self._tp_size,
            tp_group=self._tp_group,
            gather=self._gather_output,
            inner=self._inner,
        )
        self._stats_log.record(layer.layer_name, handle.stats)
        if num_real < num_rows:  # padding rows: not real tokens, their output is never read
            out = torch.cat([out, out.new_zeros(num_rows - num_real, out.shape[1])])
        return out
