"""The ``mindspore`` transport: MindSpore's own collectives, all-gather based.

For MindSpore jobs, which have no torch.distributed group. MindSpore's CPU backend has ``AllGather`` and
``AllReduce`` but no all-to-all kernels (``AlltoAll``/``AlltoAllV`` are unregistered on CPU), and its CPU
``AllGather`` takes float32/float16/int32/int64 only. So every collective here is one ``AllGather`` of raw
bytes (rows padded to whole int32 words; any dtype travels bit-exact):

- ``all_gather``: the rows themselves;
- ``all_to_all``: the split sizes, then every rank's rows padded to the longest; each rank keeps the
  rows addressed to it (R times the bytes of a true all-to-all: the price of the fallback);
- ``reduce_scatter``: the rows, then this rank's block summed over ranks in rank order (float32
  accumulation for 16-bit floats);
- ``barrier`` and ``check_same_settings``: small all-gathers.

Each collective is bounded by ``timeout_s`` (:func:`run_bounded`); a failure raises
:class:`~moecomm.comm.transports.base.CommStepError` naming this rank, the owner, the phase and the step,
and breaks the transport. Tensors cross to MindSpore zero-copy (DLPack). On Ascend the same calls go to
HCCL; the bridge then needs device tensors on both sides (not available on this CPU-only build).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from mindspore.communication import GlobalComm, get_group_size, get_rank

from mindspore import ops as ms_ops
from moecomm.comm.transports.base import Transport, agree_on_settings
from moecomm.integrations.mindspore.bridge import to_mindspore, to_torch
from moecomm.integrations.mindspore.collective_thread import run_bounded

_WORD = 4  # bytes of the int32 words the rows travel as


def _row_bytes(tensor: torch.Tensor, rows: int, row_shape: tuple[int, ...]) -> torch.Tensor:
    """A contiguous ``tensor`` (any dtype) holding ``rows`` rows of ``row_shape`` as ``[rows, row_bytes]``
    uint8: a view (with no elements, an empty tensor of that shape: nothing to read or write)."""
    width = math.prod(row_shape) * tensor.element_size()
    if tensor.numel():
        return tensor.reshape(-1).view(torch.uint8).view(rows, width)
    return torch.empty(rows, width, dtype=torch.uint8)


class MindSporeTransport(Transport):
    """Collectives over a MindSpore communication group (``mindspore.communication.init()`` done first).

    Args:
        group: a MindSpore group name, or None for the world group.
        timeout_s: the longest any one collective waits.
        owner: the name used in error messages (the dispatcher's).
    """

    name = "mindspore"

    def __init__(self, group: str | None, timeout_s: float, owner: str) -> None:
        if group is not None and not isinstance(group, str):
            raise TypeError(f"group: expected a MindSpore group name (str) or None, got {type(group).__name__}")
        self.group = GlobalComm.WORLD_COMM_GROUP if group is None else group
        try:
            rank, world_size = get_rank(self.group), get_group_size(self.group)
        except Exception as error:  # noqa: BLE001 - MindSpore raises RuntimeError/ValueError before init()
            raise RuntimeError(
                f"group: MindSpore communication is not initialised for group {self.group!r}; start the workers "
                f"with MindSpore's launcher and call mindspore.communication.init() first ({error})"
            ) from error
        super().__init__(rank, world_size, timeout_s, owner)
        self._all_gather_op = ms_ops.AllGather(self.group)

    @property
    def device_type(self) -> str | None:
        return "cpu"

    def describe(self) -> str:
        return f"mindspore transport ({self.world_size} ranks, group {self.group})"

    # ---- the one primitive: an all-gather of byte rows ----

    def _gather_bytes(self, phase: str, step: str, rows: torch.Tensor) -> torch.Tensor:
        """``rows [N, B]`` uint8 (N and B equal on every rank) -> ``[R, N, B]`` uint8, every rank's rows."""
        count, width = rows.shape
        if count == 0 or width == 0:  # nothing to move on any rank (N and B agree); a broken transport still refuses
            return self.step(phase, step, lambda: rows.new_empty(self.world_size, count, width))
        words = -(-width // _WORD)
        if width % _WORD == 0 and rows.is_contiguous() and rows.data_ptr() % _WORD == 0:
            send = rows.view(torch.int32)
        else:
            padded = torch.zeros(count, words * _WORD, dtype=torch.uint8)
            padded[:, :width] = rows
            send = padded.view(torch.int32)

        def gather() -> torch.Tensor:
            gathered = self._all_gather_op(to_mindspore(send))
            gathered.asnumpy()  # waits for the collective (MindSpore ops run asynchronously)
            return to_torch("gathered", gathered)

        what = f"MindSpore AllGather over {self.group!r}"
        gathered = self.step(phase, step, lambda: run_bounded(gather, self.timeout_s, what))
        return gathered.view(torch.uint8).view(self.world_size, count, words * _WORD)[:, :, :width]

    # ---- the collectives ----

    def all_gather(
        self, phase: str, step: str, tensor: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        tensor, rows, out = self.all_gather_operands(tensor, out)
        row_shape = tuple(tensor.shape[1:]) if tensor.dim() else ()
        gathered = self._gather_bytes(phase, step, _row_bytes(tensor, rows, row_shape))
        _row_bytes(out, self.world_size * rows, row_shape).view(gathered.shape).copy_(gathered)
        return out

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
        tensor, sent, received, result = self.all_to_all_operands(tensor, output_rows, output_splits, input_splits, out)
        rows = int(tensor.shape[0])
        table = self.all_gather(phase, f"{step} (sizes)", torch.tensor(sent, dtype=torch.int64))
        if table[:, self.rank].tolist() != received:
            raise self.fail(
                phase,
                step,
                f"the ranks send {table[:, self.rank].tolist()} rows here, output_splits expects {received}",
            )
        longest = int(table.sum(dim=1).max())
        mine = _row_bytes(tensor, rows, tuple(tensor.shape[1:]))
        padded = torch.zeros(longest, mine.shape[1], dtype=torch.uint8)
        padded[:rows] = mine
        gathered = self._gather_bytes(phase, step, padded)
        target = _row_bytes(result, output_rows, tuple(tensor.shape[1:]))
        start_of = torch.cumsum(table, dim=1) - table  # [R, R]: first row each source sends each destination
        row = 0
        for source in range(self.world_size):
            count, start = received[source], int(start_of[source, self.rank])
            target[row : row + count] = gathered[source, start : start + count]
            row += count
        return result

    def reduce_scatter(
        self, phase: str, step: str, tensor: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        tensor, result = self.reduce_scatter_operands(tensor, out)
        block = result.shape[0]
        gathered = self.all_gather(phase, step, tensor)
        mine = gathered[:, self.rank * block : (self.rank + 1) * block]
        accumulate = torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype
        total = mine[0].to(accumulate)
        for source in range(1, self.world_size):
            total = total + mine[source].to(accumulate)
        result.copy_(total)
        return result

    def barrier(self, phase: str, step: str) -> None:
        self.all_gather(phase, step, torch.zeros(1, dtype=torch.int32))

    def check_same_settings(self, settings: dict[str, Any]) -> None:
        """Two all-gathers (the pickled sizes, then the padded pickles), each bounded by ``timeout_s``."""
        agree_on_settings(self, settings)
