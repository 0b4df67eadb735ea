"""moecomm.ops: the MoE data path's kernels, and their references.

Every op takes tensors on any device and returns results there: CPU tensors run in the native core
(``moecomm._C``), other devices run the device-generic pure-torch reference. The data-movement ops take
``out=`` buffers (contiguous, exact shape/dtype/device, sharing no memory with an input).

| op | in | out |
|---|---|---|
| route_layout | topk_ids [T,K] int32/64 | RouteLayout (tokens_per_expert [E], tokens_per_rank [R], row_of_pair [T,K]) |
| select_kept | topk_ids [T,K], topk_weights [T,K] | is_kept [T,K] bool |
| permute | x [T,H], layout, is_kept | [N_kept,H] expert-major |
| unpermute | y [N_kept,H], layout, topk_weights [T,K], is_kept | [T,H] |
| pack_padded / unpack_padded | rows [N,H], counts [B], capacity | [B,capacity,H] and back |
| regroup_blocks | rows [N,H], block_rows [A,B] | [N,H] blocks in (B, A) order |
| capacity_for_ratio / capacity_from_factor | loads [B] / sizes | int cap |
| quantize_rows / dequantize_rows | x [N,H], kind int8/fp8 | q [N,H] int8/float8_e4m3fn + scales [N] / [N,ceil(H/128)] float32, and back |
| quantize_to_wire / dequantize_from_wire | x [T,H], kind, layout | wire rows [N,W] int8 (codes + scales), fused with permute, and back |

``moecomm.ops.reference`` holds a pure-torch version of each with the same signature (device-generic).
"""

from moecomm.ops import reference
from moecomm.ops.capacity import capacity_for_ratio, capacity_from_factor, drop_budget
from moecomm.ops.layout import RouteLayout, route_layout
from moecomm.ops.padded import pack_padded, unpack_padded
from moecomm.ops.permute import permute, unpermute
from moecomm.ops.quant import QUANT_KINDS, dequantize_rows, quantize_rows
from moecomm.ops.regroup import empty_buffer, regroup_blocks
from moecomm.ops.select import select_kept
from moecomm.ops.wire import WireFormat, dequantize_from_wire, quantize_to_wire, wire_format, wire_row_bytes

__all__ = [
    "RouteLayout",
    "route_layout",
    "select_kept",
    "permute",
    "unpermute",
    "pack_padded",
    "unpack_padded",
    "regroup_blocks",
    "empty_buffer",
    "capacity_for_ratio",
    "capacity_from_factor",
    "drop_budget",
    "quantize_rows",
    "dequantize_rows",
    "quantize_to_wire",
    "dequantize_from_wire",
    "wire_format",
    "wire_row_bytes",
    "WireFormat",
    "QUANT_KINDS",
    "reference",
]
