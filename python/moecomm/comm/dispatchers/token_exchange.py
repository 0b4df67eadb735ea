"""How the token-level ``alltoallv`` moves its rows: through collectives, or straight into peers' memory.

Both exchanges move the same bytes in the same order, so the dispatcher above them is written once:

- :class:`CollectiveTokenExchange` (any transport): the token rows are laid out in (destination, token) order
  in the ``send`` buffer and exchanged with two ``all_to_all`` calls (rows, routing metadata); the partial
  rows come back with a third.
- :class:`RegionTokenExchange` (transports with shared regions, i.e. ``shm``): the sender writes each kept
  (token, expert) pair's row from ``x`` straight into its slot of the destination's expert-major rows, in one
  pass over ``x`` for every destination (each token read once; no send buffer, no token rows, no
  receiver-side layout); the rows for each destination expert are one byte range of the destination's region
  (:class:`~moecomm.ops._out.RowRanges`). With ``dispatch_quant`` it quantizes each token once into the
  destinations' token rows instead, which the receiver dequantizes once per token while laying them out. Each expert
  rank reduces its partial rows straight into the source's ``combine`` region; a ``sync`` (one barrier)
  publishes each step's writes.

Region layout of rank d (offsets from the count exchange, identical on every rank): ``dispatch`` holds the
``[N_recv, H]`` expert-major rows of d's local experts (local expert, then source rank, then token and k: the
order every dispatcher returns), or under ``dispatch_quant`` the ``[N_in, W]`` wire token rows from every source
in rank order, then the ``[N_in, 2K]`` int32 routing metadata of the token rows that would have crossed (from every source s
in rank order, ``n[s, d]`` rows each: the receiver's combine layout); ``combine`` holds the ``[N_back, H]``
partial rows coming back, from each destination in rank order (``n[d, e]`` rows from rank e).
"""

from __future__ import annotations

import torch

from moecomm.backends.base import KernelBackend
from moecomm.comm.row_codec import PlainRows
from moecomm.comm.transports.base import Transport
from moecomm.comm.workspace import Workspace
from moecomm.ops._out import RowRanges
from moecomm.ops.layout import RouteLayout

#: Byte alignment of the blocks inside a region.
_ALIGN = 64
#: Widest element size a partial row may have (float32), so the combine region never needs a second sync.
_MAX_ELEMENT_BYTES = 4


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def _row_offsets(counts: list[int]) -> list[int]:
    """Exclusive prefix sums of ``counts`` (first row of each block)."""
    offsets, total = [], 0
    for count in counts:
        offsets.append(total)
        total += count
    return offsets


class CollectiveTokenExchange:
    """Token rows and partial rows through the transport's ``all_to_all``."""

    @staticmethod
    def rows_are_expert_major(codec: PlainRows) -> bool:
        """send_tokens returns token rows (one per received token), for the receiver to lay out expert-major."""
        return False

    def __init__(self, transport: Transport, workspace: Workspace) -> None:
        self.transport = transport
        self.workspace = workspace

    def send_tokens(
        self,
        backend: KernelBackend,
        codec: PlainRows,
        x: torch.Tensor,
        dest_layout: RouteLayout,
        metadata: torch.Tensor,
        counts: torch.Tensor,
        pair_layout: RouteLayout,
        kept_counts: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sends token rows (encoded by ``codec``: plain or quantized wire rows) and their ``metadata [N_send, 2K]``
        int32; ``counts [R, R]`` int64 token rows (source, destination). Returns (``[N_in, W]`` received rows,
        ``[N_in, 2K]`` received metadata). ``pair_layout`` (this rank's kept pairs over the E experts) and
        ``kept_counts [R, E]`` are for exchanges that write expert-major rows; unused here."""
        send_splits, recv_splits = self._splits(counts)
        rows = codec.encode(backend, x, dest_layout, out=self._wire_buffer("send", dest_layout.num_rows, codec, x))
        received_metadata = self.transport.all_to_all(
            "dispatch", "routing exchange", metadata, sum(recv_splits), recv_splits, send_splits
        )
        received_rows = self.transport.all_to_all(
            "dispatch",
            "token exchange",
            rows,
            sum(recv_splits),
            recv_splits,
            send_splits,
            out=self._wire_buffer("recv", sum(recv_splits), codec, x),
        )
        return received_rows, received_metadata

    def combine_partials(
        self,
        backend: KernelBackend,
        expert_y: torch.Tensor,
        recv_layout: RouteLayout,
        recv_weights: torch.Tensor,
        counts: torch.Tensor,
    ) -> torch.Tensor:
        """Reduces ``expert_y [N_recv, H]`` (float32/float16/bfloat16, expert-major) into one partial row per
        received token row (``recv_layout`` over the ``N_in`` received token rows and ``recv_weights [N_in, K]``
        float32; float32 accumulation), sends each back to its source (``counts [R, R]`` int64 token rows per
        (source, destination)); returns this rank's ``[N_back, H]`` partial rows in expert_y's dtype (from each
        destination in rank order)."""
        num_in = recv_layout.row_of_pair.shape[0]
        partial = backend.unpermute(expert_y, recv_layout, recv_weights, out=self._buffer("partial", num_in, expert_y))
        send_splits, recv_splits = self._splits(counts)
        return self.transport.all_to_all(
            "combine",
            "partial exchange",
            partial,
            sum(send_splits),
            send_splits,
            recv_splits,
            out=self._buffer("send", sum(send_splits), partial),
        )

    def _splits(self, counts: torch.Tensor) -> tuple[list[int], list[int]]:
        """Token rows this rank sends to / receives from each rank, from ``counts [R, R]`` (source, destination)."""
        rank = self.transport.rank
        return counts[rank].tolist(), counts[:, rank].tolist()

    def _buffer(self, name: str, rows: int, like: torch.Tensor) -> torch.Tensor:
        return self.workspace.buffer(name, (rows, *like.shape[1:]), like.dtype, like.device)

    def _wire_buffer(self, name: str, rows: int, codec: PlainRows, x: torch.Tensor) -> torch.Tensor:
        return self.workspace.buffer(name, (rows, codec.width(x.shape[1])), codec.dtype(x), x.device)


class RegionTokenExchange:
    """Rows written straight into the peers' shared regions, partial rows back the same way (``shm``
    transport): plain rows expert-major (laid out by the senders), quantized rows as token rows."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @staticmethod
    def rows_are_expert_major(codec: PlainRows) -> bool:
        """Plain rows land expert-major. Quantized rows land as token rows (one per received token), which the
        receiver dequantizes once per token while it lays them out: dequantizing the ~K/R expert rows of each
        token instead costs more than the bytes it saves (measured: int8 at H=7168, 78 -> 109 ms per dispatch)."""
        return not codec.quantized

    def send_tokens(
        self,
        backend: KernelBackend,
        codec: PlainRows,
        x: torch.Tensor,
        dest_layout: RouteLayout,
        metadata: torch.Tensor,
        counts: torch.Tensor,
        pair_layout: RouteLayout,
        kept_counts: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`CollectiveTokenExchange.send_tokens`. The sender writes the rows straight into the
        destinations' regions, reading (quantizing) each token once for all of them: with plain rows each kept
        pair's row into its slot of the destination's expert-major rows (``pair_layout``: this rank's kept pairs
        over the E experts; ``kept_counts [R, E]`` int64 kept pairs per (source, expert), identical on every rank),
        with quantized rows each token row (``dest_layout``). The metadata goes per token row. Returns (this
        rank's ``[N_recv, W]`` expert-major rows, or ``[N_in, W]`` token rows; ``[N_in, 2K]`` received metadata);
        the rows are a view of its ``dispatch`` region, valid until the next step's exchange."""
        transport, rank, num_ranks = self.transport, self.transport.rank, self.transport.world_size
        hidden, meta_width = x.shape[1], metadata.shape[1]
        width, row_dtype = codec.width(hidden), codec.dtype(x)
        row_bytes = codec.row_bytes(hidden, x.dtype)
        per_dest = kept_counts.view(num_ranks, num_ranks, -1)  # [source, destination, local expert]
        token_rows = counts.sum(dim=0).tolist()  # [R] token rows (metadata) each rank receives
        expert_major = self.rows_are_expert_major(codec)
        rows_in = per_dest.sum(dim=(0, 2)).tolist() if expert_major else token_rows  # rows each rank receives
        transport.ensure_region("dispatch", _aligned(rows_in[rank] * row_bytes) + token_rows[rank] * meta_width * 4)
        transport.ensure_region("combine", int(counts[rank].sum()) * hidden * _MAX_ELEMENT_BYTES)
        transport.sync("dispatch", "region sizes")  # every rank now sees every peer's grown regions
        regions = tuple(transport.region(dest, "dispatch") for dest in range(num_ranks))
        send_counts = counts[rank].tolist()
        send_offsets = _row_offsets(send_counts)
        firsts = counts[:rank].sum(dim=0).tolist()  # [R] this rank's first token row at each destination
        for dest in range(num_ranks):
            count = send_counts[dest]
            if count == 0:
                continue
            meta_start = _aligned(rows_in[dest] * row_bytes) + firsts[dest] * meta_width * 4
            meta_view = (
                regions[dest][meta_start : meta_start + count * meta_width * 4]
                .view(torch.int32)
                .view(count, meta_width)
            )
            meta_view.copy_(metadata[send_offsets[dest] : send_offsets[dest] + count])
        if expert_major:
            codec.encode(backend, x, pair_layout, out=self._expert_slots(regions, per_dest, row_bytes))
        else:
            table = torch.tensor([[d, firsts[d] * row_bytes, send_counts[d]] for d in range(num_ranks)], device="cpu")
            codec.encode(backend, x, dest_layout, out=RowRanges(regions, table, row_bytes))
        transport.sync("dispatch", "token exchange")
        own = regions[rank]
        rows = own[: rows_in[rank] * row_bytes].view(row_dtype).view(rows_in[rank], width)
        meta_start = _aligned(rows_in[rank] * row_bytes)
        num_in = token_rows[rank]
        meta = own[meta_start : meta_start + num_in * meta_width * 4].view(torch.int32).view(num_in, meta_width)
        return rows, meta.clone()

    def _expert_slots(self, regions: tuple[torch.Tensor, ...], per_dest: torch.Tensor, row_bytes: int) -> RowRanges:
        """Where this rank's kept pairs go, expert by expert (the E experts in order: pair_layout's row order): in
        the region of the expert's rank, after the rows of its earlier local experts and of earlier sources."""
        num_ranks, _, local = per_dest.shape
        totals = per_dest.sum(dim=0)  # [destination, local expert] rows from every source
        before_expert = totals.cumsum(dim=1) - totals
        before_source = per_dest[: self.transport.rank].sum(dim=0)
        first_row = (before_expert + before_source).reshape(-1)
        dest = torch.arange(num_ranks, device="cpu").repeat_interleave(local)
        table = torch.stack([dest, first_row * row_bytes, per_dest[self.transport.rank].reshape(-1)], dim=1)
        return RowRanges(regions, table.contiguous(), row_bytes)

    def combine_partials(
        self,
        backend: KernelBackend,
        expert_y: torch.Tensor,
        recv_layout: RouteLayout,
        recv_weights: torch.Tensor,
        counts: torch.Tensor,
    ) -> torch.Tensor:
        """See :meth:`CollectiveTokenExchange.combine_partials`; each source's partial rows are reduced straight
        into its ``combine`` region (no partial buffer, no copy). The result is a view of this rank's ``combine``
        region, valid until the next step's partial exchange."""
        transport, rank, num_ranks = self.transport, self.transport.rank, self.transport.world_size
        hidden = expert_y.shape[1]
        row_bytes = hidden * expert_y.element_size()
        from_sources = counts[:, rank].tolist()
        source_offsets = _row_offsets(from_sources)
        for source in range(num_ranks):
            count = from_sources[source]
            if count == 0:
                continue
            first = _row_offsets(counts[source].tolist())[rank]
            region = transport.region(source, "combine")
            view = region[first * row_bytes : (first + count) * row_bytes].view(expert_y.dtype).view(count, hidden)
            tokens = (source_offsets[source], source_offsets[source] + count)
            backend.unpermute(expert_y, recv_layout, recv_weights, out=view, tokens=tokens)
        transport.sync("combine", "partial exchange")
        num_back = int(counts[rank].sum())
        return transport.region(rank, "combine")[: num_back * row_bytes].view(expert_y.dtype).view(num_back, hidden)


def token_exchange(transport: Transport, workspace: Workspace) -> CollectiveTokenExchange | RegionTokenExchange:
    """The region exchange when ``transport`` has shared regions (``shm``), else the collective one."""
    if all(hasattr(transport, name) for name in ("ensure_region", "region", "sync")):
        return RegionTokenExchange(transport)
    return CollectiveTokenExchange(transport, workspace)
