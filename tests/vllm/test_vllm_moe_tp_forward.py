"""The plugin's MoE forward with an EP degree below the rank count (MoE tensor parallel inside each expert
block), over gloo, vs the single-process dense computation in ``test_vllm_token_ownership``.

- 2 ranks as TP=2, EP degree 1: both ranks hold half of every expert; the TP slices are pooled and the
  partial sums reduced.
- 4 ranks as TP=2 x DP=2, EP degree 2 and 1.
- 4 ranks as DP=4 (TP=1), EP degree 2: two expert blocks, each split over two ranks; the ranks hold different
  numbers of tokens and one is idle (T = 0), as vLLM's DP dummy batch makes it.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from test_vllm_token_ownership import EXPERTS, HIDDEN, INTER, _tokens, _weights, dense_moe  # noqa: E402

from moecomm.testing.launch import run_local  # noqa: E402

pytestmark = pytest.mark.vllm

DP_TOKENS = (3, 0, 5, 1)  # DP shape: tokens per rank, rank 1 idle


def _expert_slice(layout) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's experts (block ``ep_rank``) and its 1/M slice of them, as vLLM's loader cuts them."""
    w13, w2 = _weights()
    per_block = EXPERTS // layout.ep_size
    experts = slice(layout.ep_rank * per_block, (layout.ep_rank + 1) * per_block)
    width = INTER // layout.moe_tp_size
    cols = slice(layout.moe_tp_rank * width, (layout.moe_tp_rank + 1) * width)
    gate, up = w13[experts, :INTER][:, cols], w13[experts, INTER:][:, cols]
    return torch.cat([gate, up], dim=1).contiguous(), w2[experts][:, :, cols].contiguous()


def _rank(
    rank: int, world_size: int, shape: str, ep_size: int, dispatcher: str, drop_ratio: float = 0.0
) -> list[torch.Tensor]:
    import torch.distributed as dist

    from moecomm import MoECommConfig, make_dispatcher
    from moecomm.comm.transports.torch_dist import TorchTransport
    from moecomm.integrations.vllm.forward import ep_moe_forward
    from moecomm.integrations.vllm.layout import MoELayout
    from moecomm.integrations.vllm.moe_groups import moe_layout_groups

    layout = MoELayout(flat_rank=rank, flat_size=world_size, ep_size=ep_size)
    vllm_ep_group = SimpleNamespace(ranks=list(range(world_size)), device_group=dist.group.WORLD)
    dispatch_group, inner_group = moe_layout_groups(vllm_ep_group, layout, timeout_s=60)
    assert (dispatch_group is None) == (ep_size == 1) and inner_group is not None
    assert dist.get_world_size(inner_group) == layout.moe_tp_size
    config = MoECommConfig(dispatcher=dispatcher, max_tokens_per_rank=16, token_drop_ratio=drop_ratio)
    disp = make_dispatcher(config, EXPERTS, dispatch_group)
    inner = TorchTransport(inner_group, 60.0, owner="test MoE-TP")
    w13, w2 = _expert_slice(layout)
    if shape == "tp":
        x, ids, w = _tokens(7, seed=0)
        out, handle = ep_moe_forward(
            disp, x, ids, w, w13, w2, tp_rank=rank, tp_size=world_size, tp_group=dist.group.WORLD, inner=inner
        )
        return [out, torch.tensor(handle.stats.dropped_pairs)]
    if shape == "tp2xdp2":  # flat rank = dp_rank * 2 + tp_rank, as vLLM orders them
        dp_rank, tp_rank = divmod(rank, 2)
        tp_groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
        x, ids, w = _tokens(5 + dp_rank, seed=20 + dp_rank)  # the two DP ranks hold different tokens
        out, _ = ep_moe_forward(
            disp, x, ids, w, w13, w2, tp_rank=tp_rank, tp_size=2, tp_group=tp_groups[dp_rank], inner=inner
        )
        return [out]
    outs = []
    for step in range(2):  # two steps: the groups and buffers are reused
        x, ids, w = _tokens(DP_TOKENS[rank], seed=10 * step + rank)
        outs.append(ep_moe_forward(disp, x, ids, w, w13, w2, inner=inner)[0])
    return outs


@pytest.mark.parametrize("dispatcher", ["alltoallv", "allgather"])
def test_vllm_moe_tp_tp2_ep1_equals_dense(dispatcher):
    expected = dense_moe(*_tokens(7, seed=0))
    for out, dropped in run_local(_rank, 2, "tp", 1, dispatcher, timeout_s=120):
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        assert int(dropped) == 0


def test_vllm_moe_tp_drops_the_same_pairs_in_every_slice():
    """With a drop ratio, both expert slices must drop the same pairs: the output equals one process running
    the same step (same tokens, same config, whole experts), and the drop statistics match it."""
    from moecomm import MoECommConfig, make_dispatcher
    from moecomm.comm.moe_step import run_moe_step
    from moecomm.layer.experts import swiglu_experts

    x, ids, w = _tokens(7, seed=0)
    w13, w2 = _weights()
    single = make_dispatcher(MoECommConfig(token_drop_ratio=0.3), EXPERTS, None)
    expected, handle = run_moe_step(single, x, ids, w, lambda ex, counts: swiglu_experts(ex, counts, w13, w2))
    assert handle.stats.dropped_pairs > 0
    for out, dropped in run_local(_rank, 2, "tp", 1, "alltoallv", 0.3, timeout_s=120):
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        assert int(dropped) == handle.stats.dropped_pairs


def test_vllm_moe_tp_dp4_ep2_with_an_idle_rank_equals_dense():
    results = run_local(_rank, 4, "dp", 2, "alltoallv", timeout_s=180)
    for rank, outs in enumerate(results):
        for step, out in enumerate(outs):
            assert out.shape == (DP_TOKENS[rank], HIDDEN)
            expected = dense_moe(*_tokens(DP_TOKENS[rank], seed=10 * step + rank))
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ep_size", [1, 2])
def test_vllm_moe_tp_tp2_dp2_equals_dense(ep_size):
    """TP=2 x DP=2: EP 2 (each expert block split over one DP rank's TP pair: tokens taken locally) and EP 1
    (every expert split over all 4 ranks, across the DP ranks: tokens gathered)."""
    for rank, (out,) in enumerate(run_local(_rank, 4, "tp2xdp2", ep_size, "alltoallv", timeout_s=180)):
        dp_rank = rank // 2
        expected = dense_moe(*_tokens(5 + dp_rank, seed=20 + dp_rank))
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
