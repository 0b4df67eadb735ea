"""Reads the plugin's settings from vLLM's ``--additional-config``.

- the ``"moecomm"`` key -> :class:`~moecomm.config.MoECommConfig` (:func:`parse_plugin_config`);
- ``"expert_parallel"`` (top level, the key vLLM-MindSpore documents, or inside ``"moecomm"``; both must agree)
  -> the EP degree of the MoE layers (:func:`parse_expert_parallel`).
"""

from __future__ import annotations

import json
from typing import Any

from moecomm.config import MoECommConfig

#: The key of ``--additional-config`` (vLLM's ``additional_config`` dict) the plugin reads.
CONFIG_KEY = "moecomm"
#: The EP degree key, read at the top level and inside ``CONFIG_KEY``.
EXPERT_PARALLEL_KEY = "expert_parallel"


class PluginConfigError(ValueError):
    """``--additional-config`` holds a bad ``moecomm`` entry; the message names the key and valid values."""


def _as_dict(additional_config: Any) -> dict:
    """vLLM's ``additional_config`` (a dict, a JSON string or None) as a dict."""
    if isinstance(additional_config, str):
        try:
            additional_config = json.loads(additional_config)
        except json.JSONDecodeError as exc:
            raise PluginConfigError(f"--additional-config: not valid JSON ({exc})") from None
    if additional_config is None:
        return {}
    if not isinstance(additional_config, dict):
        raise PluginConfigError(f"--additional-config: expected a JSON object, got {type(additional_config).__name__}")
    return additional_config


def _moecomm_values(additional_config: dict) -> dict:
    values = additional_config.get(CONFIG_KEY)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise PluginConfigError(
            f'--additional-config key "{CONFIG_KEY}": expected a JSON object of settings '
            f"({', '.join((*MoECommConfig.field_names(), EXPERT_PARALLEL_KEY))}), got {values!r}"
        )
    return values


def parse_plugin_config(additional_config: Any, default_max_tokens_per_rank: int | None = None) -> MoECommConfig:
    """Builds the MoECommConfig of the plugin from vLLM's ``additional_config``.

    Args:
        additional_config: ``vllm_config.additional_config`` (a dict; a JSON string is accepted too),
            or None. Only its ``"moecomm"`` key is read (less ``"expert_parallel"``, see
            :func:`parse_expert_parallel`); missing means the defaults.
        default_max_tokens_per_rank: ``max_tokens_per_rank`` to use when the ``alltoall`` dispatcher is
            chosen without one (the plugin passes the most tokens one EP rank can dispatch in a step).

    Returns:
        The validated config.

    Raises:
        PluginConfigError: the ``moecomm`` entry is not a JSON object, has an unknown key, or a bad value;
            the message quotes the key and lists the valid keys or values.
    """
    values = {k: v for k, v in _moecomm_values(_as_dict(additional_config)).items() if k != EXPERT_PARALLEL_KEY}
    if (
        values.get("dispatcher") == "alltoall"
        and values.get("max_tokens_per_rank") is None
        and default_max_tokens_per_rank is not None
    ):
        values = {**values, "max_tokens_per_rank": default_max_tokens_per_rank}
    try:
        return MoECommConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise PluginConfigError(f'--additional-config key "{CONFIG_KEY}": {exc}') from None


def parse_expert_parallel(additional_config: Any, moe_world_size: int) -> int:
    """The EP degree N of the MoE layers: ``"expert_parallel"`` of ``additional_config``, else ``moe_world_size``.

    Args:
        additional_config: as for :func:`parse_plugin_config`. N is read at the top level and inside
            ``"moecomm"``; where both are given they must be equal.
        moe_world_size: the ranks the MoE layers span, TP x DP (x PCP); N must divide it. The
            ``moe_world_size / N`` ranks that hold the same experts split each of them (MoE tensor parallel).

    Raises:
        PluginConfigError: N is not a positive int, does not divide ``moe_world_size``, or the two places
            disagree; the message names the key and both numbers.
    """
    config = _as_dict(additional_config)
    given = {}
    if EXPERT_PARALLEL_KEY in config:
        given[f'--additional-config key "{EXPERT_PARALLEL_KEY}"'] = config[EXPERT_PARALLEL_KEY]
    values = _moecomm_values(config)
    if EXPERT_PARALLEL_KEY in values:
        given[f'--additional-config key "{CONFIG_KEY}.{EXPERT_PARALLEL_KEY}"'] = values[EXPERT_PARALLEL_KEY]
    if not given:
        return moe_world_size
    for where, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PluginConfigError(
                f"{where}: expected a positive integer EP degree dividing TP x DP = {moe_world_size}, got {value!r}"
            )
        if moe_world_size % value:
            raise PluginConfigError(
                f"{where}: the EP degree {value} must divide TP x DP = {moe_world_size} "
                f"(the MoE ranks split into EP groups of {value}); valid values: "
                + ", ".join(str(d) for d in range(1, moe_world_size + 1) if moe_world_size % d == 0)
            )
    if len(set(given.values())) > 1:
        raise PluginConfigError(
            " and ".join(f"{where} = {value!r}" for where, value in given.items()) + ": they must agree"
        )
    return next(iter(given.values()))
