"""The process groups of a MoE layout (:class:`~.layout.MoELayout`) over vLLM's EP group, built once per process."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch.distributed as dist

from moecomm.integrations.vllm.layout import MoELayout

_built: dict[tuple, tuple[dist.ProcessGroup | None, dist.ProcessGroup | None]] = {}


def moe_layout_groups(
    ep_group: Any, layout: MoELayout, timeout_s: float
) -> tuple[dist.ProcessGroup | None, dist.ProcessGroup | None]:
    """(the group to dispatch over, the inner MoE-TP group) of this rank; None where the group is one rank.

    With M = 1 the dispatch group is vLLM's own EP group and no group is created. Otherwise every rank of the
    world must call this (vLLM builds the same MoE layers on every rank, so the first layer's
    ``process_weights_after_loading`` does): ``torch.distributed`` creates the N-rank EP groups and the
    M-rank inner groups collectively, each bounded by ``timeout_s``.

    Args:
        ep_group: vLLM's EP ``GroupCoordinator`` (``ranks``: global ranks in flat-rank order, ``device_group``).
        layout: this rank's layout; ``layout.flat_size`` must equal the EP group's size.
        timeout_s: the bound on group creation and on every later collective of the groups.
    """
    if layout.moe_tp_size == 1:
        return (ep_group.device_group if layout.ep_size > 1 else None), None
    key = (tuple(ep_group.ranks), layout.ep_size)
    if key not in _built:
        backend = dist.get_backend(ep_group.device_group)
        timeout = timedelta(seconds=timeout_s)

        def subgroup(groups: list[list[int]]) -> dist.ProcessGroup:
            ranks = [[ep_group.ranks[flat] for flat in group] for group in groups]
            mine, _ = dist.new_subgroups_by_enumeration(ranks, timeout=timeout, backend=backend)
            return mine

        dispatch = subgroup(layout.ep_groups()) if layout.ep_size > 1 else None
        _built[key] = (dispatch, subgroup(layout.inner_groups()))
    return _built[key]
