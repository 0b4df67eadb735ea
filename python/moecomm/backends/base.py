"""The KernelBackend interface: which device computes the MoE data path's ops.

A backend is one of the three plug-in axes (see DESIGN.md). The dispatchers call only these methods, so a
new device (CUDA kernels, Ascend C) plugs in as one file plus one registry line. Every method has the
signature of the public op in :mod:`moecomm.ops` of the same name; ``out=`` buffers are contiguous, of the
exact shape and dtype, on the input's device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from moecomm.ops._out import RowsOut
from moecomm.ops.layout import RouteLayout


class KernelBackend(ABC):
    """The ops a dispatcher runs (see :mod:`moecomm.ops` for each one's shapes and dtypes)."""

    name = "backend"

    @abstractmethod
    def supports(self, device: torch.device) -> bool:
        """True when this backend computes on tensors of ``device``."""

    @abstractmethod
    def route_layout(
        self, topk_ids: torch.Tensor, num_experts: int, num_ranks: int = 1, is_kept: torch.Tensor | None = None
    ) -> RouteLayout:
        """``topk_ids [T, K]`` int32/int64 -> RouteLayout (see :func:`moecomm.ops.route_layout`)."""

    @abstractmethod
    def select_kept(
        self,
        topk_ids: torch.Tensor,
        topk_weights: torch.Tensor | None,
        num_experts: int,
        *,
        capacity: int | torch.Tensor,
        scope: str = "expert",
        num_ranks: int = 1,
        policy: str = "position",
    ) -> torch.Tensor:
        """``is_kept [T, K]`` bool under a per-bucket capacity (see :func:`moecomm.ops.select_kept`)."""

    @abstractmethod
    def permute(
        self,
        x: torch.Tensor,
        layout: RouteLayout,
        is_kept: torch.Tensor | None = None,
        *,
        out: RowsOut | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """``x [T, H]`` -> ``[N_kept, H]`` expert-major rows (into ``out``: one buffer, or a list of buffers holding
        consecutive rows; see :func:`moecomm.ops.permute`)."""

    @abstractmethod
    def unpermute(
        self,
        y: torch.Tensor,
        layout: RouteLayout,
        topk_weights: torch.Tensor,
        is_kept: torch.Tensor | None = None,
        *,
        out: torch.Tensor | None = None,
        tokens: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``y [N_kept, H]``, ``topk_weights [T, K]`` -> ``[T, H]`` weighted sums (float32 accumulation); only the
        tokens ``[begin, end)`` with ``tokens=(begin, end)`` (see :func:`moecomm.ops.unpermute`)."""

    @abstractmethod
    def pack_padded(
        self, rows: torch.Tensor, counts: torch.Tensor, capacity: int, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``rows [N, H]``, ``counts [B]`` -> ``[B, capacity, H]`` zero-padded."""

    @abstractmethod
    def unpack_padded(
        self, buffer: torch.Tensor, counts: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``buffer [B, capacity, H]``, ``counts [B]`` -> ``[sum(counts), H]``."""

    @abstractmethod
    def regroup_blocks(
        self, rows: torch.Tensor, block_rows: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``rows [N, H]`` blocks in (outer, inner) order, ``block_rows [A, B]`` -> ``[N, H]`` in (inner, outer) order."""

    @abstractmethod
    def quantize_to_wire(
        self, x: torch.Tensor, kind: str, layout: RouteLayout | None = None, *, out: RowsOut | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """``x [T, H]`` -> ``[N, W]`` int8 wire rows (codes + scales), scattered by ``layout`` like permute (into
        ``out`` as permute)."""

    @abstractmethod
    def dequantize_from_wire(
        self,
        wire: torch.Tensor,
        hidden: int,
        kind: str,
        dtype: torch.dtype,
        layout: RouteLayout | None = None,
        *,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``wire [N, W]`` int8 -> ``[N_out, H]`` of ``dtype``, scattered by ``layout`` like permute."""

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised buffer for a kernel or a collective to overwrite whole."""
        return torch.empty(shape, dtype=dtype, device=device)
