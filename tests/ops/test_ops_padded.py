"""pack_padded / unpack_padded: native vs reference; padding is zero; round trip."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_strategies import ACTIVATION_DTYPES

from moecomm import ops
from moecomm.ops import reference


@settings(max_examples=120, deadline=None)
@given(
    counts=st.lists(st.integers(0, 6), min_size=0, max_size=9),
    slack=st.integers(0, 3),
    hidden=st.sampled_from([1, 3, 16]),
    dtype=st.sampled_from(ACTIVATION_DTYPES),
    strided=st.booleans(),
)
def test_pack_unpack_match_reference(counts, slack, hidden, dtype, strided):
    counts_t = torch.tensor(counts, dtype=torch.int64)
    capacity = (max(counts) if counts else 0) + slack
    num_rows = sum(counts)
    rows = torch.randn(num_rows, hidden * (2 if strided else 1)).to(dtype)
    rows = rows[:, ::2] if strided else rows
    packed = ops.pack_padded(rows, counts_t, capacity)
    assert packed.shape == (len(counts), capacity, hidden)
    assert torch.equal(packed, reference.pack_padded(rows, counts_t, capacity))
    for b, n in enumerate(counts):
        assert bool((packed[b, n:] == 0).all())
    unpacked = ops.unpack_padded(packed, counts_t)
    assert torch.equal(unpacked, reference.unpack_padded(packed, counts_t))
    assert torch.equal(unpacked, rows)
