"""HF interop: patched tiny transformers models give the unpatched logits (1 process and EP=2 over gloo),
token dropping shows in logits and stats, and bad blocks / models / sizes raise clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from layer_tiny_models import ARCHITECTURES, NUM_EXPERTS, tiny_input_ids, tiny_model
from torch import nn

from moecomm.integrations.transformers import SUPPORTED_BLOCKS, patch_model
from moecomm.layer import EPMoE
from moecomm.testing.launch import run_local

ATOL = RTOL = 1e-5
DROP_RATIO = 0.3
EXPECTED_BLOCKS = {  # layers with an MoE block in the tiny models (DeepSeek-V3's first layer is dense)
    "mixtral": ["model.layers.0.mlp", "model.layers.1.mlp"],
    "qwen2_moe": ["model.layers.0.mlp", "model.layers.1.mlp"],
    "qwen3_moe": ["model.layers.0.mlp", "model.layers.1.mlp"],
    "deepseek_v3": ["model.layers.1.mlp"],
}


@torch.no_grad()
def logits_of(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids).logits


def patched_copy(model: nn.Module, group=None, config=None) -> tuple[nn.Module, dict[str, nn.Module]]:
    patched = copy.deepcopy(model)
    return patched, patch_model(patched, group=group, config=config)


def ep_layers(model: nn.Module) -> list[EPMoE]:
    return [module for module in model.modules() if isinstance(module, EPMoE)]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_patched_model_matches_unpatched_single_process(architecture):
    model = tiny_model(architecture)
    input_ids = tiny_input_ids(seed=1)
    expected = logits_of(model, input_ids)
    patched, replaced = patched_copy(model)
    assert list(replaced) == EXPECTED_BLOCKS[architecture]
    for name, original in replaced.items():
        assert type(original) is type(model.get_submodule(name))
        layer = patched.get_submodule(name)
        assert isinstance(layer, EPMoE) and layer.num_local_experts == NUM_EXPERTS
    torch.testing.assert_close(logits_of(patched, input_ids), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_token_drop_ratio_changes_logits_and_reports_drops(architecture):
    model = tiny_model(architecture)
    input_ids = tiny_input_ids(seed=2)
    expected = logits_of(model, input_ids)
    dropping, _ = patched_copy(model, config={"token_drop_ratio": DROP_RATIO})
    dropped_logits = logits_of(dropping, input_ids)
    assert not torch.allclose(dropped_logits, expected, rtol=RTOL, atol=ATOL)
    for layer in ep_layers(dropping):
        stats = layer.last_stats
        assert stats.total_pairs == input_ids.numel() * layer.top_k
        assert 0 < stats.dropped_pairs <= int(DROP_RATIO * stats.total_pairs)
    dropless, _ = patched_copy(model, config={"token_drop_ratio": 0.0})
    torch.testing.assert_close(logits_of(dropless, input_ids), expected, rtol=RTOL, atol=ATOL)
    assert all(layer.last_stats.dropped_pairs == 0 for layer in ep_layers(dropless))


def ep2_worker(rank: int, world_size: int, base: dict) -> dict:
    """On each rank: every architecture patched over the world group vs unpatched, with its own tokens; ``base``
    holds the transport and kernel backend every config of the run uses."""
    group = dist.group.WORLD
    report: dict = {}
    for architecture in ARCHITECTURES:
        model = tiny_model(architecture)  # same seed on every rank: identical weights
        input_ids = tiny_input_ids(seed=10 + rank, batch=1 + rank, length=9 + 3 * rank)
        expected = logits_of(model, input_ids)
        patched, replaced = patched_copy(model, group=group, config=base)
        shard = slice(rank * NUM_EXPERTS // world_size, (rank + 1) * NUM_EXPERTS // world_size)
        holds_own_shard = all(
            patched.get_submodule(name).w13.shape[0] == NUM_EXPERTS // world_size
            and torch.equal(patched.get_submodule(name).w13, original.experts.gate_up_proj[shard])
            and torch.equal(patched.get_submodule(name).w2, original.experts.down_proj[shard])
            for name, original in replaced.items()
        )
        dropping, _ = patched_copy(model, group=group, config={**base, "token_drop_ratio": DROP_RATIO})
        dropped_logits = logits_of(dropping, input_ids)
        report[architecture] = {
            "max_error": float((logits_of(patched, input_ids) - expected).abs().max()),
            "scale": float(expected.abs().max()),
            "holds_own_shard": holds_own_shard,
            "drop_changed_logits": not torch.allclose(dropped_logits, expected, rtol=RTOL, atol=ATOL),
            "drop_stats": [
                (layer.last_stats.dropped_pairs, layer.last_stats.local_dropped_pairs, layer.last_stats.total_pairs)
                for layer in ep_layers(dropping)
            ],
        }
    model = tiny_model("qwen2_moe")
    input_ids = tiny_input_ids(seed=20 + rank, batch=2, length=5 + rank)
    expected = logits_of(model, input_ids)
    for config in ({"dispatcher": "allgather"}, {"dispatcher": "alltoall", "max_tokens_per_rank": 16}):
        patched, _ = patched_copy(model, group=group, config={**base, **config})
        report[config["dispatcher"]] = float((logits_of(patched, input_ids) - expected).abs().max())
    try:
        EPMoE(16, 8, 3, 2, group=group)
        report["indivisible_error"] = None
    except ValueError as error:
        report["indivisible_error"] = str(error)
    return report


@pytest.mark.parametrize(
    "base", [{"transport": "shm"}, {"transport": "torch", "kernel_backend": "torch"}], ids=["shm-native", "torch-torch"]
)
def test_patched_models_match_unpatched_at_ep2(base: dict):
    reports = run_local(ep2_worker, 2, base, timeout_s=240)
    for rank, report in enumerate(reports):
        for architecture in ARCHITECTURES:
            result = report[architecture]
            assert result["holds_own_shard"], (rank, architecture)
            assert result["max_error"] <= ATOL + RTOL * result["scale"], (rank, architecture, result)
        assert report["allgather"] <= ATOL * 10 and report["alltoall"] <= ATOL * 10, (rank, report)
        assert report["indivisible_error"] is not None and "num_experts: 3 experts" in report["indivisible_error"]
    for architecture in ARCHITECTURES:
        per_rank = [report[architecture] for report in reports]
        assert any(result["drop_changed_logits"] for result in per_rank), architecture
        for layer_stats in zip(*(result["drop_stats"] for result in per_rank)):
            dropped, total = layer_stats[0][0], layer_stats[0][2]
            assert all(stats[0] == dropped and stats[2] == total for stats in layer_stats), layer_stats  # global
            assert 0 < dropped <= int(DROP_RATIO * total)
            assert sum(stats[1] for stats in layer_stats) == dropped  # local drops add up to the global count
        for rank, result in enumerate(per_rank):  # a rank whose tokens lost pairs sees different logits
            if any(stats[1] > 0 for stats in result["drop_stats"]):
                assert result["drop_changed_logits"], (architecture, rank)


class NotAnMoeBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(8, 4)


def test_unknown_block_type_is_rejected():
    with pytest.raises(TypeError, match="block: unsupported MoE block type .*NotAnMoeBlock.*MixtralSparseMoeBlock"):
        EPMoE.from_module(NotAnMoeBlock())
    with pytest.raises(ValueError, match="model: no supported MoE block found"):
        patch_model(nn.Sequential(NotAnMoeBlock()))
    block = tiny_model("mixtral").model.layers[0].mlp
    with pytest.raises(ValueError, match="model: is itself an MoE block"):
        patch_model(block)
    assert len(SUPPORTED_BLOCKS) == 4


def test_mismatched_hidden_size_is_rejected():
    model = tiny_model("qwen3_moe")
    layer = EPMoE.from_module(model.model.layers[0].mlp)
    with pytest.raises(ValueError, match=r"x: expected a tensor \[\.\.\., 32\] \(hidden_size\)"):
        layer(torch.randn(2, 3, 24))
    block = model.model.layers[1].mlp
    block.gate.weight = nn.Parameter(torch.randn(NUM_EXPERTS, 24))
    with pytest.raises(ValueError, match=r"block: router weight has shape \[8, 24\], expected \[8, 32\]"):
        EPMoE.from_module(block)


def test_non_silu_experts_are_rejected():
    block = tiny_model("mixtral").model.layers[0].mlp
    block.experts.act_fn = nn.GELU()
    with pytest.raises(ValueError, match="only SiLU"):
        EPMoE.from_module(block)
