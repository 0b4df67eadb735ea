"""The Transport interface: how bytes move between the ranks of an EP group.

A transport is one of the three plug-in axes (see DESIGN.md): the dispatchers say *what* is exchanged,
a transport says *how*. Every collective is a named step: it waits at most ``timeout_s`` and any failure
(a dead, late or disagreeing peer, a backend error) is raised as :class:`CommStepError` naming this
rank, the owner (e.g. the dispatcher), the phase and the step. After a failed step the transport is
*broken*: every later call raises at once instead of touching a half-finished exchange.

Members: ``torch`` (a caller-owned torch.distributed group: gloo, NCCL, HCCL; group None = one
process), ``shm`` (native shared memory between the processes of one host) and ``mindspore``
(MindSpore's own collectives, all-gather based: ``moecomm.integrations.mindspore.transport``).
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch


class CommStepError(RuntimeError):
    """A collective step failed or timed out (a peer died, hung or disagreed); names rank, phase and step."""


class Transport(ABC):
    """Collectives over ``world_size`` ranks, each a timed, named step.

    Attributes:
        name: the registry name (``"torch"``, ``"shm"``).
        rank: this process's rank in the group.
        world_size: R, ranks in the group.
        timeout_s: the longest any one step waits.
        owner: the name used in error messages (the dispatcher's name).
        chosen_because: why :func:`moecomm.comm.transports.make_transport` chose this transport (for logs).
    """

    name = "transport"

    def __init__(self, rank: int, world_size: int, timeout_s: float, owner: str) -> None:
        self.rank = rank
        self.world_size = world_size
        self.timeout_s = float(timeout_s)
        self.owner = owner
        self.chosen_because = "built directly"
        self._broken: str | None = None

    # ---- what every transport shares ----

    @property
    def device_type(self) -> str | None:
        """Device type tensors must live on (``"cpu"``, ``"cuda"``, ``"npu"``), None when any will do."""
        return None

    def check_device(self, name: str, tensor: torch.Tensor) -> None:
        """Raises ``ValueError`` naming ``name`` if ``tensor`` is not on :attr:`device_type`."""
        expected = self.device_type
        if expected is not None and tensor.device.type != expected:
            raise ValueError(f"{name}: the {self.describe()} expects {expected} tensors, got device {tensor.device}")

    def describe(self) -> str:
        """A short human description for messages (e.g. ``"torch transport (gloo)"``)."""
        return f"{self.name} transport"

    @property
    def is_broken(self) -> bool:
        """True after a step failed: the group's state is unknown, so nothing more is sent."""
        return self._broken is not None

    def step(self, phase: str, step: str, action: Callable[[], Any]) -> Any:
        """Runs ``action`` (one collective) as ``step`` of ``phase``; a failure breaks the transport and
        raises :class:`CommStepError` naming the rank, phase and step."""
        if self._broken is not None:
            raise CommStepError(
                f"rank {self.rank}: {self.owner} {phase} step {step!r} refused: the {self.describe()} is broken "
                f"since an earlier step failed ({self._broken}); build a new dispatcher on a healthy group"
            )
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - any backend error becomes a named step error
            message = (
                str(error)
                if isinstance(error, CommStepError)
                else f"rank {self.rank}: {self.owner} {phase} step {step!r} failed: {type(error).__name__}: {error}"
            )
            self._broken = message
            self.on_broken()
            if isinstance(error, CommStepError):
                raise
            raise CommStepError(message) from error

    def fail(self, phase: str, step: str, reason: str) -> CommStepError:
        """Marks the transport broken because ``step`` found the group out of step (e.g. a peer's data contradicts
        the agreed counts) and returns the :class:`CommStepError` to raise."""
        message = f"rank {self.rank}: {self.owner} {phase} step {step!r} failed: {reason}"
        self._broken = message
        self.on_broken()
        return CommStepError(message)

    def on_broken(self) -> None:
        """Hook: release what a failed step may have left in flight (default: nothing)."""

    # ---- argument checks shared by the transports that copy rows themselves (shm, mindspore) ----

    def all_gather_operands(
        self, tensor: torch.Tensor, out: torch.Tensor | None
    ) -> tuple[torch.Tensor, int, torch.Tensor]:
        """``(tensor made contiguous, rows N, the [R, N, *S] receive buffer)`` of an :meth:`all_gather`
        (``out`` checked, or a new buffer); a 0-D tensor counts as one row."""
        self.check_device("tensor", tensor)
        tensor = tensor.contiguous()
        rows = tensor.shape[0] if tensor.dim() else 1
        shape = (self.world_size, *tensor.shape)
        return tensor, rows, tensor.new_empty(shape) if out is None else check_out(out, shape, tensor)

    def all_to_all_operands(
        self,
        tensor: torch.Tensor,
        output_rows: int,
        output_splits: list[int] | None,
        input_splits: list[int] | None,
        out: torch.Tensor | None,
    ) -> tuple[torch.Tensor, list[int], list[int], torch.Tensor]:
        """``(tensor made contiguous, rows sent to each rank, rows received from each rank, the
        [output_rows, *S] receive buffer)`` of an :meth:`all_to_all`, every argument checked."""
        self.check_device("tensor", tensor)
        if tensor.dim() < 1:
            raise ValueError(f"tensor: expected at least one dimension (rows), got shape {list(tensor.shape)}")
        tensor = tensor.contiguous()
        sent = checked_splits("input_splits", input_splits, int(tensor.shape[0]), self.world_size)
        received = checked_splits("output_splits", output_splits, output_rows, self.world_size)
        shape = (output_rows, *tensor.shape[1:])
        return tensor, sent, received, tensor.new_empty(shape) if out is None else check_out(out, shape, tensor)

    def reduce_scatter_operands(
        self, tensor: torch.Tensor, out: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tensor made contiguous, the [M, *S] receive buffer)`` of a :meth:`reduce_scatter` of
        ``tensor [R * M, *S]``."""
        self.check_device("tensor", tensor)
        if tensor.dim() < 1 or tensor.shape[0] % self.world_size:
            raise ValueError(
                f"tensor: expected [R * M, ...] rows with R={self.world_size}, got shape {list(tensor.shape)}"
            )
        tensor = tensor.contiguous()
        shape = (tensor.shape[0] // self.world_size, *tensor.shape[1:])
        return tensor, tensor.new_empty(shape) if out is None else check_out(out, shape, tensor)

    # ---- the collectives ----

    @abstractmethod
    def all_gather(
        self, phase: str, step: str, tensor: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """All ranks' ``tensor [N, *S]`` (same shape and dtype everywhere, N >= 0) -> ``[R, N, *S]`` in rank order
        (into ``out``, a contiguous ``[R, N, *S]`` buffer of tensor's dtype, when given)."""

    @abstractmethod
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
        """Sends ``input_splits[r]`` rows of ``tensor [N, *S]`` to rank r (equal parts when None).

        Args:
            tensor: ``[N, *S]`` rows to send, grouped by destination rank.
            output_rows: rows this rank receives in all.
            output_splits: rows received from each rank (equal parts when None).
            input_splits: rows sent to each rank (equal parts when None).
            out: optional ``[output_rows, *S]`` contiguous buffer of tensor's dtype to receive into.

        Returns:
            ``[output_rows, *S]``: the rows received from each rank, in rank order (``out`` when given).
            With one rank it may return ``tensor`` itself: callers never write to what they sent.
        """

    @abstractmethod
    def reduce_scatter(
        self, phase: str, step: str, tensor: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sums ``tensor [R * M, *S]`` over ranks; returns this rank's block ``[M, *S]`` (into ``out`` if given)."""

    @abstractmethod
    def barrier(self, phase: str, step: str) -> None:
        """Returns once every rank has arrived (bounded by ``timeout_s``)."""

    @abstractmethod
    def check_same_settings(self, settings: dict[str, Any]) -> None:
        """Raises ``ValueError`` on every rank unless every rank passed equal ``settings`` (names the keys and
        each rank's value); bounded by ``timeout_s`` like every step."""

    def close(self) -> None:
        """Releases what the transport owns (default: nothing; the caller owns any process group)."""


def check_out(out: torch.Tensor, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Checks a caller's receive buffer: contiguous, ``shape``, ``like``'s dtype and device."""
    if (
        tuple(out.shape) != tuple(shape)
        or out.dtype != like.dtype
        or out.device != like.device
        or not out.is_contiguous()
    ):
        raise ValueError(
            f"out: expected a contiguous {like.dtype} tensor of shape {list(shape)} on {like.device}, "
            f"got {out.dtype} {list(out.shape)} on {out.device}"
        )
    return out


def checked_splits(name: str, splits: list[int] | None, rows: int, world_size: int) -> list[int]:
    """``splits`` checked (``world_size`` ints >= 0 summing to ``rows``), or equal parts of ``rows`` when None."""
    if splits is None:
        if rows % world_size:
            raise ValueError(f"{name}: {rows} rows do not split into {world_size} equal parts; pass the splits")
        return [rows // world_size] * world_size
    splits = [int(s) for s in splits]
    if len(splits) != world_size or any(s < 0 for s in splits) or sum(splits) != rows:
        raise ValueError(f"{name}: expected {world_size} sizes >= 0 summing to {rows}, got {splits}")
    return splits


def differing_settings(gathered: list[dict[str, Any]]) -> list[str]:
    """``"key (rank 0=a, rank 1=b)"`` for every key whose value differs across the ranks' ``gathered`` dicts."""
    differing = []
    for key in sorted(set().union(*(g.keys() for g in gathered))):
        values = [g.get(key) for g in gathered]
        if any(v != values[0] for v in values[1:]):
            per_rank = ", ".join(f"rank {r}={v!r}" for r, v in enumerate(values))
            differing.append(f"{key} ({per_rank})")
    return differing


def agree_on_settings(transport: Transport, settings: dict[str, Any]) -> None:
    """Raises ``ValueError`` on every rank of ``transport`` unless all passed equal ``settings`` (names each
    differing key and every rank's value). Two all-gathers (the pickled sizes, then the padded pickles) on the
    transport's device, each bounded by its ``timeout_s``."""
    payload = torch.frombuffer(bytearray(pickle.dumps(settings)), dtype=torch.uint8)
    device = transport.device_type or "cpu"
    length = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    lengths = transport.all_gather("setup", "config agreement (sizes)", length).view(-1).cpu()
    padded = torch.zeros(int(lengths.max()), dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload.to(device)
    table = transport.all_gather("setup", "config agreement", padded).cpu()
    gathered = [pickle.loads(bytes(table[r, : int(lengths[r])].numpy())) for r in range(transport.world_size)]
    differing = differing_settings(gathered)
    if differing:
        raise ValueError(
            f"rank {transport.rank}: {transport.owner} setup: the configuration differs across the EP group: "
            + "; ".join(differing)
        )
