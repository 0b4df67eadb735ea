"""Independent references for the tests/comm tests: dense outputs, expected expert rows, drop checks."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import torch


def bucket_of(ids: torch.Tensor, scope: str, num_experts: int, world_size: int) -> torch.Tensor:
    """Bucket of each pair: its expert (``expert``) or its expert's rank (``rank``)."""
    return ids.long() if scope == "expert" else ids.long() // (num_experts // world_size)


def dense_output(
    x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, is_kept: torch.Tensor, renormalize: bool
) -> torch.Tensor:
    """``y[t] = sum_k kept * w'[t,k] * (ids[t,k] + 1) * x[t]`` in float64 (w' renormalised if asked)."""
    w = weights.double() * is_kept.double()
    if renormalize:
        kept_total = w.sum(dim=1, keepdim=True)
        w = torch.where(kept_total != 0, w * weights.double().sum(dim=1, keepdim=True) / kept_total, w * 0)
    scale = (w * (ids.double() + 1)).sum(dim=1, keepdim=True)
    return scale * x.double()


def expected_expert_rows(
    batch: list[dict[str, torch.Tensor]], kept: list[torch.Tensor], rank: int, num_local: int
) -> torch.Tensor:
    """Rows rank ``rank`` should receive: by local expert, then source rank, then token, then k."""
    rows = []
    for expert in range(rank * num_local, (rank + 1) * num_local):
        for source, inputs in enumerate(batch):
            mask = (inputs["topk_ids"] == expert) & kept[source]
            tokens = mask.nonzero()[:, 0]  # row-major: token, then k
            rows.append(inputs["x"][tokens])
    return torch.cat(rows) if rows else torch.empty(0)


def kept_is_prefix(flags: torch.Tensor) -> bool:
    """True when ``flags`` (bool, in token-then-k order) is all True then all False."""
    return not bool((flags[1:] & ~flags[:-1]).any()) if flags.numel() > 1 else True


def drop_budget(total: int, ratio: float) -> int:
    """``floor(ratio * total)`` computed exactly."""
    return math.floor(Fraction(str(ratio)) * total)


def min_cap_for_budget(loads: list[int], budget: int) -> int:
    """The smallest C with ``sum(max(0, load - C)) <= budget`` by linear scan (independent of ops)."""
    cap = 0
    while sum(max(0, load - cap) for load in loads) > budget:
        cap += 1
    return cap


def per_bucket_policy_ok(
    ids: torch.Tensor, weights: torch.Tensor, kept: torch.Tensor, buckets: torch.Tensor, policy: str
) -> list[str]:
    """Problems with ``policy`` on one source rank (empty list when fine), checked per bucket."""
    problems: list[str] = []
    for bucket in buckets.unique().tolist():
        in_bucket = (buckets == bucket).flatten()
        flags = kept.flatten()[in_bucket]
        if policy == "position" and not kept_is_prefix(flags):
            problems.append(f"bucket {bucket}: kept pairs are not a prefix")
        if policy == "probs":
            w = weights.float().flatten()[in_bucket]
            if flags.any() and (~flags).any() and float(w[~flags].max()) > float(w[flags].min()):
                problems.append(
                    f"bucket {bucket}: dropped weight {float(w[~flags].max())} > kept {float(w[flags].min())}"
                )
    return problems


def summarize(case: dict[str, Any]) -> str:
    """Short case id for test names."""
    cfg = case["config"]
    extra = {k: v for k, v in cfg.items() if k not in ("dispatcher", "max_tokens_per_rank")}
    return (
        f"{case['kind']}-{cfg['dispatcher']}-{case.get('dtype', 'float32')}-{case.get('routing', 'random')}-"
        f"T{case['tokens']}-" + ",".join(f"{k}={v}" for k, v in sorted(extra.items()))
    )


def expected_rows_sent(
    dispatcher: str,
    batch: list[dict[str, torch.Tensor]],
    kept: list[torch.Tensor],
    rank: int,
    num_experts: int,
    world_size: int,
    *,
    token_level: bool = False,
) -> int:
    """Rows ``rank`` must send to other ranks in dispatch: one per kept pair to another rank (pair level), one per
    (token, other destination rank) with a kept pair (token level), or every padded token (allgather)."""
    if dispatcher == "allgather":
        return (world_size - 1) * max(b["topk_ids"].shape[0] for b in batch)
    dest = bucket_of(batch[rank]["topk_ids"], "rank", num_experts, world_size)
    crossing = kept[rank] & (dest != rank)
    if not token_level:
        return int(crossing.sum())
    return sum(int((crossing & (dest == d)).any(dim=1).sum()) for d in range(world_size) if d != rank)
