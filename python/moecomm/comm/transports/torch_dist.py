"""The ``torch`` transport: a caller-owned torch.distributed group (gloo on CPU, NCCL, HCCL).

``group=None`` is a single-process group whose collectives are copies, so one code path serves both.
Every collective runs asynchronously and is waited on for at most ``timeout_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from moecomm.comm.transports.base import Transport, agree_on_settings, check_out

# torch >= 2.13 names these *_single (the *_tensor names warn); older torch only has *_tensor.
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

#: Private gloo groups by (ranks, timeout_s), see :meth:`TorchTransport._private_group`.
_PRIVATE_GROUPS: dict[tuple[tuple[int, ...], float], dist.ProcessGroup] = {}
#: How much longer than timeout_s a step waits on a private group's collective (gloo's own timeout fires first).
_PRIVATE_GROUP_GRACE = timedelta(seconds=1)

#: Device type a tensor must live on for each process-group backend.
BACKEND_DEVICE = {"gloo": "cpu", "nccl": "cuda", "hccl": "npu"}


class TorchTransport(Transport):
    """Collectives over a ``torch.distributed`` ProcessGroup the caller owns (or None: one process).

    Args:
        group: the ProcessGroup (its members build their transports together), or None.
        timeout_s: seconds to wait on one collective before raising.
        owner: the name used in error messages (the dispatcher's).
        private_group: over gloo, run the collectives on a private copy of ``group`` whose timeout is
            ``timeout_s`` (created collectively on first use, see :meth:`_private_group`), so that a collective
            left pending by a failed step cannot hold the process past ``timeout_s``. False: use ``group``
            itself (the setup-time agreements do, before any step).
    """

    name = "torch"

    def __init__(
        self, group: dist.ProcessGroup | None, timeout_s: float, owner: str, *, private_group: bool = True
    ) -> None:
        if group is None:
            rank, world_size, self.backend = 0, 1, None
        else:
            if not dist.is_available() or not dist.is_initialized():
                raise RuntimeError("group: torch.distributed is not initialised; create the process group first")
            if not isinstance(group, dist.ProcessGroup):
                raise TypeError(f"group: expected a torch.distributed ProcessGroup or None, got {type(group).__name__}")
            rank, world_size = dist.get_rank(group), dist.get_world_size(group)
            if rank < 0:
                raise ValueError("group: this process is not a member of the given process group")
            self.backend = str(dist.get_backend(group)).lower()
        super().__init__(rank, world_size, timeout_s, owner)
        self.group = group
        self.timeout = timedelta(seconds=timeout_s)
        self._private_key: tuple[tuple[int, ...], float] | None = None
        if private_group and self.backend == "gloo" and world_size > 1:
            self.group = self.step("setup", "private group", lambda: self._private_group(group, timeout_s))

    @property
    def device_type(self) -> str | None:
        return BACKEND_DEVICE.get(self.backend) if self.backend else None

    def describe(self) -> str:
        return f"torch transport ({self.backend})" if self.backend else "torch transport (one process)"

    def _run(self, issue: Callable[[], Any], *tensors: torch.Tensor) -> None:
        """Issues one asynchronous collective on ``tensors`` (``issue()`` returns its Work) and waits for it.

        On a private group gloo's own timeout (timeout_s per transfer) ends an abandoned collective first, so
        its worker thread is free before the step raises. A failed collective is also waited on until gloo's
        worker has released ``tensors`` (at most timeout_s more): that worker drops the last C++ reference of
        each tensor, which takes the GIL, and a thread that takes the GIL while the interpreter finalises is
        ended mid-destructor (the process aborts). Without this wait a rank that raises and returns at once
        aborted at exit about one time in three.
        """
        held = [tensor._use_count() for tensor in tensors]
        work = issue()
        if work is None:
            return
        grace = _PRIVATE_GROUP_GRACE if self._private_key is not None else timedelta(0)
        try:
            work.wait(timeout=self.timeout + grace)
        except BaseException:
            work = None  # the traceback keeps this frame: its reference to the Work must not stay
            _await_release(tensors, held, self.timeout.total_seconds())
            raise

    def all_gather(
        self, phase: str, step: str, tensor: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        tensor = tensor.contiguous()
        shape = (self.world_size, *tensor.shape)
        if out is not None:
            check_out(out, shape, tensor)
        if self.group is None:
            if out is None:
                return self.step(phase, step, lambda: tensor.unsqueeze(0).clone())
            return self.step(phase, step, lambda: out.copy_(tensor.unsqueeze(0)))
        gathered = tensor.new_empty(shape) if out is None else out
        # gloo wants the output as the inputs concatenated along dim 0, not stacked.
        flat = gathered.view(self.world_size * tensor.shape[0], *tensor.shape[1:])
        self.step(
            phase,
            step,
            lambda: self._run(lambda: _ALL_GATHER(flat, tensor, group=self.group, async_op=True), flat, tensor),
        )
        return gathered

    def all_to_all(
        self,
        phase: str,
        step: str,
        tensor: torch.Tensor,
        output_rows: int,
        output_splits: list[int] | None = None,
        input_splits: list[int] | None = None,
        *,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        tensor = tensor.contiguous()
        shape = (output_rows, *tensor.shape[1:])
        if out is not None:
            check_out(out, shape, tensor)
        if self.group is None:
            if out is None:
                return self.step(phase, step, lambda: tensor)
            return self.step(phase, step, lambda: out.copy_(tensor))
        received = tensor.new_empty(shape) if out is None else out

        def issue() -> Any:
            return dist.all_to_all_single(
                received,
                tensor,
                output_split_sizes=output_splits,
                input_split_sizes=input_splits,
                group=self.group,
                async_op=True,
            )

        self.step(phase, step, lambda: self._run(issue, received, tensor))
        return received

    def reduce_scatter(
        self, phase: str, step: str, tensor: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        tensor = tensor.contiguous()
        shape = (tensor.shape[0] // self.world_size, *tensor.shape[1:])
        if out is not None:
            check_out(out, shape, tensor)
        if self.group is None:
            return self.step(phase, step, lambda: tensor.clone() if out is None else out.copy_(tensor))
        received = tensor.new_empty(shape) if out is None else out
        self.step(
            phase,
            step,
            lambda: self._run(
                lambda: _REDUCE_SCATTER(received, tensor, group=self.group, async_op=True), received, tensor
            ),
        )
        return received

    def barrier(self, phase: str, step: str) -> None:
        if self.group is None:
            return
        token = torch.zeros(1, dtype=torch.int64, device=self.device_type or "cpu")
        self.all_gather(phase, step, token)

    def check_same_settings(self, settings: dict[str, Any]) -> None:
        """Bounded by ``timeout_s`` (a length all-gather, then the pickled settings, padded)."""
        if self.group is None:
            return
        agree_on_settings(self, settings)

    def _private_group(self, group: dist.ProcessGroup, timeout_s: float) -> dist.ProcessGroup:
        """The private gloo group of ``group``'s ranks with timeout ``timeout_s``: a collective abandoned after a
        failed step then ends inside gloo within timeout_s too, so the process can exit (the caller's group
        keeps its own, usually 30-minute, timeout, and a pending op on it holds the exit until a peer leaves).
        One per (ranks, timeout) per process, shared by the transports on it: gloo groups cannot be destroyed
        and re-created on the same ranks, so they live until the process ends; a failed step retires its group
        (the next transport on those ranks makes a new one)."""
        key = (tuple(dist.get_process_group_ranks(group)), float(timeout_s))
        if key not in _PRIVATE_GROUPS:
            _PRIVATE_GROUPS[key] = dist.new_group(
                list(key[0]), timeout=self.timeout, backend="gloo", use_local_synchronization=True
            )
        self._private_key = key
        return _PRIVATE_GROUPS[key]

    def on_broken(self) -> None:
        """Retires the private group: its pending collective may never complete."""
        if self._private_key is not None and _PRIVATE_GROUPS.get(self._private_key) is self.group:
            del _PRIVATE_GROUPS[self._private_key]


def _await_release(tensors: Sequence[torch.Tensor], held: Sequence[int], limit_s: float) -> None:
    """Polls until every tensor's C++ use count is back to ``held`` (what it was before the collective took
    its references), for at most ``limit_s`` seconds."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and any(tensor._use_count() > count for tensor, count in zip(tensors, held)):
        time.sleep(0.001)
