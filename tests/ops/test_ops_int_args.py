"""Integer arguments of every public op: out-of-range, non-int and bool values raise the named form
``"<argument>: expected ..."`` (never a bare OverflowError or a raw torch error); numpy ints work like ints."""

import numpy as np
import pytest
import torch

from moecomm import ops
from moecomm.ops import reference

IMPLS = [pytest.param(ops, id="native"), pytest.param(reference, id="reference")]
BAD_INTS = [2**63, -(2**63) - 1, 2**70, 1.5, 2.0, True, "3", None]
IDS = torch.tensor([[0, 1], [2, 3], [1, 1]])
WEIGHTS = torch.rand(3, 2)


def calls(impl):
    """(argument name, call taking the value) for every integer argument of every op."""
    return [
        ("num_experts", lambda v: impl.route_layout(IDS, v)),
        ("num_ranks", lambda v: impl.route_layout(IDS, 4, v)),
        ("num_experts", lambda v: impl.select_kept(IDS, WEIGHTS, v, capacity=1)),
        ("num_ranks", lambda v: impl.select_kept(IDS, WEIGHTS, 4, capacity=1, scope="rank", num_ranks=v)),
        ("capacity", lambda v: impl.select_kept(IDS, WEIGHTS, 4, capacity=v)),
        ("capacity", lambda v: impl.pack_padded(torch.ones(2, 3), torch.tensor([1, 1]), v)),
        ("num_tokens", lambda v: impl.capacity_from_factor(v, 2, 4, 1.0)),
        ("top_k", lambda v: impl.capacity_from_factor(10, v, 4, 1.0)),
        ("num_experts", lambda v: impl.capacity_from_factor(10, 2, v, 1.0)),
        ("total_pairs", lambda v: impl.drop_budget(v, 0.1)),
    ]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("value", BAD_INTS, ids=repr)
def test_bad_integers_name_the_argument(impl, value):
    for name, call in calls(impl):
        with pytest.raises((ValueError, TypeError), match=f"^{name}: expected"):
            call(value)


@pytest.mark.parametrize("impl", IMPLS)
def test_numpy_integers_work_like_ints(impl):
    for name, call in calls(impl):
        for value in (np.int64(4), np.int32(4)):
            got = call(value)
            want = call(4)
            if isinstance(want, ops.RouteLayout):
                assert torch.equal(got.row_of_pair, want.row_of_pair), name
            elif isinstance(want, torch.Tensor):
                assert torch.equal(got, want), name
            else:
                assert got == want, name


@pytest.mark.parametrize("impl", IMPLS)
def test_int64_sizes_too_large_to_allocate_name_what_sized_them(impl):
    with pytest.raises((MemoryError, ValueError), match="^num_experts: "):
        impl.route_layout(IDS, 2**62)
    with pytest.raises((MemoryError, ValueError), match="^num_experts: "):
        impl.route_layout(IDS, 2**40)
    with pytest.raises((MemoryError, ValueError), match="^num_experts: "):
        impl.select_kept(IDS, WEIGHTS, 2**40, capacity=1)
    with pytest.raises(ValueError, match="^capacity: .*more than 2\\*\\*63"):
        impl.pack_padded(torch.ones(2, 3), torch.tensor([1, 1]), 2**62)
    with pytest.raises(MemoryError, match="^capacity: cannot allocate"):
        impl.pack_padded(torch.ones(2, 3), torch.tensor([1, 1]), 2**40)


@pytest.mark.parametrize("impl", IMPLS)
def test_capacity_tensors_extreme_values(impl):
    huge = torch.tensor([2**62, 2**63 - 1, 0, 5])
    kept = impl.select_kept(IDS, WEIGHTS, 4, capacity=huge)
    assert kept.tolist() == [[True, True], [False, True], [True, True]]  # expert 2 has capacity 0
    with pytest.raises(ValueError, match="^capacity: expected every capacity >= 0"):
        impl.select_kept(IDS, WEIGHTS, 4, capacity=torch.tensor([-(2**63), 1, 1, 1]))
    with pytest.raises(TypeError, match="^capacity: expected dtype"):
        impl.select_kept(IDS, WEIGHTS, 4, capacity=torch.tensor([1.0, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize("loads", [[2**62, 2**62], [2**63 - 1, 1]])
def test_loads_summing_past_int64_name_loads(loads):
    with pytest.raises(ValueError, match="^loads: expected a total load"):
        ops.capacity_for_ratio(torch.tensor(loads), 0.1)
