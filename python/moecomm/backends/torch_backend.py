"""The ``torch`` kernel backend: device-generic pure torch (``moecomm.ops.reference``).

It runs wherever torch runs (CPU, CUDA, NPU through torch_npu); on CPU it gives the native backend's
results (route_layout and permute bit-identical, combine within float32-accumulation rounding).
``out=`` buffers receive a copy of the result (the reference ops allocate their own).
"""

from __future__ import annotations

import torch

from moecomm.backends.base import KernelBackend
from moecomm.ops import reference
from moecomm.ops.layout import RouteLayout


def _into(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    """``result``, or ``out`` holding a copy of it (shapes must match)."""
    if out is None:
        return result
    if out.shape != result.shape or out.dtype != result.dtype or out.device != result.device:
        raise ValueError(
            f"out: expected a {result.dtype} tensor of shape {list(result.shape)} on {result.device}, "
            f"got {out.dtype} {list(out.shape)} on {out.device}"
        )
    return out.copy_(result)


class TorchBackend(KernelBackend):
    """Pure-torch ops on the input's device."""

    name = "torch"

    def supports(self, device: torch.device) -> bool:
        return True

    route_layout = staticmethod(reference.route_layout)  # type: ignore[assignment]
    select_kept = staticmethod(reference.select_kept)  # type: ignore[assignment]

    def permute(
        self, x: torch.Tensor, layout: RouteLayout, is_kept: torch.Tensor | None = None, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        return _into(out, reference.permute(x, layout, is_kept))

    def unpermute(
        self,
        y: torch.Tensor,
        layout: RouteLayout,
        topk_weights: torch.Tensor,
        is_kept: torch.Tensor | None = None,
        *,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return _into(out, reference.unpermute(y, layout, topk_weights, is_kept))

    def pack_padded(
        self, rows: torch.Tensor, counts: torch.Tensor, capacity: int, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        return _into(out, reference.pack_padded(rows, counts, capacity))

    def unpack_padded(
        self, buffer: torch.Tensor, counts: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        return _into(out, reference.unpack_padded(buffer, counts))

    def regroup_blocks(
        self, rows: torch.Tensor, block_rows: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        return _into(out, reference.regroup_blocks(rows, block_rows))
