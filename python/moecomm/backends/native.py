"""The ``native`` kernel backend: moecomm's C++ CPU kernels (``moecomm._C``) through :mod:`moecomm.ops`."""

from __future__ import annotations

import torch

from moecomm import ops
from moecomm.backends.base import KernelBackend


class NativeBackend(KernelBackend):
    """C++ CPU kernels (threads from ``torch.get_num_threads()``, the GIL released)."""

    name = "native"

    def supports(self, device: torch.device) -> bool:
        return torch.device(device).type == "cpu"

    route_layout = staticmethod(ops.route_layout)  # type: ignore[assignment]
    select_kept = staticmethod(ops.select_kept)  # type: ignore[assignment]
    permute = staticmethod(ops.permute)  # type: ignore[assignment]
    unpermute = staticmethod(ops.unpermute)  # type: ignore[assignment]
    pack_padded = staticmethod(ops.pack_padded)  # type: ignore[assignment]
    unpack_padded = staticmethod(ops.unpack_padded)  # type: ignore[assignment]
    regroup_blocks = staticmethod(ops.regroup_blocks)  # type: ignore[assignment]
    quantize_to_wire = staticmethod(ops.quantize_to_wire)  # type: ignore[assignment]
    dequantize_from_wire = staticmethod(ops.dequantize_from_wire)  # type: ignore[assignment]
