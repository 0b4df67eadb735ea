"""Transports and dispatchers for MindSpore jobs (no torch.distributed group; MindSpore owns the cluster).

:func:`make_mindspore_transport` chooses how bytes move between the MindSpore ranks:

| ``config.transport`` | transport |
|---|---|
| ``"auto"`` | ``shm`` when every rank shares this host and POSIX shared memory works (checked over MindSpore's AllGather), else ``mindspore`` |
| ``"shm"`` | moecomm's native shared memory, bootstrapped (segment names, nonce, config agreement) over MindSpore's AllGather |
| ``"mindspore"`` | MindSpore's collectives, all-gather based (:class:`MindSporeTransport`) |

``"torch"`` needs a torch.distributed group, which a MindSpore job does not have: it is refused.
"""

from __future__ import annotations

import logging
from typing import Any

from moecomm.comm import make_dispatcher
from moecomm.comm.dispatchers.base import Dispatcher
from moecomm.comm.transports.base import Transport
from moecomm.comm.transports.shm import ShmTransport
from moecomm.config import MoECommConfig
from moecomm.integrations.mindspore.transport import MindSporeTransport
from moecomm.registry import AUTO

logger = logging.getLogger("moecomm")

#: Transports a MindSpore job can use (``config.transport`` values).
MINDSPORE_TRANSPORTS = (AUTO, "shm", "mindspore")


def make_mindspore_transport(name: str, timeout_s: float, owner: str, group: str | None = None) -> Transport:
    """Builds the transport ``name`` (one of :data:`MINDSPORE_TRANSPORTS`) over the MindSpore ``group``.

    Collective: every rank of ``group`` calls it together with the same ``name``; bounded by ``timeout_s``.
    """
    if name not in MINDSPORE_TRANSPORTS:
        raise ValueError(
            f"transport: a MindSpore job uses one of {', '.join(repr(n) for n in MINDSPORE_TRANSPORTS)}, got {name!r}"
            + (" (the torch transport needs a torch.distributed group)" if name == "torch" else "")
        )
    collectives = MindSporeTransport(group, timeout_s, owner)
    if name == "mindspore":
        collectives.chosen_because = "transport='mindspore' was asked for"
        return collectives
    if name == AUTO:
        available, reason = ShmTransport.is_available(None, timeout_s, bootstrap=collectives)
        if not available:
            collectives.chosen_because = reason
            logger.info("moecomm: mindspore transport (%s)", reason)
            return collectives
    else:
        reason = "transport='shm' was asked for"
    transport = ShmTransport(None, timeout_s, owner, bootstrap=collectives)
    transport.chosen_because = reason
    return transport


def agreed_mindspore_transport(config: MoECommConfig, num_experts: int, group: str | None = None) -> Transport:
    """The transport ``config.transport`` chooses, after every rank agreed on ``config`` and ``num_experts``
    over MindSpore's AllGather (before the collective transport choice, so ranks that disagree stop before
    their paths split). Collective, bounded by ``config.timeout_s``."""
    agreement = MindSporeTransport(group, config.timeout_s, config.dispatcher)
    agreement.check_same_settings({**config.to_dict(), "num_experts": num_experts})
    return make_mindspore_transport(config.transport, config.timeout_s, config.dispatcher, group)


def make_mindspore_dispatcher(
    config: MoECommConfig | dict[str, Any] | None, num_experts: int, group: str | None = None
) -> Dispatcher:
    """:func:`moecomm.make_dispatcher` for a MindSpore job: ``config.dispatcher`` over the transport
    ``config.transport`` chooses among the MindSpore ranks of ``group`` (None: the world group).

    The config (every field, so ``token_drop_ratio`` and any later one) is agreed over MindSpore's AllGather,
    then passed to moecomm's dispatcher unchanged. The dispatcher owns the transport (``close`` closes it).
    """
    if not isinstance(config, MoECommConfig):
        config = MoECommConfig.from_dict(config)
    transport = agreed_mindspore_transport(config, num_experts, group)
    return make_dispatcher(config, num_experts, transport=transport)
