"""Rank functions and batch builders shared by the tests/comm tests (spawned through run_local).

Every rank builds the same global batch from a seed, so the parent can compute a dense reference.
Expert e multiplies its input by (e + 1).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.distributed as dist

from moecomm.comm import make_dispatcher
from moecomm.config import MoECommConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def make_batch(case: dict[str, Any], world_size: int) -> list[dict[str, torch.Tensor]]:
    """Each rank's ``x [T_r, H]``, ``topk_ids [T_r, K]``, ``topk_weights [T_r, K]`` for ``case``."""
    gen = torch.Generator().manual_seed(case["seed"])
    experts, top_k, hidden = case["experts"], case["top_k"], case["hidden"]
    dtype = DTYPES[case.get("dtype", "float32")]
    routing = case.get("routing", "random")
    batch = []
    for rank in range(world_size):
        tokens = case["tokens"][rank]
        x = torch.randn(tokens, hidden, generator=gen).to(dtype)
        logits = torch.randn(tokens, experts, generator=gen)
        if routing == "skew":  # expert e gets bias -e: low experts (rank 0's) are hot
            logits = logits * 0.5 - torch.arange(experts, dtype=torch.float32) * 0.7
        elif routing == "one_rank":  # everything to the last rank's experts
            local = experts // world_size
            logits[:, : experts - local] = -1e9
        weights, ids = torch.softmax(logits, dim=-1).topk(top_k, dim=-1)
        if case.get("random_weights"):
            weights = torch.rand(tokens, top_k, generator=gen)
        batch.append({"x": x, "topk_ids": ids, "topk_weights": weights.to(dtype)})
    return batch


def run_expert(expert_x: torch.Tensor, tokens_per_local_expert: torch.Tensor, first_expert: int) -> torch.Tensor:
    """Expert e (global id) multiplies its rows by e + 1."""
    device = expert_x.device
    scale = torch.repeat_interleave(
        torch.arange(
            first_expert + 1, first_expert + 1 + tokens_per_local_expert.numel(), dtype=torch.float32, device=device
        ),
        tokens_per_local_expert.to(device),
    )
    return (expert_x.float() * scale.unsqueeze(1)).to(expert_x.dtype)


def _roundtrip(rank: int, world_size: int, case: dict[str, Any]) -> dict[str, Any]:
    dispatcher = make_dispatcher(MoECommConfig.from_dict(case["config"]), case["experts"], dist.group.WORLD)
    inputs = make_batch(case, world_size)[rank]
    results = []
    for _ in range(case.get("steps", 1)):  # repeated steps must give identical results (no hidden state)
        expert_x, handle = dispatcher.dispatch(inputs["x"], inputs["topk_ids"], inputs["topk_weights"])
        expert_y = run_expert(expert_x, handle.tokens_per_local_expert, dispatcher.local_experts.start)
        y = dispatcher.combine(expert_y, handle)
        results.append(y)
    return {
        "y": results[0],
        "repeat_equal": all(torch.equal(results[0], r) for r in results[1:]),
        "expert_x": expert_x,
        "tokens_per_local_expert": handle.tokens_per_local_expert,
        "is_kept": handle.is_kept,
        "weights": handle.topk_weights,
        "stats": handle.stats.as_dict(),
        "num_local_experts": dispatcher.num_local_experts,
    }


def _expect_error(fn: Any) -> str:
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - the test inspects type and message
        return f"{type(error).__name__}: {error}"
    return "no error"


def _bad_inputs(rank: int, world_size: int, case: dict[str, Any]) -> dict[str, str]:
    """Each bad input must raise before any collective: if one did not, the next call would hang."""
    dispatcher = make_dispatcher(MoECommConfig.from_dict(case["config"]), case["experts"], dist.group.WORLD)
    inputs = make_batch(case, world_size)[rank]
    x, ids, w = inputs["x"], inputs["topk_ids"], inputs["topk_weights"]
    bad_ids = ids.clone()
    if bad_ids.numel():
        bad_ids[0, 0] = case["experts"]
    meta_x = torch.empty(x.shape, device="meta")
    empty = x.shape[0] == 0  # nothing to corrupt / no row to remove: those calls would be valid
    errors = {
        "id_range": "skipped" if empty else _expect_error(lambda: dispatcher.dispatch(x, bad_ids, w)),
        "ids_dtype": _expect_error(lambda: dispatcher.dispatch(x, ids.float(), w)),
        "weights_shape": _expect_error(lambda: dispatcher.dispatch(x, ids, w[:, :1])),
        "x_rows": "skipped" if empty else _expect_error(lambda: dispatcher.dispatch(x[:-1], ids, w)),
        "x_dtype": _expect_error(lambda: dispatcher.dispatch(x.double(), ids, w)),
        "x_device": _expect_error(lambda: dispatcher.dispatch(meta_x, ids, w)),
    }
    # The group still works afterwards: no rank entered a collective.
    expert_x, handle = dispatcher.dispatch(x, ids, w)
    dispatcher.combine(expert_x, handle)
    one_row_too_many = torch.zeros(expert_x.shape[0] + 1, expert_x.shape[1], dtype=expert_x.dtype)
    errors["wrong_rows_in_combine"] = _expect_error(lambda: dispatcher.combine(one_row_too_many, handle))
    return errors


def _config_mismatch(rank: int, world_size: int, case: dict[str, Any]) -> str:
    config = dict(case["config"])
    if rank == world_size - 1:
        config.update(case.get("mismatch", {"token_drop_ratio": 0.25}))
    return _expect_error(lambda: make_dispatcher(MoECommConfig.from_dict(config), case["experts"], dist.group.WORLD))


def run_cases(rank: int, world_size: int, cases: list[dict[str, Any]]) -> list[Any]:
    """Runs every case of one spawn in order; returns one result per case."""
    kinds = {"roundtrip": _roundtrip, "bad_inputs": _bad_inputs, "config_mismatch": _config_mismatch}
    return [kinds[case["kind"]](rank, world_size, case) for case in cases]


def exit_mid_step(rank: int, world_size: int, case: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """The last rank exits after setup; the others must raise within ~timeout_s naming the step."""
    config = MoECommConfig.from_dict({**case["config"], "timeout_s": timeout_s})
    dispatcher = make_dispatcher(config, case["experts"], dist.group.WORLD)
    inputs = make_batch(case, world_size)[rank]
    if rank == world_size - 1:
        os._exit(0)
    start = time.monotonic()
    error = _expect_error(lambda: dispatcher.dispatch(inputs["x"], inputs["topk_ids"], inputs["topk_weights"]))
    return {"error": error, "seconds": time.monotonic() - start}


def rank_identity(rank: int, world_size: int, offset: int) -> tuple[int, int, int, int]:
    """Returns (rank, world_size, rank + offset, sum of ranks via all_reduce)."""
    total = torch.tensor([rank])
    dist.all_reduce(total)
    return rank, world_size, rank + offset, int(total)


def raise_on_rank(rank: int, world_size: int, bad_rank: int) -> int:
    """Rank ``bad_rank`` raises; the others return."""
    if rank == bad_rank:
        raise KeyError(f"boom on {rank}")
    return rank


def sleep_on_rank(rank: int, world_size: int, slow_rank: int, seconds: float) -> int:
    """Rank ``slow_rank`` sleeps ``seconds`` (past the run's timeout)."""
    if rank == slow_rank:
        time.sleep(seconds)
    return rank
