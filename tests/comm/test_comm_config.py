"""MoECommConfig validation, dict round trip, and make_dispatcher at group=None."""

from __future__ import annotations

import pytest
import torch

from moecomm.comm import AllgatherDispatcher, AlltoallDispatcher, AlltoallvDispatcher, make_dispatcher
from moecomm.config import MoECommConfig


def test_comm_config_defaults_and_round_trip() -> None:
    config = MoECommConfig()
    assert config.to_dict() == {
        "dispatcher": "alltoallv",
        "token_drop_ratio": 0.0,
        "capacity_factor": None,
        "drop_policy": "position",
        "drop_scope": "rank",
        "renormalize_kept": False,
        "max_tokens_per_rank": None,
        "log_stats_every": 0,
        "timeout_s": 60.0,
        "transport": "auto",
        "kernel_backend": "auto",
        "dispatch_quant": None,
    }
    custom = MoECommConfig(
        dispatcher="alltoall",
        token_drop_ratio=0.1,
        capacity_factor=1.25,
        drop_policy="probs",
        drop_scope="expert",
        renormalize_kept=True,
        max_tokens_per_rank=64,
        log_stats_every=5,
        timeout_s=3,
        dispatch_quant="fp8",
    )
    assert MoECommConfig.from_dict(custom.to_dict()) == custom
    assert MoECommConfig.from_dict(None) == config


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"dispatcher": "nccl"}, ["dispatcher", "'alltoallv', 'alltoallv-pairs', 'alltoall', 'allgather'"]),
        ({"token_drop_ratio": 1.0}, ["token_drop_ratio", "[0, 1)"]),
        ({"token_drop_ratio": -0.1}, ["token_drop_ratio"]),
        ({"capacity_factor": 0}, ["capacity_factor", "> 0"]),
        ({"drop_policy": "random"}, ["drop_policy", "'position', 'probs'"]),
        ({"drop_scope": "token"}, ["drop_scope", "'rank', 'expert'"]),
        ({"renormalize_kept": 1}, ["renormalize_kept"]),
        ({"max_tokens_per_rank": 0}, ["max_tokens_per_rank"]),
        ({"log_stats_every": -1}, ["log_stats_every"]),
        ({"timeout_s": 0}, ["timeout_s"]),
        ({"dispatcher": "alltoall"}, ["max_tokens_per_rank", "required"]),
        ({"token_drop_ratio": 0.1, "capacity_factor": 1.0}, ["capacity_factor", "not both"]),
        ({"drop_ratio": 0.1}, ["unknown key", "drop_ratio", "token_drop_ratio", "timeout_s"]),
    ],
)
def test_comm_config_rejects_bad_values_listing_choices(values: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        MoECommConfig.from_dict(values)
    for word in words:
        assert word in str(info.value)


def test_comm_make_dispatcher_picks_class_and_checks_topology() -> None:
    assert isinstance(make_dispatcher(None, 4), AlltoallvDispatcher)
    assert isinstance(make_dispatcher({"dispatcher": "allgather"}, 4), AllgatherDispatcher)
    alltoall = make_dispatcher(MoECommConfig(dispatcher="alltoall", max_tokens_per_rank=8), 4)
    assert isinstance(alltoall, AlltoallDispatcher)
    assert (alltoall.rank, alltoall.world_size, alltoall.num_local_experts) == (0, 1, 4)
    with pytest.raises(ValueError, match="num_experts"):
        make_dispatcher(None, 0)
    with pytest.raises(ValueError, match="max_tokens_per_rank=8"):
        alltoall.dispatch(torch.zeros(9, 2), torch.zeros(9, 1, dtype=torch.int64), torch.ones(9, 1))


def test_comm_handle_from_another_dispatcher_is_rejected() -> None:
    x, ids, w = torch.randn(5, 3), torch.randint(0, 4, (5, 2)), torch.rand(5, 2)
    expert_x, handle = make_dispatcher({"dispatcher": "allgather"}, 4).dispatch(x, ids, w)
    with pytest.raises(TypeError, match="handle"):
        make_dispatcher(None, 4).combine(expert_x, handle)
