"""What :func:`~moecomm.integrations.vllm.register` installs into vLLM besides the MoE method.

vLLM 0.32 offers no plugin hook for either, so both wrap a vLLM function (once per process, idempotent):

- :func:`install_expert_parallel_layout`: ``FusedMoEParallelConfig.make`` returns vLLM's EP layout (EP over all
  TP x DP ranks, no MoE-TP); with ``"expert_parallel": N`` the wrapper gives the MoE layers the layout of
  :class:`~.layout.MoELayout` instead (EP size N, MoE-TP size M = TP x DP / N). vLLM sizes, loads and slices
  the expert weights from it: each rank keeps its expert block (``expert_map``) and its 1/M slice of them.
- :func:`install_startup_check`: the current platform's ``check_and_update_config``, which ``VllmConfig``
  calls once in the front-end process while the engine config is built, i.e. before any worker starts or
  loads weights, first validates the plugin's settings (:func:`check_settings`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from moecomm.integrations.vllm.layout import MoELayout, dispatch_token_bound
from moecomm.integrations.vllm.settings import PluginConfigError, parse_expert_parallel, parse_plugin_config

_WRAPPED = "_moecomm_wrapped"


def moe_world_size(parallel_config: Any) -> int:
    """TP x DP x PCP of vLLM's ``ParallelConfig``: the ranks vLLM's EP spans."""
    return (
        parallel_config.tensor_parallel_size
        * parallel_config.data_parallel_size
        * parallel_config.prefill_context_parallel_size
    )


def check_settings(vllm_config: Any) -> None:
    """Validates the plugin's ``--additional-config`` entries against ``vllm_config``'s parallel sizes.

    Raises:
        PluginConfigError: a bad ``moecomm`` setting or ``expert_parallel`` value, or an ``expert_parallel``
            that the layout cannot combine with another option (pipeline parallel, EPLB, the EP weight filter).
    """
    parallel = vllm_config.parallel_config
    additional = vllm_config.additional_config
    world = moe_world_size(parallel)
    ep_size = parse_expert_parallel(additional, world)
    tokens = vllm_config.scheduler_config.max_num_batched_tokens
    parse_plugin_config(
        additional,
        default_max_tokens_per_rank=dispatch_token_bound(tokens, parallel.tensor_parallel_size, world // ep_size),
    )
    if ep_size == world or not parallel.enable_expert_parallel:
        return
    conflicts = []
    if parallel.pipeline_parallel_size > 1:
        conflicts.append(f"--pipeline-parallel-size {parallel.pipeline_parallel_size}")
    if parallel.enable_eplb:
        conflicts.append("--enable-eplb")
    if getattr(parallel, "enable_ep_weight_filter", False):
        conflicts.append("enable_ep_weight_filter (it keeps the experts of an EP degree of TP x DP)")
    if conflicts:
        raise PluginConfigError(
            f'--additional-config key "expert_parallel": an EP degree of {ep_size} (below TP x DP = {world}) '
            f"cannot be combined with {', '.join(conflicts)}"
        )


def _layout_make(original):
    def make(*args: Any, **kwargs: Any):
        config = original(*args, **kwargs)
        if not config.use_ep:
            return config
        from vllm.config import get_current_vllm_config

        ep_size = parse_expert_parallel(get_current_vllm_config().additional_config, config.ep_size)
        if ep_size == config.ep_size:
            return config
        layout = MoELayout(flat_rank=config.ep_rank, flat_size=config.ep_size, ep_size=ep_size)
        return dataclasses.replace(
            config,
            ep_size=layout.ep_size,
            ep_rank=layout.ep_rank,
            tp_size=layout.moe_tp_size,
            tp_rank=layout.moe_tp_rank,
        )

    setattr(make, _WRAPPED, True)
    return make


def install_expert_parallel_layout() -> None:
    """Makes vLLM's MoE layers use the ``expert_parallel`` layout (see the module docstring)."""
    from vllm.model_executor.layers.fused_moe.config import FusedMoEParallelConfig

    if not getattr(FusedMoEParallelConfig.make, _WRAPPED, False):
        FusedMoEParallelConfig.make = staticmethod(_layout_make(FusedMoEParallelConfig.make))


def install_startup_check() -> None:
    """Makes the current platform's ``check_and_update_config`` run :func:`check_settings` first."""
    from vllm.platforms import current_platform

    platform = type(current_platform)
    original = platform.check_and_update_config
    if getattr(original, _WRAPPED, False):
        return

    def check_and_update_config(cls, vllm_config) -> None:
        check_settings(vllm_config)
        original(vllm_config)

    setattr(check_and_update_config, _WRAPPED, True)
    platform.check_and_update_config = classmethod(check_and_update_config)
