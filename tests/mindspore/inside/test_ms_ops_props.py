"""moecomm.integrations.mindspore.ops against moecomm.ops (torch) on the same data: equal results for every
dtype MindSpore has on the CPU for these ops, zero-copy in and out, and the torch ops' errors.

Runs in the MindSpore environment (tests/mindspore/test_ms_ops.py starts it there from the main suite).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mindspore as ms

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ops"))
from ops_strategies import ACTIVATION_DTYPES, activations, routings  # noqa: E402

from moecomm import ops  # noqa: E402
from moecomm.integrations.mindspore import ops as ms_ops  # noqa: E402
from moecomm.integrations.mindspore.bridge import to_mindspore, to_torch  # noqa: E402

FAST = settings(max_examples=40, deadline=None)


def to_ms(tensor: torch.Tensor) -> ms.Tensor:
    """An independent MindSpore copy of ``tensor`` (so the op's zero-copy bridge is not what builds it)."""
    return to_mindspore(tensor.clone())


def back(value: ms.Tensor) -> torch.Tensor:
    assert isinstance(value, ms.Tensor), f"expected a mindspore.Tensor result, got {type(value).__name__}"
    return to_torch("result", value)


def assert_layout_equal(ms_layout: ops.RouteLayout, torch_layout: ops.RouteLayout) -> None:
    for field in ("tokens_per_expert", "tokens_per_rank", "row_of_pair"):
        assert torch.equal(back(getattr(ms_layout, field)), getattr(torch_layout, field)), field
    assert (ms_layout.num_experts, ms_layout.num_ranks) == (torch_layout.num_experts, torch_layout.num_ranks)


@FAST
@given(routing=routings(), capacity=st.integers(0, 6), policy=st.sampled_from(["position", "probs"]))
def test_layout_and_select_equal_torch(routing, capacity, policy):
    ids, weights = routing.topk_ids, routing.topk_weights
    kept = ops.select_kept(ids, weights, routing.num_experts, capacity=capacity, policy=policy)
    ms_kept = ms_ops.select_kept(to_ms(ids), to_ms(weights), routing.num_experts, capacity=capacity, policy=policy)
    assert torch.equal(back(ms_kept), kept)
    layout = ops.route_layout(ids, routing.num_experts, routing.num_ranks, kept)
    ms_layout = ms_ops.route_layout(to_ms(ids), routing.num_experts, routing.num_ranks, ms_kept)
    assert_layout_equal(ms_layout, layout)
    budget = ms_ops.capacity_for_ratio(ms_layout.tokens_per_expert, 0.25)
    assert budget == ops.capacity_for_ratio(layout.tokens_per_expert, 0.25)


@FAST
@given(
    routing=routings(),
    dtype=st.sampled_from(ACTIVATION_DTYPES),
    hidden=st.integers(1, 24),
    seed=st.integers(0, 2**31 - 1),
    capacity=st.integers(0, 6),
)
def test_permute_unpermute_equal_torch(routing, dtype, hidden, seed, capacity):
    x = activations(routing, hidden, dtype, seed, non_contiguous=False)
    ids, weights = routing.topk_ids, routing.topk_weights
    kept = ops.select_kept(ids, weights, routing.num_experts, capacity=capacity)
    layout = ops.route_layout(ids, routing.num_experts, routing.num_ranks, kept)
    rows = ops.permute(x, layout, kept)
    y = ops.unpermute(rows, layout, weights, kept)
    ms_kept = to_ms(kept)
    ms_layout = ms_ops.route_layout(to_ms(ids), routing.num_experts, routing.num_ranks, ms_kept)
    ms_rows = ms_ops.permute(to_ms(x), ms_layout, ms_kept)
    assert ms_rows.dtype == to_mindspore(torch.empty(0, dtype=dtype)).dtype
    assert torch.equal(back(ms_rows), rows)
    ms_y = ms_ops.unpermute(ms_rows, ms_layout, to_ms(weights), ms_kept)
    assert torch.equal(back(ms_y), y)


@FAST
@given(
    counts=st.lists(st.integers(0, 5), min_size=1, max_size=6),
    dtype=st.sampled_from(ACTIVATION_DTYPES),
    hidden=st.integers(1, 16),
    extra=st.integers(0, 2),
)
def test_padded_and_regroup_equal_torch(counts, dtype, hidden, extra):
    counts_t = torch.tensor(counts, dtype=torch.int64)
    rows = torch.randn(sum(counts), hidden).to(dtype)
    capacity = max(counts) + extra
    packed = ops.pack_padded(rows, counts_t, capacity)
    ms_packed = ms_ops.pack_padded(to_ms(rows), to_ms(counts_t), capacity)
    assert torch.equal(back(ms_packed), packed)
    assert torch.equal(back(ms_ops.unpack_padded(ms_packed, to_ms(counts_t))), ops.unpack_padded(packed, counts_t))
    blocks = counts_t.view(1, -1) if len(counts) % 2 else counts_t.view(2, -1)
    regrouped = ops.regroup_blocks(rows, blocks)
    assert torch.equal(back(ms_ops.regroup_blocks(to_ms(rows), to_ms(blocks))), regrouped)


@FAST
@given(
    kind=st.sampled_from(["int8", "fp8"]),
    dtype=st.sampled_from(ACTIVATION_DTYPES),
    shape=st.tuples(st.integers(0, 6), st.integers(1, 300)),
    seed=st.integers(0, 2**31 - 1),
)
def test_quantize_dequantize_equal_torch(kind, dtype, shape, seed):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype)
    q, scales = ops.quantize_rows(x, kind)
    ms_q, ms_scales = ms_ops.quantize_rows(to_ms(x), kind)
    assert back(ms_q).dtype == q.dtype
    assert torch.equal(back(ms_q).view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(back(ms_scales), scales)
    ms_dtype = to_mindspore(torch.empty(0, dtype=dtype)).dtype
    restored = ms_ops.dequantize_rows(ms_q, ms_scales, kind, ms_dtype)
    assert torch.equal(back(restored), ops.dequantize_rows(q, scales, kind, dtype))


@FAST
@given(
    kind=st.sampled_from(["int8", "fp8"]),
    dtype=st.sampled_from(ACTIVATION_DTYPES),
    shape=st.tuples(st.integers(0, 6), st.integers(1, 300)),
    use_layout=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_wire_rows_equal_torch(kind, dtype, shape, use_layout, seed):
    """quantize_to_wire / dequantize_from_wire (quantized dispatch's rows), with and without a layout."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    layout = ops.route_layout(torch.randint(0, 4, (shape[0], 2), generator=gen), 4) if use_layout else None
    wire = ops.quantize_to_wire(x, kind, layout)
    ms_layout = None
    if layout is not None:
        ms_layout = ms_ops.route_layout(to_ms(layout.topk_ids), 4)
    ms_wire = ms_ops.quantize_to_wire(to_ms(x), kind, ms_layout)
    assert torch.equal(back(ms_wire), wire)
    ms_dtype = to_mindspore(torch.empty(0, dtype=dtype)).dtype
    plain = ops.quantize_to_wire(x, kind)
    restored = ms_ops.dequantize_from_wire(to_ms(plain), shape[1], kind, ms_dtype, ms_layout)
    assert torch.equal(back(restored), ops.dequantize_from_wire(plain, shape[1], kind, dtype, layout))
    assert ms_ops.wire_row_bytes(shape[1], kind) == wire.shape[1]


def test_results_share_memory_and_out_is_returned_itself():
    """Zero-copy: an input's memory is what the kernel reads, and ``out=`` comes back as the same object,
    written in place."""
    x = to_ms(torch.arange(12, dtype=torch.float32).view(4, 3))
    ids = to_ms(torch.tensor([[1], [0], [1], [0]]))
    layout = ms_ops.route_layout(ids, 2)
    out = to_ms(torch.zeros(4, 3))
    result = ms_ops.permute(x, layout, out=out)
    assert result is out
    assert torch.equal(back(out), torch.tensor([[3.0, 4, 5], [9, 10, 11], [0, 1, 2], [6, 7, 8]]))
    back(x)[0, 0] = 100.0  # writes through the view into the MindSpore tensor
    ms_ops.permute(x, layout, out=out)
    assert float(out.asnumpy()[2, 0]) == 100.0


X = torch.randn(4, 3)
IDS = torch.tensor([[1], [0], [1], [0]])

BAD_CALLS = {
    "x float64": lambda o, t: o.permute(t(X.double()), o.route_layout(t(IDS), 2)),
    "ids float32": lambda o, t: o.route_layout(t(IDS.float()), 2),
    "ids out of range": lambda o, t: o.route_layout(t(IDS + 5), 2),
    "experts not divisible": lambda o, t: o.route_layout(t(IDS), 3, 2),
    "x with too few tokens": lambda o, t: o.permute(t(X[:3]), o.route_layout(t(IDS), 2)),
    "x 1-D": lambda o, t: o.permute(t(X[0]), o.route_layout(t(IDS), 2)),
    "unpermute rows": lambda o, t: o.unpermute(t(X[:2]), o.route_layout(t(IDS), 2), t(X[:, :1])),
    "counts negative": lambda o, t: o.pack_padded(t(X), t(torch.tensor([5, -1])), 6),
    "out wrong shape": lambda o, t: o.permute(t(X), o.route_layout(t(IDS), 2), out=t(torch.zeros(3, 3))),
    "quantize kind": lambda o, t: o.quantize_rows(t(X), "int4"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_inputs_raise_the_torch_ops_errors(case):
    """Bad shapes, dtypes and values raise what the torch op raises: same type, same message."""
    call = BAD_CALLS[case]
    with pytest.raises((TypeError, ValueError)) as from_torch:
        call(ops, lambda tensor: tensor.clone())
    with pytest.raises(from_torch.type) as from_mindspore:
        call(ms_ops, to_ms)
    assert str(from_mindspore.value) == str(from_torch.value)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ms_ops.route_layout(IDS, 2), r"^topk_ids: expected a mindspore\.Tensor, got torch\.Tensor$"),
        (lambda: ms_ops.route_layout([[0]], 2), r"^topk_ids: expected a mindspore\.Tensor, got builtins\.list$"),
        (
            lambda: ms_ops.permute(to_ms(X), ms_ops.route_layout(to_ms(IDS), 2), out=X.clone()),
            r"^out: expected a mindspore",
        ),
        (
            lambda: ms_ops.unpermute(to_ms(X), ops.route_layout(IDS, 2), to_ms(X[:, :1])),
            r"^layout\.topk_ids: expected a mindspore",
        ),
        (
            lambda: ms_ops.unpermute(to_ms(X), ms_ops.route_layout(to_ms(IDS), 2), X[:, :1]),
            r"^topk_weights: expected a mindspore",
        ),
    ],
)
def test_torch_tensors_where_mindspore_ones_belong_are_refused_by_name(call, match):
    with pytest.raises(TypeError, match=match):
        call()
