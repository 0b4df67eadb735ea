"""`moecomm bench dispatch`: dispatch + combine per dispatcher over local ranks, vs a pure-torch peer.

The peer (:class:`TorchAllToAllV`) is the straightforward all-to-all-v a PyTorch user would write:
argsort by expert, ``index_select``, ``all_to_all_single`` with split sizes, regroup, and ``index_add``
to combine. Every rank runs the same cases in the same interleaved order; a step is timed after a
barrier on each rank and the slowest rank's time is the sample (the straggler sets the step time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist

from moecomm.bench.progress import progress_task
from moecomm.bench.report import markdown_table, ms, timing_record
from moecomm.bench.routing import make_routing
from moecomm.bench.timing import Timing, measure_interleaved, set_allocator
from moecomm.ops._checks import check_topk_ids, check_topk_weights, check_topology

MOECOMM_DISPATCHERS = ("alltoallv", "alltoall", "allgather")
PEER = "torch-alltoallv"
DISPATCHERS = (*MOECOMM_DISPATCHERS, PEER)


@dataclass
class TorchAllToAllVHandle:
    """What :meth:`TorchAllToAllV.combine` needs.

    Attributes:
        token_of_row: ``[T*K]`` int64, source token of each sent row (expert-major order).
        weight_of_row: ``[T*K]`` float32, gate weight of each sent row.
        send_splits / recv_splits: rows sent to / received from each rank.
        regroup: ``[N_recv]`` int64, received row (source-major) of each expert-major row.
        tokens_per_local_expert: ``[E_local]`` int64.
        num_tokens: T.
    """

    token_of_row: torch.Tensor
    weight_of_row: torch.Tensor
    send_splits: list[int]
    recv_splits: list[int]
    regroup: torch.Tensor
    tokens_per_local_expert: torch.Tensor
    num_tokens: int


class TorchAllToAllV:
    """Pure-torch all-to-all-v dispatcher (the benchmark peer; dropless, same interface as moecomm's)."""

    def __init__(self, num_experts: int, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.world_size = dist.get_world_size(group) if dist.is_initialized() else 1
        self.rank = dist.get_rank(group) if dist.is_initialized() else 0
        self.num_experts, _ = check_topology(num_experts, self.world_size)
        self.num_local_experts = num_experts // self.world_size

    def dispatch(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[torch.Tensor, TorchAllToAllVHandle]:
        """Sends each ``x [T, H]`` row to the ranks of its ``topk_ids [T, K]`` experts.

        ``topk_weights [T, K]`` float is kept for combine. Returns ``expert_x [N_recv, H]`` (x's dtype),
        rows grouped by local expert then source rank, and the handle."""
        ids = check_topk_ids(topk_ids, self.num_experts).to(torch.int64)
        weights = check_topk_weights(topk_weights, ids)
        top_k = ids.shape[1]
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token_of_row = torch.div(order, top_k, rounding_mode="floor")
        send = x.index_select(0, token_of_row)
        counts = torch.bincount(flat, minlength=self.num_experts)
        recv_counts = torch.empty_like(counts)
        if self.world_size > 1:
            dist.all_to_all_single(recv_counts, counts, group=self.group)
        else:
            recv_counts.copy_(counts)
        send_splits = counts.view(self.world_size, -1).sum(1).tolist()
        recv_splits = recv_counts.view(self.world_size, -1).sum(1).tolist()
        recv = x.new_empty((sum(recv_splits), x.shape[1]))
        if self.world_size > 1:
            dist.all_to_all_single(recv, send, recv_splits, send_splits, group=self.group)
        else:
            recv.copy_(send)
        local_expert_of_row = torch.arange(self.num_local_experts).repeat(self.world_size).repeat_interleave(recv_counts)
        regroup = torch.argsort(local_expert_of_row, stable=True)
        handle = TorchAllToAllVHandle(
            token_of_row=token_of_row,
            weight_of_row=weights.reshape(-1).index_select(0, order).float(),
            send_splits=send_splits,
            recv_splits=recv_splits,
            regroup=regroup,
            tokens_per_local_expert=recv_counts.view(self.world_size, -1).sum(0),
            num_tokens=ids.shape[0],
        )
        return recv.index_select(0, regroup), handle

    def combine(self, expert_y: torch.Tensor, handle: TorchAllToAllVHandle) -> torch.Tensor:
        """Returns ``[T, H]`` (expert_y's dtype) = sum over k of w[t,k] * expert_y[row(t,k)], float32 sums.

        ``expert_y [N_recv, H]`` is in the order :meth:`dispatch` returned."""
        source_major = torch.empty_like(expert_y)
        source_major.index_copy_(0, handle.regroup, expert_y)
        returned = expert_y.new_empty((sum(handle.send_splits), expert_y.shape[1]))
        if self.world_size > 1:
            dist.all_to_all_single(returned, source_major, handle.send_splits, handle.recv_splits, group=self.group)
        else:
            returned.copy_(source_major)
        out = torch.zeros((handle.num_tokens, expert_y.shape[1]), dtype=torch.float32)
        out.index_add_(0, handle.token_of_row, returned.float() * handle.weight_of_row.unsqueeze(1))
        return out.to(expert_y.dtype)


def make_bench_dispatcher(name: str, num_experts: int, **config: Any) -> Any:
    """moecomm's dispatcher ``name`` (``MoECommConfig(dispatcher=name, **config)``) or the torch peer,
    over the default process group when one is initialised (else a single process)."""
    group = dist.group.WORLD if dist.is_initialized() and dist.get_world_size() > 1 else None
    if name == PEER:
        return TorchAllToAllV(num_experts, group)
    from moecomm import MoECommConfig, make_dispatcher

    return make_dispatcher(MoECommConfig(dispatcher=name, **config), num_experts=num_experts, group=group)


def received_rows_of(topk_ids: torch.Tensor, num_experts: int, world_size: int, rank: int) -> int:
    """Rows rank ``rank`` receives in a dropless step: its block's share of all ranks' ``topk_ids [T, K]``."""
    from moecomm import ops

    per_rank = ops.route_layout(topk_ids, num_experts, world_size).tokens_per_rank
    gathered = [torch.empty_like(per_rank) for _ in range(world_size)]
    dist.all_gather(gathered, per_rank)
    return int(sum(int(part[rank]) for part in gathered))


def synced_time(fn: Callable[[], object]) -> float:
    """Runs ``fn`` on every rank after a barrier; returns the slowest rank's seconds (all ranks agree)."""
    dist.barrier()
    start = time.perf_counter()
    fn()
    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """Global ``||value - reference|| / ||reference||`` over all ranks (both ``[T, H]``, any float dtype)."""
    sums = torch.tensor(
        [float((value.double() - reference.double()).pow(2).sum()), float(reference.double().pow(2).sum())],
        dtype=torch.float64,
    )
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums)
    return float(sums[0].sqrt() / sums[1].sqrt()) if float(sums[1]) > 0 else 0.0


@dataclass(frozen=True)
class RanksConfig:
    """Shapes and settings shared by the multi-process benchmarks (issue 3's defaults: 2 ranks,
    T=4096 per rank, H=2048, E=64, K=8, bf16)."""

    num_ranks: int = 2
    num_tokens: int = 4096
    hidden: int = 2048
    num_experts: int = 64
    top_k: int = 8
    dtype: str = "bf16"
    seed: int = 0
    allocator: str = "default"
    timeout_s: float = 1800.0


@dataclass(frozen=True)
class DispatchBenchConfig(RanksConfig):
    """Issue 3's dispatch benchmark: every dispatcher and the pure-torch peer, identity experts."""

    skew: float = 0.0
    dispatchers: tuple[str, ...] = DISPATCHERS
    repeats: int = 10
    warmup: int = 2


def rank_tokens(config: RanksConfig, rank: int) -> torch.Tensor:
    """This rank's seeded activations ``x [T, H]`` in ``config.dtype``."""
    from moecomm.bench.kernels import DTYPES

    generator = torch.Generator().manual_seed(config.seed * 7919 + rank + 104729)
    return torch.randn((config.num_tokens, config.hidden), generator=generator).to(DTYPES[config.dtype])


def rank_seed(config: RanksConfig, rank: int) -> int:
    """Seed of this rank's routing draws (distinct per rank; popular experts are shared via ``config.seed``)."""
    return config.seed * 7919 + rank


def setup_rank(rank: int, world_size: int, config: DispatchBenchConfig) -> tuple[dict[str, Callable[[], torch.Tensor]], Any]:
    """This rank's inputs and one dispatch + combine callable per dispatcher (identity experts)."""
    set_allocator(config.allocator)
    routing = make_routing(config.num_tokens, config.num_experts, config.top_k, skew=config.skew,
                           seed=rank_seed(config, rank), popularity_seed=config.seed)
    x = rank_tokens(config, rank)
    steps = {}
    for name in config.dispatchers:
        extra = {"max_tokens_per_rank": config.num_tokens} if name == "alltoall" else {}
        dispatcher = make_bench_dispatcher(name, config.num_experts, **extra)

        def step(d: Any = dispatcher) -> torch.Tensor:
            expert_x, handle = d.dispatch(x, routing.topk_ids, routing.topk_weights)
            return d.combine(expert_x, handle)  # identity experts: the data path alone

        steps[name] = step
    return steps, routing


def dispatch_worker(rank: int, world_size: int, config: DispatchBenchConfig) -> dict[str, Any]:
    """One rank of the dispatch benchmark (run by ``run_local``); every rank returns the same timings."""
    steps, routing = setup_rank(rank, world_size, config)
    outputs = {name: step() for name, step in steps.items()}
    reference = outputs.get(PEER, next(iter(outputs.values())))
    errors = {name: relative_error(y, reference) for name, y in outputs.items()}
    received_rows = received_rows_of(routing.topk_ids, config.num_experts, world_size, rank)
    timings = measure_interleaved(steps, repeats=config.repeats, warmup=config.warmup, timer=synced_time)
    return {"rank": rank, "timings": {name: t.samples for name, t in timings.items()}, "errors": errors,
            "received_rows": received_rows}


def serve_steps(rank: int, world_size: int, config: DispatchBenchConfig, commands: list[Any], done: Any) -> int:
    """One rank that runs a step each time its queue ``commands[rank]`` names a dispatcher, and puts
    ``(rank, name)`` on ``done`` after it; ``None`` ends it. For timers outside the ranks
    (pytest-benchmark). Never waits more than ``config.timeout_s`` for a command."""
    steps, _ = setup_rank(rank, world_size, config)
    served = 0
    while True:
        name = commands[rank].get(timeout=config.timeout_s)
        if name is None:
            return served
        dist.barrier()
        steps[name]()
        done.put((rank, name))
        served += 1


def run_dispatch(config: DispatchBenchConfig, *, progress: bool = True) -> dict[str, Any]:
    """Spawns ``config.num_ranks`` ranks, times every dispatcher; returns ``{"config", "records", "table"}``."""
    from moecomm.testing.launch import run_local

    with progress_task(f"dispatch ({config.num_ranks} ranks)", 1, progress) as advance:
        results = run_local(dispatch_worker, config.num_ranks, config, timeout_s=config.timeout_s)
        advance()
    timings = {name: Timing(tuple(samples)) for name, samples in results[0]["timings"].items()}
    element = torch.finfo(getattr(torch, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[config.dtype])).bits // 8
    shape = asdict(config)
    shape["dispatchers"] = list(config.dispatchers)
    # Bytes every rank puts on the wire per step: T*K rows out in dispatch and back in combine.
    wire_bytes = 2 * config.num_tokens * config.top_k * config.hidden * element
    peer = timings.get(PEER)
    records = []
    for name, timing in timings.items():
        ratios = {f"speedup_vs_{PEER}": peer.median / timing.median} if peer is not None and name != PEER else {}
        records.append(timing_record(
            "dispatch", name, timing, config=shape, bytes_moved=wire_bytes, ratios=ratios,
            extra={"relative_error_vs_peer": max(r["errors"][name] for r in results),
                   "received_rows_per_rank": [r["received_rows"] for r in results]},
        ))
    return {"config": shape, "records": records, "table": dispatch_table(records)}


def dispatch_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per dispatcher (step = dispatch + combine, slowest rank). "routed GB/s" is the
    bytes of a rank's T*K routed rows out and back per step over the median step: useful work per
    second, not the wire rate (allgather moves other bytes)."""
    rows = [[r["name"], ms(r["median_s"]), ms(r["p10_s"]), ms(r["p90_s"]), r.get("gb_per_s"),
             ", ".join(f"{k} {v:.2f}x" for k, v in r["ratios"].items()) or "-", r["relative_error_vs_peer"]]
            for r in records]
    return markdown_table(["dispatcher", "median ms", "p10 ms", "p90 ms", "routed GB/s", "ratios (same run)",
                           "rel. error vs peer"], rows)
