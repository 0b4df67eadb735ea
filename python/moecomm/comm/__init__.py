"""moecomm.comm: expert-parallel dispatch / combine over a caller-owned torch.distributed group.

| dispatcher | wire pattern | host sync on sizes |
|---|---|---|
| ``alltoallv`` | count all-gather, variable-split all-to-all | yes (split sizes) |
| ``alltoall`` | count all-gather, fixed-capacity padded all-to-all | no |
| ``allgather`` | all-gather tokens/ids/weights, reduce-scatter outputs | no (pads to the largest T) |
"""

from __future__ import annotations

import torch.distributed as dist

from moecomm.comm.allgather import AllgatherDispatcher, AllgatherHandle
from moecomm.comm.alltoall import AlltoallDispatcher, AlltoallHandle
from moecomm.comm.alltoallv import AlltoallvDispatcher, AlltoallvHandle
from moecomm.comm.base import Dispatcher
from moecomm.comm.group import CommStepError, EPGroup
from moecomm.comm.handle import DispatchHandle, DropStats
from moecomm.config import MoECommConfig

DISPATCHER_CLASSES: dict[str, type[Dispatcher]] = {
    "alltoallv": AlltoallvDispatcher,
    "alltoall": AlltoallDispatcher,
    "allgather": AllgatherDispatcher,
}


def make_dispatcher(
    config: MoECommConfig | dict | None, num_experts: int, group: dist.ProcessGroup | None = None
) -> Dispatcher:
    """Builds the dispatcher ``config.dispatcher`` names over ``group`` (None: a single process).

    Args:
        config: a MoECommConfig, a dict of its fields, or None for the defaults; must be identical on
            every rank of ``group`` (checked here, with one collective).
        num_experts: E, divisible by the group's size; rank r owns experts ``[r*E/R, (r+1)*E/R)``.
        group: a torch.distributed ProcessGroup the caller owns (its members call this together), or None.
    """
    if not isinstance(config, MoECommConfig):
        config = MoECommConfig.from_dict(config)
    return DISPATCHER_CLASSES[config.dispatcher](config, num_experts, group)


__all__ = [
    "make_dispatcher",
    "Dispatcher",
    "AlltoallvDispatcher",
    "AlltoallDispatcher",
    "AllgatherDispatcher",
    "DispatchHandle",
    "AlltoallvHandle",
    "AlltoallHandle",
    "AllgatherHandle",
    "DropStats",
    "CommStepError",
    "EPGroup",
    "MoECommConfig",
]
