"""EPGroup: the caller's process group as the dispatchers use it (rank, device, timed collectives).

Every collective runs as one named step: it waits at most ``timeout_s`` and any failure is re-raised
as :class:`CommStepError` naming the rank, the dispatcher and the step. ``group=None`` is a
single-process group whose collectives are copies, so one code path serves both.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from moecomm.ops import empty_buffer

# torch >= 2.13 names these *_single (the *_tensor names warn); older torch only has *_tensor.
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

#: Device type a tensor must live on for each process-group backend.
BACKEND_DEVICE = {"gloo": "cpu", "nccl": "cuda", "hccl": "npu"}


def receive_buffer(sent: torch.Tensor, rows: int) -> torch.Tensor:
    """An uninitialised ``[rows, *S]`` buffer like ``sent [N, *S]`` for a collective to fill."""
    shape = (rows, *sent.shape[1:])
    return empty_buffer(shape, sent.dtype) if sent.device.type == "cpu" else sent.new_empty(shape)


class CommStepError(RuntimeError):
    """A collective step of a dispatcher failed or timed out (a peer died, hung or disagreed)."""


class EPGroup:
    """An expert-parallel group: ``world_size`` ranks, rank r owning experts ``[r*E/R, (r+1)*E/R)``.

    Args:
        group: a ``torch.distributed`` ProcessGroup the caller owns, or None for one process.
        timeout_s: seconds to wait on one collective before raising.
        name: the owner's name used in error messages (e.g. the dispatcher's).
    """

    def __init__(self, group: dist.ProcessGroup | None, timeout_s: float, name: str) -> None:
        self.group = group
        self.timeout = timedelta(seconds=timeout_s)
        self.name = name
        if group is None:
            self.rank, self.world_size, self.backend = 0, 1, None
        else:
            if not dist.is_available() or not dist.is_initialized():
                raise RuntimeError("group: torch.distributed is not initialised; create the process group first")
            if not isinstance(group, dist.ProcessGroup):
                raise TypeError(f"group: expected a torch.distributed ProcessGroup or None, got {type(group).__name__}")
            self.rank = dist.get_rank(group)
            self.world_size = dist.get_world_size(group)
            if self.rank < 0:
                raise ValueError("group: this process is not a member of the given process group")
            self.backend = str(dist.get_backend(group)).lower()

    @property
    def device_type(self) -> str | None:
        """Device type the backend moves tensors on (None when any will do)."""
        return BACKEND_DEVICE.get(self.backend) if self.backend else None

    def check_device(self, name: str, tensor: torch.Tensor) -> None:
        """Raises if ``tensor`` is not on the device the group's backend expects."""
        expected = self.device_type
        if expected is not None and tensor.device.type != expected:
            raise ValueError(
                f"{name}: the {self.backend} process group expects {expected} tensors, got device {tensor.device}"
            )

    def step(self, phase: str, step: str, action: Callable[[], Any]) -> Any:
        """Runs ``action`` (one collective) as ``step``; a failure names the rank, phase and step."""
        try:
            return action()
        except CommStepError:
            raise
        except Exception as error:  # noqa: BLE001 - any backend error becomes a named step error
            raise CommStepError(
                f"rank {self.rank}: {self.name} {phase} step {step!r} failed: {type(error).__name__}: {error}"
            ) from error

    def _wait(self, work: Any) -> None:
        if work is not None:
            work.wait(timeout=self.timeout)

    def all_gather(self, phase: str, step: str, tensor: torch.Tensor) -> torch.Tensor:
        """All ranks' ``tensor [N, *S]`` (same shape everywhere, N >= 0) -> ``[R, N, *S]``, rank order."""
        tensor = tensor.contiguous()
        if self.group is None:
            return tensor.unsqueeze(0).clone()
        # gloo wants the output as the inputs concatenated along dim 0, not stacked.
        out = tensor.new_empty((self.world_size * tensor.shape[0], *tensor.shape[1:]))

        def action() -> None:
            self._wait(_ALL_GATHER(out, tensor, group=self.group, async_op=True))

        self.step(phase, step, action)
        return out.view(self.world_size, *tensor.shape)

    def all_to_all(
        self,
        phase: str,
        step: str,
        tensor: torch.Tensor,
        output_rows: int,
        output_splits: list[int] | None = None,
        input_splits: list[int] | None = None,
    ) -> torch.Tensor:
        """Sends rows of ``tensor [N, *S]`` to each rank (``input_splits`` rows each, or equal parts).

        Returns ``[output_rows, *S]``: the rows received from each rank, in rank order (with
        ``group=None``, ``tensor`` itself: the dispatchers never write to what they sent).
        """
        tensor = tensor.contiguous()
        if self.group is None:
            return tensor
        out = receive_buffer(tensor, output_rows)

        def action() -> None:
            work = dist.all_to_all_single(
                out, tensor, output_split_sizes=output_splits, input_split_sizes=input_splits,
                group=self.group, async_op=True,
            )
            self._wait(work)

        self.step(phase, step, action)
        return out

    def reduce_scatter(self, phase: str, step: str, tensor: torch.Tensor) -> torch.Tensor:
        """Sums ``tensor [R * M, *S]`` over ranks and returns this rank's block ``[M, *S]``."""
        tensor = tensor.contiguous()
        if self.group is None:
            return tensor.clone()
        out = tensor.new_empty((tensor.shape[0] // self.world_size, *tensor.shape[1:]))

        def action() -> None:
            self._wait(_REDUCE_SCATTER(out, tensor, group=self.group, async_op=True))

        self.step(phase, step, action)
        return out

    def check_same_config(self, settings: dict[str, Any]) -> None:
        """Raises on every rank unless every rank passed equal ``settings`` (names the keys and ranks)."""
        if self.group is None:
            return
        gathered: list[Any] = [None] * self.world_size
        self.step("setup", "config agreement", lambda: dist.all_gather_object(gathered, settings, group=self.group))
        differing = []
        for key in sorted(set().union(*(g.keys() for g in gathered))):
            values = [g.get(key) for g in gathered]
            if any(v != values[0] for v in values[1:]):
                per_rank = ", ".join(f"rank {r}={v!r}" for r, v in enumerate(values))
                differing.append(f"{key} ({per_rank})")
        if differing:
            raise ValueError(
                f"rank {self.rank}: {self.name} setup: the configuration differs across the EP group: "
                + "; ".join(differing)
            )
