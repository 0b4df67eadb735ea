"""moecomm for MindSpore: ops on ``mindspore.Tensor``, transports over MindSpore's cluster, the EP MoE layer
as a ``mindspore.nn.Cell``, and a local cluster launcher.

| name | what |
|---|---|
| :mod:`~moecomm.integrations.mindspore.ops` | :mod:`moecomm.ops` with MindSpore tensors in and out, zero-copy on CPU |
| :class:`EPMoE` | the expert-parallel MoE layer as a ``mindspore.nn.Cell`` (same config, weights and results as ``moecomm.EPMoE``) |
| :func:`make_mindspore_dispatcher` / :func:`make_mindspore_transport` | moecomm's dispatchers over ``shm`` (bootstrapped over MindSpore) or MindSpore's collectives |
| :func:`run_mindspore_local` | a scheduler + N CPU workers on 127.0.0.1, bounded and always shut down (needs no MindSpore in the caller) |

Everything but :func:`run_mindspore_local` imports MindSpore, so it is loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from moecomm.integrations.mindspore.launch import run_mindspore_local

_LAZY = {
    "EPMoE": "moecomm.integrations.mindspore.layer",
    "MindSporeTransport": "moecomm.integrations.mindspore.transport",
    "make_mindspore_transport": "moecomm.integrations.mindspore.comm",
    "make_mindspore_dispatcher": "moecomm.integrations.mindspore.comm",
    "ops": "moecomm.integrations.mindspore.ops",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'moecomm.integrations.mindspore' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    return module if name == "ops" else getattr(module, name)


__all__ = ["run_mindspore_local", *_LAZY]
