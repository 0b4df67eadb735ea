"""Seeded synthetic routing with controllable skew, for benchmarks and the token-drop study.

Two modes pick each token's ``top_k`` distinct experts from a popularity distribution over experts:

- ``zipf``: expert popularity ``p_i ~ 1 / (i + 1) ** skew`` over popularity ranks i; ``skew = 0`` is
  uniform. Popularity ranks are assigned to expert ids by a seeded random permutation, so hot experts
  land on random EP ranks as they do in trained models (not all on rank 0).
- ``hot``: expert ``hot_expert`` is ``skew`` times as popular as every other expert (``skew = 1`` is
  uniform); models one runaway expert.

Experts are drawn without replacement in proportion to popularity (the Gumbel-top-k trick: top-k of
``log p + Gumbel noise``), so a token never picks an expert twice. Grouped routing (DeepSeek-V3's
node-limited top-k) splits the experts into ``num_groups`` contiguous groups, scores each group by the
sum of its two best expert scores, keeps the ``top_groups`` best groups and takes the top-k experts
inside them.
Gate weights are a softmax over random logits, sorted in decreasing order along k (like a router's top-k).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moecomm.checks import check_choice, check_non_negative_int, check_positive_int

ROUTING_MODES = ("zipf", "hot")


@dataclass(frozen=True)
class Routing:
    """One step's routing.

    Attributes:
        topk_ids: ``[T, K]`` int64 expert ids, distinct within a row.
        topk_weights: ``[T, K]`` float32 gate weights, each row sums to 1, decreasing along k.
    """

    topk_ids: torch.Tensor
    topk_weights: torch.Tensor


def expert_popularity(
    num_experts: int, *, skew: float, mode: str = "zipf", seed: int = 0, hot_expert: int = 0
) -> torch.Tensor:
    """``[E]`` float64 selection probabilities (sum 1) for ``mode`` and ``skew`` (see module docstring)."""
    num_experts = check_positive_int("num_experts", num_experts)
    mode = check_choice("mode", mode, ROUTING_MODES)
    if isinstance(skew, bool) or not isinstance(skew, (int, float)) or skew < 0:
        raise ValueError(f"skew: expected a number >= 0, got {skew!r}")
    if mode == "zipf":
        by_rank = 1.0 / torch.arange(1, num_experts + 1, dtype=torch.float64) ** float(skew)
        generator = torch.Generator().manual_seed(seed)
        rank_of_expert = torch.randperm(num_experts, generator=generator)
        weights = by_rank[rank_of_expert]
    else:
        if skew < 1:
            raise ValueError(f"skew: the 'hot' mode expects a popularity multiplier >= 1, got {skew!r}")
        if not 0 <= hot_expert < num_experts:
            raise ValueError(f"hot_expert: expected an expert id in [0, {num_experts}), got {hot_expert!r}")
        weights = torch.ones(num_experts, dtype=torch.float64)
        weights[hot_expert] = float(skew)
    return weights / weights.sum()


def make_routing(
    num_tokens: int,
    num_experts: int,
    top_k: int,
    *,
    skew: float = 0.0,
    mode: str = "zipf",
    seed: int = 0,
    hot_expert: int = 0,
    popularity_seed: int | None = None,
    num_groups: int = 1,
    top_groups: int = 1,
) -> Routing:
    """Draws a seeded routing of ``num_tokens`` tokens to ``top_k`` of ``num_experts`` experts.

    Args:
        num_tokens: T >= 0.
        num_experts: E >= top_k.
        top_k: K >= 1.
        skew: Zipf exponent (``zipf``, >= 0) or the hot expert's popularity multiplier (``hot``, >= 1).
        mode: ``"zipf"`` or ``"hot"``.
        seed: seeds the token draws (give each EP rank its own).
        hot_expert: the hot expert's id (``hot`` mode).
        popularity_seed: seeds which expert ids are popular (``zipf``); defaults to 0 so every rank of a
            run shares the same popular experts, as in a real model.
        num_groups: expert groups (1: no grouping); must divide E.
        top_groups: groups each token may pick from (with ``num_groups > 1``); their experts must
            number at least K.

    Returns:
        :class:`Routing` with ``topk_ids [T, K] int64`` and ``topk_weights [T, K] float32``.
    """
    check_non_negative_int("num_tokens", num_tokens)
    check_positive_int("top_k", top_k)
    check_positive_int("num_experts", num_experts)
    if top_k > num_experts:
        raise ValueError(f"top_k: expected at most num_experts={num_experts}, got {top_k}")
    check_positive_int("num_groups", num_groups)
    check_positive_int("top_groups", top_groups)
    if num_experts % num_groups:
        raise ValueError(f"num_groups: expected a divisor of num_experts={num_experts}, got {num_groups}")
    if num_groups > 1 and not (top_groups <= num_groups and top_groups * (num_experts // num_groups) >= top_k):
        raise ValueError(
            f"top_groups: expected at most num_groups={num_groups} groups holding at least "
            f"top_k={top_k} experts, got {top_groups}"
        )
    popularity = expert_popularity(
        num_experts, skew=skew, mode=mode, seed=0 if popularity_seed is None else popularity_seed, hot_expert=hot_expert
    )
    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand((num_tokens, num_experts), generator=generator).clamp_(min=1e-12, max=1 - 1e-7)
    gumbel = -torch.log(-torch.log(uniform))
    scores = popularity.float().log().unsqueeze(0) + gumbel
    if num_groups > 1:
        grouped = scores.view(num_tokens, num_groups, num_experts // num_groups)
        group_scores = grouped.topk(min(2, grouped.shape[2]), dim=2).values.sum(2)
        chosen = torch.zeros((num_tokens, num_groups), dtype=torch.bool)
        chosen.scatter_(1, group_scores.topk(top_groups, dim=1).indices, True)
        scores = grouped.masked_fill(~chosen.unsqueeze(2), float("-inf")).view(num_tokens, num_experts)
    ids = torch.topk(scores, top_k, dim=1).indices
    logits = torch.randn((num_tokens, top_k), generator=generator)
    weights = torch.softmax(logits, dim=1).sort(dim=1, descending=True).values
    return Routing(topk_ids=ids.to(torch.int64), topk_weights=weights.to(torch.float32))


def load_imbalance(loads: torch.Tensor) -> float:
    """``max / mean`` of ``loads [B]`` (any numeric dtype); 1.0 when all loads are zero."""
    loads = loads.to(torch.float64)
    mean = float(loads.mean()) if loads.numel() else 0.0
    return float(loads.max()) / mean if mean > 0 else 1.0
