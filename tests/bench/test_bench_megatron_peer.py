"""Megatron-Core's token dispatchers as benchmark peers: outputs vs a dense single-process computation."""

from __future__ import annotations

import pytest
import torch

from moecomm.bench.megatron_peer import MEGATRON_DISPATCHERS, MegatronPeer, host_cuda, megatron_available
from moecomm.testing.launch import run_local

pytestmark = pytest.mark.skipif(not megatron_available(), reason="megatron-core is not installed")


def scaled_dense(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """y[t] = sum_k w[t,k] * (ids[t,k] + 1) * x[t] in float64 (expert e multiplies by e + 1)."""
    return x.double() * (weights.double() * (ids.double() + 1)).sum(1, keepdim=True)


def peer_rank(rank: int, world_size: int, name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    import torch.distributed as dist

    num_tokens, hidden, num_experts, top_k = 12, 6, 8, 3
    peer = MegatronPeer(name, num_experts, top_k, hidden, dist.group.WORLD)
    with pytest.raises(ValueError, match="topk_ids"):  # checked before any collective
        peer.dispatch(torch.zeros(3, hidden), torch.tensor([[0, 9, 1]] * 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match="topk_ids"):
        peer.dispatch(torch.zeros(3, hidden), torch.tensor([[0, 1]] * 3), torch.ones(3, 2))
    outputs = []
    for step, dtype in enumerate((torch.float32, torch.float32, torch.bfloat16)):  # steps reuse the dispatcher
        generator = torch.Generator().manual_seed(100 * step + rank)
        x = torch.randn((num_tokens, hidden), generator=generator).to(dtype)
        ids = torch.rand((num_tokens, num_experts), generator=generator).topk(top_k, dim=1).indices
        weights = torch.rand((num_tokens, top_k), generator=generator)  # not normalised: weights matter
        expert_x, handle = peer.dispatch(x, ids, weights)
        assert expert_x.dtype == dtype
        first = rank * peer.num_local_experts
        scale = (torch.arange(peer.num_local_experts) + first + 1).repeat_interleave(handle.tokens_per_local_expert)
        y = peer.combine(expert_x * scale.to(dtype).unsqueeze(1), handle)
        outputs.append((y, scaled_dense(x, ids, weights)))
    return outputs


def both_peers_rank(rank: int, world_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [pair for name in MEGATRON_DISPATCHERS for pair in peer_rank(rank, world_size, name)]


@pytest.mark.timeout(180)
def test_megatron_peers_two_ranks_match_dense() -> None:
    for rank_outputs in run_local(both_peers_rank, 2, timeout_s=150):
        assert len(rank_outputs) == 3 * len(MEGATRON_DISPATCHERS)
        for y, expected in rank_outputs:
            tolerance = 1e-5 if y.dtype == torch.float32 else 3e-2
            assert y.shape == expected.shape and expected.abs().max() > 0.1
            torch.testing.assert_close(y.double(), expected, rtol=tolerance, atol=tolerance)


def test_host_cuda_restores_torch_cuda_and_the_peer_rejects_bad_arguments() -> None:
    saved = {name: getattr(torch.cuda, name) for name in ("Stream", "current_stream", "stream", "current_device")}
    with pytest.raises(RuntimeError):
        with host_cuda():
            assert torch.cuda.current_device() == torch.device("cpu")
            raise RuntimeError("inside")
    assert all(getattr(torch.cuda, name) is value for name, value in saved.items())
    with pytest.raises(ValueError, match="name"):
        MegatronPeer("megatron-flex", 8, 2, 4)
    with pytest.raises(ValueError, match="group"):  # no process group in this process
        MegatronPeer("megatron-alltoall", 8, 2, 4)
