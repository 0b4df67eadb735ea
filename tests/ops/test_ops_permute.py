"""permute / unpermute: native vs reference on every dtype, masks and strides; round trip."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_strategies import ACTIVATION_DTYPES, activations, routings

from moecomm import ops
from moecomm.ops import reference

TOLERANCE = {torch.float32: (1e-6, 1e-6), torch.float16: (2e-2, 2e-2), torch.bfloat16: (2e-2, 2e-2)}


@settings(max_examples=150, deadline=None)
@given(
    routing=routings(),
    hidden=st.sampled_from([1, 3, 7, 33, 64]),
    dtype=st.sampled_from(ACTIVATION_DTYPES),
    non_contiguous=st.booleans(),
    masked=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_permute_unpermute_match_reference(routing, hidden, dtype, non_contiguous, masked, seed):
    x = activations(routing, hidden, dtype, seed, non_contiguous)
    is_kept = None
    if masked:
        is_kept = ops.select_kept(routing.topk_ids, routing.topk_weights, routing.num_experts, capacity=seed % 5)
    layout = ops.route_layout(routing.topk_ids, routing.num_experts, routing.num_ranks)
    ref_layout = reference.route_layout(routing.topk_ids, routing.num_experts, routing.num_ranks)

    rows = ops.permute(x, layout, is_kept)
    assert torch.equal(rows, reference.permute(x, ref_layout, is_kept))  # exact: bytes are copied

    y = rows * 1.5 if rows.numel() else rows
    weights = routing.topk_weights.to(dtype) if seed % 2 else routing.topk_weights
    got = ops.unpermute(y, layout, weights, is_kept)
    want = reference.unpermute(y, ref_layout, weights, is_kept)
    assert got.dtype == dtype and got.shape == x.shape
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@settings(max_examples=60, deadline=None)
@given(routing=routings(), hidden=st.sampled_from([1, 5, 16]), seed=st.integers(0, 1000))
def test_round_trip_with_weights_one_over_k_is_identity(routing, hidden, seed):
    x = activations(routing, hidden, torch.float32, seed, non_contiguous=False)
    layout = ops.route_layout(routing.topk_ids, routing.num_experts, routing.num_ranks)
    top_k = routing.topk_ids.shape[1]
    weights = torch.full(routing.topk_ids.shape, 1.0 / top_k)
    torch.testing.assert_close(ops.unpermute(ops.permute(x, layout), layout, weights), x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ACTIVATION_DTYPES)
def test_drop_in_one_expert_never_shifts_another(dtype):
    torch.manual_seed(1)
    ids = torch.randint(0, 4, (64, 2))
    x = torch.randn(64, 8).to(dtype)
    layout = ops.route_layout(ids, 4)
    is_kept = torch.ones_like(ids, dtype=torch.bool)
    is_kept[ids == 2] = False  # drop every pair of expert 2
    full = ops.permute(x, layout)
    kept = ops.permute(x, layout, is_kept)
    offsets = layout.expert_offsets.tolist()
    expected = torch.cat([full[offsets[e] : offsets[e + 1]] for e in (0, 1, 3)])
    assert torch.equal(kept, expected)


def test_unpermute_with_mask_zeroes_tokens_without_kept_pairs():
    ids = torch.tensor([[0, 1], [1, 1]])
    x = torch.randn(2, 4)
    layout = ops.route_layout(ids, 2)
    is_kept = torch.tensor([[True, False], [False, False]])
    out = ops.unpermute(ops.permute(x, layout, is_kept), layout, torch.ones(2, 2), is_kept)
    torch.testing.assert_close(out[0], x[0])
    assert bool((out[1] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_permute_takes_the_streaming_store_path(dtype):
    """Outputs past 32 MiB use non-temporal stores; they must still equal the reference exactly."""
    torch.manual_seed(2)
    ids = torch.randint(0, 16, (2048, 8))
    x = torch.randn(2048, 2048).to(dtype)
    layout = ops.route_layout(ids, 16)
    rows = ops.permute(x, layout)
    assert rows.numel() * rows.element_size() >= 32 << 20
    assert torch.equal(rows, reference.permute(x, reference.route_layout(ids, 16)))
    is_kept = ops.select_kept(ids, None, 16, capacity=900)
    assert torch.equal(ops.permute(x, layout, is_kept), reference.permute(x, layout, is_kept))


def test_out_buffers_are_filled_and_checked():
    torch.manual_seed(3)
    ids = torch.randint(0, 8, (32, 2))
    x = torch.randn(32, 6)
    weights = torch.rand(32, 2)
    layout = ops.route_layout(ids, 8)
    rows_out = torch.full((64, 6), float("nan"))
    assert ops.permute(x, layout, out=rows_out) is rows_out
    assert torch.equal(rows_out, reference.permute(x, layout))
    tokens_out = torch.full((32, 6), float("nan"))
    assert ops.unpermute(rows_out, layout, weights, out=tokens_out) is tokens_out
    torch.testing.assert_close(tokens_out, reference.unpermute(rows_out, layout, weights))
    with pytest.raises(ValueError, match="out"):
        ops.permute(x, layout, out=torch.empty(63, 6))
    with pytest.raises(TypeError, match="out"):
        ops.permute(x, layout, out=torch.empty(64, 6, dtype=torch.float16))
    with pytest.raises(ValueError, match="out"):
        ops.unpermute(rows_out, layout, weights, out=torch.empty(6, 32).t())


@settings(max_examples=60, deadline=None)
@given(
    hidden=st.sampled_from([1, 15, 16, 17, 31, 32, 33, 63, 100, 2050]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    top_k=st.integers(1, 8),
    seed=st.integers(0, 1000),
)
def test_unpermute_rounds_exact_sums_like_torch_at_every_width(hidden, dtype, top_k, seed):
    """Sums that float32 holds exactly (small multiples of 1/8 times powers-of-two weights) must come out as
    torch's rounding of the float64 sum, in every column: the vector path's full blocks, masked tails and
    bfloat16 rounding (ties to even included, since the sums are exact to 1/64)."""
    gen = torch.Generator().manual_seed(seed)
    num_tokens, num_experts = 9, 4
    ids = torch.randint(0, num_experts, (num_tokens, top_k), generator=gen)
    is_kept = torch.rand(num_tokens, top_k, generator=gen) < 0.8
    weights = 2.0 ** -torch.randint(0, 4, (num_tokens, top_k), generator=gen).float()
    layout = ops.route_layout(ids, num_experts, 1, is_kept)  # dropped pairs: row -1
    rows = (torch.randint(-300, 300, (layout.num_rows, hidden), generator=gen).double() / 8).to(dtype)
    got = ops.unpermute(rows, layout, weights)
    pair_rows = rows.double()[layout.row_of_pair.clamp(min=0)]  # [T, K, H]
    pair_weights = (weights.double() * is_kept).unsqueeze(-1)
    want = (pair_rows * pair_weights).sum(dim=1).to(dtype)
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unpermute_keeps_nan_and_inf_in_their_columns(dtype):
    ids = torch.tensor([[0, 1], [1, 0]])
    layout = ops.route_layout(ids, 2)
    rows = torch.ones(layout.num_rows, 37, dtype=dtype)
    rows[layout.row_of_pair[0, 1], 33] = float("nan")
    rows[layout.row_of_pair[1, 0], 5] = float("inf")
    got = ops.unpermute(rows, layout, torch.full((2, 2), 0.5))
    assert torch.isnan(got[0, 33]) and int(torch.isnan(got).sum()) == 1
    assert got[1, 5] == float("inf") and int(torch.isinf(got).sum()) == 1
    assert bool((got[~torch.isnan(got) & ~torch.isinf(got)] == 1).all())


@settings(max_examples=60, deadline=None)
@given(
    routing=routings(),
    hidden=st.sampled_from([1, 17, 64]),
    dtype=st.sampled_from(ACTIVATION_DTYPES),
    cut=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    seed=st.integers(0, 1000),
)
def test_unpermute_of_a_token_range_is_that_slice_of_the_whole(routing, hidden, dtype, cut, seed):
    """``tokens=(begin, end)`` writes exactly rows [begin, end) of the full combine, native and reference alike."""
    x = activations(routing, hidden, dtype, seed, non_contiguous=False)
    layout = ops.route_layout(routing.topk_ids, routing.num_experts, routing.num_ranks)
    y = ops.permute(x, layout) * 1.5
    num_tokens = x.shape[0]
    begin, end = sorted(int(c * num_tokens) for c in cut)
    whole = ops.unpermute(y, layout, routing.topk_weights)
    out = torch.full((end - begin, hidden), 7.0, dtype=dtype)
    got = ops.unpermute(y, layout, routing.topk_weights, out=out, tokens=(begin, end))
    assert got is out and torch.equal(got, whole[begin:end])
    want = reference.unpermute(y, layout, routing.topk_weights, tokens=(begin, end))
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("impl", [ops, reference], ids=["native", "reference"])
def test_unpermute_token_range_is_checked(impl):
    ids = torch.tensor([[0, 1], [1, 0], [0, 0]])
    layout = ops.route_layout(ids, 2)
    y = torch.randn(layout.num_rows, 4)
    weights = torch.ones(3, 2)
    for tokens in ((-1, 2), (2, 1), (0, 4)):
        with pytest.raises(ValueError, match=r"^tokens: expected 0 <= begin <= end <= 3"):
            impl.unpermute(y, layout, weights, tokens=tokens)
    with pytest.raises(TypeError, match="^tokens: expected None or a"):
        impl.unpermute(y, layout, weights, tokens=[0, 1])
    with pytest.raises(ValueError, match=r"^out: "):
        impl.unpermute(y, layout, weights, tokens=(1, 3), out=torch.empty(3, 4))
    assert impl.unpermute(y, layout, weights, tokens=(2, 2)).shape == (0, 4)


@pytest.mark.parametrize("dtype", ACTIVATION_DTYPES)
@pytest.mark.parametrize("hidden", [1, 17, 37, 64])
def test_unpermute_of_strided_rows_equals_contiguous_rows(dtype, hidden):
    """Rows with a column stride (gathered into scratch rows first) combine exactly as their contiguous copy."""
    torch.manual_seed(hidden)
    layout = ops.route_layout(torch.randint(0, 8, (50, 4)), 8)
    weights = torch.rand(50, 4)
    y = torch.randn(layout.num_rows, hidden).to(dtype)
    wide = torch.zeros(layout.num_rows, 2 * hidden, dtype=dtype)
    wide[:, ::2] = y
    want = ops.unpermute(y, layout, weights)
    for strided in (y.t().contiguous().t(), wide[:, ::2]):
        assert torch.equal(ops.unpermute(strided, layout, weights), want)
