"""Dispatchers and the shm transport built on a transport the caller already has (how the MindSpore path
reuses them): one-process results equal the dense reference; wrong combinations are refused by name."""

from __future__ import annotations

import pytest
import torch
from comm_reference import dense_output
from comm_workers import make_batch, run_expert

from moecomm import EPMoE, MoECommConfig, make_dispatcher
from moecomm.comm.transports.shm import ShmTransport
from moecomm.comm.transports.torch_dist import TorchTransport

CASE = {"seed": 2, "experts": 4, "top_k": 2, "hidden": 8, "tokens": [9]}


@pytest.mark.parametrize("dispatcher", ["alltoallv", "allgather"])
@pytest.mark.parametrize("ready", ["torch", "shm-over-torch"])
def test_dispatcher_on_a_ready_transport_equals_the_dense_reference(dispatcher, ready):
    transport = TorchTransport(None, 10.0, "test")
    if ready == "shm-over-torch":
        transport = ShmTransport(None, 10.0, "test", bootstrap=transport)
    disp = make_dispatcher(MoECommConfig(dispatcher=dispatcher), CASE["experts"], transport=transport)
    assert disp.transport is transport
    inputs = make_batch(CASE, 1)[0]
    expert_x, handle = disp.dispatch(inputs["x"], inputs["topk_ids"], inputs["topk_weights"])
    y = disp.combine(run_expert(expert_x, handle.tokens_per_local_expert, 0), handle)
    reference = dense_output(inputs["x"], inputs["topk_ids"], inputs["topk_weights"], handle.is_kept, False)
    torch.testing.assert_close(y.double(), reference, atol=1e-5, rtol=1e-5)
    disp.close()


def test_group_and_transport_together_or_a_wrong_transport_are_refused():
    transport = TorchTransport(None, 10.0, "test")
    with pytest.raises(ValueError, match=r"^group: give a torch.distributed group or a transport, not both$"):
        make_dispatcher(None, 4, object(), transport=transport)
    with pytest.raises(TypeError, match=r"^transport: expected a moecomm Transport, got str$"):
        make_dispatcher(None, 4, transport="shm")
    with pytest.raises(ValueError, match=r"^group: give a torch.distributed group or a bootstrap transport"):
        ShmTransport(object(), 10.0, "test", bootstrap=transport)
    with pytest.raises(TypeError, match=r"^bootstrap: expected a moecomm Transport, got int$"):
        ShmTransport(None, 10.0, "test", bootstrap=3)
    with pytest.raises(ValueError, match=r"^num_experts: 3 experts cannot be split evenly"):
        EPMoE(8, 4, 3, 1, transport=_FakeTwoRanks())


def test_mindspore_transport_is_a_config_choice_but_not_for_torch_groups():
    assert MoECommConfig(transport="mindspore").transport == "mindspore"
    with pytest.raises(ValueError, match="'mindspore'"):
        MoECommConfig(transport="carrier-pigeon")
    with pytest.raises(ValueError, match=r"make_mindspore_dispatcher$"):
        make_dispatcher(MoECommConfig(transport="mindspore"), 4)


class _FakeTwoRanks(TorchTransport):
    """A transport that claims two ranks (only its size is read before the layer refuses)."""

    def __init__(self) -> None:
        super().__init__(None, 1.0, "fake")
        self.world_size = 2
