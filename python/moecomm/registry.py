"""One registry of the three plug-in axes' members: wire patterns, transports, kernel backends.

Config validation, ``make_dispatcher``, the transports' factory, the kernel-backend choice and
``moecomm bench`` all read these tables. Adding a member is one file plus one line here: the value is
``"module:attribute"``, imported only when that member is used (so ``import moecomm`` stays cheap).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Wire patterns (what is exchanged): ``comm/dispatchers/``.
DISPATCHERS: dict[str, str] = {
    "alltoallv": "moecomm.comm.dispatchers.alltoallv:AlltoallvDispatcher",
    "alltoallv-pairs": "moecomm.comm.dispatchers.alltoallv_pairs:AlltoallvPairsDispatcher",
    "alltoall": "moecomm.comm.dispatchers.alltoall:AlltoallDispatcher",
    "allgather": "moecomm.comm.dispatchers.allgather:AllgatherDispatcher",
}

#: Transports (how bytes move between ranks): ``comm/transports/``. ``"auto"`` picks among them.
TRANSPORTS: dict[str, str] = {
    "torch": "moecomm.comm.transports.torch_dist:TorchTransport",
    "shm": "moecomm.comm.transports.shm:ShmTransport",
}

#: Transports over another framework's own cluster (no torch.distributed group): valid ``config.transport``
#: values that only that framework's dispatcher factory builds (``auto`` never picks them for a torch group).
FRAMEWORK_TRANSPORTS: dict[str, str] = {
    "mindspore": "moecomm.integrations.mindspore.transport:MindSporeTransport",
}

#: Kernel backends (which device computes the ops): ``backends/``. ``"auto"`` picks by the tensors' device.
KERNEL_BACKENDS: dict[str, str] = {
    "native": "moecomm.backends.native:NativeBackend",
    "torch": "moecomm.backends.torch_backend:TorchBackend",
}

#: Adapters that build an ``EPMoE`` from another library's MoE block (``EPMoE.from_module``).
BLOCK_ADAPTERS: dict[str, str] = {
    "transformers": "moecomm.integrations.transformers:adopt_block",
}

AUTO = "auto"


def names(table: dict[str, str], *, with_auto: bool = False) -> tuple[str, ...]:
    """The member names of ``table`` (plus ``"auto"`` first when asked)."""
    return ((AUTO,) if with_auto else ()) + tuple(table)


def load(table: dict[str, str], name: str) -> Any:
    """Imports and returns the member ``name`` of ``table``."""
    try:
        target = table[name]
    except KeyError:
        raise ValueError(f"expected one of {', '.join(repr(n) for n in table)}, got {name!r}") from None
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)
