"""route_layout: native counting sort vs the pure-torch stable argsort reference."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_strategies import routings

from moecomm import ops
from moecomm.ops import reference


@settings(max_examples=150, deadline=None)
@given(routing=routings(), with_mask=st.booleans(), seed=st.integers(0, 1000))
def test_layout_matches_reference(routing, with_mask, seed):
    is_kept = None
    if with_mask:
        gen = torch.Generator().manual_seed(seed)
        is_kept = torch.rand(routing.topk_ids.shape, generator=gen) < 0.6
    got = ops.route_layout(routing.topk_ids, routing.num_experts, routing.num_ranks, is_kept)
    want = reference.route_layout(routing.topk_ids, routing.num_experts, routing.num_ranks, is_kept)
    assert torch.equal(got.row_of_pair, want.row_of_pair)
    assert torch.equal(got.tokens_per_expert, want.tokens_per_expert)
    assert torch.equal(got.tokens_per_rank, want.tokens_per_rank)
    assert got.tokens_per_expert.dtype == torch.int64 and got.tokens_per_rank.shape == (routing.num_ranks,)


@settings(max_examples=60, deadline=None)
@given(routing=routings())
def test_layout_rows_are_a_stable_expert_major_order(routing):
    """Independent of the reference: rows are a permutation, sorted by expert, token order within."""
    layout = ops.route_layout(routing.topk_ids, routing.num_experts, routing.num_ranks)
    rows = layout.row_of_pair.reshape(-1)
    assert torch.equal(torch.sort(rows).values, torch.arange(rows.numel()))
    experts_by_row = torch.empty_like(rows)
    experts_by_row[rows] = routing.topk_ids.reshape(-1).to(torch.int64)
    pair_by_row = torch.empty_like(rows)
    pair_by_row[rows] = torch.arange(rows.numel())
    assert bool((experts_by_row[1:] >= experts_by_row[:-1]).all())
    same_expert = experts_by_row[1:] == experts_by_row[:-1]
    assert bool((pair_by_row[1:][same_expert] > pair_by_row[:-1][same_expert]).all())
    assert int(layout.expert_offsets[-1]) == rows.numel() == layout.num_rows


def test_layout_large_batch_uses_every_thread_chunk():
    """A batch larger than one thread chunk (4096 tokens) still equals the reference."""
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (10_000, 8))
    torch.set_num_threads(2)
    got = ops.route_layout(ids, 64, 4)
    want = reference.route_layout(ids, 64, 4)
    assert torch.equal(got.row_of_pair, want.row_of_pair)
