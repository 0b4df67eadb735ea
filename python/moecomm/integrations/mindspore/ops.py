"""moecomm's ops for MindSpore tensors: the names, arguments and results of :mod:`moecomm.ops`, with
``mindspore.Tensor`` in and out.

Every op bridges its MindSpore CPU tensors to torch views of the same memory (DLPack, see
:mod:`moecomm.integrations.mindspore.bridge`), runs moecomm's native CPU kernel on them and hands the
results back as MindSpore tensors over the kernel's output memory: no row is copied on the way in or out.
An ``out=`` buffer is written in place and returned as the very ``mindspore.Tensor`` passed.
:class:`RouteLayout` is moecomm's, with MindSpore tensors in its tensor fields.

Bad input raises the errors of :mod:`moecomm.ops` (same argument names, same messages); an argument
that is not a MindSpore tensor where one belongs raises ``TypeError`` naming it, and a tensor on another
device than the CPU ``ValueError`` naming it.

| op | in | out |
|---|---|---|
| route_layout | topk_ids [T,K] int32/64 | RouteLayout (tokens_per_expert [E], tokens_per_rank [R], row_of_pair [T,K] int64) |
| select_kept | topk_ids [T,K], topk_weights [T,K] | is_kept [T,K] bool |
| permute / unpermute | x [T,H] / y [N_kept,H], topk_weights [T,K] | [N_kept,H] / [T,H] |
| pack_padded / unpack_padded | rows [N,H], counts [B] int64 | [B,capacity,H] and back |
| regroup_blocks | rows [N,H], block_rows [A,B] int64 | [N,H] |
| quantize_rows / dequantize_rows | x [N,H] / q [N,H], scales | (q int8/float8_e4m3fn, scales float32) / [N,H] |
| quantize_to_wire / dequantize_from_wire | x [T,H] / wire [N,W] int8, layout | wire rows / [N,H] |
| capacity_for_ratio | loads [B] int | int |
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch

import mindspore as ms
from moecomm import ops as torch_ops
from moecomm.integrations.mindspore.bridge import check_ms_tensor, to_mindspore, to_torch, torch_dtype_of
from moecomm.ops import QUANT_KINDS, RouteLayout, capacity_from_factor, drop_budget, wire_format, wire_row_bytes

_LAYOUT_TENSORS = ("topk_ids", "tokens_per_expert", "tokens_per_rank", "row_of_pair")


def _layout_to_torch(name: str, layout: object) -> object:
    """A RouteLayout of MindSpore tensors as one of torch views (anything else is left for the op to refuse)."""
    if not isinstance(layout, RouteLayout):
        return layout
    views = {field: to_torch(f"{name}.{field}", getattr(layout, field)) for field in _LAYOUT_TENSORS}
    return dataclasses.replace(layout, **views)


class _Outputs:
    """Turns an op's torch results into MindSpore tensors, handing back the caller's own ``out=`` objects."""

    def __init__(self) -> None:
        self._given: dict[tuple[int, tuple[int, ...], torch.dtype], ms.Tensor] = {}

    def remember(self, view: torch.Tensor, original: ms.Tensor) -> None:
        self._given[(view.data_ptr(), tuple(view.shape), view.dtype)] = original

    def convert(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            key = (value.data_ptr(), tuple(value.shape), value.dtype)
            return self._given.get(key) if key in self._given and value.numel() else to_mindspore(value)
        if isinstance(value, RouteLayout):
            return dataclasses.replace(value, **{f: to_mindspore(getattr(value, f)) for f in _LAYOUT_TENSORS})
        if isinstance(value, tuple):
            return tuple(self.convert(v) for v in value)
        return value


def _bridged(
    op: Callable[..., Any],
    *,
    tensors: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    either: tuple[str, ...] = (),
    layouts: tuple[str, ...] = (),
    dtypes: tuple[str, ...] = (),
) -> Callable[..., Any]:
    """``op`` of :mod:`moecomm.ops` taking and returning MindSpore tensors.

    ``tensors``: arguments that must be MindSpore tensors; ``optional``: the same or None; ``either``: a
    MindSpore tensor or a plain value (e.g. ``capacity``); ``layouts``: RouteLayouts of MindSpore tensors;
    ``dtypes``: MindSpore dtypes turned into torch's.
    """
    signature = inspect.signature(op)

    @functools.wraps(op)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        outputs = _Outputs()
        for name, value in bound.arguments.items():
            if (
                name in tensors
                or (name in optional and value is not None)
                or (name in either and isinstance(value, ms.Tensor))
            ):
                check_ms_tensor(name, value)
                view = to_torch(name, value)
                outputs.remember(view, value)
                bound.arguments[name] = view
            elif name in layouts:
                bound.arguments[name] = _layout_to_torch(name, value)
            elif name in dtypes and isinstance(value, ms.dtype.Type):
                bound.arguments[name] = torch_dtype_of(name, value)
        return outputs.convert(op(*bound.args, **bound.kwargs))

    wrapper.__doc__ = (
        f"MindSpore form of :func:`moecomm.ops.{op.__name__}` (mindspore.Tensor in and out, zero-copy on CPU).\n\n"
        + (op.__doc__ or "")
    )
    return wrapper


route_layout = _bridged(torch_ops.route_layout, tensors=("topk_ids",), optional=("is_kept",))
select_kept = _bridged(torch_ops.select_kept, tensors=("topk_ids",), optional=("topk_weights",), either=("capacity",))
permute = _bridged(torch_ops.permute, tensors=("x",), optional=("is_kept", "out"), layouts=("layout",))
unpermute = _bridged(
    torch_ops.unpermute, tensors=("y", "topk_weights"), optional=("is_kept", "out"), layouts=("layout",)
)
pack_padded = _bridged(torch_ops.pack_padded, tensors=("rows", "counts"), optional=("out",))
unpack_padded = _bridged(torch_ops.unpack_padded, tensors=("buffer", "counts"), optional=("out",))
regroup_blocks = _bridged(torch_ops.regroup_blocks, tensors=("rows", "block_rows"), optional=("out",))
quantize_rows = _bridged(torch_ops.quantize_rows, tensors=("x",), optional=("out", "out_scales"))
dequantize_rows = _bridged(torch_ops.dequantize_rows, tensors=("q", "scales"), optional=("out",), dtypes=("dtype",))
quantize_to_wire = _bridged(torch_ops.quantize_to_wire, tensors=("x",), optional=("out",), layouts=("layout",))
dequantize_from_wire = _bridged(
    torch_ops.dequantize_from_wire, tensors=("wire",), optional=("out",), layouts=("layout",), dtypes=("dtype",)
)
capacity_for_ratio = _bridged(torch_ops.capacity_for_ratio, tensors=("loads",))

__all__ = [
    "RouteLayout",
    "route_layout",
    "select_kept",
    "permute",
    "unpermute",
    "pack_padded",
    "unpack_padded",
    "regroup_blocks",
    "capacity_for_ratio",
    "capacity_from_factor",
    "drop_budget",
    "quantize_rows",
    "dequantize_rows",
    "quantize_to_wire",
    "dequantize_from_wire",
    "wire_format",
    "wire_row_bytes",
    "QUANT_KINDS",
]
