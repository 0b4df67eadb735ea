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
