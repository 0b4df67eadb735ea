"""swiglu_experts (grouped matmul and per-expert-loop paths) vs a per-expert loop reference; SharedExperts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from moecomm.layer.experts import can_use_grouped_mm, native_grouped_mm, swiglu_experts
from moecomm.layer.shared_experts import SharedExperts

TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-2, 2e-2)}


def reference_swiglu_experts(rows, tokens_per_expert, w13, w2, *, with_magnitude=False):
    """Per-expert loop in float64 over every expert (empty ones included).

    With ``with_magnitude``, also ``|silu(gate) * up| @ |w2|^T``: the size of the terms each output sums, which
    bounds the rounding error of a 16-bit computation even where the terms cancel."""
    out = torch.zeros(rows.shape[0], w2.shape[1], dtype=torch.float64)
    magnitude = torch.zeros_like(out)
    inter = w2.shape[2]
    start = 0
    for expert, count in enumerate(tokens_per_expert.tolist()):
        block = rows[start : start + count].double()
        gate = block @ w13[expert, :inter].double().T
        up = block @ w13[expert, inter:].double().T
        hidden = F.silu(gate) * up
        out[start : start + count] = hidden @ w2[expert].double().T
        magnitude[start : start + count] = hidden.abs() @ w2[expert].double().abs().T
        start += count
    return (out, magnitude) if with_magnitude else out


@settings(max_examples=80, deadline=None)
@given(
    counts=st.lists(st.sampled_from([0, 0, 1, 2, 5, 17]), min_size=1, max_size=9),
    hidden=st.sampled_from([1, 8, 24]),
    inter=st.sampled_from([1, 4, 16]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    use_native=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_swiglu_experts_matches_per_expert_loop(counts, hidden, inter, dtype, use_native, seed):
    gen = torch.Generator().manual_seed(seed)
    tokens_per_expert = torch.tensor(counts, dtype=torch.int64)
    num_rows = sum(counts)
    rows = torch.randn(num_rows, hidden, generator=gen).to(dtype)
    w13 = (torch.randn(len(counts), 2 * inter, hidden, generator=gen) / hidden**0.5).to(dtype)
    w2 = (torch.randn(len(counts), hidden, inter, generator=gen) / inter**0.5).to(dtype)
    out = swiglu_experts(rows, tokens_per_expert, w13, w2, use_native=use_native)
    assert out.shape == (num_rows, hidden) and out.dtype == dtype
    rtol, atol = TOLERANCE[dtype]
    expected, magnitude = reference_swiglu_experts(rows, tokens_per_expert, w13, w2, with_magnitude=True)
    # relative to the terms' size, not the (possibly cancelled) sum: 16-bit matmuls round every term
    error = (out.double() - expected).abs()
    bound = atol + rtol * torch.maximum(expected.abs(), magnitude)
    assert bool((error <= bound).all()), (
        f"max error {float(error.max())}, worst error/bound {float((error / bound).max())}"
    )


def test_grouped_mm_is_available_and_used_on_cpu():
    """torch 2.13 has a CPU grouped matmul, taken for 16-byte rows; both paths give the same float32 result."""
    assert native_grouped_mm() is not None
    gen = torch.Generator().manual_seed(0)
    counts = torch.tensor([3, 0, 0, 6, 1])
    rows = torch.randn(10, 8, generator=gen)
    w13 = torch.randn(5, 16, 8, generator=gen)
    w2 = torch.randn(5, 8, 8, generator=gen)
    assert can_use_grouped_mm(rows, w13) and can_use_grouped_mm(rows, w2)
    assert not can_use_grouped_mm(torch.randn(10, 6), torch.randn(5, 4, 6))  # 24-byte rows: loop path
    torch.testing.assert_close(
        swiglu_experts(rows, counts, w13, w2), swiglu_experts(rows, counts, w13, w2, use_native=False)
    )


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(rows=torch.randn(4, 7)), "rows: expected hidden size 8"),
        (dict(tokens_per_expert=torch.tensor([1, 1, 1])), "tokens_per_expert: counts sum to 3"),
        (dict(tokens_per_expert=torch.tensor([4, 0])), "tokens_per_expert: expected 3 counts"),
        (dict(tokens_per_expert=torch.tensor([5, -1, 0])), "counts >= 0"),
        (dict(w13=torch.randn(3, 11, 8)), r"w13: expected \[E_local, 2\*I, H\] \(gate then up\)"),
        (dict(w2=torch.randn(3, 8, 5)), "w2: expected shape"),
        (dict(w2=torch.randn(3, 8, 6, dtype=torch.bfloat16)), "w2: expected the dtype of rows"),
        (dict(tokens_per_expert=torch.tensor([4.0, 0, 0])), "tokens_per_expert: expected dtype"),
    ],
)
def test_swiglu_experts_rejects_bad_arguments(change, match):
    args = dict(
        rows=torch.randn(4, 8),
        tokens_per_expert=torch.tensor([4, 0, 0]),
        w13=torch.randn(3, 12, 8),
        w2=torch.randn(3, 8, 6),
    )
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        swiglu_experts(**args)


@pytest.mark.parametrize("use_gate", [False, True])
def test_shared_experts_matches_dense_swiglu(use_gate):
    torch.manual_seed(0)
    shared = SharedExperts(8, 12, use_gate=use_gate)
    x = torch.randn(5, 8)
    expected = (F.silu(x @ shared.gate_proj.weight.T) * (x @ shared.up_proj.weight.T)) @ shared.down_proj.weight.T
    if use_gate:
        expected = torch.sigmoid(x @ shared.shared_expert_gate.weight.T) * expected
    torch.testing.assert_close(shared(x), expected)
    with pytest.raises(ValueError, match="x: expected hidden size 8"):
        shared(torch.randn(5, 9))


@pytest.mark.parametrize("compute_dtype", [None, torch.float32, torch.bfloat16])
def test_swiglu_experts_compute_dtype_keeps_the_output_dtype_and_accuracy(compute_dtype):
    torch.manual_seed(5)
    counts = torch.tensor([3, 0, 9, 4])
    rows = torch.randn(16, 16).bfloat16()
    w13 = (torch.randn(4, 32, 16) * 0.2).bfloat16()
    w2 = (torch.randn(4, 16, 16) * 0.2).bfloat16()
    out = swiglu_experts(rows, counts, w13, w2, compute_dtype=compute_dtype)
    assert out.dtype == torch.bfloat16
    want = reference_swiglu_experts(rows, counts, w13, w2)
    torch.testing.assert_close(out.double(), want, rtol=3e-2, atol=3e-2)


def test_swiglu_experts_rejects_a_bad_compute_dtype():
    rows, counts = torch.randn(2, 8), torch.tensor([2])
    with pytest.raises(TypeError, match="compute_dtype"):
        swiglu_experts(rows, counts, torch.randn(1, 8, 8), torch.randn(1, 8, 4), compute_dtype=torch.int32)
