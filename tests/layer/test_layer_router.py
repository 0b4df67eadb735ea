"""Router: TopKRouter / select_experts vs the HF routers they replace, and vs a per-token reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from layer_tiny_models import ARCHITECTURES, tiny_model

from moecomm.integrations.transformers import block_spec
from moecomm.layer.router import TopKRouter, select_experts


def sorted_by_expert(topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of (ids, weights) reordered by expert id, so routers that order top-k differently compare equal."""
    ids, order = topk_ids.sort(dim=-1)
    return ids, topk_weights.gather(1, order)


def hf_moe_block(architecture: str) -> torch.nn.Module:
    model = tiny_model(architecture, seed=3)
    return next(m for name, m in model.named_modules() if name.endswith("mlp") and hasattr(m, "experts"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_router_matches_hf_block_routing(architecture, dtype):
    """Same experts as the HF router (in bf16 too: logits in the same precision); same weights."""
    block = hf_moe_block(architecture).to(dtype)
    spec = block_spec(block)
    num_experts, hidden = spec.router.weight.shape
    router = TopKRouter(
        hidden,
        num_experts,
        spec.top_k,
        scoring=spec.scoring,
        renormalize=spec.renormalize,
        n_group=spec.n_group,
        topk_group=spec.topk_group,
        use_score_correction_bias=spec.use_score_correction_bias,
        routed_scaling_factor=spec.routed_scaling_factor,
        fp32_logits=spec.fp32_logits,
        dtype=dtype,
    )
    with torch.no_grad():
        router.weight.copy_(spec.router.weight)
        if spec.use_score_correction_bias:
            router.e_score_correction_bias.copy_(spec.router.e_score_correction_bias)
    x = torch.randn(200, hidden, generator=torch.Generator().manual_seed(7)).to(dtype)
    _, hf_weights, hf_ids = block.gate(x)
    ids, weights = router(x)
    assert ids.dtype == torch.int64 and weights.dtype == torch.float32
    hf_ids, hf_weights = sorted_by_expert(hf_ids, hf_weights)
    ids, weights = sorted_by_expert(ids, weights)
    torch.testing.assert_close(ids, hf_ids.long(), rtol=0, atol=0)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2  # Qwen rounds its weights to the model dtype
    torch.testing.assert_close(weights, hf_weights.float(), rtol=tolerance, atol=tolerance / 10)


def reference_routing(logits, top_k, scoring, renormalize, n_group, topk_group, bias, scale):
    """Per-token python reference of the routing rules (independent of select_experts' vectorisation)."""
    scores = torch.softmax(logits.double(), -1) if scoring == "softmax" else logits.double().sigmoid()
    ids_out, weights_out = [], []
    num_experts = logits.shape[1]
    for row in scores:
        choice = row + (bias.double() if bias is not None else 0.0)
        eligible = list(range(num_experts))
        if n_group:
            size = num_experts // n_group
            groups = [choice[g * size : (g + 1) * size] for g in range(n_group)]
            group_score = [
                sorted(g.tolist(), reverse=True)[:2] if bias is not None else [max(g.tolist())] for g in groups
            ]
            best = sorted(range(n_group), key=lambda g: -sum(group_score[g]))[:topk_group]
            eligible = [e for e in eligible if e // size in best]
        chosen = sorted(eligible, key=lambda e: -float(choice[e]))[:top_k]
        weights = row[chosen]
        if renormalize:
            weights = weights / weights.sum()
        ids_out.append(chosen)
        weights_out.append(weights * scale)
    ids = torch.tensor(ids_out, dtype=torch.int64).reshape(-1, top_k)
    return ids, torch.stack(weights_out).reshape(-1, top_k).float()


@settings(max_examples=60, deadline=None)
@given(
    num_tokens=st.integers(1, 12),
    n_group_and_size=st.sampled_from([(None, 4), (None, 7), (1, 8), (2, 4), (4, 2), (4, 3), (8, 1)]),
    data=st.data(),
    scoring=st.sampled_from(["softmax", "sigmoid"]),
    renormalize=st.booleans(),
    use_bias=st.booleans(),
    scale=st.sampled_from([1.0, 2.5]),
    seed=st.integers(0, 10_000),
)
def test_select_experts_matches_per_token_reference(
    num_tokens, n_group_and_size, data, scoring, renormalize, use_bias, scale, seed
):
    n_group, group_size = n_group_and_size
    num_experts = (n_group or 1) * group_size
    topk_group = data.draw(st.integers(1, n_group)) if n_group else None
    top_k = data.draw(st.integers(1, (topk_group or 1) * group_size if n_group else num_experts))
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_tokens, num_experts, generator=gen) * 3
    bias = torch.randn(num_experts, generator=gen) * 0.3 if use_bias else None
    ids, weights = select_experts(
        logits,
        top_k,
        scoring=scoring,
        renormalize=renormalize,
        n_group=n_group,
        topk_group=topk_group,
        score_correction_bias=bias,
        routed_scaling_factor=scale,
    )
    ref_ids, ref_weights = reference_routing(logits, top_k, scoring, renormalize, n_group, topk_group, bias, scale)
    ids, weights = sorted_by_expert(ids, weights)
    ref_ids, ref_weights = sorted_by_expert(ref_ids, ref_weights)
    torch.testing.assert_close(ids, ref_ids, rtol=0, atol=0)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(top_k=9), "top_k"),
        (dict(scoring="relu"), "scoring"),
        (dict(n_group=3, topk_group=1), "n_group"),
        (dict(n_group=4, topk_group=5), "topk_group"),
        (dict(n_group=4, topk_group=None), "n_group / topk_group"),
        (dict(top_k=5, n_group=4, topk_group=2), "topk_group"),
    ],
)
def test_select_experts_rejects_bad_settings(kwargs, match):
    kwargs = {"top_k": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        select_experts(torch.randn(3, 8), **kwargs)


def test_router_rejects_wrong_hidden_size():
    router = TopKRouter(16, 8, 2)
    with pytest.raises(ValueError, match="x: expected hidden size 16"):
        router(torch.randn(3, 12))
