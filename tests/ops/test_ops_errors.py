"""Bad input raises a clear exception naming the argument, from the native ops and the references alike."""

import dataclasses

import pytest
import torch

from moecomm import _C, ops
from moecomm.ops import reference
from moecomm.ops._native import tensor_arg

IMPLS = [pytest.param(ops, id="native"), pytest.param(reference, id="reference")]


def routing(num_tokens=6, top_k=2, num_experts=4):
    ids = torch.randint(0, num_experts, (num_tokens, top_k))
    return ids, torch.rand(num_tokens, top_k)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad_id", [4, 99, -1])
def test_ids_out_of_range(impl, bad_id):
    ids, weights = routing()
    ids[3, 1] = bad_id
    with pytest.raises(ValueError, match="topk_ids"):
        impl.route_layout(ids, 4)
    with pytest.raises(ValueError, match="topk_ids"):
        impl.select_kept(ids, weights, 4, capacity=2)


@pytest.mark.parametrize("impl", IMPLS)
def test_wrong_dtypes_and_ranks(impl):
    ids, weights = routing()
    with pytest.raises(TypeError, match="topk_ids"):
        impl.route_layout(ids.float(), 4)
    with pytest.raises(ValueError, match="topk_ids"):
        impl.route_layout(ids.reshape(-1), 4)
    layout = impl.route_layout(ids, 4)
    with pytest.raises(TypeError, match="x"):
        impl.permute(torch.ones(6, 3, dtype=torch.int32), layout)
    with pytest.raises(ValueError, match="x"):
        impl.permute(torch.ones(6, 3, 1), layout)
    with pytest.raises(TypeError, match="topk_weights"):
        impl.unpermute(torch.ones(12, 3), layout, weights.to(torch.int64))
    with pytest.raises(TypeError, match="layout"):
        impl.permute(torch.ones(6, 3), "not a layout")


@pytest.mark.parametrize("impl", IMPLS)
def test_mismatched_token_counts(impl):
    ids, weights = routing()
    layout = impl.route_layout(ids, 4)
    with pytest.raises(ValueError, match="topk_weights"):
        impl.select_kept(ids, weights[:5], 4, capacity=1, policy="probs")
    with pytest.raises(ValueError, match="x"):
        impl.permute(torch.ones(5, 3), layout)
    with pytest.raises(ValueError, match="topk_weights"):
        impl.unpermute(torch.ones(12, 3), layout, weights[:5])
    with pytest.raises(ValueError, match="y"):
        impl.unpermute(torch.ones(11, 3), layout, weights)
    with pytest.raises(ValueError, match="is_kept"):
        impl.permute(torch.ones(6, 3), layout, torch.ones(5, 2, dtype=torch.bool))


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_capacity_topology_and_choices(impl):
    ids, weights = routing()
    with pytest.raises(ValueError, match="capacity"):
        impl.select_kept(ids, weights, 4, capacity=-1)
    with pytest.raises(ValueError, match="capacity"):
        impl.select_kept(ids, weights, 4, capacity=torch.tensor([1, 1, -3, 1]))
    with pytest.raises(ValueError, match="capacity"):
        impl.select_kept(ids, weights, 4, capacity=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="num_ranks"):
        impl.route_layout(ids, 4, num_ranks=3)
    with pytest.raises(ValueError, match="policy"):
        impl.select_kept(ids, weights, 4, capacity=1, policy="random")
    with pytest.raises(ValueError, match="scope"):
        impl.select_kept(ids, weights, 4, capacity=1, scope="token")
    with pytest.raises(ValueError, match="topk_weights"):
        impl.select_kept(ids, None, 4, capacity=1, policy="probs")
    with pytest.raises(ValueError, match="topk_weights"):
        impl.select_kept(ids, torch.full_like(weights, float("nan")), 4, capacity=1, policy="probs")
    with pytest.raises(ValueError, match="counts"):
        impl.pack_padded(torch.ones(4, 2), torch.tensor([3, 1]), capacity=2)
    with pytest.raises(ValueError, match="counts"):
        impl.pack_padded(torch.ones(4, 2), torch.tensor([1, 1]), capacity=2)
    with pytest.raises(ValueError, match="counts"):
        impl.unpack_padded(torch.ones(2, 2, 3), torch.tensor([1, 1, 1]))


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_drop_ratio_outside_unit_interval(ratio):
    with pytest.raises(ValueError, match="drop_ratio"):
        ops.capacity_for_ratio(torch.tensor([3, 4]), ratio)


def test_capacity_from_factor_rejects_bad_values():
    with pytest.raises(ValueError, match="factor"):
        ops.capacity_from_factor(10, 2, 4, 0.0)
    with pytest.raises(ValueError, match="num_experts"):
        ops.capacity_from_factor(10, 2, 0, 1.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_meta_tensors_are_rejected(impl):
    """Meta tensors hold no data for any backend: refused by name (the public op routes them to the reference)."""
    ids = torch.zeros(4, 2, dtype=torch.int64, device="meta")
    with pytest.raises(ValueError, match="topk_ids: expected a tensor holding data, got device meta"):
        impl.route_layout(ids, 4)
    layout = impl.route_layout(torch.zeros(4, 2, dtype=torch.int64), 4)
    with pytest.raises(ValueError, match="x: expected a tensor holding data, got device meta"):
        impl.permute(torch.zeros(4, 3, device="meta"), layout)


def test_forged_layout_rows_cannot_escape_the_buffer():
    """A hand-made layout with rows out of range must raise, not read or write out of bounds."""
    ids, weights = routing()
    layout = ops.route_layout(ids, 4)
    forged = dataclasses.replace(layout, row_of_pair=layout.row_of_pair + 1000)
    with pytest.raises(ValueError, match="row_of_pair"):
        ops.permute(torch.ones(6, 3), forged)
    with pytest.raises(ValueError, match="row_of_pair"):
        ops.unpermute(torch.ones(12, 3), forged, weights)


def test_native_core_rejects_inconsistent_metadata():
    """The C++ host layer re-checks what it is handed, whatever the Python side did."""
    ids = torch.zeros(4, 2, dtype=torch.int64)
    counts = torch.empty(3, dtype=torch.int64)
    rows = torch.empty(4, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="tokens_per_expert"):
        _C.route_layout(
            tensor_arg("topk_ids", ids),
            4,
            None,
            tensor_arg("tokens_per_expert", counts),
            tensor_arg("row_of_pair", rows),
            1,
        )
    null_ids = _C.TensorArg("topk_ids", 0, [4, 2], [2, 1], int(_C.ScalarType.int64), 64)
    with pytest.raises(ValueError, match="topk_ids: null"):
        _C.route_layout(
            null_ids,
            4,
            None,
            tensor_arg("tokens_per_expert", torch.empty(4, dtype=torch.int64)),
            tensor_arg("row_of_pair", rows),
            1,
        )
    with pytest.raises(ValueError, match="dtype"):
        _C.route_layout(
            _C.TensorArg("topk_ids", ids.data_ptr(), [4, 2], [2, 1], 42, 64),
            4,
            None,
            tensor_arg("tokens_per_expert", torch.empty(4, dtype=torch.int64)),
            tensor_arg("row_of_pair", rows),
            1,
        )
