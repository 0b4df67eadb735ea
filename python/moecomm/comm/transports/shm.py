"""The ``shm`` transport: native shared-memory collectives between the processes of one host.

The caller's torch.distributed group (gloo), or any other bootstrap :class:`Transport` (MindSpore's
collectives for MindSpore jobs), is used only to bootstrap: every rank draws a random segment name
(``/moecomm-`` + 128 random bits) and rank 0 a 64-bit group nonce, and the group all-gathers them
(bounded by ``timeout_s``). Every later collective runs in native code (``kernels/cpu/shm/``, C ABI in
``kernels/include/moecomm/shm.h``) over POSIX shared memory:

- one header segment per rank plus one segment per named data region and generation, created
  exclusively with mode 0600 and unlinked as soon as every peer has mapped them: after setup nothing of
  the group is left in ``/dev/shm``, whether the processes exit normally, raise or are SIGKILLed (peers
  that see a process die unlink whatever it had pending);
- epoch counters in shared memory (release/acquire); a wait spins a few microseconds, then sleeps on a
  futex, and is bounded by ``timeout_s``; a late or dead peer raises :class:`CommStepError` naming that
  rank, the phase and the step, and breaks the transport;
- collectives use a pull model: each rank writes its part into its own window, peers copy out of it.

The raw region API (:meth:`ShmTransport.ensure_region`, :meth:`ShmTransport.region`,
:meth:`ShmTransport.sync`) exposes per-rank regions for push-model dispatchers.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
from typing import Any

import torch
import torch.distributed as dist

from moecomm import _C
from moecomm.comm.transports.base import CommStepError, Transport
from moecomm.comm.transports.torch_dist import TorchTransport
from moecomm.ops._native import num_threads, storage_bytes, tensor_arg

#: Bytes of one rank's bootstrap record: the segment name (NUL padded) and the nonce.
_NAME_BYTES = 64
_BOOL_CODE = int(_C.ScalarType.bool)


def _rows_as_bytes(name: str, tensor: torch.Tensor, rows: int) -> _C.TensorArg:
    """A contiguous ``tensor`` of any dtype described to the native core as ``[rows, row_bytes]`` bytes."""
    row_bytes = (tensor.numel() // rows if rows else _row_elements(tensor)) * tensor.element_size()
    return _C.TensorArg(name, tensor.data_ptr(), [rows, row_bytes], [row_bytes, 1], _BOOL_CODE, storage_bytes(tensor))


def _row_elements(tensor: torch.Tensor) -> int:
    count = 1
    for size in tensor.shape[1:]:
        count *= int(size)
    return count


def host_identity() -> bytes:
    """A digest of what two processes must share to share POSIX memory: the booted kernel, the host name,
    the PID namespace (liveness checks use PIDs) and the ``/dev/shm`` mount."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            parts.append(boot.read().strip())
    except OSError:
        parts.append("no-boot-id")
    for path in ("/proc/self/ns/pid", "/dev/shm"):
        try:
            st = os.stat(path)
            parts.append(f"{path}:{st.st_dev}:{st.st_ino}")
        except OSError:
            parts.append(f"{path}:missing")
    return hashlib.sha256("\n".join(parts).encode()).digest()


def _probe_posix_shm(timeout_s: float) -> str | None:
    """None when a one-rank group can be set up and torn down here, else the reason."""
    try:
        _C.ShmGroup(0, 1, _C.shm_random_nonce(), [_C.shm_random_name()], timeout_s).close()
    except Exception as error:  # noqa: BLE001 - any failure means "not available", with the reason
        return f"POSIX shared memory does not work here: {type(error).__name__}: {error}"
    return None


def _bootstrap_transport(
    group: dist.ProcessGroup | None, timeout_s: float, owner: str, bootstrap: Transport | None
) -> Transport:
    """``bootstrap`` when given (then ``group`` must be None), else the torch transport over ``group``."""
    if bootstrap is None:
        return TorchTransport(group, timeout_s, owner, private_group=False)
    if group is not None:
        raise ValueError("group: give a torch.distributed group or a bootstrap transport, not both")
    if not isinstance(bootstrap, Transport):
        raise TypeError(f"bootstrap: expected a moecomm Transport, got {type(bootstrap).__name__}")
    return bootstrap


class ShmTransport(Transport):
    """Collectives through native shared memory between the ranks of ``group``, all on this host.

    Args:
        group: the caller's torch.distributed ProcessGroup (gloo; used only for the bounded setup
            exchange and :meth:`check_same_settings`), or None for one process (or when ``bootstrap`` is given).
        timeout_s: the longest any one step (setup included) waits.
        owner: the name used in error messages (the dispatcher's).
        bootstrap: another CPU transport over the same ranks to bootstrap over instead of ``group`` (e.g. a
            :class:`moecomm.integrations.mindspore.transport.MindSporeTransport`); it then serves
            :meth:`check_same_settings` too.
    """

    name = "shm"

    def __init__(
        self,
        group: dist.ProcessGroup | None,
        timeout_s: float,
        owner: str,
        *,
        bootstrap: Transport | None = None,
    ) -> None:
        bootstrap = _bootstrap_transport(group, timeout_s, owner, bootstrap)
        if bootstrap.device_type not in (None, "cpu"):
            raise ValueError(f"group: the shm transport bootstraps over a CPU (gloo) group, got {bootstrap.describe()}")
        super().__init__(bootstrap.rank, bootstrap.world_size, timeout_s, owner)
        self._bootstrap = bootstrap
        self._group: _C.ShmGroup | None = None
        record = torch.zeros(_NAME_BYTES + 8, dtype=torch.uint8)
        name = _C.shm_random_name().encode()
        record[: len(name)] = torch.frombuffer(bytearray(name), dtype=torch.uint8)
        record[_NAME_BYTES:] = torch.frombuffer(
            bytearray(_C.shm_random_nonce().to_bytes(8, "little")), dtype=torch.uint8
        )
        table = bootstrap.all_gather("setup", "shm segment names", record)
        names = [bytes(table[r, :_NAME_BYTES].numpy()).rstrip(b"\0").decode() for r in range(self.world_size)]
        nonce = int.from_bytes(bytes(table[0, _NAME_BYTES:].numpy()), "little")
        self._group = self.step(
            "setup",
            "shm segment setup",
            lambda: _C.ShmGroup(self.rank, self.world_size, nonce, names, self.timeout_s),
        )

    @staticmethod
    def is_available(
        group: dist.ProcessGroup | None, timeout_s: float = 60.0, *, bootstrap: Transport | None = None
    ) -> tuple[bool, str]:
        """``(True, reason)`` when every rank of ``group`` (or of ``bootstrap``, a transport over the ranks)
        runs on this host (same kernel boot, host name, PID namespace and /dev/shm) and POSIX shared memory
        works on every rank; else ``(False, reason)``. Collective: every rank must call it; bounded by
        ``timeout_s``."""
        failure = _probe_posix_shm(timeout_s)
        if group is None and bootstrap is None:
            return (failure is None, failure or "one process; POSIX shared memory works")
        record = torch.zeros(33, dtype=torch.uint8)
        record[:32] = torch.frombuffer(bytearray(host_identity()), dtype=torch.uint8)
        record[32] = 0 if failure is None else 1
        transport = _bootstrap_transport(group, timeout_s, "shm availability", bootstrap)
        table = transport.all_gather("setup", "host identity", record)
        other_hosts = [r for r in range(transport.world_size) if not torch.equal(table[r, :32], table[0, :32])]
        broken = [r for r in range(transport.world_size) if int(table[r, 32]) != 0]
        if other_hosts:
            return (
                False,
                f"ranks {other_hosts} do not share this host (kernel boot, host name, PID namespace, /dev/shm) with rank 0",
            )
        if broken:
            return False, f"POSIX shared memory does not work on ranks {broken}" + (f" ({failure})" if failure else "")
        return True, f"all {transport.world_size} ranks share this host and POSIX shared memory works"

    @property
    def device_type(self) -> str | None:
        return "cpu"

    def describe(self) -> str:
        return f"shm transport ({self.world_size} ranks on this host)"

    def _native(self) -> _C.ShmGroup:
        if self._group is None:
            raise ValueError(f"rank {self.rank}: the {self.describe()} is closed")
        return self._group

    # ---- collectives ----

    def all_gather(
        self, phase: str, step: str, tensor: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        tensor, rows, out = self.all_gather_operands(tensor, out)
        native = self._native()
        self.step(
            phase,
            step,
            lambda: native.all_gather(
                _rows_as_bytes("tensor", tensor, rows),
                _rows_as_bytes("out", out, self.world_size * rows),
                num_threads(),
                self.timeout_s,
            ),
        )
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
        native = self._native()
        self.step(
            phase,
            step,
            lambda: native.all_to_all(
                _rows_as_bytes("tensor", tensor, rows),
                sent,
                _rows_as_bytes("out", result, output_rows),
                received,
                num_threads(),
                self.timeout_s,
            ),
        )
        return result

    def reduce_scatter(
        self, phase: str, step: str, tensor: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        tensor, result = self.reduce_scatter_operands(tensor, out)
        arg_in, arg_out = tensor_arg("tensor", tensor), tensor_arg("out", result)
        native = self._native()
        self.step(phase, step, lambda: native.reduce_scatter(arg_in, arg_out, num_threads(), self.timeout_s))
        return result

    def barrier(self, phase: str, step: str) -> None:
        native = self._native()
        self.step(phase, step, lambda: native.barrier(self.timeout_s))

    def check_same_settings(self, settings: dict[str, Any]) -> None:
        """Over the bootstrap group (a one-time setup message), bounded by ``timeout_s``."""
        pickle.dumps(settings)  # unpicklable settings are the caller's error, not a broken transport
        try:
            self._bootstrap.check_same_settings(settings)
        except CommStepError as error:
            self._broken = str(error)
            raise

    # ---- raw regions (push model) ----

    def ensure_region(self, region: str, nbytes: int) -> None:
        """Grows this rank's region ``region`` to at least ``nbytes`` (geometrically; created on first use,
        contents kept). Local: never waits. Peers see the new generation after their next :meth:`sync`;
        views taken before it keep pointing at the old memory (valid but no longer shared), so take
        views again after every growth and every sync."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"nbytes: expected an int >= 0, got {nbytes!r}")
        self._native().ensure_region(region, nbytes)

    def region(self, rank: int, region: str) -> torch.Tensor:
        """``[nbytes]`` uint8, a zero-copy view of ``rank``'s region as this rank mapped it at its last
        :meth:`sync` (its own region: as of the last :meth:`ensure_region`). The memory stays mapped while
        the view lives. Contract (push model): between two syncs a region is either written by peers
        (each into the byte ranges the caller's protocol gives it) or read by its owner, never both; a
        rank writes into a peer's region only after a sync that followed that peer's ensure_region."""
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise ValueError(f"rank: expected an int, got {rank!r}")
        return torch.frombuffer(self._native().region(rank, region), dtype=torch.uint8)

    def sync(self, phase: str, step: str) -> None:
        """A barrier after which every write any rank made before its sync is visible to every rank, and
        :meth:`region` returns every peer's latest generation. Bounded by ``timeout_s``; names a late or
        dead rank."""
        native = self._native()
        self.step(phase, step, lambda: native.sync(self.timeout_s))

    def close(self) -> None:
        """Unmaps the segments and unlinks anything this rank still has pending."""
        if self._group is not None:
            self._group.close()
            self._group = None
