"""Seeded skewed routing generator (Zipf / hot expert) and the interleaved timer's statistics."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moecomm.bench.routing import expert_popularity, load_imbalance, make_routing
from moecomm.bench.timing import Timing, measure_interleaved


@settings(max_examples=30, deadline=None)
@given(
    num_tokens=st.integers(0, 50),
    num_experts=st.integers(1, 40),
    skew=st.floats(0, 3),
    seed=st.integers(0, 99),
    data=st.data(),
)
def test_bench_cli_routing_rows_are_distinct_valid_and_seeded(
    num_tokens: int, num_experts: int, skew: float, seed: int, data: st.DataObject
) -> None:
    top_k = data.draw(st.integers(1, num_experts))
    routing = make_routing(num_tokens, num_experts, top_k, skew=skew, seed=seed)
    ids, weights = routing.topk_ids, routing.topk_weights
    assert ids.shape == weights.shape == (num_tokens, top_k) and ids.dtype == torch.int64
    assert bool(((ids >= 0) & (ids < num_experts)).all())
    for row in ids.tolist():
        assert len(set(row)) == top_k
    torch.testing.assert_close(weights.sum(1), torch.ones(num_tokens))
    assert bool((weights[:, :-1] >= weights[:, 1:]).all())
    again = make_routing(num_tokens, num_experts, top_k, skew=skew, seed=seed)
    assert torch.equal(again.topk_ids, ids) and torch.equal(again.topk_weights, weights)


@pytest.mark.parametrize(("mode", "skew"), [("zipf", 0.0), ("zipf", 1.2), ("hot", 6.0)])
def test_bench_cli_routing_top1_frequencies_follow_popularity(mode: str, skew: float) -> None:
    num_tokens, num_experts = 60000, 10
    popularity = expert_popularity(num_experts, skew=skew, mode=mode, hot_expert=3)
    routing = make_routing(num_tokens, num_experts, 1, skew=skew, mode=mode, hot_expert=3, seed=5)
    frequency = torch.bincount(routing.topk_ids.reshape(-1), minlength=num_experts).double() / num_tokens
    torch.testing.assert_close(frequency, popularity, atol=0.01, rtol=0)
    if mode == "zipf":  # Zipf: sorted probabilities are 1/i^s up to normalisation
        ranked = popularity.sort(descending=True).values
        expected = 1.0 / torch.arange(1, num_experts + 1, dtype=torch.float64) ** skew
        torch.testing.assert_close(ranked, expected / expected.sum())
    else:
        assert float(popularity[3] / popularity[0]) == pytest.approx(skew)


def test_bench_cli_routing_skew_raises_imbalance_and_bad_args_raise() -> None:
    loads = [
        load_imbalance(torch.bincount(make_routing(4000, 16, 2, skew=s).topk_ids.reshape(-1), minlength=16))
        for s in (0.0, 1.0, 2.0)
    ]
    assert loads[0] < loads[1] < loads[2]
    with pytest.raises(ValueError, match="skew"):
        make_routing(4, 8, 2, skew=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        make_routing(4, 2, 3)
    with pytest.raises(ValueError, match="mode"):
        make_routing(4, 8, 2, mode="uniform")
    with pytest.raises(ValueError, match="skew"):
        make_routing(4, 8, 2, mode="hot", skew=0.5)


def test_bench_cli_timing_interleaves_and_summarises() -> None:
    calls: list[str] = []
    fake_times = iter(range(1, 100))

    def timer(fn: object) -> float:
        fn()  # type: ignore[operator]
        return float(next(fake_times))

    timings = measure_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1, timer=timer
    )
    # one call of each peer per round, warm-up round included; round r starts r cases further on
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert timings["a"].samples == (4.0, 5.0, 8.0) and timings["b"].samples == (3.0, 6.0, 7.0)
    timing = Timing((4.0, 1.0, 3.0, 2.0, 5.0))
    assert timing.median == 3.0
    assert timing.p10 == pytest.approx(1.4) and timing.p90 == pytest.approx(4.6)  # linear interpolation
    with pytest.raises(ValueError, match="repeats"):
        measure_interleaved({"a": lambda: None}, repeats=0, warmup=0)
