"""EPMoE at one process: forward vs a dense reference, weight loading, shapes, dispatchers, errors."""

from __future__ import annotations

import pytest
import torch
from layer_reference import dense_moe_reference

from moecomm.layer import EPMoE
from moecomm.ops import reference

HIDDEN, INTER, NUM_EXPERTS, TOP_K = 16, 8, 8, 2


def random_expert_weights(seed: int, num_experts: int = NUM_EXPERTS) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(num_experts, 2 * INTER, HIDDEN, generator=gen) * 0.3,
        torch.randn(num_experts, HIDDEN, INTER, generator=gen) * 0.3,
    )


@pytest.mark.parametrize(
    "router_settings, config",
    [
        (dict(), None),
        (dict(), dict(kernel_backend="torch")),
        (dict(renormalize=False, shared_intermediate_size=12, shared_expert_gate=True), dict(dispatcher="allgather")),
        (
            dict(
                scoring="sigmoid",
                n_group=4,
                topk_group=2,
                use_score_correction_bias=True,
                routed_scaling_factor=2.5,
                shared_intermediate_size=8,
            ),
            dict(dispatcher="alltoall", max_tokens_per_rank=64),
        ),
    ],
)
def test_ep_moe_matches_dense_reference(router_settings, config):
    torch.manual_seed(0)
    layer = EPMoE(HIDDEN, INTER, NUM_EXPERTS, TOP_K, config=config, **router_settings)
    w13, w2 = random_expert_weights(1)
    layer.load_expert_weights(w13=w13, w2=w2)
    x = torch.randn(3, 5, HIDDEN)
    out = layer(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    expected = dense_moe_reference(layer, w13, w2, x.reshape(-1, HIDDEN)).reshape(x.shape)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert layer.last_stats.total_pairs == 15 * TOP_K and layer.last_stats.dropped_pairs == 0
    assert layer(torch.empty(0, HIDDEN)).shape == (0, HIDDEN)


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("dispatcher", ["alltoallv", "allgather"])
def test_ep_moe_with_dispatch_quant_feeds_experts_the_rounded_rows(kind, dispatcher):
    """Router and shared experts see x; the routed experts see dequantize(quantize(x)) (the rows that crossed)."""
    torch.manual_seed(3)
    config = {"dispatcher": dispatcher, "dispatch_quant": kind}
    layer = EPMoE(HIDDEN, INTER, NUM_EXPERTS, TOP_K, config=config, shared_intermediate_size=8)
    w13, w2 = random_expert_weights(4)
    layer.load_expert_weights(w13=w13, w2=w2)
    x = torch.randn(11, HIDDEN)
    rounded = reference.dequantize_rows(*reference.quantize_rows(x, kind), kind, x.dtype)
    with torch.no_grad():  # quantized dispatch is inference-only
        out = layer(x)
    torch.testing.assert_close(out.double(), dense_moe_reference(layer, w13, w2, x, rounded), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.double(), dense_moe_reference(layer, w13, w2, x), rtol=1e-6, atol=1e-6)


def test_load_expert_weights_from_separate_gate_and_up():
    layer = EPMoE(HIDDEN, INTER, NUM_EXPERTS, TOP_K)
    w13, w2 = random_expert_weights(2)
    layer.load_expert_weights(gate_proj=w13[:, :INTER], up_proj=w13[:, INTER:], w2=w2)
    assert torch.equal(layer.w13, w13) and torch.equal(layer.w2, w2)
    assert layer.num_local_experts == NUM_EXPERTS and list(layer.local_experts) == list(range(NUM_EXPERTS))


def test_token_drop_ratio_drops_pairs_and_changes_output():
    torch.manual_seed(0)
    dropless = EPMoE(HIDDEN, INTER, NUM_EXPERTS, TOP_K)
    dropping = EPMoE(HIDDEN, INTER, NUM_EXPERTS, TOP_K, config=dict(token_drop_ratio=0.25))
    dropping.load_state_dict(dropless.state_dict())
    x = torch.randn(40, HIDDEN)
    out, dropped_out = dropless(x), dropping(x)
    stats = dropping.last_stats
    assert 0 < stats.dropped_pairs <= int(0.25 * 40 * TOP_K)
    assert not torch.allclose(out, dropped_out)
    # the tokens whose pairs were all kept come out unchanged
    unchanged = (out - dropped_out).abs().amax(dim=1) == 0
    assert 0 < int(unchanged.sum()) < 40


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda layer: layer(torch.randn(4, HIDDEN + 1)), ValueError, r"x: expected a tensor \[\.\.\., 16\]"),
        (lambda layer: layer(torch.randn(4, HIDDEN, dtype=torch.bfloat16)), TypeError, "x: expected the layer's dtype"),
        (
            lambda layer: layer.load_expert_weights(
                w13=torch.randn(NUM_EXPERTS, 2 * INTER, HIDDEN + 2), w2=torch.randn(NUM_EXPERTS, HIDDEN, INTER)
            ),
            ValueError,
            r"w13: expected the full expert tensor of shape \[8, 16, 16\]",
        ),
        (
            lambda layer: layer.load_expert_weights(
                w13=torch.randn(NUM_EXPERTS, 2 * INTER, HIDDEN), w2=torch.randn(NUM_EXPERTS // 2, HIDDEN, INTER)
            ),
            ValueError,
            r"w2: expected the full expert tensor",
        ),
        (lambda layer: layer.load_expert_weights(w2=torch.randn(NUM_EXPERTS, HIDDEN, INTER)), ValueError, "w13: give"),
    ],
)
def test_ep_moe_rejects_bad_input(call, error, match):
    layer = EPMoE(HIDDEN, INTER, NUM_EXPERTS, TOP_K)
    with pytest.raises(error, match=match):
        call(layer)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_experts=0), "num_experts"),
        (dict(top_k=9), "top_k"),
        (dict(config=dict(dispatcher="magic")), "dispatcher"),
        (dict(config=dict(drop_ratio=0.1)), "unknown key"),
    ],
)
def test_ep_moe_rejects_bad_settings(kwargs, match):
    settings = {"hidden_size": HIDDEN, "intermediate_size": INTER, "num_experts": NUM_EXPERTS, "top_k": TOP_K, **kwargs}
    with pytest.raises(ValueError, match=match):
        EPMoE(**settings)


@pytest.mark.parametrize("hidden,inter", [(HIDDEN, INTER), (10, 6)])  # 10/6: rows not 16-byte multiples
def test_ep_moe_backward_matches_dense_autograd(hidden, inter):
    """Outside no_grad the layer is differentiable: tokens, router, routed and shared experts all get the
    gradients of the dense computation."""
    torch.manual_seed(6)
    layer = EPMoE(hidden, inter, NUM_EXPERTS, TOP_K, shared_intermediate_size=8, shared_expert_gate=True)
    gen = torch.Generator().manual_seed(7)
    layer.load_expert_weights(
        w13=torch.randn(NUM_EXPERTS, 2 * inter, hidden, generator=gen) * 0.3,
        w2=torch.randn(NUM_EXPERTS, hidden, inter, generator=gen) * 0.3,
    )
    x = torch.randn(9, hidden, requires_grad=True)
    probe = torch.randn(9, hidden)
    (layer(x) * probe).sum().backward()
    grads = {name: p.grad.clone() for name, p in layer.named_parameters()}
    x_grad = x.grad.clone()
    layer.zero_grad()
    x.grad = None
    (dense_moe_reference(layer, layer.w13, layer.w2, x) * probe.double()).sum().backward()
    torch.testing.assert_close(x_grad, x.grad, rtol=1e-4, atol=1e-5)
    assert set(grads) == {name for name, _ in layer.named_parameters()}
    for name, parameter in layer.named_parameters():
        torch.testing.assert_close(grads[name], parameter.grad, rtol=1e-4, atol=1e-5, msg=name)
        assert grads[name].abs().sum() > 0, name
