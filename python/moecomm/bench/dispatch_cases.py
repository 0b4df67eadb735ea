"""The cases of `moecomm bench dispatch`: moecomm's dispatchers per transport, and the peers.

Case names: ``<dispatcher>/<transport>`` for moecomm's dispatchers (``alltoallv/torch``), the peer's
name for the peers (they bring their own wire): ``torch-alltoallv`` (pure torch), ``megatron-alltoall``
and ``megatron-allgather`` (Megatron-Core's token dispatchers), ``shm-copy`` (plain shared-memory copy
of the bytes that must cross ranks). ``alltoallv-pairs-fresh`` is the pre-workspace ``alltoallv``: one row
per kept pair and new buffers every step (``make_dispatcher(..., fresh_buffers=True)``). The Megatron-Core
peers are skipped with a note where megatron-core does not import; the plan depends only on the
installation, so every rank plans the same cases.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from moecomm.bench.megatron_peer import MEGATRON_DISPATCHERS, megatron_available

MOECOMM_DISPATCHERS = ("alltoallv", "alltoallv-pairs", "alltoall", "allgather")
#: The pre-workspace alltoallv: pair-level rows and new buffers every step (``fresh_buffers=True``).
FRESH = "alltoallv-pairs-fresh"
PEER = "torch-alltoallv"
MEGATRON_PEERS = tuple(MEGATRON_DISPATCHERS)
SHM_COPY = "shm-copy"
PEERS = (PEER, *MEGATRON_PEERS, SHM_COPY)
#: Dispatchers that run over a moecomm transport (one case per transport).
TRANSPORTED = (*MOECOMM_DISPATCHERS, FRESH)
DISPATCHERS = (*TRANSPORTED, *PEERS)


def available_transports() -> tuple[str, ...]:
    """Every transport in ``moecomm.registry.TRANSPORTS``."""
    from moecomm import registry

    return registry.names(registry.TRANSPORTS)


def case_name(dispatcher: str, transport: str | None) -> str:
    """``<dispatcher>/<transport>`` for moecomm's dispatchers, the bare name for peers."""
    return f"{dispatcher}/{transport}" if dispatcher in TRANSPORTED else dispatcher


def plan_cases(
    dispatchers: tuple[str, ...], transports: tuple[str, ...]
) -> tuple[list[tuple[str, str, str | None]], list[str]]:
    """``(case name, dispatcher, transport or None)`` of every case that can run here, in order, and a
    note for each case skipped."""
    cases: list[tuple[str, str, str | None]] = []
    notes: list[str] = []
    megatron_ok = not set(MEGATRON_PEERS) & set(dispatchers) or megatron_available()
    for dispatcher in dispatchers:
        if dispatcher not in DISPATCHERS:
            raise ValueError(f"dispatchers: unknown {dispatcher!r}; choose from {', '.join(DISPATCHERS)}")
        if dispatcher in MEGATRON_PEERS and not megatron_ok:
            notes.append(f"{dispatcher}: skipped, megatron-core's token dispatchers do not import here")
            continue
        if dispatcher not in TRANSPORTED:
            cases.append((dispatcher, dispatcher, None))
            continue
        cases.extend((case_name(dispatcher, transport), dispatcher, transport) for transport in transports)
    return cases, notes


def bench_group() -> dist.ProcessGroup | None:
    """The default process group when one with more than one rank is initialised, else None."""
    return dist.group.WORLD if dist.is_initialized() and dist.get_world_size() > 1 else None


def make_bench_dispatcher(name: str, num_experts: int, *, transport: str | None = None, **config: Any) -> Any:
    """moecomm's dispatcher ``name`` (``MoECommConfig(dispatcher=name, **config)``, over ``transport``;
    ``alltoallv-pairs-fresh``: alltoallv-pairs with ``fresh_buffers=True``) or the pure-torch peer, over
    :func:`bench_group`."""
    group = bench_group()
    if name == PEER:
        from moecomm.bench.torch_peer import TorchAllToAllV

        return TorchAllToAllV(num_experts, group)
    from moecomm import MoECommConfig, make_dispatcher

    options = {} if transport is None else {"transport": transport}
    fresh = name == FRESH
    config = MoECommConfig(dispatcher="alltoallv-pairs" if fresh else name, **options, **config)
    return make_dispatcher(config, num_experts=num_experts, group=group, fresh_buffers=fresh)
