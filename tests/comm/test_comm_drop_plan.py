"""Property tests of the drop planner's pure functions against brute-force references."""

from __future__ import annotations

from fractions import Fraction

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moecomm.comm.drop_plan import (
    effective_weights,
    fill_to_capacity,
    plan_ratio,
    quota_within_pair_capacity,
    split_quota,
)


def _reference_split(keep: list[int], counts: list[list[int]]) -> list[list[int]]:
    """Largest remainder with exact fractions, ties to the lower source, bucket by bucket."""
    sources = len(counts)
    out = [[0] * len(keep) for _ in range(sources)]
    for b, kept in enumerate(keep):
        load = sum(counts[s][b] for s in range(sources))
        shares = [Fraction(kept * counts[s][b], load) if load else Fraction(0) for s in range(sources)]
        for s in range(sources):
            out[s][b] = int(shares[s])  # floor
        leftover = kept - sum(out[s][b] for s in range(sources))
        order = sorted(range(sources), key=lambda s: (-(shares[s] - int(shares[s])), s))
        for s in order[:leftover]:
            out[s][b] += 1
    return out


count_matrices = st.integers(1, 4).flatmap(
    lambda sources: st.integers(1, 6).flatmap(
        lambda buckets: st.lists(
            st.lists(st.integers(0, 20), min_size=buckets, max_size=buckets), min_size=sources, max_size=sources
        )
    )
)


@settings(max_examples=200, deadline=None)
@given(count_matrices, st.data())
def test_comm_split_quota_matches_largest_remainder(counts: list[list[int]], data: st.DataObject) -> None:
    loads = [sum(col) for col in zip(*counts)]
    keep = [data.draw(st.integers(0, load)) for load in loads]
    quota = split_quota(torch.tensor(keep), torch.tensor(counts))
    assert quota.tolist() == _reference_split(keep, counts)
    assert quota.sum(0).tolist() == keep
    assert bool((quota <= torch.tensor(counts)).all()) and bool((quota >= 0).all())


@settings(max_examples=200, deadline=None)
@given(
    count_matrices.filter(lambda c: len(c[0]) % len(c) == 0),
    st.sampled_from([0.0, 0.05, 0.1, 0.3, 0.9]),
    st.sampled_from(["rank", "expert"]),
)
def test_comm_plan_ratio_caps_loads_within_budget(counts: list[list[int]], ratio: float, scope: str) -> None:
    matrix = torch.tensor(counts)
    num_ranks = len(counts)
    plan = plan_ratio(matrix, ratio, scope, num_ranks)
    loads = matrix.sum(0) if scope == "expert" else matrix.view(num_ranks, num_ranks, -1).sum(dim=(0, 2))
    total = int(matrix.sum())
    budget = int(Fraction(str(ratio)) * total)
    excess = lambda cap: int((loads - cap).clamp_min(0).sum())  # noqa: E731
    assert excess(plan.cap) <= budget and (plan.cap == 0 or excess(plan.cap - 1) > budget)
    assert plan.quotas.sum(0).tolist() == loads.clamp_max(plan.cap).tolist()
    assert total - int(plan.quotas.sum()) == excess(plan.cap)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=8), st.integers(0, 100))
def test_comm_fill_to_capacity_cuts_largest_first(quota: list[int], capacity: int) -> None:
    out = fill_to_capacity(torch.tensor(quota), capacity)
    assert int(out.sum()) == min(sum(quota), capacity)
    assert bool((out <= torch.tensor(quota)).all())
    kept, original = out.tolist(), quota
    cut = [i for i in range(len(quota)) if kept[i] < original[i]]
    # every bucket that was cut ends at least as high as any other bucket's kept rows minus one
    if cut:
        assert max(kept) - min(kept[i] for i in cut) <= 1


def test_comm_quota_within_pair_capacity_per_scope() -> None:
    quota = torch.tensor([5, 1, 0, 7])
    assert quota_within_pair_capacity(quota, "rank", 4, 3).tolist() == [3, 1, 0, 3]
    cut = quota_within_pair_capacity(quota, "expert", 2, 4)  # blocks [5, 1] and [0, 7], 4 rows each
    assert cut.tolist() == [3, 1, 0, 4]


def test_comm_effective_weights_mask_and_renormalize() -> None:
    weights = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.4, 0.0]])
    kept = torch.tensor([[True, False, True], [False, False, False]])
    plain = effective_weights(weights, kept, renormalize=False)
    torch.testing.assert_close(plain, torch.tensor([[0.5, 0.0, 0.2], [0.0, 0.0, 0.0]]))
    renorm = effective_weights(weights, kept, renormalize=True)
    torch.testing.assert_close(renorm[0], torch.tensor([0.5, 0.0, 0.2]) / 0.7)
    assert renorm[1].tolist() == [0.0, 0.0, 0.0]
