"""What every dispatcher shares: setup, input checks, the dispatch/combine contract, buffers and agreement.

A dispatcher is one wire pattern (what is exchanged). It runs over a transport (how bytes move) and a
kernel backend (which device computes): both chosen by the config, neither known to the wire pattern.
A step's count exchange and drop plan are :func:`moecomm.comm.drop_plan.plan_step`.

Buffers: a dispatcher owns a :class:`~moecomm.comm.workspace.Workspace` reused across steps, so
``expert_x`` returned by :meth:`Dispatcher.dispatch` may be a view into it: valid until the next
``dispatch`` on this dispatcher. :meth:`Dispatcher.combine` accepts only the handle of the latest
dispatch, and every rank checks with every other that they combine the same step with the same
expert-output dtype and width before any row moves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

from moecomm.backends import KernelBackend, select_backend
from moecomm.checks import ACTIVATION_DTYPES, check_tensor, check_topk_ids, check_topk_weights, check_topology
from moecomm.comm.drop_plan import StepPlan, plan_step
from moecomm.comm.handle import DispatchHandle
from moecomm.comm.row_codec import QuantizedRows, row_codec
from moecomm.comm.transports import Transport, make_transport
from moecomm.comm.transports.torch_dist import TorchTransport
from moecomm.comm.workspace import Workspace
from moecomm.config import MoECommConfig
from moecomm.ops.layout import RouteLayout


class Dispatcher:
    """Base of the dispatchers: ``dispatch(x, topk_ids, topk_weights)`` and ``combine(expert_y, handle)``.

    Args:
        config: the MoECommConfig (checked identical on every rank of ``group`` here, bounded by ``timeout_s``).
        num_experts: E, divisible by the group's size; rank r owns experts ``[r*E/R, (r+1)*E/R)``.
        group: a torch.distributed ProcessGroup the caller owns, or None for a single process.
        fresh_buffers: allocate new buffers every step instead of reusing them (the old behaviour; a
            benchmark peer).
        transport: a :class:`~moecomm.comm.transports.base.Transport` already built over the EP ranks (e.g. by
            :func:`moecomm.integrations.mindspore.make_mindspore_transport`, for jobs with no torch.distributed
            group); ``group`` must then be None and ``config.transport`` is not consulted. The dispatcher owns
            it from here on (its :meth:`close` closes it).
    """

    name = "dispatcher"

    def __init__(
        self,
        config: MoECommConfig,
        num_experts: int,
        group: dist.ProcessGroup | None = None,
        *,
        fresh_buffers: bool = False,
        transport: Transport | None = None,
    ) -> None:
        if not isinstance(config, MoECommConfig):
            raise TypeError(f"config: expected a MoECommConfig, got {type(config).__name__}")
        if config.dispatcher != self.name:
            raise ValueError(f"config: dispatcher is {config.dispatcher!r}, this is the {self.name!r} dispatcher")
        self.config = config
        # Agree on the config first (over the caller's group): choosing the transport is itself collective,
        # so ranks that disagree on it must be stopped before they take different paths.
        if transport is not None:
            if group is not None:
                raise ValueError("group: give a torch.distributed group or a transport, not both")
            if not isinstance(transport, Transport):
                raise TypeError(f"transport: expected a moecomm Transport, got {type(transport).__name__}")
        bootstrap = (
            TorchTransport(group, config.timeout_s, self.name, private_group=False) if transport is None else transport
        )
        self.num_experts, _ = check_topology(num_experts, bootstrap.world_size)
        bootstrap.check_same_settings({**config.to_dict(), "num_experts": num_experts})
        if transport is None:
            transport = make_transport(config.transport, group, config.timeout_s, self.name)
        self.transport = transport
        self.workspace = Workspace(self._allocate, fresh=fresh_buffers)
        self.codec = row_codec(config.dispatch_quant)
        self.steps_dispatched = 0

    # ---- topology ----

    @property
    def rank(self) -> int:
        """This process's rank in the EP group."""
        return self.transport.rank

    @property
    def world_size(self) -> int:
        """R, ranks in the EP group."""
        return self.transport.world_size

    @property
    def ep(self):  # noqa: ANN201 - kept one release for callers of the old ``EPGroup`` attribute
        """Deprecated alias of :attr:`transport`."""
        return self.transport

    @property
    def num_local_experts(self) -> int:
        """E / R experts this rank owns."""
        return self.num_experts // self.world_size

    @property
    def local_experts(self) -> range:
        """Global ids of the experts this rank owns."""
        first = self.rank * self.num_local_experts
        return range(first, first + self.num_local_experts)

    # ---- backend and buffers ----

    def backend_for(self, tensor: torch.Tensor) -> KernelBackend:
        """The kernel backend computing on ``tensor``'s device (``config.kernel_backend``)."""
        return select_backend(self.config.kernel_backend, tensor.device)

    def _allocate(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return select_backend(self.config.kernel_backend, device).empty(shape, dtype, device)

    def buffer(self, name: str, rows: int, like: torch.Tensor) -> torch.Tensor:
        """A reused ``[rows, *like.shape[1:]]`` buffer of ``like``'s dtype and device (valid until the next
        request of ``name``)."""
        return self.workspace.buffer(name, (rows, *like.shape[1:]), like.dtype, like.device)

    def wire_buffer(self, name: str, rows: int, x: torch.Tensor, *, row_align_bytes: int = 1) -> torch.Tensor:
        """A reused ``[rows, width]`` buffer for the crossing rows of activations ``x`` (x's rows, or int8 wire
        rows under ``dispatch_quant``); with ``row_align_bytes`` > 1 its rows start that many bytes apart or a
        multiple of it (a view of a wider buffer)."""
        width, dtype = self.codec.width(x.shape[1]), self.codec.dtype(x)
        element = torch.empty((), dtype=dtype).element_size()
        stride = -(-width * element // row_align_bytes) * row_align_bytes // element
        return self.workspace.buffer(name, (rows, stride), dtype, x.device)[:, :width]

    def encode_rows(self, backend: KernelBackend, x: torch.Tensor, layout: RouteLayout | None) -> torch.Tensor:
        """The crossing rows of ``x [T, H]`` (see :class:`~moecomm.comm.row_codec.PlainRows`), scattered by
        ``layout`` into the reused ``send`` buffer; without a layout, plain rows are ``x`` itself. Rows the codec
        refuses (inf/NaN under ``dispatch_quant``) break the transport, naming the row, since peers wait for them."""
        out = None
        if layout is not None or self.codec.quantized:
            out = self.wire_buffer("send", x.shape[0] if layout is None else layout.num_rows, x)
        with self.refused_rows_break_transport():
            return self.codec.encode(backend, x, layout, out=out)

    @contextlib.contextmanager
    def refused_rows_break_transport(self) -> Iterator[None]:
        """Turns the codec's ValueError (a row holding inf or NaN) into a broken transport and a CommStepError
        naming the row: this rank will not send its rows, so its peers fail within ``timeout_s``."""
        try:
            yield
        except ValueError as error:
            raise self.transport.fail("dispatch", "row quantization", str(error)) from error

    def crossing_row_bytes(self, x: torch.Tensor) -> int:
        """Bytes one row of ``x`` takes on the wire (quantized size, scales included, under ``dispatch_quant``)."""
        return self.codec.row_bytes(x.shape[1], x.dtype)

    def expert_rows(
        self,
        backend: KernelBackend,
        rows: torch.Tensor,
        layout: RouteLayout | None,
        x: torch.Tensor,
        dequantize: bool,
    ) -> torch.Tensor | QuantizedRows:
        """Crossed rows (scattered by ``layout`` when given) -> what :meth:`dispatch` returns: ``expert_x
        [N_recv, H]`` in x's dtype, or :class:`QuantizedRows` with ``dequantize=False``."""
        hidden = x.shape[1]
        num_rows = rows.shape[0] if layout is None else layout.num_rows
        if not dequantize:  # rows whole cache lines apart: the layout streams each row's body in aligned lines
            out = None if layout is None else self.wire_buffer("expert_wire", num_rows, x, row_align_bytes=64)
            return self.codec.keep_quantized(backend, rows, layout, hidden, x.dtype, out=out)
        if layout is None and not self.codec.quantized:
            return rows
        return self.codec.decode(backend, rows, layout, hidden, x.dtype, out=self.buffer("expert_x", num_rows, x))

    # ---- input checks (local: they run before any collective) ----

    def check_dequantize(self, dequantize: object) -> bool:
        """Checks dispatch's ``dequantize`` flag: False needs ``dispatch_quant`` (else nothing is quantized)."""
        if not isinstance(dequantize, bool):
            raise TypeError(f"dequantize: expected True or False, got {dequantize!r}")
        if not dequantize and not self.codec.quantized:
            raise ValueError(
                "dequantize: False needs MoECommConfig(dispatch_quant='int8' or 'fp8'): rows are not quantized"
            )
        return dequantize

    def check_inputs(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Checks ``x [T, H]``, ``topk_ids [T, K]`` (ids in ``[0, E)``) and ``topk_weights [T, K]``, one device."""
        for name, tensor in (("x", x), ("topk_ids", topk_ids), ("topk_weights", topk_weights)):
            if isinstance(tensor, torch.Tensor):
                self.transport.check_device(name, tensor)
                if tensor.device != getattr(x, "device", tensor.device):
                    raise ValueError(f"{name}: expected the device of x ({x.device}), got {tensor.device}")
        x = check_tensor("x", x, dim=2, dtypes=ACTIVATION_DTYPES, cpu_only=False)
        ids = check_topk_ids(topk_ids, self.num_experts)
        weights = check_topk_weights(topk_weights, ids)
        if x.shape[0] != ids.shape[0]:
            raise ValueError(f"x: expected {ids.shape[0]} tokens (rows of topk_ids), got {x.shape[0]}")
        if ids.shape[1] == 0:
            raise ValueError("topk_ids: expected at least one expert per token (K >= 1), got K = 0")
        if weights.numel() and not bool(torch.isfinite(weights).all()):
            raise ValueError("topk_weights: contains NaN or infinite values")
        return x, ids, weights

    # ---- the step plan and the handle ----

    def pair_capacity(self, top_k: int) -> int | None:
        """Rows per (source, destination) pair when the wire format caps them (alltoall), else None."""
        return None

    def plan_step(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, **options) -> StepPlan:
        """Count exchange + drop plan of one step (see :func:`moecomm.comm.drop_plan.plan_step`)."""
        self.steps_dispatched += 1
        return plan_step(
            self.config,
            self.backend_for(x),
            self.transport,
            self.name,
            self.num_experts,
            x,
            ids,
            weights,
            pair_capacity=self.pair_capacity(ids.shape[1]),
            **options,
        )

    def handle_fields(
        self, num_tokens: int, plan: StepPlan, tokens_per_local_expert: torch.Tensor | None = None
    ) -> dict[str, object]:
        """The :class:`DispatchHandle` fields every dispatcher fills the same way (as keyword arguments)."""
        received = self.received_from_rank(plan)
        return {
            "dispatcher": self.name,
            "step": self.steps_dispatched,
            "num_tokens": num_tokens,
            "is_kept": plan.is_kept,
            "topk_weights": plan.topk_weights,
            "layout": plan.layout,
            "tokens_per_local_expert": received.sum(dim=0)
            if tokens_per_local_expert is None
            else tokens_per_local_expert,
            "received_from_rank": received,
            "stats": plan.stats,
        }

    def received_from_rank(self, plan: StepPlan) -> torch.Tensor:
        """``[R, E_local]`` int64 rows this rank receives from each source rank per local expert."""
        return plan.kept_counts[:, self.local_experts.start : self.local_experts.stop].contiguous()

    # ---- block order of received rows ----

    def to_expert_major(
        self, backend: KernelBackend, received_rows: torch.Tensor, handle: DispatchHandle
    ) -> torch.Tensor:
        """Received rows ``[N_recv, W]`` from (source rank, local expert) to (local expert, source rank) order,
        into the workspace's ``expert_rows`` buffer."""
        if self.world_size == 1:
            return received_rows
        out = self.buffer("expert_rows", received_rows.shape[0], received_rows)
        return backend.regroup_blocks(received_rows, handle.received_from_rank, out=out)

    def to_source_major(self, backend: KernelBackend, expert_y: torch.Tensor, handle: DispatchHandle) -> torch.Tensor:
        """Expert outputs ``[N_recv, H]`` from (local expert, source rank) back to (source rank, local expert)."""
        if self.world_size == 1:
            return expert_y
        out = self.buffer("recv", expert_y.shape[0], expert_y)
        return backend.regroup_blocks(expert_y, handle.received_from_rank.t(), out=out)

    # ---- combine's checks: local, then agreed by every rank before any row moves ----

    def check_combine(self, expert_y: torch.Tensor, handle: object, handle_type: type) -> torch.Tensor:
        """Checks ``expert_y [N_recv, H]`` and ``handle`` on this rank, then agrees with every rank that all
        combine the same step with the same dtype and width; raises on every rank if any rank disagrees
        (so a bad rank never leaves its peers waiting in the row exchange)."""
        problem = self._local_combine_problem(expert_y, handle, handle_type)
        if problem is not None and self.world_size == 1:
            raise (TypeError if problem.startswith("handle: expected") else ValueError)(
                f"rank {self.rank}: {self.name} combine: {problem}"
            )
        if self.world_size > 1:
            good = problem is None
            message = torch.tensor(
                [
                    handle.step if good else -1,
                    ACTIVATION_DTYPES.index(expert_y.dtype) if good else -1,
                    expert_y.shape[1] if good else -1,
                    int(good),
                ],
                dtype=torch.int64,
            )
            device = expert_y.device if isinstance(expert_y, torch.Tensor) else torch.device("cpu")
            table = self.transport.all_gather("combine", "agreement", message.to(device)).cpu()
            self._raise_on_disagreement(table, problem)
        return expert_y

    def _local_combine_problem(self, expert_y: object, handle: object, handle_type: type) -> str | None:
        if not isinstance(handle, handle_type):
            return f"handle: expected the handle of a {self.name} dispatch, got {type(handle).__name__}"
        if handle.dispatcher != self.name:
            return f"handle: made by the {handle.dispatcher!r} dispatcher"
        if handle.step != self.steps_dispatched:
            return (
                f"handle: stale handle of dispatch step {handle.step}; this dispatcher has run step "
                f"{self.steps_dispatched} since, which reused the buffers of expert_x (combine the latest dispatch)"
            )
        if not isinstance(expert_y, torch.Tensor):
            return f"expert_y: expected a torch.Tensor, got {type(expert_y).__name__}"
        try:
            self.transport.check_device("expert_y", expert_y)
            check_tensor("expert_y", expert_y, dim=2, dtypes=ACTIVATION_DTYPES, cpu_only=False)
        except (TypeError, ValueError) as error:
            return str(error)
        if expert_y.shape[0] != handle.num_received:
            return f"expert_y: expected {handle.num_received} rows (rows dispatch returned), got {expert_y.shape[0]}"
        return None

    def _raise_on_disagreement(self, table: torch.Tensor, problem: str | None) -> None:
        steps, dtypes, widths, oks = table.unbind(dim=1)
        bad_ranks = [r for r in range(self.world_size) if not int(oks[r])]
        if bad_ranks:
            mine = f" ({problem})" if problem else ""
            raise ValueError(
                f"rank {self.rank}: {self.name} combine refused: rank(s) {bad_ranks} gave a bad expert output or "
                f"handle{mine}"
            )
        for label, column in (("dispatch step", steps), ("expert_y dtype", dtypes), ("expert_y hidden size", widths)):
            if bool((column != column[0]).any()):
                shown = column.tolist()
                if label == "expert_y dtype":
                    shown = [str(ACTIVATION_DTYPES[v]).replace("torch.", "") for v in shown]
                per_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(shown))
                raise ValueError(
                    f"rank {self.rank}: {self.name} combine refused: {label} differs across ranks ({per_rank})"
                )

    # ---- the interface ----

    def dispatch(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, *, dequantize: bool = True
    ) -> tuple[torch.Tensor | QuantizedRows, DispatchHandle]:
        """Sends each kept (token, expert) pair's row to the expert's rank.

        Args:
            x: ``[T, H]`` float32/float16/bfloat16 tokens of this rank (T may be 0; H, dtype, K equal on all ranks).
            topk_ids: ``[T, K]`` int32/int64 expert ids in ``[0, E)``, on x's device.
            topk_weights: ``[T, K]`` float32/float16/bfloat16 gate weights, on x's device.
            dequantize: with ``config.dispatch_quant``, False returns the rows as they crossed
                (:class:`~moecomm.comm.row_codec.QuantizedRows`: codes + scales) for an expert that consumes
                them; True (default) dequantizes them to x's dtype.

        Returns:
            ``expert_x [N_recv, H]`` in x's dtype on x's device, grouped by local expert (local expert 0
            first), within an expert by source rank, then token, then k; and the handle for :meth:`combine`.
            ``expert_x`` may be a view into this dispatcher's reused buffers: valid until the next ``dispatch``.
            With ``dispatch_quant``, each row is ``dequantize(quantize(x row))`` exactly.
        """
        raise NotImplementedError

    def combine(self, expert_y: torch.Tensor, handle: DispatchHandle) -> torch.Tensor:
        """Returns ``[T, H]``: ``y[t] = sum over kept k of w[t, k] * expert_y[row of (t, k)]`` (a new tensor).

        Args:
            expert_y: ``[N_recv, H]`` float32/float16/bfloat16 expert outputs, in ``expert_x``'s row order; the
                same dtype and H on every rank.
            handle: the handle of this dispatcher's latest :meth:`dispatch` (an older one is refused).
        """
        raise NotImplementedError

    def close(self) -> None:
        """Releases the buffers and the transport (the caller's process group stays)."""
        self.workspace.release()
        self.transport.close()
