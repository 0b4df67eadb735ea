"""Rank functions of the MindSpore tests, run on MindSpore CPU workers by ``run_mindspore_local``.

They import MindSpore (the workers run in the MindSpore environment) and the batch builders of tests/comm
(on ``PYTHONPATH``), so every rank builds the same global batch from a seed and the parent, which needs no
MindSpore, computes the dense reference. Results come back as torch tensors and plain data.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import torch
from byte_cases import byte_cases
from comm_workers import make_batch, run_expert

from moecomm.comm.transports.base import CommStepError
from moecomm.config import MoECommConfig
from moecomm.integrations.mindspore import make_mindspore_dispatcher, make_mindspore_transport


def roundtrip(rank: int, world_size: int, case: dict[str, Any]) -> dict[str, Any]:
    """One dispatch + combine of ``case`` (tests/comm's case dicts) over ``case["config"]["transport"]``."""
    config = MoECommConfig.from_dict(case["config"])
    dispatcher = make_mindspore_dispatcher(config, case["experts"])
    inputs = make_batch(case, world_size)[rank]
    expert_x, handle = dispatcher.dispatch(inputs["x"], inputs["topk_ids"], inputs["topk_weights"])
    expert_y = run_expert(expert_x, handle.tokens_per_local_expert, dispatcher.local_experts.start)
    y = dispatcher.combine(expert_y, handle)
    result = {
        "transport": dispatcher.transport.name,
        "chosen_because": dispatcher.transport.chosen_because,
        "y": y.clone(),
        "is_kept": handle.is_kept.clone(),
        "stats": handle.stats.as_dict(),
    }
    dispatcher.close()
    return result


def roundtrips(rank: int, world_size: int, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`roundtrip` of every case, in one cluster (starting one costs seconds)."""
    return [roundtrip(rank, world_size, case) for case in cases]


def collectives(rank: int, world_size: int, seed: int) -> dict[str, list[torch.Tensor | None]]:
    """tests/comm's collective cases (every dtype, empty and uneven splits, out=, large messages) and
    :func:`byte_cases` through the MindSpore transport."""
    from shm_workers import _run_case, collective_inputs

    from moecomm.integrations.mindspore import MindSporeTransport

    transport = MindSporeTransport(None, 30.0, "mindspore-test")
    transport.check_same_settings({"ranks": world_size})
    return {
        "standard": [_run_case(transport, case, rank, world_size) for case in collective_inputs(world_size, seed)],
        "bytes": [_run_case(transport, case, rank, world_size) for case in byte_cases(world_size, seed)],
    }


def dispatch_and_collectives(rank: int, world_size: int, cases: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """:func:`roundtrips` and :func:`collectives` in one cluster (starting one costs seconds)."""
    return {"roundtrips": roundtrips(rank, world_size, cases), "collectives": collectives(rank, world_size, seed)}


def killed_mid_step(rank: int, world_size: int, transport: str, victim: int, timeout_s: float) -> dict[str, Any]:
    """The victim joins one all-gather, then SIGKILLs itself while the others wait in the next one."""
    chosen = make_mindspore_transport(transport, timeout_s, "kill-test")
    token = torch.arange(4, dtype=torch.float32)
    chosen.all_gather("warmup", "first", token)
    if rank == victim:
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
    start = time.monotonic()
    try:
        chosen.all_to_all("dispatch", "tokens", token.repeat(world_size), 4 * world_size)
        error = None
    except CommStepError as raised:
        error = str(raised)
    outcome = {"error": error, "elapsed": time.monotonic() - start, "broken": chosen.is_broken, "name": chosen.name}
    chosen.close()
    return outcome


def ms_ep_moe(rank: int, world_size: int, case: dict[str, Any], configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """MindSpore EPMoE forwards of the seeded case, one layer per config (weights loaded through
    ``load_expert_weights`` and ``Parameter.set_data``)."""
    from moe_case import case_tokens, case_weights

    from moecomm.integrations.mindspore import EPMoE
    from moecomm.integrations.mindspore.bridge import to_mindspore, to_torch

    w13, w2, replicated = case_weights(case)
    outcomes = []
    for config in configs:
        layer = EPMoE(
            case["hidden"],
            case["inter"],
            case["experts"],
            case["top_k"],
            config=config,
            shared_intermediate_size=case["shared_inter"],
        )
        layer.load_expert_weights(w13=to_mindspore(w13), w2=to_mindspore(w2))
        parameters = layer.parameters_dict()
        for name, value in replicated.items():
            parameters[name].set_data(to_mindspore(value.clone()))
        tokens = case_tokens(case, rank)
        y = layer(to_mindspore(tokens))
        outcomes.append(
            {
                "y": to_torch("y", y).clone(),
                "stats": layer.last_stats.as_dict(),
                "transport": layer.torch_layer.dispatcher.transport.name,
                "parameters": sorted(parameters),
                "errors": _layer_errors(layer, tokens),
            }
        )
        layer.close()
    return outcomes


def _layer_errors(layer: Any, tokens: torch.Tensor) -> dict[str, str]:
    """What the Cell raises for bad inputs (local checks: they raise before any collective)."""
    from moecomm.integrations.mindspore.bridge import to_mindspore

    bad = {
        "torch tensor": lambda: layer(tokens),
        "float16": lambda: layer(to_mindspore(tokens.half())),
        "wrong hidden": lambda: layer(to_mindspore(tokens[:, :-1].contiguous())),
        "w2 shape": lambda: layer.load_expert_weights(w2=to_mindspore(torch.zeros(1, 2, 3)), w13=None),
    }
    errors = {}
    for name, call in bad.items():
        try:
            call()
            errors[name] = "no error"
        except (TypeError, ValueError) as error:
            errors[name] = f"{type(error).__name__}: {error}"
    return errors


def refused_configs(rank: int, world_size: int) -> dict[str, str]:
    """The errors of a config that differs across ranks and of the torch transport (no torch group here)."""
    errors = {}
    try:
        make_mindspore_dispatcher({"token_drop_ratio": 0.1 * rank, "timeout_s": 20}, 4)
        errors["disagree"] = "no error"
    except ValueError as error:
        errors["disagree"] = str(error)
    try:
        make_mindspore_dispatcher({"transport": "torch"}, 4)
        errors["torch"] = "no error"
    except ValueError as error:
        errors["torch"] = str(error)
    return errors


def sleep_on_rank(rank: int, world_size: int, slow_rank: int, seconds: float) -> list[int]:
    """``slow_rank`` sleeps ``seconds``; the others return the pids of this process and its parent's children."""
    if rank == slow_rank:
        time.sleep(seconds)
    return [os.getpid()]
