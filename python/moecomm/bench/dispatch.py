"""`moecomm bench dispatch`: dispatch + combine per case over local ranks, against named peers.

Cases (see :mod:`moecomm.bench.dispatch_cases`): moecomm's dispatchers per transport, the pure-torch
all-to-all-v, Megatron-Core's alltoall / allgather token dispatchers and a plain shared-memory copy of
the bytes that must cross ranks. Every rank runs the same cases in the same interleaved order; a step is
timed after a barrier on each rank and the slowest rank's time is the sample (the straggler sets the
step time). Every output is compared with the dense single-process result of the identity expert,
``y[t] = sum_k w[t,k] * x[t]``. Each step's minor page faults (``ru_minflt`` delta around it) are
recorded per rank; a sample's count is the largest over ranks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from moecomm.bench.dispatch_cases import (
    DISPATCHERS,
    MEGATRON_PEERS,
    PEER,
    PEERS,
    SHM_COPY,
    available_transports,
    bench_group,
    make_bench_dispatcher,
    plan_cases,
)
from moecomm.bench.progress import progress_task
from moecomm.bench.report import markdown_table, ms, timing_record
from moecomm.bench.routing import make_routing
from moecomm.bench.timing import Timing, counting_faults, measure_interleaved, quantile, set_allocator
from moecomm.bench.traffic import StepTraffic, destination_ranks, pages, traffic_matrix

__all__ = [
    "DISPATCHERS",
    "PEER",
    "DispatchBenchConfig",
    "RanksConfig",
    "make_bench_dispatcher",
    "run_dispatch",
    "serve_steps",
    "synced_time",
    "relative_error",
    "dense_identity_reference",
]

GIB = float(1 << 30)


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
    """The dispatch benchmark: every case of ``dispatchers`` x ``transports`` (see
    :mod:`moecomm.bench.dispatch_cases`), identity experts."""

    skew: float = 0.0
    dispatchers: tuple[str, ...] = DISPATCHERS
    transports: tuple[str, ...] = field(default_factory=available_transports)
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


def dense_identity_reference(x: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """What every dropless case must return with identity experts, computed densely on one process:
    ``y[t] = sum_k w[t,k] * x[t]`` as float64 ``[T, H]`` from ``x [T, H]`` and ``topk_weights [T, K]``."""
    return x.double() * topk_weights.double().sum(1, keepdim=True)


def identity_step(dispatcher: Any, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """Dispatch + combine with identity experts (the data path alone); returns ``y [T, H]``."""
    expert_x, handle = dispatcher.dispatch(x, topk_ids, topk_weights)
    return dispatcher.combine(expert_x, handle)


def gather_traffic(
    topk_ids: torch.Tensor, config: RanksConfig, rank: int, world_size: int, row_bytes: int
) -> StepTraffic:
    """The step's cross-rank traffic over all ranks (a collective): every rank's ``topk_ids [T, K]``."""
    source = torch.full((topk_ids.shape[0],), rank, dtype=torch.int64)
    parts = [traffic_matrix(topk_ids, config.num_experts, world_size, source, unit) for unit in ("pair", "token")]
    stacked = torch.stack([*parts[0].reshape(-1), *parts[1].reshape(-1), torch.tensor(topk_ids.shape[0])])
    if world_size > 1:
        dist.all_reduce(stacked)
    cells = world_size * world_size
    return StepTraffic(
        stacked[:cells].view(world_size, world_size),
        stacked[cells : 2 * cells].view(world_size, world_size),
        int(stacked[-1]),
        row_bytes,
    )


def make_shm_copy(
    x: torch.Tensor, topk_ids: torch.Tensor, traffic: StepTraffic, config: RanksConfig, rank: int, world_size: int
) -> Any:
    """The shared-memory copy peer for this rank: ``x [T, H]``'s rows once per remote rank they visit
    (dispatch), and as many stand-in expert rows as it receives (combine)."""
    from moecomm.bench.shm_copy import SharedMemoryCopy

    destination = destination_ranks(topk_ids, config.num_experts, world_size)
    visits = torch.zeros((x.shape[0], world_size), dtype=torch.bool).scatter_(1, destination, True)
    send = [x[visits[:, d]] for d in range(world_size) if d != rank]
    received = sum(int(traffic.token_rows[s, rank]) for s in range(world_size) if s != rank)
    generator = torch.Generator().manual_seed(rank_seed(config, rank) + 31)
    returned = torch.randn((received, x.shape[1]), generator=generator).to(x.dtype)
    send_rows = torch.cat(send) if send else x[:0]
    return SharedMemoryCopy(traffic.token_rows, send_rows.contiguous(), returned, bench_group())


@dataclass
class RankCases:
    """One rank's benchmark cases.

    Attributes:
        steps: case name -> one step (returns ``y [T, H]``, or None for the copy peer).
        cases: ``(case name, dispatcher, transport or None)`` in order.
        notes: one line per skipped case.
        x: ``[T, H]`` this rank's activations; ``routing``: its routing.
        traffic: the step's cross-rank traffic over all ranks.
        closers: called when the rank is done (shared-memory mappings).
    """

    steps: dict[str, Callable[[], torch.Tensor | None]]
    cases: list[tuple[str, str, str | None]]
    notes: list[str]
    x: torch.Tensor
    routing: Any
    traffic: StepTraffic
    closers: list[Callable[[], None]]

    def close(self) -> None:
        for close in self.closers:
            close()


def setup_rank(rank: int, world_size: int, config: DispatchBenchConfig) -> RankCases:
    """This rank's inputs and one dispatch + combine callable per case (collective: every rank calls it)."""
    from moecomm.bench.megatron_peer import MegatronPeer

    set_allocator(config.allocator)
    routing = make_routing(
        config.num_tokens,
        config.num_experts,
        config.top_k,
        skew=config.skew,
        seed=rank_seed(config, rank),
        popularity_seed=config.seed,
    )
    x = rank_tokens(config, rank)
    traffic = gather_traffic(routing.topk_ids, config, rank, world_size, x.shape[1] * x.element_size())
    cases, notes = plan_cases(config.dispatchers, config.transports)
    steps: dict[str, Callable[[], torch.Tensor | None]] = {}
    closers: list[Callable[[], None]] = []
    for name, dispatcher, transport in cases:
        if dispatcher == SHM_COPY:
            copier = make_shm_copy(x, routing.topk_ids, traffic, config, rank, world_size)
            closers.append(copier.close)
            steps[name] = copier.step
            continue
        if dispatcher in MEGATRON_PEERS:
            d = MegatronPeer(dispatcher, config.num_experts, config.top_k, config.hidden, bench_group())
        else:
            extra = {"max_tokens_per_rank": config.num_tokens} if dispatcher == "alltoall" else {}
            d = make_bench_dispatcher(dispatcher, config.num_experts, transport=transport, **extra)
        steps[name] = lambda d=d: identity_step(d, x, routing.topk_ids, routing.topk_weights)
    return RankCases(steps, cases, notes, x, routing, traffic, closers)


def planned_case_names(config: DispatchBenchConfig) -> list[str]:
    """The case names ``config`` runs on this installation, in order."""
    return [name for name, _, _ in plan_cases(config.dispatchers, config.transports)[0]]


def dispatch_worker(rank: int, world_size: int, config: DispatchBenchConfig) -> dict[str, Any]:
    """One rank of the dispatch benchmark (run by ``run_local``); every rank returns the same timings,
    errors and fault counts (each sample's count is the largest over ranks)."""
    setup = setup_rank(rank, world_size, config)
    try:
        reference = dense_identity_reference(setup.x, setup.routing.topk_weights)
        errors = {}
        for name, step in setup.steps.items():  # untimed correctness pass, also a first warm-up
            y = step()
            errors[name] = None if y is None else relative_error(y, reference)
        received_rows = received_rows_of(setup.routing.topk_ids, config.num_experts, world_size, rank)
        faults: dict[str, list[int]] = {name: [] for name in setup.steps}
        counted = {name: counting_faults(step, faults[name]) for name, step in setup.steps.items()}
        timings = measure_interleaved(counted, repeats=config.repeats, warmup=config.warmup, timer=synced_time)
        timed_faults = torch.tensor([faults[name][config.warmup :] for name in setup.steps], dtype=torch.int64)
        if world_size > 1:
            dist.all_reduce(timed_faults, op=dist.ReduceOp.MAX)
    finally:
        setup.close()
    traffic = setup.traffic
    return {
        "rank": rank,
        "timings": {name: t.samples for name, t in timings.items()},
        "errors": errors,
        "faults": dict(zip(setup.steps, timed_faults.tolist())),
        "received_rows": received_rows,
        "cases": setup.cases,
        "notes": setup.notes,
        "traffic": {
            **traffic.summary(),
            "pair_rows": traffic.pair_rows.tolist(),
            "token_rows": traffic.token_rows.tolist(),
            "num_tokens": traffic.num_tokens,
        },
    }


def serve_steps(rank: int, world_size: int, config: DispatchBenchConfig, commands: list[Any], done: Any) -> int:
    """One rank that runs a step each time its queue ``commands[rank]`` names a case, and puts
    ``(rank, name)`` on ``done`` after it; ``None`` ends it. For timers outside the ranks
    (pytest-benchmark). Never waits more than ``config.timeout_s`` for a command."""
    setup = setup_rank(rank, world_size, config)
    served = 0
    try:
        while True:
            name = commands[rank].get(timeout=config.timeout_s)
            if name is None:
                return served
            dist.barrier()
            setup.steps[name]()
            done.put((rank, name))
            served += 1
    finally:
        setup.close()


def run_dispatch(config: DispatchBenchConfig, *, progress: bool = True) -> dict[str, Any]:
    """Spawns ``config.num_ranks`` ranks, times every case; returns ``{"config", "records", "notes", "table"}``."""
    from moecomm.bench.kernels import DTYPES
    from moecomm.testing.launch import run_local

    with progress_task(f"dispatch ({config.num_ranks} ranks)", 1, progress) as advance:
        results = run_local(dispatch_worker, config.num_ranks, config, timeout_s=config.timeout_s)
        advance()
    first = results[0]
    timings = {name: Timing(tuple(samples)) for name, samples in first["timings"].items()}
    row_bytes = config.hidden * torch.empty((), dtype=DTYPES[config.dtype]).element_size()
    shape = asdict(config)
    shape.update(dispatchers=list(config.dispatchers), transports=list(config.transports))
    # Bytes of a rank's routed rows per step: T*K rows out in dispatch and back in combine.
    routed_bytes = 2 * config.num_tokens * config.top_k * row_bytes
    received = [r["received_rows"] for r in results]
    # 4 KiB pages of the routed rows a rank's step moves: T*K out + N_recv in, in dispatch and in combine.
    moved_pages = max(pages(2 * (config.num_tokens * config.top_k + n) * row_bytes) for n in received)
    traffic = first["traffic"]
    must_cross = traffic["crossing_bytes_max_rank_token"]
    copy = timings.get(SHM_COPY)
    copy_gib = must_cross / copy.median / GIB if copy is not None and copy.median > 0 else None
    records = []
    for name, dispatcher, transport in first["cases"]:
        timing = timings[name]
        effective = must_cross / timing.median / GIB if timing.median > 0 else None
        ratios = {
            f"speedup_vs_{peer}": timings[peer].median / timing.median
            for peer in (PEER, *MEGATRON_PEERS)
            if peer in timings and name not in (peer, SHM_COPY)
        }
        if copy_gib and effective is not None and name != SHM_COPY:
            ratios[f"bandwidth_vs_{SHM_COPY}"] = effective / copy_gib
        faults = first["faults"][name]
        median_faults = quantile([float(f) for f in faults], 0.5)
        records.append(
            timing_record(
                "dispatch",
                name,
                timing,
                config=shape,
                bytes_moved=routed_bytes,
                ratios=ratios,
                extra={
                    "dispatcher": dispatcher,
                    "transport": transport,
                    "kind": "peer" if dispatcher in PEERS else "moecomm",
                    "relative_error_vs_dense": first["errors"][name],
                    "minor_faults_per_step": median_faults,
                    "minor_faults_samples": faults,
                    "moved_pages": moved_pages,
                    "faults_per_moved_page": median_faults / moved_pages,
                    "bytes_must_cross_per_step": must_cross,
                    "effective_gib_per_s": effective,
                    **{k: v for k, v in traffic.items() if k.startswith("crossing_")},
                    "received_rows_per_rank": received,
                },
            )
        )
    notes = first["notes"]
    return {
        "config": shape,
        "records": records,
        "notes": notes,
        "traffic": traffic,
        "table": dispatch_table(records, traffic, notes),
    }


def dispatch_table(records: list[dict[str, Any]], traffic: dict[str, Any], notes: list[str]) -> str:
    """Markdown: a line of per-token traffic, one row per case, then the skipped cases.

    "must-cross" bytes are what the slowest rank writes across ranks per step, one row per (token,
    destination rank), out in dispatch and back in combine; "effective GiB/s" is those bytes over the
    median step; "faults/page" is minor page faults per step over the 4 KiB pages of the routed rows
    the step moves (T*K out and N_recv in, in dispatch and in combine)."""
    mib = 1 << 20
    rows = [
        [
            r["name"],
            ms(r["median_s"]),
            ms(r["p10_s"]),
            ms(r["p90_s"]),
            r["minor_faults_per_step"],
            r["moved_pages"],
            r["faults_per_moved_page"],
            r["bytes_must_cross_per_step"] / mib,
            r["crossing_bytes_per_token_token"],
            r["effective_gib_per_s"],
            ", ".join(f"{k} {v:.3g}x" for k, v in r["ratios"].items()) or "-",
            r["relative_error_vs_dense"],
        ]
        for r in records
    ]
    line = (
        f"Rows crossing ranks per token (dispatch; combine returns as many): "
        f"{traffic['crossing_rows_per_token_pair']:.3g} per (token, expert) pair, "
        f"{traffic['crossing_rows_per_token_token']:.3g} per (token, destination rank)."
    )
    table = markdown_table(
        [
            "case",
            "median ms",
            "p10 ms",
            "p90 ms",
            "minor faults/step",
            "moved 4 KiB pages",
            "faults/page",
            "must-cross MiB/step",
            "must-cross B/token",
            "effective GiB/s",
            "ratios (same run)",
            "rel. error vs dense",
        ],
        rows,
    )
    return "\n\n".join([line, table] + (["Skipped: " + "; ".join(notes)] if notes else []))
