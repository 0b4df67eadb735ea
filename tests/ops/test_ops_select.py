"""select_kept: native vs reference, and the capacity/policy properties on their own."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_strategies import routings

from moecomm import ops
from moecomm.ops import reference


def buckets_of(routing, scope):
    ids = routing.topk_ids.to(torch.int64)
    if scope == "rank":
        return ids // (routing.num_experts // routing.num_ranks), routing.num_ranks
    return ids, routing.num_experts


@settings(max_examples=200, deadline=None)
@given(
    routing=routings(),
    scope=st.sampled_from(["expert", "rank"]),
    policy=st.sampled_from(["position", "probs"]),
    cap=st.integers(0, 20),
    per_bucket=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_select_kept_matches_reference_and_respects_capacity(routing, scope, policy, cap, per_bucket, seed):
    bucket, num_buckets = buckets_of(routing, scope)
    capacity = cap
    if per_bucket:
        capacity = torch.randint(0, cap + 1, (num_buckets,), generator=torch.Generator().manual_seed(seed))
    args = (routing.topk_ids, routing.topk_weights, routing.num_experts)
    kwargs = dict(capacity=capacity, scope=scope, num_ranks=routing.num_ranks, policy=policy)
    got = ops.select_kept(*args, **kwargs)
    assert torch.equal(got, reference.select_kept(*args, **kwargs))

    caps = capacity if isinstance(capacity, torch.Tensor) else torch.full((num_buckets,), capacity)
    load = torch.bincount(bucket.reshape(-1), minlength=num_buckets)
    kept = torch.bincount(bucket.reshape(-1)[got.reshape(-1)], minlength=num_buckets)
    assert torch.equal(kept, torch.minimum(load, caps.to(torch.int64)))  # keeps exactly min(load, cap)
    for b in range(num_buckets):
        in_bucket = (bucket == b).reshape(-1)
        kept_b = got.reshape(-1)[in_bucket]
        if policy == "position":  # a prefix in (token, k) order
            assert not bool((kept_b[1:] & ~kept_b[:-1]).any())
        else:  # never drops a higher weight than it keeps
            w = routing.topk_weights.reshape(-1)[in_bucket]
            if bool(kept_b.any()) and bool((~kept_b).any()):
                assert float(w[~kept_b].max()) <= float(w[kept_b].min())


def test_probs_ties_go_to_the_earlier_token():
    ids = torch.tensor([[0], [0], [0]])
    weights = torch.tensor([[0.5], [0.9], [0.5]])
    is_kept = ops.select_kept(ids, weights, 1, capacity=2, policy="probs")
    assert is_kept.reshape(-1).tolist() == [True, True, False]
