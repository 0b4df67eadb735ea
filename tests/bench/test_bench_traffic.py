"""Cross-rank traffic accounting and the traffic-per-token study against direct loops."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moecomm.bench.routing import make_routing
from moecomm.bench.traffic import StepTraffic, even_source_ranks, pages, step_rows_per_rank, traffic_matrix
from moecomm.bench.traffic_study import MODELS, MoEShape, traffic_records


def loop_matrices(
    ids: torch.Tensor, num_experts: int, num_ranks: int, source: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair and (token, destination rank) matrices, one token at a time."""
    pair = torch.zeros((num_ranks, num_ranks), dtype=torch.int64)
    token = torch.zeros((num_ranks, num_ranks), dtype=torch.int64)
    for t, row in enumerate(ids.tolist()):
        ranks = [expert // (num_experts // num_ranks) for expert in row]
        for rank in ranks:
            pair[source[t], rank] += 1
        for rank in set(ranks):
            token[source[t], rank] += 1
    return pair, token


@settings(max_examples=40, deadline=None)
@given(
    num_tokens=st.integers(0, 40),
    ranks_log2=st.integers(0, 3),
    top_k=st.integers(1, 6),
    seed=st.integers(0, 99),
    repeated=st.booleans(),
)
def test_traffic_matrices_match_a_loop(num_tokens: int, ranks_log2: int, top_k: int, seed: int, repeated: bool) -> None:
    num_ranks, num_experts = 2**ranks_log2, 16
    generator = torch.Generator().manual_seed(seed)
    if repeated:  # ids may repeat within a row: the token unit still counts a rank once
        ids = torch.randint(0, num_experts, (num_tokens, top_k), generator=generator)
    else:
        ids = torch.rand((num_tokens, num_experts), generator=generator).topk(top_k, dim=1).indices
    source = torch.randint(0, num_ranks, (num_tokens,), generator=generator)
    pair, token = loop_matrices(ids, num_experts, num_ranks, source.tolist())
    assert torch.equal(traffic_matrix(ids, num_experts, num_ranks, source, "pair"), pair)
    assert torch.equal(traffic_matrix(ids, num_experts, num_ranks, source, "token"), token)
    traffic = StepTraffic.of(ids, num_experts, num_ranks, source, row_bytes=10)
    crossing_pair = int(pair.sum() - pair.diag().sum())
    crossing_token = int(token.sum() - token.diag().sum())
    expected_pair = crossing_pair / num_tokens if num_tokens else 0.0
    assert traffic.crossing_rows_per_token("pair") == pytest.approx(expected_pair)
    assert traffic.crossing_rows_per_token("token") <= traffic.crossing_rows_per_token("pair") + 1e-12
    facts = traffic.summary()
    for r in range(num_ranks):  # out in dispatch + back in combine
        out = int(token[r].sum() - token[r, r])
        back = int(token[:, r].sum() - token[r, r])
        assert facts["crossing_bytes_per_rank_token"][r] == 10 * (out + back)
    assert sum(facts["crossing_bytes_per_rank_pair"]) == 2 * 10 * crossing_pair
    assert sum(facts["crossing_bytes_per_rank_token"]) == 2 * 10 * crossing_token


def test_even_source_ranks_pages_and_bad_arguments() -> None:
    assert even_source_ranks(5, 2).tolist() == [0, 0, 0, 1, 1]
    assert even_source_ranks(0, 4).tolist() == []
    assert (pages(0), pages(1), pages(4096), pages(4097)) == (0, 1, 1, 2)
    assert step_rows_per_rank(torch.tensor([[5, 2], [3, 7]])).tolist() == [5, 5]
    ids = torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="unit"):
        traffic_matrix(ids, 4, 2, torch.zeros(1, dtype=torch.int64), "byte")
    with pytest.raises(ValueError, match="source_ranks"):
        traffic_matrix(ids, 4, 2, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="num_experts"):
        traffic_matrix(ids, 5, 2, torch.zeros(1, dtype=torch.int64))


@settings(max_examples=25, deadline=None)
@given(
    num_tokens=st.integers(0, 30),
    groups_log2=st.integers(1, 3),
    data=st.data(),
    skew=st.floats(0, 2),
    seed=st.integers(0, 50),
)
def test_grouped_routing_stays_inside_its_top_groups(
    num_tokens: int, groups_log2: int, data: st.DataObject, skew: float, seed: int
) -> None:
    num_groups, per_group = 2**groups_log2, 4
    top_groups = data.draw(st.integers(1, num_groups))
    top_k = data.draw(st.integers(1, top_groups * per_group))
    routing = make_routing(
        num_tokens, num_groups * per_group, top_k, skew=skew, seed=seed, num_groups=num_groups, top_groups=top_groups
    )
    for row in routing.topk_ids.tolist():
        assert len(set(row)) == top_k
        assert len({expert // per_group for expert in row}) <= top_groups


def test_grouped_routing_picks_groups_by_their_two_best_experts() -> None:
    # Expert 0 is 50 times as popular as each other expert: with one group allowed, its group's two
    # best scores sum highest for almost every token, and both experts come from that one group.
    routing = make_routing(2000, 8, 2, mode="hot", skew=50.0, hot_expert=0, seed=3, num_groups=2, top_groups=1)
    groups = routing.topk_ids // 4
    assert bool((groups[:, 0] == groups[:, 1]).all())
    assert float((groups[:, 0] == 0).double().mean()) > 0.9


def test_grouped_routing_rejects_bad_groups() -> None:
    with pytest.raises(ValueError, match="num_groups"):
        make_routing(4, 10, 2, num_groups=3)
    with pytest.raises(ValueError, match="top_groups"):
        make_routing(4, 16, 8, num_groups=8, top_groups=3)  # 3 groups of 2 hold 6 < 8 experts
    with pytest.raises(ValueError, match="top_groups"):
        make_routing(4, 16, 2, num_groups=4, top_groups=5)


def test_traffic_records_cover_the_models_and_match_the_matrices() -> None:
    assert [(m.name, m.num_experts, m.top_k) for m in MODELS] == [
        ("Mixtral-8x7B", 8, 2),
        ("Qwen3-30B-A3B", 128, 8),
        ("DeepSeek-V3", 256, 8),
    ]
    assert (MODELS[2].num_groups, MODELS[2].top_groups) == (8, 4)
    model = MoEShape("tiny", 8, 3, hidden=16)
    records = traffic_records(50, (0.0, 1.5), seed=2, ep_sizes=(2, 4, 8, 16), models=(model,))
    assert [(r["skew"], r["ep_size"]) for r in records] == [(s, e) for s in (0.0, 1.5) for e in (2, 4, 8)]
    for record in records:
        routing = make_routing(50, 8, 3, skew=record["skew"], seed=2, popularity_seed=2)
        pair, token = loop_matrices(
            routing.topk_ids, 8, record["ep_size"], even_source_ranks(50, record["ep_size"]).tolist()
        )
        assert record["crossing_rows_per_token_pair"] == pytest.approx(float(pair.sum() - pair.diag().sum()) / 50)
        assert record["crossing_rows_per_token_token"] == pytest.approx(float(token.sum() - token.diag().sum()) / 50)
        assert record["crossing_bytes_per_token_token"] == pytest.approx(record["crossing_rows_per_token_token"] * 32)
        if record["ep_size"] == 8:  # one expert per rank and distinct experts: the units agree
            assert record["token_rank_saving"] == 0.0


def test_deepseek_grouped_routing_limits_destination_ranks() -> None:
    records = traffic_records(256, (0.0,), ep_sizes=(8,), models=(MODELS[2],))
    # EP8 puts one group of 32 experts on each rank: a token visits at most 4 ranks, 3.5 of 8 off-rank on average
    assert records[0]["crossing_rows_per_token_token"] <= 4.0
    assert records[0]["crossing_rows_per_token_pair"] > records[0]["crossing_rows_per_token_token"]
