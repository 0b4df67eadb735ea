"""Unit tests of the ``expert_parallel`` layout: the setting, its validation, the rank layout, the startup check."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from moecomm.integrations.vllm.hooks import check_settings  # noqa: E402
from moecomm.integrations.vllm.layout import MoELayout  # noqa: E402
from moecomm.integrations.vllm.settings import (  # noqa: E402
    PluginConfigError,
    parse_expert_parallel,
    parse_plugin_config,
)

pytestmark = pytest.mark.vllm


def test_vllm_expert_parallel_read_at_top_level_and_inside_moecomm():
    assert parse_expert_parallel({}, 4) == 4  # default: EP over all TP x DP ranks
    assert parse_expert_parallel(None, 2) == 2
    assert parse_expert_parallel({"expert_parallel": 2}, 4) == 2
    assert parse_expert_parallel({"moecomm": {"expert_parallel": 1}}, 4) == 1
    assert parse_expert_parallel('{"expert_parallel": 4, "moecomm": {"expert_parallel": 4}}', 4) == 4
    # The moecomm dict may hold the key without it reaching MoECommConfig.
    cfg = parse_plugin_config({"moecomm": {"expert_parallel": 2, "token_drop_ratio": 0.1}})
    assert cfg.token_drop_ratio == 0.1


@pytest.mark.parametrize(
    "additional, named",
    [
        ({"expert_parallel": 0}, ['"expert_parallel"', "got 0", "TP x DP = 4"]),
        ({"expert_parallel": -1}, ['"expert_parallel"', "got -1", "TP x DP = 4"]),
        ({"expert_parallel": "2"}, ['"expert_parallel"', "got '2'"]),
        ({"expert_parallel": 2.0}, ['"expert_parallel"', "got 2.0"]),
        ({"expert_parallel": True}, ['"expert_parallel"', "got True"]),
        ({"expert_parallel": 3}, ['"expert_parallel"', "EP degree 3", "TP x DP = 4", "1, 2, 4"]),
        ({"moecomm": {"expert_parallel": 8}}, ['"moecomm.expert_parallel"', "EP degree 8", "TP x DP = 4"]),
        (
            {"expert_parallel": 2, "moecomm": {"expert_parallel": 4}},
            ['"expert_parallel" = 2', '"moecomm.expert_parallel" = 4', "agree"],
        ),
    ],
)
def test_vllm_expert_parallel_bad_values_name_the_key(additional, named):
    with pytest.raises(PluginConfigError) as info:
        parse_expert_parallel(additional, 4)
    for word in named:
        assert word in str(info.value)


@given(ep_size=st.sampled_from([1, 2, 3, 4, 6, 12]), data=st.data())
@settings(max_examples=40, deadline=None)
def test_vllm_layout_groups_partition_the_ranks(ep_size, data):
    flat_size = 12
    flat_rank = data.draw(st.integers(0, flat_size - 1))
    layout = MoELayout(flat_rank=flat_rank, flat_size=flat_size, ep_size=ep_size)
    m = flat_size // ep_size
    assert layout.moe_tp_size == m
    ep_groups, inner_groups = layout.ep_groups(), layout.inner_groups()
    # Each family of groups covers every rank exactly once, an EP group meets every inner group exactly once.
    for groups, size in ((ep_groups, ep_size), (inner_groups, m)):
        assert sorted(r for g in groups for r in g) == list(range(flat_size))
        assert all(len(g) == size for g in groups)
    for ep in ep_groups:
        for inner in inner_groups:
            assert len(set(ep) & set(inner)) == 1
    # This rank: its EP group is the one of its MoE-TP rank, where it sits at its EP rank; likewise inside.
    assert ep_groups[layout.moe_tp_rank][layout.ep_rank] == flat_rank
    assert inner_groups[layout.ep_rank][layout.moe_tp_rank] == flat_rank
    # vLLM's own layout (N = TP x DP): every rank its own expert block, no MoE-TP.
    own = MoELayout(flat_rank=flat_rank, flat_size=flat_size, ep_size=flat_size)
    assert (own.ep_rank, own.moe_tp_size) == (flat_rank, 1)


def test_vllm_layout_describes_itself_and_rejects_bad_sizes():
    layout = MoELayout(flat_rank=3, flat_size=4, ep_size=2)
    assert (layout.ep_rank, layout.moe_tp_rank) == (1, 1)
    assert layout.describe(4, 8) == "EP degree 2, MoE-TP degree 2, 4 local experts of 8"
    with pytest.raises(ValueError, match="ep_size"):
        MoELayout(flat_rank=0, flat_size=4, ep_size=3)
    with pytest.raises(ValueError, match="flat_rank"):
        MoELayout(flat_rank=4, flat_size=4, ep_size=2)


def _vllm_config(additional: dict, tp: int = 2, dp: int = 1, ep: bool = True, **parallel) -> SimpleNamespace:
    values = dict(
        tensor_parallel_size=tp,
        data_parallel_size=dp,
        prefill_context_parallel_size=1,
        pipeline_parallel_size=1,
        enable_expert_parallel=ep,
        enable_eplb=False,
        enable_ep_weight_filter=False,
    )
    return SimpleNamespace(
        parallel_config=SimpleNamespace(**(values | parallel)),
        additional_config=additional,
        scheduler_config=SimpleNamespace(max_num_batched_tokens=256),
    )


def test_vllm_startup_check_refuses_bad_settings_and_conflicts():
    check_settings(_vllm_config({"expert_parallel": 2}, tp=2, dp=2))  # fine: EP 2 x MoE-TP 2
    check_settings(_vllm_config({"expert_parallel": 1}, tp=2, pipeline_parallel_size=2, ep=False))  # inactive
    check_settings(_vllm_config({"expert_parallel": 1, "moecomm": {"dispatcher": "alltoall"}}))  # bound by default
    with pytest.raises(PluginConfigError, match='"expert_parallel".*EP degree 3.*TP x DP = 4'):
        check_settings(_vllm_config({"expert_parallel": 3}, tp=2, dp=2))
    with pytest.raises(PluginConfigError, match='"moecomm": dispatcher'):
        check_settings(_vllm_config({"moecomm": {"dispatcher": "nope"}}))
    with pytest.raises(PluginConfigError, match="pipeline-parallel-size 2"):
        check_settings(_vllm_config({"expert_parallel": 1}, tp=2, pipeline_parallel_size=2))
    with pytest.raises(PluginConfigError, match="enable-eplb"):
        check_settings(_vllm_config({"expert_parallel": 1}, tp=2, enable_eplb=True))


def test_vllm_real_token_count_skips_vllm_padding(monkeypatch):
    import vllm.forward_context as fc

    from moecomm.integrations.vllm.method import real_token_count

    context = SimpleNamespace(is_padding=None)
    monkeypatch.setattr(fc, "is_forward_context_available", lambda: True)
    monkeypatch.setattr(fc, "get_forward_context", lambda: context)
    assert real_token_count(5) == 5  # no mask: every row is a token
    context.is_padding = torch.tensor([False, False, False, True, True, True, True])  # buffer longer than the batch
    assert real_token_count(5) == 3
    context.is_padding = torch.ones(4, dtype=torch.bool)  # an idle DP rank's dummy batch
    assert real_token_count(4) == 0
    context.is_padding = torch.tensor([False, True, False])
    with pytest.raises(RuntimeError, match="suffix"):
        real_token_count(3)
    monkeypatch.setattr(fc, "is_forward_context_available", lambda: False)
    assert real_token_count(3) == 3


@given(num_tokens=st.integers(0, 30), tp_size=st.sampled_from([1, 2, 4, 6]), data=st.data())
@settings(max_examples=60, deadline=None)
def test_vllm_tp_group_tokens_are_the_members_slices(num_tokens, tp_size, data):
    from moecomm.integrations.vllm.moe_tp import tp_group_tokens
    from moecomm.integrations.vllm.ownership import token_slice

    group_size = data.draw(st.sampled_from([m for m in range(1, tp_size + 1) if tp_size % m == 0]))
    tp_rank = data.draw(st.integers(0, tp_size - 1))
    rows, counts = tp_group_tokens(num_tokens, tp_rank, tp_size, group_size)
    first = tp_rank // group_size * group_size
    members = [token_slice(num_tokens, r, tp_size) for r in range(first, first + group_size)]
    expected = torch.cat([torch.arange(num_tokens)[s] for s in members])
    assert torch.equal(torch.arange(num_tokens)[rows], expected)
    assert counts == [s.stop - s.start for s in members]
    with pytest.raises(ValueError, match="group_size"):
        tp_group_tokens(num_tokens, 0, 4, 3)


@given(max_tokens=st.integers(1, 40), tp_size=st.sampled_from([1, 2, 4]), data=st.data())
@settings(max_examples=40, deadline=None)
def test_vllm_dispatch_token_bound_covers_every_pooled_batch(max_tokens, tp_size, data):
    from moecomm.integrations.vllm.layout import dispatch_token_bound
    from moecomm.integrations.vllm.moe_tp import tp_group_tokens

    moe_tp = data.draw(st.sampled_from([m for m in range(1, tp_size + 1) if tp_size % m == 0]))
    bound = dispatch_token_bound(max_tokens, tp_size, moe_tp)
    largest = max(sum(tp_group_tokens(t, r, tp_size, moe_tp)[1]) for t in range(max_tokens + 1) for r in range(tp_size))
    assert largest <= bound
    if max_tokens % tp_size == 0:  # full slices: the bound is reached, so it is the smallest that works
        assert largest == bound
