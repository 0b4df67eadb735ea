"""Kernel backends: which device computes the MoE data path's ops (one of the three plug-in axes).

| name | computes on | what |
|---|---|---|
| ``native`` | CPU | moecomm's C++ kernels (``moecomm._C``) |
| ``torch`` | any torch device | device-generic pure torch (``moecomm.ops.reference``) |

``"auto"`` picks ``native`` for CPU tensors and ``torch`` for every other device.
"""

from __future__ import annotations

import functools

import torch

from moecomm.backends.base import KernelBackend
from moecomm.registry import AUTO, KERNEL_BACKENDS, load


@functools.cache
def get_backend(name: str) -> KernelBackend:
    """The (shared, stateless) backend instance registered as ``name``."""
    return load(KERNEL_BACKENDS, name)()


def select_backend(name: str, device: torch.device | str) -> KernelBackend:
    """The backend ``name`` (or, for ``"auto"``, native on CPU and torch elsewhere) for tensors on ``device``.

    Raises:
        ValueError: naming ``kernel_backend`` when the chosen backend cannot compute on ``device``.
    """
    device = torch.device(device)
    if name == AUTO:
        name = "native" if device.type == "cpu" else "torch"
    backend = get_backend(name)
    if not backend.supports(device):
        raise ValueError(
            f"kernel_backend: {name!r} computes on CPU tensors only, got tensors on {device} (use 'torch' or 'auto')"
        )
    return backend


__all__ = ["KernelBackend", "get_backend", "select_backend"]
