"""Device-generic ops without a GPU: the references create every tensor on the inputs' device, the public
ops send tensors of a non-native device to the reference (checked by declaring the CPU non-native), and
mixed devices among the arguments are refused by name (``meta`` serves as the odd device)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_strategies import ACTIVATION_DTYPES, activations, routings

import moecomm.ops._device as device_routing
from moecomm import _C, ops
from moecomm.ops import reference

NATIVE_ENTRY_POINTS = (
    "route_layout",
    "select_kept",
    "permute",
    "unpermute",
    "pack_padded",
    "unpack_padded",
    "regroup_blocks",
)


def run_every_op(impl, routing, x, capacity):
    """Runs every op of ``impl`` on one routed batch (with out= buffers too) -> dict of results."""
    ids, weights, num_experts, num_ranks = (
        routing.topk_ids,
        routing.topk_weights,
        routing.num_experts,
        routing.num_ranks,
    )
    is_kept = impl.select_kept(ids, weights, num_experts, capacity=capacity, policy="probs")
    layout = impl.route_layout(ids, num_experts, num_ranks, is_kept)
    rows = impl.permute(x, layout)
    rows_out = torch.full_like(rows, 3.0)
    impl.permute(x, layout, out=rows_out)
    combined = impl.unpermute(rows, layout, weights)
    combined_out = torch.full_like(combined, 3.0)
    impl.unpermute(rows, layout, weights, out=combined_out)
    counts = layout.tokens_per_rank
    cap = int(counts.max()) if counts.numel() else 0
    packed = impl.pack_padded(rows, counts, cap + 1)
    unpacked = impl.unpack_padded(packed, counts)
    blocks = layout.tokens_per_expert.view(num_ranks, -1)
    regrouped = impl.regroup_blocks(rows, blocks)
    return {
        "is_kept": is_kept,
        "row_of_pair": layout.row_of_pair,
        "tokens_per_expert": layout.tokens_per_expert,
        "tokens_per_rank": layout.tokens_per_rank,
        "rows": rows,
        "rows_out": rows_out,
        "combined": combined,
        "combined_out": combined_out,
        "packed": packed,
        "unpacked": unpacked,
        "regrouped": regrouped,
    }


def assert_same(got, want, dtype):
    for name, tensor in want.items():
        if name.startswith("combined"):  # float32 accumulation in another order
            tol = 1e-6 if dtype == torch.float32 else 2e-2
            torch.testing.assert_close(got[name], tensor, rtol=tol, atol=tol, msg=name)
        else:
            assert torch.equal(got[name], tensor), name


@settings(max_examples=60, deadline=None)
@given(
    routing=routings(),
    hidden=st.sampled_from([1, 4, 9]),
    dtype=st.sampled_from(ACTIVATION_DTYPES),
    capacity=st.integers(0, 12),
    seed=st.integers(0, 1000),
)
def test_references_create_every_tensor_on_the_inputs_device(routing, hidden, dtype, capacity, seed):
    """Under ``torch.device("meta")`` any factory call without ``device=`` makes a meta tensor, which cannot
    mix with the CPU inputs: the references must pass the inputs' device everywhere, and still equal the
    native ops (route_layout and permute bit for bit)."""
    x = activations(routing, hidden, dtype, seed, non_contiguous=seed % 2 == 1)
    want = run_every_op(ops, routing, x, capacity)
    with torch.device("meta"):
        got = run_every_op(reference, routing, x, capacity)
    for tensor in got.values():
        assert tensor.device.type == "cpu"
    assert_same(got, want, dtype)


def refuse_native(*args, **kwargs):
    raise AssertionError("the native core ran for tensors of a non-native device")


@settings(max_examples=40, deadline=None)
@given(
    routing=routings(),
    hidden=st.sampled_from([1, 4]),
    dtype=st.sampled_from(ACTIVATION_DTYPES),
    capacity=st.integers(0, 12),
    seed=st.integers(0, 1000),
)
def test_public_ops_send_non_native_devices_to_the_reference(routing, hidden, dtype, capacity, seed):
    """With the CPU declared non-native and every ``_C`` op made to fail, the public ops still answer, as
    the native core does: the reference ran."""
    x = activations(routing, hidden, dtype, seed, non_contiguous=False)
    want = run_every_op(ops, routing, x, capacity)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(device_routing, "NATIVE_DEVICE_TYPES", ())
        for name in NATIVE_ENTRY_POINTS:
            patch.setattr(_C, name, refuse_native)
        got = run_every_op(ops, routing, x, capacity)
    assert_same(got, want, dtype)


def test_native_devices_run_the_native_core(monkeypatch):
    calls = []
    real = _C.permute
    monkeypatch.setattr(_C, "permute", lambda *args: (calls.append("permute"), real(*args))[1])
    layout = ops.route_layout(torch.tensor([[0, 1]]), 2)
    ops.permute(torch.ones(1, 3), layout)
    assert calls == ["permute"]


IMPLS = [pytest.param(ops, id="native"), pytest.param(reference, id="reference")]


@pytest.mark.parametrize("impl", IMPLS)
def test_mixed_devices_are_refused_naming_the_argument(impl):
    meta = torch.device("meta")
    ids = torch.tensor([[0, 1], [1, 2], [3, 3]])
    weights = torch.rand(3, 2)
    x = torch.randn(3, 4)
    layout = ops.route_layout(ids, 4)
    rows = ops.permute(x, layout)
    counts = torch.tensor([2, 4])
    with pytest.raises(ValueError, match="^is_kept: expected a tensor on cpu"):
        impl.route_layout(ids, 4, 1, torch.ones(3, 2, dtype=torch.bool, device=meta))
    with pytest.raises(ValueError, match="^topk_weights: expected a tensor on cpu"):
        impl.select_kept(ids, weights.to(meta), 4, capacity=1, policy="probs")
    with pytest.raises(ValueError, match="^capacity: expected a tensor on cpu"):
        impl.select_kept(ids, weights, 4, capacity=torch.ones(4, dtype=torch.int64, device=meta))
    meta_layout = ops.RouteLayout(
        ids.to(meta), layout.tokens_per_expert, layout.tokens_per_rank, layout.row_of_pair, 4, 1
    )
    with pytest.raises(ValueError, match="^layout: topk_ids: expected a tensor on cpu"):
        impl.permute(x, meta_layout)
    with pytest.raises(ValueError, match="^is_kept: expected a tensor on cpu"):
        impl.permute(x, layout, torch.ones(3, 2, dtype=torch.bool, device=meta))
    with pytest.raises(ValueError, match="^topk_weights: expected a tensor on cpu"):
        impl.unpermute(rows, layout, weights.to(meta))
    with pytest.raises(ValueError, match="^out: expected a tensor on cpu"):
        impl.unpermute(rows, layout, weights, out=torch.empty(3, 4, device=meta))
    with pytest.raises(ValueError, match="^counts: expected a tensor on cpu"):
        impl.pack_padded(torch.randn(6, 4), counts.to(meta), 4)
    with pytest.raises(ValueError, match="^counts: expected a tensor on cpu"):
        impl.unpack_padded(torch.randn(2, 4, 4), counts.to(meta))
    with pytest.raises(ValueError, match="^block_rows: expected a tensor on cpu"):
        impl.regroup_blocks(torch.randn(6, 4), torch.tensor([[6]], device=meta))


def test_check_tensor_device_rules():
    from moecomm.checks import check_tensor

    cpu = torch.zeros(2, 2)
    assert check_tensor("a", cpu, dim=2, dtypes=(torch.float32,)) is cpu
    with pytest.raises(ValueError, match="^a: expected a CPU tensor"):
        check_tensor("a", cpu.to("meta"), dim=2, dtypes=(torch.float32,))
    with pytest.raises(ValueError, match="^a: expected a tensor holding data"):
        check_tensor("a", cpu.to("meta"), dim=2, dtypes=(torch.float32,), cpu_only=False)
    with pytest.raises(ValueError, match="^a: expected a tensor on meta"):
        check_tensor("a", cpu, dim=2, dtypes=(torch.float32,), device=torch.device("meta"))
