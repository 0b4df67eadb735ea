"""vLLM plugin: MoE expert parallel through moecomm, configured by ``--additional-config``.

Installed with moecomm as the ``vllm.general_plugins`` entry point ``moecomm``; vLLM calls :func:`register`
in every process. Usage::

    VLLM_CPU_OMP_THREADS_BIND="0|1" vllm serve MODEL --tensor-parallel-size 2 --enable-expert-parallel \\
        --additional-config '{"moecomm": {"dispatcher": "alltoallv", "token_drop_ratio": 0.1}}'
"""

from __future__ import annotations

from moecomm.integrations.vllm.settings import CONFIG_KEY, PluginConfigError, parse_plugin_config

__all__ = ["CONFIG_KEY", "PluginConfigError", "parse_plugin_config", "register"]

#: Name of the vLLM class the plugin replaces (``CustomOp.register_oot`` key).
REPLACED_OP = "UnquantizedFusedMoEMethod"


def register() -> None:
    """Entry point: makes vLLM build :class:`~.method.MoeCommFusedMoEMethod` for unquantized MoE layers.

    Safe to call more than once per process (vLLM may load plugins repeatedly).
    """
    from vllm.model_executor.custom_op import CustomOp, op_registry_oot

    from moecomm.integrations.vllm.method import MoeCommFusedMoEMethod

    if op_registry_oot.get(REPLACED_OP) is MoeCommFusedMoEMethod:
        return
    CustomOp.register_oot(MoeCommFusedMoEMethod, name=REPLACED_OP)
