"""Rows written into several buffers or padded rows (``out=`` of permute and quantize_to_wire): the same rows as
one contiguous output, natively and in the reference; bad buffer lists are refused naming the buffer."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_strategies import ACTIVATION_DTYPES, activations, routings

from moecomm import ops
from moecomm.ops import reference
from moecomm.ops._out import RowRanges
from moecomm.ops.wire import quantize_to_wire, wire_format

IMPLS = [pytest.param(ops, id="native"), pytest.param(reference, id="reference")]


def split_rows(num_rows: int, cuts: list[int]) -> list[int]:
    """Segment sizes of ``num_rows`` rows cut at ``cuts`` (any ints; empty segments allowed)."""
    bounds = sorted(min(max(c, 0), num_rows) for c in cuts)
    edges = [0, *bounds, num_rows]
    return [b - a for a, b in zip(edges, edges[1:])]


def padded_segments(sizes: list[int], width: int, pad: int, dtype: torch.dtype, fill: int) -> list[torch.Tensor]:
    """One buffer per size, rows ``width + pad`` elements apart, filled with ``fill`` (padding must survive)."""
    return [torch.full((n, width + pad), fill, dtype=dtype)[:, :width] for n in sizes]


@settings(max_examples=120, deadline=None)
@given(
    routing=routings(),
    hidden=st.sampled_from([1, 3, 8, 33]),
    dtype=st.sampled_from(ACTIVATION_DTYPES),
    cuts=st.lists(st.integers(-2, 60), max_size=4),
    pad=st.sampled_from([0, 1, 5, 16]),
    seed=st.integers(0, 1000),
)
def test_permute_into_segments_equals_one_output(routing, hidden, dtype, cuts, pad, seed):
    x = activations(routing, hidden, dtype, seed, non_contiguous=bool(seed % 2))
    layout = ops.route_layout(routing.topk_ids, routing.num_experts, routing.num_ranks)
    want = reference.permute(x, layout)
    sizes = split_rows(layout.num_rows, cuts)
    for impl in (ops, reference):
        segments = padded_segments(sizes, hidden, pad, dtype, fill=7)
        got = impl.permute(x, layout, out=segments)
        assert got == segments  # the caller's buffers, in order
        assert torch.equal(torch.cat(segments) if segments else want, want)
        for segment in segments:  # nothing written past a row
            assert bool((segment.as_strided((segment.shape[0], pad), (hidden + pad, 1), hidden) == 7).all())


@settings(max_examples=100, deadline=None)
@given(
    routing=routings(),
    hidden=st.sampled_from([1, 4, 130, 300]),
    kind=st.sampled_from(["int8", "fp8"]),
    cuts=st.lists(st.integers(-2, 60), max_size=3),
    pad_words=st.sampled_from([0, 1, 16]),
    seed=st.integers(0, 1000),
)
def test_quantize_to_wire_into_segments_equals_one_output(routing, hidden, kind, cuts, pad_words, seed):
    x = activations(routing, hidden, torch.bfloat16, seed, non_contiguous=False)
    layout = ops.route_layout(routing.topk_ids, routing.num_experts, routing.num_ranks)
    width = wire_format(hidden, kind).row_bytes
    want = quantize_to_wire(x, kind, layout)
    sizes = split_rows(layout.num_rows, cuts)
    for quantize in (quantize_to_wire, reference.quantize_to_wire):
        segments = padded_segments(sizes, width, 4 * pad_words, torch.int8, fill=-5)
        assert quantize(x, kind, layout, out=segments) == segments
        assert torch.equal(torch.cat(segments), want)
        for segment in segments:
            tail = segment.as_strided((segment.shape[0], 4 * pad_words), (width + 4 * pad_words, 1), width)
            assert bool((tail == -5).all())


@pytest.mark.parametrize("impl", IMPLS)
def test_a_padded_single_output_is_returned_as_given(impl):
    x = torch.randn(5, 6)
    layout = ops.route_layout(torch.tensor([[0, 1], [1, 2], [2, 0], [1, 1], [0, 2]]), 3)
    out = torch.zeros(layout.num_rows, 8)[:, :6]
    assert impl.permute(x, layout, out=out) is out
    assert torch.equal(out, reference.permute(x, layout))


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_segment_lists_are_refused_naming_the_buffer(impl):
    x = torch.randn(4, 6)
    layout = ops.route_layout(torch.tensor([[0], [1], [0], [1]]), 2)
    storage = torch.zeros(10, 6)
    with pytest.raises(ValueError, match=r"out: expected 4 rows in all, got 3 \(\[1, 2\]\)"):
        impl.permute(x, layout, out=[torch.empty(1, 6), torch.empty(2, 6)])
    with pytest.raises(ValueError, match=r"out\[0\]: shares memory with out\[1\]"):
        impl.permute(x, layout, out=[storage[0:2], storage[1:3]])
    with pytest.raises(ValueError, match=r"out\[0\]: shares memory with x"):
        impl.permute(x, layout, out=[x[2:], torch.empty(2, 6)])
    with pytest.raises(ValueError, match=r"out\[1\]: expected rows 6 elements apart, like the other segments"):
        impl.permute(x, layout, out=[storage[0:2], torch.empty(2, 8)[:, :6]])
    with pytest.raises(ValueError, match=r"out\[0\]: expected contiguous rows at least 6 elements apart"):
        impl.permute(x, layout, out=[torch.empty(6, 2).t(), storage[2:4]])
    with pytest.raises(ValueError, match=r"out\[1\]: expected rows of 6 elements"):
        impl.permute(x, layout, out=[storage[0:2], torch.empty(2, 5)])
    with pytest.raises(TypeError, match=r"out\[1\]: expected dtype float32, got float16"):
        impl.permute(x, layout, out=[storage[0:2], torch.empty(2, 6, dtype=torch.float16)])
    with pytest.raises(
        TypeError, match=r"out: expected None, a torch.Tensor, a non-empty list of tensors or RowRanges"
    ):
        impl.permute(x, layout, out=[])
    wire_width = wire_format(6, "int8").row_bytes
    with pytest.raises(
        ValueError, match=r"out\[0\]: expected contiguous rows at least 12 elements apart \(a multiple of 4\)"
    ):
        quantize = quantize_to_wire if impl is ops else reference.quantize_to_wire
        quantize(x, "int8", layout, out=[torch.empty(2, wire_width + 1, dtype=torch.int8)[:, :wire_width]] * 2)


def test_the_core_refuses_ranges_past_their_buffers():
    from moecomm import _C
    from moecomm.ops._native import tensor_arg

    x = torch.randn(2, 4)
    layout = ops.route_layout(torch.tensor([[0], [1]]), 2)
    args = (tensor_arg("x", x), tensor_arg("layout", layout.row_of_pair))
    storage = torch.empty(10)  # 40 bytes: room for two 16-byte rows at offset 8 (held: a TensorArg owns nothing)
    buffer = [tensor_arg("out", storage)]

    tables = []  # a TensorArg holds no memory: keep every table alive

    def table(*rows):
        tables.append(torch.tensor(rows, dtype=torch.int64).view(-1, 3))
        return tensor_arg("table", tables[-1])

    _C.permute(*args, buffer, table([0, 8, 2]), 16, 1)  # fits: bytes [8, 40)
    with pytest.raises(ValueError, match="^out: segment 0: 2 rows of 16 bytes, 16 apart, from byte 9 pass the 40"):
        _C.permute(*args, buffer, table([0, 9, 2]), 16, 1)
    with pytest.raises(ValueError, match="^out: segment 1: 1 rows of 16 bytes, 16 apart, from byte 32 pass"):
        _C.permute(*args, buffer, table([0, 0, 1], [0, 32, 1]), 16, 1)
    with pytest.raises(ValueError, match="^table: segment 0: buffer 1 of 1"):
        _C.permute(*args, buffer, table([1, 0, 2]), 16, 1)
    with pytest.raises(ValueError, match="^table: segment 0: negative byte offset or rows"):
        _C.permute(*args, buffer, table([0, -16, 2]), 16, 1)
    with pytest.raises(ValueError, match="^table: expected a row stride of at least 16 bytes, got 12"):
        _C.permute(*args, buffer, table([0, 0, 2]), 12, 1)
    with pytest.raises(ValueError, match=r"^table: expected \[S, 3\]"):
        _C.permute(*args, buffer, table(*[]), 16, 1)
    with pytest.raises(ValueError, match="layout"):  # 3 rows in the ranges, 2 pairs: row 2 never written
        _C.permute(*args, buffer, table([0, 0, 1], [0, 16, 1], [0, 24, 0], [0, 8, 1]), 16, 1)


def scattered_ranges(sizes: list[int], row_bytes: int, gap_rows: int) -> tuple[RowRanges, list[tuple[int, int]]]:
    """Ranges of ``sizes`` rows spread over two byte buffers alternately, ``gap_rows`` unused rows before each
    (as a source's blocks in the peers' regions); also each range's (buffer, first byte)."""
    cursor, places = [0, 0], []
    for i, rows in enumerate(sizes):
        buffer = i % 2
        cursor[buffer] += gap_rows * row_bytes
        places.append((buffer, cursor[buffer]))
        cursor[buffer] += rows * row_bytes
    buffers = tuple(torch.full((max(c, 1) + 64,), 0xAB, dtype=torch.uint8) for c in cursor)
    table = torch.tensor([[b, o, n] for (b, o), n in zip(places, sizes)], dtype=torch.int64).view(-1, 3)
    return RowRanges(buffers, table, row_bytes), places


def read_ranges(ranges: RowRanges, places: list[tuple[int, int]], sizes: list[int], row_bytes: int) -> torch.Tensor:
    rows = [ranges.buffers[b][o : o + n * row_bytes].view(n, row_bytes) for (b, o), n in zip(places, sizes)]
    return torch.cat(rows) if rows else torch.empty(0, row_bytes, dtype=torch.uint8)


@settings(max_examples=80, deadline=None)
@given(
    routing=routings(),
    hidden=st.sampled_from([1, 8, 130]),
    kind=st.sampled_from([None, "int8", "fp8"]),
    cuts=st.lists(st.integers(-2, 60), min_size=1, max_size=5),
    gap_rows=st.integers(0, 2),
    seed=st.integers(0, 1000),
)
def test_row_ranges_in_shared_buffers_hold_the_rows_of_one_output(routing, hidden, kind, cuts, gap_rows, seed):
    x = activations(routing, hidden, torch.bfloat16, seed, non_contiguous=False)
    layout = ops.route_layout(routing.topk_ids, routing.num_experts, routing.num_ranks)
    if kind is None:
        want, row_bytes = reference.permute(x, layout), hidden * 2
        runs = [lambda out: ops.permute(x, layout, out=out), lambda out: reference.permute(x, layout, out=out)]
    else:
        want, row_bytes = quantize_to_wire(x, kind, layout), wire_format(hidden, kind).row_bytes
        runs = [
            lambda out: quantize_to_wire(x, kind, layout, out=out),
            lambda out: reference.quantize_to_wire(x, kind, layout, out=out),
        ]
    sizes = split_rows(layout.num_rows, cuts)
    for run in runs:
        ranges, places = scattered_ranges(sizes, row_bytes, gap_rows)
        assert run(ranges) is ranges
        assert torch.equal(read_ranges(ranges, places, sizes, row_bytes), want.contiguous().view(torch.uint8))
        for index, buffer in enumerate(ranges.buffers):  # no byte outside the ranges was written
            outside = torch.ones(buffer.numel(), dtype=torch.bool)
            for (b, o), n in zip(places, sizes):
                if b == index:
                    outside[o : o + n * row_bytes] = False
            assert bool((buffer[outside] == 0xAB).all())


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_row_ranges_are_refused(impl):
    x = torch.randn(4, 6)
    layout = ops.route_layout(torch.tensor([[0], [1], [0], [1]]), 2)
    buffer = torch.zeros(200, dtype=torch.uint8)
    table = torch.tensor([[0, 0, 4]])
    with pytest.raises(ValueError, match="out: expected 4 rows in all, got 3"):
        impl.permute(x, layout, out=RowRanges((buffer,), torch.tensor([[0, 0, 3]]), 24))
    with pytest.raises(ValueError, match="out: expected a row stride of at least 24 bytes"):
        impl.permute(x, layout, out=RowRanges((buffer,), table, 20))
    with pytest.raises(ValueError, match="out: RowRanges.table holds a negative entry or a buffer past 1"):
        impl.permute(x, layout, out=RowRanges((buffer,), torch.tensor([[1, 0, 4]]), 24))
    with pytest.raises(ValueError, match="out: RowRanges.buffers must be 1-D uint8 tensors"):
        impl.permute(x, layout, out=RowRanges((torch.zeros(50),), table, 24))
    with pytest.raises(ValueError, match="out: a buffer shares memory with x"):
        impl.permute(x, layout, out=RowRanges((x.view(torch.uint8).view(-1),), table, 24))
    with pytest.raises((ValueError, RuntimeError)):  # past the buffer: the core (or torch's view) refuses it
        impl.permute(x, layout, out=RowRanges((buffer,), torch.tensor([[0, 120, 4]]), 24))
