"""The cases of `moecomm bench dispatch`: moecomm's dispatchers per transport, and the peers.

Case names: ``<dispatcher>/<transport>`` for moecomm's dispatchers (``alltoallv/torch``), the peer's
name for the peers (they bring their own wire): ``torch-alltoallv`` (pure torch), ``megatron-alltoall``
and ``megatron-allgather`` (Megatron-Core's token dispatchers), ``shm-copy`` (plain shared-memory copy
of the bytes that must cross ranks). ``alltoallv-fresh`` is ``alltoallv`` with new buffers every step
(``make_dispatcher(..., fresh_buffers=True)``). A case this installation cannot run (a transport
``MoECommConfig`` cannot select yet, no ``fresh_buffers`` keyword, no megatron-core) is skipped with
a note; the plan depends only on the installation, so every rank plans the same cases.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch.distributed as dist

from moecomm.bench.megatron_peer import MEGATRON_DISPATCHERS, megatron_available

DEFAULT_TRANSPORT = "torch"
MOECOMM_DISPATCHERS = ("alltoallv", "alltoall", "allgather")
FRESH = "alltoallv-fresh"
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


def transport_options(transport: str) -> dict[str, str] | None:
    """The ``MoECommConfig`` keywords selecting ``transport``: ``{"transport": ...}`` once the config has
    that field; before, ``{}`` for the one transport there is (``torch``) and None for any other."""
    from moecomm import MoECommConfig

    if "transport" in MoECommConfig.field_names():
        return {"transport": transport}
    return {} if transport == DEFAULT_TRANSPORT else None


def accepts_fresh_buffers() -> bool:
    """True when ``make_dispatcher`` takes the ``fresh_buffers`` keyword."""
    from moecomm import make_dispatcher

    return "fresh_buffers" in inspect.signature(make_dispatcher).parameters


def case_name(dispatcher: str, transport: str | None) -> str:
    """``<dispatcher>/<transport>`` for moecomm's dispatchers, the bare name for peers."""
    return f"{dispatcher}/{transport}" if dispatcher in TRANSPORTED else dispatcher


def plan_cases(dispatchers: tuple[str, ...], transports: tuple[str, ...]) -> tuple[list[tuple[str, str, str | None]], list[str]]:
    """``(case name, dispatcher, transport or None)`` of every case that can run here, in order, and a
    note for each case skipped."""
    cases: list[tuple[str, str, str | None]] = []
    notes: list[str] = []
    fresh_ok = FRESH not in dispatchers or accepts_fresh_buffers()
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
        for transport in transports:
            name = case_name(dispatcher, transport)
            if dispatcher == FRESH and not fresh_ok:
                notes.append(f"{name}: skipped, make_dispatcher has no fresh_buffers keyword in this moecomm")
            elif transport_options(transport) is None:
                notes.append(f"{name}: skipped, MoECommConfig has no transport field to select {transport!r}")
            else:
                cases.append((name, dispatcher, transport))
    return cases, notes


def bench_group() -> dist.ProcessGroup | None:
    """The default process group when one with more than one rank is initialised, else None."""
    return dist.group.WORLD if dist.is_initialized() and dist.get_world_size() > 1 else None


def make_bench_dispatcher(name: str, num_experts: int, *, transport: str | None = None, **config: Any) -> Any:
    """moecomm's dispatcher ``name`` (``MoECommConfig(dispatcher=name, **config)``, over ``transport``;
    ``alltoallv-fresh``: alltoallv with ``fresh_buffers=True``) or the pure-torch peer, over
    :func:`bench_group`."""
    group = bench_group()
    if name == PEER:
        from moecomm.bench.torch_peer import TorchAllToAllV

        return TorchAllToAllV(num_experts, group)
    from moecomm import MoECommConfig, make_dispatcher

    options = transport_options(transport) if transport is not None else {}
    if options is None:
        raise ValueError(f"transport: MoECommConfig cannot select {transport!r} in this moecomm")
    if name == FRESH:
        return make_dispatcher(MoECommConfig(dispatcher="alltoallv", **options, **config),  # type: ignore[call-arg]
                               num_experts=num_experts, group=group, fresh_buffers=True)
    return make_dispatcher(MoECommConfig(dispatcher=name, **options, **config), num_experts=num_experts, group=group)
