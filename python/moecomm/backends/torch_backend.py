"""The ``torch`` kernel backend: device-generic pure torch (``moecomm.ops.reference``).

It runs wherever torch runs (CPU, CUDA, NPU through torch_npu); on CPU it gives the native backend's
results (route_layout and permute bit-identical, combine within float32-accumulation rounding).
"""

from __future__ import annotations

import torch

from moecomm.backends.base import KernelBackend
from moecomm.ops import reference


class TorchBackend(KernelBackend):
    """Pure-torch ops on the input's device."""

    name = "torch"

    def supports(self, device: torch.device) -> bool:
        return True

    route_layout = staticmethod(reference.route_layout)  # type: ignore[assignment]
    select_kept = staticmethod(reference.select_kept)  # type: ignore[assignment]
    permute = staticmethod(reference.permute)  # type: ignore[assignment]
    unpermute = staticmethod(reference.unpermute)  # type: ignore[assignment]
    pack_padded = staticmethod(reference.pack_padded)  # type: ignore[assignment]
    unpack_padded = staticmethod(reference.unpack_padded)  # type: ignore[assignment]
    regroup_blocks = staticmethod(reference.regroup_blocks)  # type: ignore[assignment]
    quantize_to_wire = staticmethod(reference.quantize_to_wire)  # type: ignore[assignment]
    dequantize_from_wire = staticmethod(reference.dequantize_from_wire)  # type: ignore[assignment]
