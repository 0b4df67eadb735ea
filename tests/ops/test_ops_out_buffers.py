"""out= on every data-movement op, native and reference: filled exactly like a fresh output, checked by
name, and refused when it shares memory with an input (a kernel would read what it already overwrote)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_strategies import ACTIVATION_DTYPES

from moecomm import ops
from moecomm.ops import reference

IMPLS = [pytest.param(ops, id="native"), pytest.param(reference, id="reference")]


def small_case(seed=0, num_tokens=12, top_k=2, num_experts=4, hidden=5):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, num_experts, (num_tokens, top_k), generator=gen)
    weights = torch.rand(num_tokens, top_k, generator=gen)
    x = torch.randn(num_tokens, hidden, generator=gen)
    return ids, weights, x


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 5), min_size=0, max_size=6),
    slack=st.integers(0, 2),
    hidden=st.sampled_from([0, 1, 3, 8]),
    dtype=st.sampled_from(ACTIVATION_DTYPES),
    use_reference=st.booleans(),
)
def test_padded_and_regroup_out_equal_fresh_outputs(counts, slack, hidden, dtype, use_reference):
    impl = reference if use_reference else ops
    counts_t = torch.tensor(counts, dtype=torch.int64)
    capacity = (max(counts) if counts else 0) + slack
    rows = torch.randn(sum(counts), hidden).to(dtype)
    packed_out = torch.full((len(counts), capacity, hidden), 7.0).to(dtype)  # garbage the op must overwrite
    assert impl.pack_padded(rows, counts_t, capacity, out=packed_out) is packed_out
    assert torch.equal(packed_out, ops.pack_padded(rows, counts_t, capacity))
    rows_out = torch.full_like(rows, 7.0)
    assert impl.unpack_padded(packed_out, counts_t, out=rows_out) is rows_out
    assert torch.equal(rows_out, rows)
    blocks = counts_t.view(1, -1) if counts else torch.zeros(1, 0, dtype=torch.int64)
    regrouped = torch.full_like(rows, 7.0)
    assert impl.regroup_blocks(rows, blocks.view(-1, 1), out=regrouped) is regrouped
    assert torch.equal(regrouped, reference.regroup_blocks(rows, blocks.view(-1, 1)))


@pytest.mark.parametrize("impl", IMPLS)
def test_permute_out_sharing_memory_with_x_is_refused(impl):
    ids, _, x = small_case()
    layout = ops.route_layout(ids, 4)
    num_rows = layout.num_rows
    buffer = torch.zeros(12 + num_rows, 5)
    buffer[:12] = x
    x_view = buffer[:12]
    with pytest.raises(ValueError, match="out: shares memory with x"):
        impl.permute(x_view, layout, out=buffer[11 : 11 + num_rows])  # one row in common
    with pytest.raises(ValueError, match="out: shares memory with x"):
        impl.permute(x_view, layout, out=buffer[:num_rows])
    separate = buffer[12:]  # same storage, disjoint bytes: accepted
    assert impl.permute(x_view, layout, out=separate) is separate
    assert torch.equal(separate, reference.permute(x, layout))


@pytest.mark.parametrize("impl", IMPLS)
def test_unpermute_out_sharing_memory_with_an_input_is_refused(impl):
    ids, weights, x = small_case()
    layout = ops.route_layout(ids, 4)
    y = ops.permute(x, layout)
    with pytest.raises(ValueError, match="out: shares memory with y"):
        impl.unpermute(y, layout, weights, out=y[:12])
    storage = torch.zeros(24 + 60)
    w_view = storage[:24].view(12, 2)
    w_view.copy_(weights)
    with pytest.raises(ValueError, match="out: shares memory with topk_weights"):
        impl.unpermute(y, layout, w_view, out=storage[20:80].view(12, 5))
    tokens = storage[24:].view(12, 5)
    assert impl.unpermute(y, layout, w_view, out=tokens) is tokens
    torch.testing.assert_close(tokens, reference.unpermute(y, layout, weights), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_padded_and_regroup_out_sharing_memory_is_refused(impl):
    rows = torch.randn(6, 4)
    counts = torch.tensor([2, 4])
    wide = torch.zeros(6 * 4 + 32)
    wide[:24] = rows.reshape(-1)
    with pytest.raises(ValueError, match="out: shares memory with rows"):
        impl.pack_padded(wide[:24].view(6, 4), counts, 4, out=wide[20:52].view(2, 4, 4))
    packed = ops.pack_padded(rows, counts, 4)
    with pytest.raises(ValueError, match="out: shares memory with buffer"):
        impl.unpack_padded(packed, counts, out=packed.view(-1, 4)[2:8])
    with pytest.raises(ValueError, match="out: shares memory with rows"):
        impl.regroup_blocks(rows, torch.tensor([[3, 3]]), out=rows)
    int_storage = torch.zeros(16, dtype=torch.int64)  # 128 bytes: counts in the first 16, out after 8
    counts_view = int_storage[:2].copy_(counts)
    with pytest.raises(ValueError, match="out: shares memory with counts"):
        impl.unpack_padded(packed, counts_view, out=int_storage.view(torch.float32)[2:26].view(6, 4))
    assert torch.equal(
        impl.unpack_padded(packed, counts_view, out=int_storage.view(torch.float32)[4:28].view(6, 4)), rows
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_out_of_the_wrong_kind_is_named(impl):
    ids, weights, x = small_case()
    layout = ops.route_layout(ids, 4)
    rows = torch.randn(6, 4)
    counts = torch.tensor([2, 4])
    with pytest.raises(ValueError, match="out: expected 24 rows in all, got 23"):
        impl.permute(x, layout, out=torch.empty(23, 5))
    with pytest.raises(TypeError, match="out: expected dtype float32"):
        impl.permute(x, layout, out=torch.empty(24, 5, dtype=torch.float16))
    with pytest.raises(ValueError, match="out: expected a contiguous tensor"):
        impl.unpermute(ops.permute(x, layout), layout, weights, out=torch.empty(5, 12).t())
    with pytest.raises(ValueError, match="out: expected a contiguous tensor of shape \\[2, 5, 4\\]"):
        impl.pack_padded(rows, counts, 5, out=torch.empty(2, 4, 4))
    with pytest.raises(TypeError, match="out: expected a torch.Tensor"):
        impl.unpack_padded(ops.pack_padded(rows, counts, 4), counts, out=[0.0] * 24)
    with pytest.raises(ValueError, match="out: expected a tensor on cpu"):
        impl.regroup_blocks(rows, torch.tensor([[6]]), out=torch.empty(6, 4, device="meta"))
