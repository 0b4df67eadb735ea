"""moecomm: a native-extension runtime for Mixture-of-Experts expert parallelism.

Public names are imported lazily, so ``import moecomm`` (done by the vLLM plugin loader in every
process) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "ops": "moecomm.ops",
    "MoECommConfig": "moecomm.config",
    "make_dispatcher": "moecomm.comm",
    "EPMoE": "moecomm.layer",
    "patch_model": "moecomm.integrations.transformers",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from moecomm import ops
    from moecomm.comm import make_dispatcher
    from moecomm.config import MoECommConfig
    from moecomm.integrations.transformers import patch_model
    from moecomm.layer import EPMoE


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'moecomm' has no attribute {name!r}")
    value = importlib.import_module(module)
    return value if name == "ops" else getattr(value, name)
