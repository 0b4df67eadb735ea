"""Unit tests of the vLLM plugin's pieces that need no engine: settings, token ownership, stats log."""

from __future__ import annotations

import importlib.util

import pytest
import torch

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from moecomm.comm.handle import DropStats  # noqa: E402
from moecomm.config import MoECommConfig  # noqa: E402
from moecomm.integrations.vllm.ownership import gather_token_slices, token_slice  # noqa: E402
from moecomm.integrations.vllm.settings import PluginConfigError, parse_plugin_config  # noqa: E402
from moecomm.integrations.vllm.stats_log import DropStatsLog  # noqa: E402
from moecomm.testing.launch import run_local  # noqa: E402

pytestmark = pytest.mark.vllm


def test_vllm_settings_reads_the_moecomm_key():
    cfg = parse_plugin_config(
        {
            "other_plugin": {"x": 1},
            "moecomm": {
                "dispatcher": "allgather",
                "token_drop_ratio": 0.1,
                "drop_policy": "probs",
                "drop_scope": "expert",
                "log_stats_every": 5,
            },
        }
    )
    assert cfg == MoECommConfig(
        dispatcher="allgather", token_drop_ratio=0.1, drop_policy="probs", drop_scope="expert", log_stats_every=5
    )
    assert parse_plugin_config({}) == MoECommConfig()
    assert parse_plugin_config(None) == MoECommConfig()
    assert parse_plugin_config('{"moecomm": {"capacity_factor": 1.5}}').capacity_factor == 1.5


def test_vllm_settings_alltoall_gets_a_default_token_bound():
    cfg = parse_plugin_config({"moecomm": {"dispatcher": "alltoall"}}, default_max_tokens_per_rank=128)
    assert cfg.max_tokens_per_rank == 128
    explicit = parse_plugin_config({"moecomm": {"dispatcher": "alltoall", "max_tokens_per_rank": 7}}, 128)
    assert explicit.max_tokens_per_rank == 7


@pytest.mark.parametrize(
    "values, named",
    [
        ({"dispatcher": "alltoallx"}, ["dispatcher", "alltoallv", "alltoall", "allgather"]),
        ({"token_drop_ratio": 1.0}, ["token_drop_ratio", "[0, 1)"]),
        ({"drop_policy": "random"}, ["drop_policy", "position", "probs"]),
        ({"drop_scope": "token"}, ["drop_scope", "rank", "expert"]),
        ({"capacity_factor": -1}, ["capacity_factor"]),
        ({"log_stats_every": -2}, ["log_stats_every"]),
        ({"dropratio": 0.1}, ["dropratio", "token_drop_ratio", "dispatcher"]),
    ],
)
def test_vllm_settings_bad_value_names_key_and_choices(values, named):
    with pytest.raises(PluginConfigError) as info:
        parse_plugin_config({"moecomm": values})
    message = str(info.value)
    assert '"moecomm"' in message
    for word in named:
        assert word in message


def test_vllm_settings_rejects_non_object():
    with pytest.raises(PluginConfigError, match="JSON object"):
        parse_plugin_config({"moecomm": "alltoallv"})
    with pytest.raises(PluginConfigError, match="not valid JSON"):
        parse_plugin_config("{moecomm")


@given(num_tokens=st.integers(0, 50), world_size=st.integers(1, 8))
@settings(max_examples=60, deadline=None)
def test_vllm_token_slices_cover_every_token_once(num_tokens, world_size):
    owner = torch.full((num_tokens,), -1)
    for rank in range(world_size):
        s = token_slice(num_tokens, rank, world_size)
        assert (owner[s] == -1).all()
        owner[s] = rank
    assert (owner >= 0).all()
    assert torch.equal(owner, owner.sort().values)  # contiguous, in rank order


def test_vllm_token_slice_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        token_slice(4, 2, 2)


TOKEN_COUNTS = (0, 1, 2, 5)


def _full(num_tokens: int) -> torch.Tensor:
    return torch.arange(num_tokens * 3, dtype=torch.float32).reshape(num_tokens, 3)


def _gather_rank(rank: int, world_size: int) -> list[torch.Tensor]:
    import torch.distributed as dist

    return [
        gather_token_slices(_full(n)[token_slice(n, rank, world_size)].clone(), n, dist.group.WORLD)
        for n in TOKEN_COUNTS
    ]


def test_vllm_gather_token_slices_rebuilds_the_input():
    for outs in run_local(_gather_rank, 2, timeout_s=120):
        for num_tokens, out in zip(TOKEN_COUNTS, outs):
            assert torch.equal(out, _full(num_tokens))


def _stats(dropped: int, total: int, received: list[int]) -> DropStats:
    return DropStats(
        dropped_pairs=dropped,
        total_pairs=total,
        local_dropped_pairs=0,
        received_per_rank=torch.tensor(received),
        cap=None,
        scope=None,
    )


def test_vllm_stats_log_sums_layers_over_every_window():
    lines: list[str] = []
    log = DropStatsLog(every=2, rank=0, emit=lines.append)
    for _ in range(2):  # two steps of two layers
        log.record("layers.0", _stats(1, 10, [6, 3]))
        log.record("layers.1", _stats(3, 10, [2, 5]))
    assert lines == []
    log.record("layers.0", _stats(0, 10, [5, 5]))  # third step starts: the first window is logged
    assert len(lines) == 1
    assert "steps 1-2" in lines[0] and "4 MoE layer calls" in lines[0]
    assert "dropped share 0.2000 (8/40 pairs)" in lines[0]
    assert "max 16 mean 16.0" in lines[0] and "[16, 16]" in lines[0]


def test_vllm_stats_log_quiet_when_off_or_not_rank0():
    lines: list[str] = []
    for log in (DropStatsLog(every=0, rank=0, emit=lines.append), DropStatsLog(every=1, rank=1, emit=lines.append)):
        for _ in range(3):
            log.record("layers.0", _stats(1, 4, [2, 1]))
    assert lines == []
