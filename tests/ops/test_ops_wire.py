"""quantize_to_wire / dequantize_from_wire: native vs the pure-torch reference (bit for bit), each equal to its
unfused definition (quantize_rows then permute; dequantize_rows then permute), the byte layout, row-strided
outputs (views of wider rows, like a shared region), and bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_strategies import ACTIVATION_DTYPES
from test_ops_quant import HIDDEN_SIZES, ROW_MODES, make_rows

from moecomm import ops
from moecomm.ops import reference

KINDS = ("int8", "fp8")


def random_layout(num_tokens: int, top_k: int, num_experts: int, seed: int, drop: bool) -> ops.RouteLayout:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, num_experts, (num_tokens, top_k), generator=gen)
    is_kept = torch.rand((num_tokens, top_k), generator=gen) > 0.3 if drop else None
    return ops.route_layout(ids, num_experts, 1, is_kept)


@settings(max_examples=40, deadline=None)
@given(
    num_tokens=st.integers(0, 12),
    hidden=HIDDEN_SIZES,
    top_k=st.integers(1, 4),
    dtype=st.sampled_from(ACTIVATION_DTYPES),
    kind=st.sampled_from(KINDS),
    mode=st.sampled_from(ROW_MODES),
    use_layout=st.booleans(),
    drop=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_wire_round_trip_matches_reference_and_unfused_ops(
    num_tokens, hidden, top_k, dtype, kind, mode, use_layout, drop, seed
):
    x = make_rows(num_tokens, hidden, dtype, [mode] * num_tokens, seed)
    layout = random_layout(num_tokens, top_k, 5, seed, drop) if use_layout else None
    wire = ops.quantize_to_wire(x, kind, layout)
    assert torch.equal(wire, reference.quantize_to_wire(x, kind, layout))
    # unfused definition: quantize every token, pack its bytes, then permute the packed rows
    q, scales = ops.quantize_rows(x, kind)
    fmt = ops.wire_format(hidden, kind)
    packed = torch.zeros((num_tokens, fmt.row_bytes), dtype=torch.int8)
    packed[:, :hidden] = q.view(torch.int8)
    if num_tokens:
        packed[:, fmt.scales_offset :] = scales.reshape(num_tokens, -1).contiguous().view(torch.int8)
    assert torch.equal(wire, packed if layout is None else ops.permute(packed, layout))
    # back: dequantize_from_wire of the per-token rows, scattered by the layout, equals dequantize then permute
    values = ops.dequantize_from_wire(packed, hidden, kind, dtype, layout)
    assert torch.equal(values, reference.dequantize_from_wire(packed, hidden, kind, dtype, layout))
    plain = ops.dequantize_rows(q, scales, kind, dtype)
    assert torch.equal(values, plain if layout is None else ops.permute(plain, layout))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hidden", [1, 3, 130, 2048])
def test_wire_rows_written_into_a_row_strided_view(kind, hidden):
    """``out`` may be rows of a wider buffer (a peer's region): only the wire bytes of each row change."""
    x = torch.randn(6, hidden, dtype=torch.bfloat16)
    width = ops.wire_row_bytes(hidden, kind)
    region = torch.full((6, width + 12), 7, dtype=torch.int8)
    view = region[:, 4 : 4 + width]
    assert ops.quantize_to_wire(x, kind, out=view) is view
    assert torch.equal(view, ops.quantize_to_wire(x, kind))
    assert bool((region[:, :4] == 7).all()) and bool((region[:, 4 + width :] == 7).all())
    back = ops.dequantize_from_wire(view, hidden, kind, torch.float32)
    assert torch.equal(back, ops.dequantize_from_wire(view.contiguous(), hidden, kind, torch.float32))


@pytest.mark.parametrize(
    "hidden,kind,expected",
    [
        (2048, "int8", 2052),
        (7168, "int8", 7172),
        (2048, "fp8", 2112),
        (7168, "fp8", 7392),
        (130, "int8", 136),
        (301, "fp8", 316),
    ],
)
def test_wire_row_bytes(hidden, kind, expected):
    """W = H rounded up to 4, plus 4 bytes per scale (1 for int8, ceil(H/128) for fp8)."""
    assert ops.wire_row_bytes(hidden, kind) == expected


@pytest.mark.parametrize("impl", [ops, reference], ids=["native", "reference"])
def test_wire_bad_input_is_named(impl):
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match="kind"):
        impl.quantize_to_wire(x, "int4")
    with pytest.raises(ValueError, match="x: row 2"):
        bad = x.clone()
        bad[2, 3] = float("nan")
        impl.quantize_to_wire(bad, "int8")
    wire = ops.quantize_to_wire(x, "int8")
    with pytest.raises(ValueError, match="wire: expected rows of 20 bytes"):
        impl.dequantize_from_wire(wire[:, :16], 16, "int8", torch.float32)
    with pytest.raises(TypeError, match="wire"):
        impl.dequantize_from_wire(wire.float(), 16, "int8", torch.float32)
    layout = ops.route_layout(torch.zeros(3, 1, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="layout|x"):
        impl.quantize_to_wire(x, "int8", layout)
    forged = wire.clone()
    forged[1, 16:20] = torch.tensor([-1.0]).view(torch.int8)  # a negative scale
    with pytest.raises(ValueError, match="scales"):
        impl.dequantize_from_wire(forged, 16, "int8", torch.float32)


def test_wire_scatter_with_a_forged_row_map_is_refused_by_the_core():
    x = torch.randn(3, 8)
    layout = ops.route_layout(torch.tensor([[0], [1], [1]]), 2)
    forged = dataclasses.replace(layout, row_of_pair=torch.tensor([[0], [5], [1]]))
    with pytest.raises(ValueError, match="row_of_pair|layout"):
        ops.quantize_to_wire(x, "int8", forged)
    wire = ops.quantize_to_wire(x, "int8")
    repeated = dataclasses.replace(layout, row_of_pair=torch.tensor([[0], [1], [1]]))
    with pytest.raises(ValueError, match="row_of_pair|layout"):
        ops.dequantize_from_wire(wire, 8, "int8", torch.float32, repeated)
