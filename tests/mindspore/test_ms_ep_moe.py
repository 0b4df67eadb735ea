"""MindSpore EPMoE (nn.Cell) at 2 workers equals torch EPMoE at 2 gloo ranks for the same seeded weights and
tokens (fp32 within 1e-5), over shm and over MindSpore's collectives, with and without a drop ratio."""

from __future__ import annotations

import pytest
import torch
import torch_workers
from moe_case import CASE
from ms_env import needs_mindspore, worker_env

from moecomm.integrations.mindspore import run_mindspore_local
from moecomm.testing import run_local

pytestmark = pytest.mark.mindspore

CONFIGS = [
    {"dispatcher": "alltoallv", "transport": "shm"},
    {"dispatcher": "alltoallv", "transport": "mindspore", "token_drop_ratio": 0.25},
    {"dispatcher": "allgather", "transport": "auto", "token_drop_ratio": 0.25, "drop_policy": "probs"},
    {"dispatcher": "alltoallv", "transport": "shm", "dispatch_quant": "int8"},  # quantized dispatch (issue 13)
    {"dispatcher": "alltoallv", "transport": "mindspore", "dispatch_quant": "fp8"},
]


@pytest.fixture(scope="module")
def both() -> tuple[list, list]:
    python = needs_mindspore()
    mindspore = run_mindspore_local(
        "ms_workers:ms_ep_moe", 2, CASE, CONFIGS, python=python, env=worker_env(), timeout_s=240
    )
    torch_configs = [{**config, "transport": "auto"} for config in CONFIGS]
    return mindspore, run_local(torch_workers.torch_ep_moe, 2, CASE, torch_configs, timeout_s=120)


@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_mindspore_ep_moe_equals_torch_ep_moe(both, index):
    mindspore, torch_ranks = both
    for rank in range(2):
        got, expected = mindspore[rank][index], torch_ranks[rank][index]
        assert got["y"].shape == (CASE["tokens"][rank], CASE["hidden"])
        torch.testing.assert_close(got["y"], expected["y"], atol=1e-5, rtol=1e-5)
        assert got["stats"] == expected["stats"]
        assert got["transport"] == {"auto": "shm"}.get(CONFIGS[index]["transport"], CONFIGS[index]["transport"])
    if CONFIGS[index].get("token_drop_ratio"):
        assert mindspore[0][index]["stats"]["dropped_pairs"] > 0


def test_parameters_carry_the_torch_layers_names(both):
    mindspore, _ = both
    assert mindspore[0][0]["parameters"] == [
        "router.weight",
        "shared_experts.down_proj.weight",
        "shared_experts.gate_proj.weight",
        "shared_experts.up_proj.weight",
        "w13",
        "w2",
    ]


def test_bad_inputs_raise_named_errors(both):
    mindspore, _ = both
    hidden = CASE["hidden"]
    for rank in range(2):
        errors = mindspore[rank][0]["errors"]
        assert errors["torch tensor"] == "TypeError: x: expected a mindspore.Tensor, got torch.Tensor"
        assert errors["float16"] == "TypeError: x: expected the layer's dtype torch.float32, got torch.float16"
        assert errors["wrong hidden"].startswith(f"ValueError: x: expected a tensor [..., {hidden}] (hidden_size)")
        assert errors["w2 shape"] == "ValueError: w13: give w13, or both gate_proj and up_proj"
