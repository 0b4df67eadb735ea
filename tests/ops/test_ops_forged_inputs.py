"""Hostile input: forged RouteLayouts, forged TensorArgs handed straight to ``_C``, and H=0 with huge
row counts. Every case raises naming the argument (or finishes at once); nothing is read or written
outside the tensors' storage."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moecomm import _C, ops
from moecomm.ops import reference
from moecomm.ops._native import tensor_arg

IMPLS = [pytest.param(ops, id="native"), pytest.param(reference, id="reference")]
F32 = int(_C.ScalarType.float32)
I64 = int(_C.ScalarType.int64)


def layout_and_data(seed=0, num_tokens=8, top_k=2, num_experts=4):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, num_experts, (num_tokens, top_k), generator=gen)
    return (
        ops.route_layout(ids, num_experts),
        torch.randn(num_tokens, 3, generator=gen),
        torch.rand(num_tokens, top_k, generator=gen),
    )


# ---- forged layouts (counts that do not match row_of_pair) ---------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_counts_promising_more_rows_than_row_of_pair_covers_are_refused(impl):
    full, x, weights = layout_and_data()
    is_kept = torch.ones(8, 2, dtype=torch.bool)
    is_kept[::3, 1] = False  # some pairs dropped: fewer rows than pairs
    layout = ops.route_layout(full.topk_ids, 4, 1, is_kept)
    more = layout.tokens_per_expert.clone()
    more[0] += 1  # one row that no pair writes
    forged = dataclasses.replace(layout, tokens_per_expert=more)
    with pytest.raises(ValueError, match="layout: row_of_pair"):
        impl.permute(x, forged)
    with pytest.raises(ValueError, match="layout: row_of_pair"):
        impl.unpermute(torch.randn(forged.num_rows, 3), forged, weights)


@pytest.mark.parametrize("impl", IMPLS)
def test_rows_used_twice_are_refused(impl):
    layout, x, weights = layout_and_data()
    rows = layout.row_of_pair.clone()
    rows[1, 0] = rows[0, 0]  # two pairs on one row, and one row left unwritten
    forged = dataclasses.replace(layout, row_of_pair=rows)
    with pytest.raises(ValueError, match="layout: row_of_pair"):
        impl.permute(x, forged)
    with pytest.raises(ValueError, match="layout: row_of_pair"):
        impl.unpermute(torch.randn(layout.num_rows, 3), forged, weights)


@pytest.mark.parametrize("impl", IMPLS)
def test_structurally_broken_layouts_name_layout(impl):
    layout, x, weights = layout_and_data()
    cases = [
        dataclasses.replace(layout, row_of_pair=layout.row_of_pair.float()),
        dataclasses.replace(layout, row_of_pair=layout.row_of_pair[:, :1]),
        dataclasses.replace(layout, tokens_per_expert=layout.tokens_per_expert[:3]),
        dataclasses.replace(layout, tokens_per_expert=layout.tokens_per_expert - 100),
        dataclasses.replace(layout, tokens_per_expert=layout.tokens_per_expert * 3),
        dataclasses.replace(layout, num_experts=0),
        dataclasses.replace(layout, topk_ids=[[0, 1]]),
    ]
    for forged in cases:
        with pytest.raises((TypeError, ValueError), match="^layout: "):
            impl.permute(x, forged)
        with pytest.raises((TypeError, ValueError), match="^layout: "):
            impl.unpermute(torch.randn(layout.num_rows, 3), forged, weights)


@settings(max_examples=150, deadline=None)
@given(
    num_rows=st.integers(0, 8),
    rows=st.lists(st.integers(-1, 8), min_size=8, max_size=8),
    use_reference=st.booleans(),
)
def test_row_of_pair_is_accepted_exactly_when_it_covers_every_row_once(num_rows, rows, use_reference):
    """Random row maps: accepted iff the kept rows are a permutation of [0, N); then the output matches
    a plain Python loop, so no row is left unwritten."""
    impl = reference if use_reference else ops
    ids = torch.zeros(4, 2, dtype=torch.int64)
    counts = torch.tensor([num_rows], dtype=torch.int64)
    row_of_pair = torch.tensor(rows, dtype=torch.int64).view(4, 2)
    forged = ops.RouteLayout(ids, counts, counts.clone(), row_of_pair, 1, 1)
    x = torch.randn(4, 2)
    kept = [r for r in rows if r >= 0]
    if sorted(kept) == list(range(num_rows)):
        got = impl.permute(x, forged)
        want = torch.empty(num_rows, 2)
        for pair, row in enumerate(rows):
            if row >= 0:
                want[row] = x[pair // 2]
        assert torch.equal(got, want)
    else:
        with pytest.raises(ValueError, match="layout: row_of_pair"):
            impl.permute(x, forged)


# ---- forged TensorArgs straight to _C: extents are re-checked against the storage ----------------------


def forged(name, tensor, shape, strides, nbytes=None):
    """A TensorArg for ``tensor``'s memory that claims ``shape`` and ``strides``."""
    honest = tensor_arg(name, tensor)
    return _C.TensorArg(
        name, tensor.data_ptr(), shape, strides, honest.dtype, honest.nbytes if nbytes is None else nbytes
    )


def test_tensor_arg_carries_the_bytes_from_its_first_element_to_the_storage_end():
    base = torch.zeros(100)
    assert tensor_arg("x", base).nbytes == 400
    assert tensor_arg("x", base[10:20]).nbytes == 360  # storage_offset 10 elements
    assert tensor_arg("x", base.view(10, 10)[:, 3]).nbytes == 388


@pytest.mark.parametrize("victim", ["x", "layout", "out"])
def test_permute_refuses_shapes_past_the_storage(victim):
    layout, x, _ = layout_and_data()
    out = torch.empty(layout.num_rows, 3)
    args = {"x": tensor_arg("x", x), "layout": tensor_arg("layout", layout.row_of_pair), "out": tensor_arg("out", out)}
    if victim == "x":
        args["x"] = forged("x", x, [8, 3], [4, 1])  # the last row reaches 1 element past x's storage
    elif victim == "layout":
        args["layout"] = forged("layout", layout.row_of_pair, [8, 2], [2, 1], nbytes=8 * 15)
    else:
        args["out"] = forged("out", out, [layout.num_rows, 3], [3, 1], nbytes=out.nbytes - 4)
    one_range = torch.tensor([[0, 0, layout.num_rows]])  # held: a TensorArg owns nothing
    table = tensor_arg("out", one_range)
    with pytest.raises(ValueError, match=f"^{victim}: .*storage holds"):
        _C.permute(args["x"], args["layout"], [args["out"]], table, 3 * 4, 1)


def test_every_entry_point_rechecks_extents():
    layout, x, weights = layout_and_data()
    rows, counts, packed = torch.randn(6, 4), torch.tensor([2, 4]), torch.zeros(2, 4, 4)
    # every buffer is held in a name: a TensorArg does not own its memory
    per_expert, row_of_pair, caps = (
        torch.empty(4, dtype=torch.int64),
        torch.empty(9, 2, dtype=torch.int64),
        torch.ones(4, dtype=torch.int64),
    )
    short_mask, y, tokens = torch.empty(8, 1, dtype=torch.bool), torch.randn(16, 3), torch.empty(8, 3)
    unpacked, blocks, short_out = torch.empty(6, 4), torch.tensor([[6]]), torch.empty(5, 4)
    with pytest.raises(ValueError, match="^topk_ids: .*storage holds"):
        _C.route_layout(
            forged("topk_ids", layout.topk_ids, [9, 2], [2, 1]),
            4,
            None,
            tensor_arg("tokens_per_expert", per_expert),
            tensor_arg("row_of_pair", row_of_pair),
            1,
        )
    with pytest.raises(ValueError, match="^is_kept: .*storage holds"):
        _C.select_kept(
            tensor_arg("topk_ids", layout.topk_ids),
            4,
            1,
            tensor_arg("capacity", caps),
            None,
            forged("is_kept", short_mask, [8, 2], [2, 1]),
        )
    with pytest.raises(ValueError, match="^topk_weights: .*storage holds"):
        _C.unpermute(
            tensor_arg("y", y),
            tensor_arg("layout", layout.row_of_pair),
            forged("topk_weights", weights, [8, 2], [2, 1], nbytes=60),
            tensor_arg("out", tokens),
            0,
            8,
            1,
        )
    for begin, end in ((-1, 8), (3, 2), (0, 9)):  # the token range is checked before any kernel runs
        with pytest.raises(ValueError, match=r"^tokens: expected a range \[begin, end\)"):
            _C.unpermute(
                tensor_arg("y", y),
                tensor_arg("layout", layout.row_of_pair),
                tensor_arg("topk_weights", weights),
                tensor_arg("out", tokens),
                begin,
                end,
                1,
            )
    with pytest.raises(ValueError, match="^rows: .*storage holds"):
        _C.pack_padded(forged("rows", rows, [6, 4], [5, 1]), tensor_arg("counts", counts), tensor_arg("out", packed), 1)
    with pytest.raises(ValueError, match="^buffer: .*storage holds"):
        _C.unpack_padded(
            forged("buffer", packed, [2, 4, 4], [17, 4, 1]),
            tensor_arg("counts", counts),
            tensor_arg("out", unpacked),
            1,
        )
    with pytest.raises(ValueError, match="^out: .*storage holds"):
        _C.regroup_blocks(
            tensor_arg("rows", rows), tensor_arg("block_rows", blocks), forged("out", short_out, [6, 4], [4, 1]), 1
        )
    with pytest.raises(ValueError, match="^rows: .*past 2\\*\\*63"):
        _C.regroup_blocks(
            forged("rows", rows, [6, 4], [2**62, 1]), tensor_arg("block_rows", blocks), tensor_arg("out", unpacked), 1
        )
    with pytest.raises(ValueError, match="^out: .*storage holds"):
        _C.advise_huge_pages(forged("out", short_out, [1 << 30], [1]))
    with pytest.raises(ValueError, match="^rows: negative byte size"):
        _C.regroup_blocks(
            forged("rows", rows, [6, 4], [4, 1], nbytes=-1),
            tensor_arg("block_rows", blocks),
            tensor_arg("out", unpacked),
            1,
        )


@settings(max_examples=200, deadline=None)
@given(
    num_rows=st.integers(0, 6),
    hidden=st.integers(0, 5),
    stride_row=st.integers(0, 8),
    stride_hidden=st.integers(0, 3),
    storage=st.integers(0, 40),
    offset=st.integers(0, 8),
)
def test_strided_reads_are_accepted_exactly_when_they_fit_the_storage(
    num_rows, hidden, stride_row, stride_hidden, storage, offset
):
    """regroup_blocks over a forged strided view: accepted iff its last element lies inside the storage,
    and then equal to torch's own as_strided view of the same memory."""
    base = torch.randn(storage)
    start = min(offset, storage)
    view_arg = _C.TensorArg(
        "rows", base.data_ptr() + 4 * start, [num_rows, hidden], [stride_row, stride_hidden], F32, 4 * (storage - start)
    )
    out = torch.full((num_rows, hidden), float("nan"))
    fits = num_rows == 0 or hidden == 0 or start + (num_rows - 1) * stride_row + (hidden - 1) * stride_hidden < storage
    blocks = torch.tensor([[num_rows]])  # held: a TensorArg does not own its memory

    def call():
        return _C.regroup_blocks(view_arg, tensor_arg("block_rows", blocks), tensor_arg("out", out), 1)

    if fits:
        call()
        want = base.as_strided((num_rows, hidden), (stride_row, stride_hidden), start) if num_rows and hidden else out
        assert torch.equal(out, want)
    else:  # (an empty storage has a null data pointer, refused as such)
        with pytest.raises(ValueError, match="^rows: (.*storage holds|null data pointer)"):
            call()


# ---- H = 0: nothing to copy, returned at once whatever the row counts -------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("impl", IMPLS)
def test_zero_hidden_with_huge_row_counts_returns_at_once(impl):
    huge = 2**40
    rows = torch.empty(2 * huge, 0)
    counts = torch.tensor([huge, huge])
    packed = impl.pack_padded(rows, counts, huge)
    assert packed.shape == (2, huge, 0)
    assert impl.unpack_padded(packed, counts).shape == (2 * huge, 0)
    assert impl.regroup_blocks(rows, torch.tensor([[huge, huge]])).shape == (2 * huge, 0)
    with pytest.raises(ValueError, match="counts"):
        impl.pack_padded(rows, torch.tensor([huge, huge + 1]), huge + 1)
