"""moecomm.comm: expert-parallel dispatch / combine over a caller-owned process group.

Three plug-in axes meet here: the wire pattern (``dispatchers/``), the transport (``transports/``) and the
kernel backend (``moecomm.backends``); :mod:`moecomm.registry` names the members of all three.
"""

from __future__ import annotations

import torch.distributed as dist

from moecomm.comm.dispatchers import (
    AllgatherDispatcher,
    AllgatherHandle,
    AlltoallDispatcher,
    AlltoallHandle,
    AlltoallvDispatcher,
    AlltoallvHandle,
    AlltoallvPairsDispatcher,
    AlltoallvPairsHandle,
    Dispatcher,
)
from moecomm.comm.group import EPGroup
from moecomm.comm.handle import DispatchHandle, DropStats
from moecomm.comm.moe_step import run_moe_step
from moecomm.comm.row_codec import QuantizedRows
from moecomm.comm.transports import CommStepError, Transport, make_transport
from moecomm.config import MoECommConfig
from moecomm.registry import DISPATCHERS, load


def make_dispatcher(
    config: MoECommConfig | dict | None,
    num_experts: int,
    group: dist.ProcessGroup | None = None,
    *,
    fresh_buffers: bool = False,
    transport: Transport | None = None,
) -> Dispatcher:
    """Builds the dispatcher ``config.dispatcher`` names over ``group`` (None: a single process).

    Args:
        config: a MoECommConfig, a dict of its fields, or None for the defaults; must be identical on
            every rank of ``group`` (checked here, with one collective bounded by ``timeout_s``).
        num_experts: E, divisible by the group's size; rank r owns experts ``[r*E/R, (r+1)*E/R)``.
        group: a torch.distributed ProcessGroup the caller owns (its members call this together), or None.
        fresh_buffers: allocate new buffers every step (the pre-workspace behaviour; a benchmark peer).
        transport: a Transport already built over the EP ranks instead of ``group`` (MindSpore jobs: see
            :func:`moecomm.integrations.mindspore.make_mindspore_transport`); the dispatcher owns it.
    """
    if not isinstance(config, MoECommConfig):
        config = MoECommConfig.from_dict(config)
    return load(DISPATCHERS, config.dispatcher)(
        config, num_experts, group, fresh_buffers=fresh_buffers, transport=transport
    )


__all__ = [
    "make_dispatcher",
    "run_moe_step",
    "Dispatcher",
    "AlltoallvDispatcher",
    "AlltoallvPairsDispatcher",
    "AlltoallvPairsHandle",
    "AlltoallDispatcher",
    "AllgatherDispatcher",
    "DispatchHandle",
    "AlltoallvHandle",
    "AlltoallHandle",
    "AllgatherHandle",
    "DropStats",
    "QuantizedRows",
    "CommStepError",
    "Transport",
    "make_transport",
    "EPGroup",
    "MoECommConfig",
]
