"""vLLM plugin: MoE expert parallel through moecomm, configured by ``--additional-config``.

Installed with moecomm as the ``vllm.general_plugins`` entry point ``moecomm``; vLLM calls :func:`register`
in every process. Usage::

    VLLM_CPU_OMP_THREADS_BIND="0|1" vllm serve MODEL --tensor-parallel-size 2 --enable-expert-parallel \\
        --additional-config '{"moecomm": {"dispatcher": "alltoallv", "token_drop_ratio": 0.1}}'

``'{"expert_parallel": 1, "moecomm": {...}}'`` sets the MoE layers' EP degree (here: pure MoE tensor parallel).
"""

from __future__ import annotations

from moecomm.integrations.vllm.settings import (
    CONFIG_KEY,
    EXPERT_PARALLEL_KEY,
    PluginConfigError,
    parse_expert_parallel,
    parse_plugin_config,
)

__all__ = [
    "CONFIG_KEY",
    "EXPERT_PARALLEL_KEY",
    "PluginConfigError",
    "parse_expert_parallel",
    "parse_plugin_config",
    "register",
]

#: Name of the vLLM class the plugin replaces (``CustomOp.register_oot`` key).
REPLACED_OP = "UnquantizedFusedMoEMethod"


def register() -> None:
    """Entry point: makes vLLM build :class:`~.method.MoeCommFusedMoEMethod` for unquantized MoE layers, check
    the plugin's settings when the engine config is built, and lay the MoE layers out per ``expert_parallel``
    (see :mod:`.hooks`).

    Safe to call more than once per process (vLLM may load plugins repeatedly).
    """
    from vllm.model_executor.custom_op import CustomOp, op_registry_oot

    from moecomm.integrations.vllm.hooks import install_expert_parallel_layout, install_startup_check
    from moecomm.integrations.vllm.method import MoeCommFusedMoEMethod

    install_startup_check()
    install_expert_parallel_layout()
    if op_registry_oot.get(REPLACED_OP) is MoeCommFusedMoEMethod:
        return
    CustomOp.register_oot(MoeCommFusedMoEMethod, name=REPLACED_OP)
