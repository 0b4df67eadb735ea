"""Reads the plugin's settings: the ``"moecomm"`` key of vLLM's ``--additional-config`` -> MoECommConfig."""

from __future__ import annotations

import json
from typing import Any

from moecomm.config import MoECommConfig

#: The key of ``--additional-config`` (vLLM's ``additional_config`` dict) the plugin reads.
CONFIG_KEY = "moecomm"


class PluginConfigError(ValueError):
    """``--additional-config`` holds a bad ``moecomm`` entry; the message names the key and valid values."""


def parse_plugin_config(additional_config: Any, default_max_tokens_per_rank: int | None = None) -> MoECommConfig:
    """Builds the MoECommConfig of the plugin from vLLM's ``additional_config``.

    Args:
        additional_config: ``vllm_config.additional_config`` (a dict; a JSON string is accepted too),
            or None. Only its ``"moecomm"`` key is read; missing means the defaults.
        default_max_tokens_per_rank: ``max_tokens_per_rank`` to use when the ``alltoall`` dispatcher is
            chosen without one (the plugin passes the most tokens one EP rank can dispatch in a step).

    Returns:
        The validated config.

    Raises:
        PluginConfigError: the ``moecomm`` entry is not a JSON object, has an unknown key, or a bad value;
            the message quotes the key and lists the valid keys or values.
    """
    if isinstance(additional_config, str):
        try:
            additional_config = json.loads(additional_config)
        except json.JSONDecodeError as exc:
            raise PluginConfigError(f"--additional-config: not valid JSON ({exc})") from None
    if additional_config is None:
        return MoECommConfig()
    if not isinstance(additional_config, dict):
        raise PluginConfigError(f"--additional-config: expected a JSON object, got {type(additional_config).__name__}")
    values = additional_config.get(CONFIG_KEY)
    if values is None:
        return MoECommConfig()
    if not isinstance(values, dict):
        raise PluginConfigError(
            f'--additional-config key "{CONFIG_KEY}": expected a JSON object of settings '
            f"({', '.join(MoECommConfig.field_names())}), got {values!r}"
        )
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
