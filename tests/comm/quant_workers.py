"""Rank function of the quantized-dispatch tests: each case runs twice on the same group, once with
``dispatch_quant`` and once unquantized on ``dequantize(quantize(x))`` (the pure-torch reference ops)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from comm_workers import make_batch, run_expert

from moecomm.comm import make_dispatcher
from moecomm.config import MoECommConfig
from moecomm.ops import reference


def _step(dispatcher: Any, inputs: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, Any]:
    expert_x, handle = dispatcher.dispatch(x, inputs["topk_ids"], inputs["topk_weights"])
    expert_y = run_expert(expert_x, handle.tokens_per_local_expert, dispatcher.local_experts.start)
    return {"expert_x": expert_x.clone(), "y": dispatcher.combine(expert_y, handle), "stats": handle.stats.as_dict()}


def quantized_vs_reference(rank: int, world_size: int, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per case: the quantized dispatch's results, the unquantized dispatch of the reference-rounded rows, and
    the ``dequantize=False`` rows of a second quantized step."""
    results = []
    for case in cases:
        kind = case["quant"]
        inputs = make_batch(case, world_size)[rank]
        x = inputs["x"]
        rounded = reference.dequantize_rows(*reference.quantize_rows(x, kind), kind, x.dtype)
        quantized = make_dispatcher(
            MoECommConfig.from_dict({**case["config"], "dispatch_quant": kind}), case["experts"], dist.group.WORLD
        )
        plain = make_dispatcher(MoECommConfig.from_dict(case["config"]), case["experts"], dist.group.WORLD)
        result = {"quantized": _step(quantized, inputs, x), "plain": _step(plain, inputs, rounded)}
        rows, handle = quantized.dispatch(x, inputs["topk_ids"], inputs["topk_weights"], dequantize=False)
        result["kept_codes"] = rows.codes.view(torch.uint8).clone()  # (float8 tensors do not pickle in torch 2.13)
        result["kept_scales"] = rows.scales.clone()
        result["kept_dequantized"] = rows.dequantize()
        quantized.combine(rows.dequantize(), handle)  # the handle is combinable after a quantized-output dispatch
        quantized.close()
        plain.close()
        results.append(result)
    return results


def non_finite_row(
    rank: int, world_size: int, dispatcher_name: str, transport: str, timeout_s: float
) -> dict[str, Any]:
    """Rank 0's token row 2 holds NaN under ``dispatch_quant="int8"``: what each rank raises, and how fast."""
    import time

    config = MoECommConfig(
        dispatcher=dispatcher_name,
        transport=transport,
        dispatch_quant="int8",
        timeout_s=timeout_s,
        max_tokens_per_rank=8,
    )
    dispatcher = make_dispatcher(config, 4, dist.group.WORLD)
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(6, 16, generator=gen)
    if rank == 0:
        x[2, 5] = float("nan")
    ids = torch.arange(12).reshape(6, 2) % 4  # every token goes to both ranks
    start = time.monotonic()
    try:
        dispatcher.dispatch(x, ids, torch.full((6, 2), 0.5))
    except Exception as error:  # noqa: BLE001 - the test inspects what each rank raised
        return {"error": f"{type(error).__name__}: {error}", "elapsed": time.monotonic() - start}
    finally:
        dispatcher.close()
    return {"error": None, "elapsed": time.monotonic() - start}
