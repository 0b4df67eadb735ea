"""Transports: how bytes move between the ranks of an EP group (one of the three plug-in axes).

| name | moves bytes through | when ``"auto"`` picks it |
|---|---|---|
| ``shm`` | native POSIX shared memory between the processes of one host | every rank of the group on this host |
| ``torch`` | the caller's torch.distributed group (gloo, NCCL, HCCL) | otherwise, or for one process |
"""

from __future__ import annotations

import logging

import torch.distributed as dist

from moecomm.comm.transports.base import CommStepError, Transport
from moecomm.registry import AUTO, FRAMEWORK_TRANSPORTS, TRANSPORTS, load

logger = logging.getLogger("moecomm")
_announced: set[tuple[str, str]] = set()


def choose_transport(name: str, group: dist.ProcessGroup | None) -> tuple[str, str]:
    """The transport to build for ``name`` (``"auto"`` or a member) over ``group``, and why.

    ``auto``: ``shm`` when it is registered and every rank of the group runs on this host (checked with one
    collective over ``group``), else ``torch``. One process (``group`` None or of size 1) always uses ``torch``.
    """
    if name != AUTO:
        return name, f"transport={name!r} was asked for"
    if group is None or dist.get_world_size(group) == 1:
        return "torch", "one process: nothing crosses ranks"
    if "shm" not in TRANSPORTS:
        return "torch", "the shared-memory transport is not built"
    available, reason = load(TRANSPORTS, "shm").is_available(group)
    return ("shm", reason) if available else ("torch", reason)


def make_transport(name: str, group: dist.ProcessGroup | None, timeout_s: float, owner: str) -> Transport:
    """Builds the transport ``name`` (or the ``"auto"`` choice) over ``group``; logs the choice once per process.

    Collective: every rank of ``group`` calls it together with the same ``name``.
    """
    if name in FRAMEWORK_TRANSPORTS:
        raise ValueError(
            f"transport: {name!r} runs over {name}'s own cluster, not a torch.distributed group; build the "
            f"dispatcher with moecomm.integrations.{name}.make_{name}_dispatcher"
        )
    chosen, reason = choose_transport(name, group)
    if group is not None and dist.get_world_size(group) > 1 and (chosen, reason) not in _announced:
        _announced.add((chosen, reason))
        logger.info("moecomm: %s transport (%s)", chosen, reason)
    transport = load(TRANSPORTS, chosen)(group, timeout_s, owner)
    transport.chosen_because = reason
    return transport


__all__ = ["CommStepError", "Transport", "choose_transport", "make_transport"]
