"""Layer benchmark (issue 4): EPMoE forward at EP=2 vs the transformers Qwen3-MoE block on one process.

One run of ``num_ranks`` local gloo ranks (one torch thread each) times, interleaved round by round:

- ``epmoe/ep{R}-dropless`` and ``epmoe/ep{R}-drop{r}``: :class:`moecomm.EPMoE` adopted from the block
  (``EPMoE.from_module``) with the ``alltoallv`` dispatcher, dropless and with ``token_drop_ratio`` r.
  Each rank forwards its own T tokens; a step starts after a barrier and its time is the slowest rank's.
- ``hf-<impl>/1proc-global``: the transformers ``Qwen3MoeSparseMoeBlock`` on one process (rank 0, one
  thread) over the global batch R*T (the same tokens the EP ranks forward together), for each experts
  implementation ``impl`` (``eager``: the block's own per-expert loop, what a block built from a config
  runs; ``grouped_mm``: what ``from_pretrained`` picks by default in transformers 5).
- ``hf-<impl>/1proc-per-rank``: the same block over one rank's T tokens (a per-rank comparison).
- ``epmoe/1proc-global``: EPMoE with ``group=None`` over the global batch (one process: no exchange,
  the dispatcher still permutes and combines).

While rank 0 runs a one-process case the other ranks wait in a collective (which sleeps, not spins).
Correctness is part of the run: an untimed pass compares every output with the eager transformers block
over the global batch ("max abs diff"); dropless EP must match it to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from moecomm.bench.dispatch import synced_time
from moecomm.bench.progress import progress_task
from moecomm.bench.report import markdown_table, ms, timing_record
from moecomm.bench.timing import Timing, measure_interleaved
from moecomm.checks import check_choice, check_non_negative_int, check_positive_int, check_ratio, check_topology

#: transformers experts implementations the block can be timed with (``config._experts_implementation``).
HF_IMPLS = ("eager", "grouped_mm")


@dataclass(frozen=True)
class LayerBenchConfig:
    """Shapes and settings of the layer benchmark.

    Defaults: a Qwen3-30B-A3B MoE layer (H=2048, top-8 of softmax-scored, renormalised experts, expert
    FFN I=768) with the expert count scaled 4x down, E=128 -> 32. Scaling E (not H, I or K) keeps each
    routed (token, expert) pair exactly as costly as in the real model, in FLOPs (6*H*I) and in bytes
    moved (H per row, K rows per token), so the ratio of expert compute to dispatch/combine traffic, which
    decides EP overhead, is the real one; it only makes fewer, fuller experts (2*T*K/E = 512 rows per
    expert instead of 128). What it buys: the full expert tensors (E x 3 x I x H = 151M values, 0.6 GB in
    fp32), held several times over (the transformers block, the one-process EPMoE, each rank's shard),
    fit this shared 24 GiB machine, and a round of all cases takes ~10 s on one core per process.
    fp32 because this CPU has no bf16 matrix units (bf16 matmuls run ~5x slower than fp32 here, which
    would time the emulation, not the layer). ``warmup=0`` because the untimed correctness pass already
    runs every case once, in the same order, before the timed rounds.

    Attributes:
        num_ranks: EP ranks R (local processes, one torch thread each).
        num_tokens: T, tokens each rank forwards; the one-process peers see R*T ("global") or T.
        hidden / intermediate / num_experts / top_k: H, I (per expert), E, K.
        dtype: ``fp32``, ``bf16`` or ``fp16`` (weights and activations).
        drop_ratio: ``token_drop_ratio`` of the dropping EP case, in (0, 1).
        hf_impls: transformers experts implementations timed as peers (subset of :data:`HF_IMPLS`).
        repeats / warmup: timed and untimed interleaved rounds.
        seed: weights and tokens.
        timeout_s: the whole multi-process run is killed after this many seconds.
    """

    num_ranks: int = 2
    num_tokens: int = 1024
    hidden: int = 2048
    intermediate: int = 768
    num_experts: int = 32
    top_k: int = 8
    dtype: str = "fp32"
    drop_ratio: float = 0.1
    hf_impls: tuple[str, ...] = HF_IMPLS
    repeats: int = 8
    warmup: int = 0
    seed: int = 0
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        from moecomm.bench.kernels import DTYPES

        for name in ("num_tokens", "hidden", "intermediate", "top_k", "repeats"):
            check_positive_int(name, getattr(self, name))
        check_non_negative_int("warmup", self.warmup)
        check_non_negative_int("seed", self.seed)
        check_topology(self.num_experts, self.num_ranks)
        if self.num_ranks < 2:
            raise ValueError(f"num_ranks: expected at least 2 EP ranks, got {self.num_ranks}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k: expected at most num_experts={self.num_experts}, got {self.top_k}")
        check_choice("dtype", self.dtype, DTYPES)
        if check_ratio("drop_ratio", self.drop_ratio) == 0.0:
            raise ValueError("drop_ratio: expected a ratio in (0, 1) for the dropping case, got 0")
        if isinstance(self.hf_impls, str) or not self.hf_impls:
            raise ValueError(f"hf_impls: expected a non-empty tuple of {HF_IMPLS}, got {self.hf_impls!r}")
        for impl in self.hf_impls:
            check_choice("hf_impls", impl, HF_IMPLS)
        if not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            raise ValueError(f"timeout_s: expected a number of seconds > 0, got {self.timeout_s!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype named by :attr:`dtype`."""
        from moecomm.bench.kernels import DTYPES

        return DTYPES[self.dtype]


def ep_case(config: LayerBenchConfig, dropping: bool) -> str:
    """Name of an EP case: ``epmoe/ep2-dropless`` or ``epmoe/ep2-drop0.1``."""
    return f"epmoe/ep{config.num_ranks}-" + (f"drop{config.drop_ratio:g}" if dropping else "dropless")


def hf_case(impl: str, batch: str) -> str:
    """Name of a transformers case: ``hf-eager/1proc-global`` (batch ``global``) or ``.../1proc-per-rank``."""
    return f"hf-{impl}/1proc-{batch}"


SINGLE_EPMOE = "epmoe/1proc-global"


def make_qwen3_block(config: LayerBenchConfig) -> nn.Module:
    """A transformers ``Qwen3MoeSparseMoeBlock`` (softmax, renormalised top-k) of the config's shape, in its
    dtype, eval mode, with seeded ``nn.Linear``-style uniform weights: router ``gate.weight [E, H]``,
    ``experts.gate_up_proj [E, 2I, H]``, ``experts.down_proj [E, H, I]``; experts implementation eager."""
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    hf_config = Qwen3MoeConfig(
        hidden_size=config.hidden,
        moe_intermediate_size=config.intermediate,
        num_experts=config.num_experts,
        num_experts_per_tok=config.top_k,
        norm_topk_prob=True,
    )
    hf_config._experts_implementation = "eager"
    block = Qwen3MoeSparseMoeBlock(hf_config).to(config.torch_dtype).eval()
    generator = torch.Generator().manual_seed(config.seed)
    hidden_bound, inter_bound = config.hidden**-0.5, config.intermediate**-0.5
    with torch.no_grad():
        for weight, bound in (
            (block.gate.weight, hidden_bound),
            (block.experts.gate_up_proj, hidden_bound),
            (block.experts.down_proj, inter_bound),
        ):
            weight.uniform_(-bound, bound, generator=generator)
    return block


def make_global_tokens(config: LayerBenchConfig) -> torch.Tensor:
    """The global batch ``[R*T, H]`` in the config's dtype (standard normal, seeded); rank r forwards rows
    ``[r*T, (r+1)*T)``."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    shape = (config.num_ranks * config.num_tokens, config.hidden)
    return torch.randn(shape, generator=generator).to(config.torch_dtype)


def hf_forward(block: nn.Module, tokens: torch.Tensor, impl: str) -> torch.Tensor:
    """``block`` (a transformers MoE block) over ``tokens [N, H]`` with experts implementation ``impl``;
    returns ``[N, H]`` in the tokens' dtype."""
    block.experts.config._experts_implementation = impl
    return block(tokens.unsqueeze(0)).squeeze(0)


def ep_layers(block: nn.Module, config: LayerBenchConfig) -> dict[str, nn.Module]:
    """The two EP layers (dropless, dropping) adopted from ``block`` over the default group (collective)."""
    from moecomm import MoECommConfig
    from moecomm.layer.ep_moe import EPMoE

    settings = {
        False: MoECommConfig(dispatcher="alltoallv"),
        True: MoECommConfig(dispatcher="alltoallv", token_drop_ratio=config.drop_ratio),
    }
    return {
        ep_case(config, dropping): EPMoE.from_module(block, dist.group.WORLD, comm).eval()
        for dropping, comm in settings.items()
    }


def layer_worker(rank: int, world_size: int, config: LayerBenchConfig) -> dict[str, Any]:
    """One rank of the layer benchmark (run by ``run_local``). Every rank returns the same timings
    (``name -> samples in s``); rank 0 also returns the correctness checks of the untimed pass."""
    tokens_per_rank = config.num_tokens
    global_tokens = make_global_tokens(config)
    local_tokens = global_tokens[rank * tokens_per_rank : (rank + 1) * tokens_per_rank].contiguous()
    block = make_qwen3_block(config)
    layers = ep_layers(block, config)
    cases: dict[str, Callable[[], Any]] = {
        name: (lambda layer=layer: layer(local_tokens)) for name, layer in layers.items()
    }
    one_process = one_process_cases(block, config, global_tokens) if rank == 0 else {}
    if rank != 0:
        del block  # only rank 0 runs the one-process peers; the others wait for it in each timed step
    for name in [SINGLE_EPMOE] + [hf_case(impl, batch) for impl in config.hf_impls for batch in ("global", "per-rank")]:
        cases[name] = one_process.get(name, lambda: None)  # same names, same order on every rank
    with torch.no_grad():
        reference = hf_forward(block, global_tokens, "eager") if rank == 0 else None
        checks = correctness_pass(rank, world_size, config, cases, layers, reference)
        timings = measure_interleaved(cases, repeats=config.repeats, warmup=config.warmup, timer=synced_time)
    return {"rank": rank, "timings": {name: timing.samples for name, timing in timings.items()}, "checks": checks}


def one_process_cases(
    block: nn.Module, config: LayerBenchConfig, global_tokens: torch.Tensor
) -> dict[str, Callable[[], Any]]:
    """Rank 0's one-process peers over ``global_tokens [R*T, H]`` (or its first T rows): the transformers
    ``block`` per experts implementation, and an EPMoE adopted from it with ``group=None``."""
    from moecomm import MoECommConfig
    from moecomm.layer.ep_moe import EPMoE

    single = EPMoE.from_module(block, None, MoECommConfig()).eval()
    per_rank_tokens = global_tokens[: config.num_tokens].contiguous()
    cases: dict[str, Callable[[], Any]] = {SINGLE_EPMOE: lambda: single(global_tokens)}
    for impl in config.hf_impls:
        cases[hf_case(impl, "global")] = lambda impl=impl: hf_forward(block, global_tokens, impl)
        cases[hf_case(impl, "per-rank")] = lambda impl=impl: hf_forward(block, per_rank_tokens, impl)
    return cases


def correctness_pass(
    rank: int,
    world_size: int,
    config: LayerBenchConfig,
    cases: dict[str, Callable[[], Any]],
    layers: dict[str, nn.Module],
    reference: torch.Tensor | None,
) -> dict[str, dict[str, Any]]:
    """Runs every case once (untimed; also a warm-up), gathers the EP outputs and, on rank 0, compares each
    output with ``reference [R*T, H]`` (the eager transformers block over the global batch; None on other
    ranks); the per-rank cases against its first T rows. Returns ``name -> {"max_abs_diff": float}`` on
    rank 0, EP cases with ``dropped_share`` and ``received_per_rank`` too; ``{}`` on other ranks."""
    outputs = {name: synced_output(fn) for name, fn in cases.items()}
    for name in layers:
        parts = [torch.empty_like(outputs[name]) for _ in range(world_size)]
        dist.all_gather(parts, outputs[name].contiguous())
        outputs[name] = torch.cat(parts)
    if rank != 0:
        return {}
    assert reference is not None, "rank 0 computes the reference"
    checks: dict[str, dict[str, Any]] = {}
    for name, output in outputs.items():
        expected = reference[: config.num_tokens] if name.endswith("per-rank") else reference
        checks[name] = {"max_abs_diff": float((output.double() - expected.double()).abs().max())}
    for name, layer in layers.items():
        stats = layer.last_stats
        checks[name].update(
            dropped_share=float(stats.dropped_share), received_per_rank=[int(v) for v in stats.received_per_rank]
        )
    checks["reference"] = {"max_abs_output": float(reference.double().abs().max())}
    return checks


def synced_output(fn: Callable[[], Any]) -> Any:
    """``fn()`` after a barrier (so every rank runs the cases in step, as the timed rounds do)."""
    dist.barrier()
    return fn()


def case_ratios(name: str, timings: dict[str, Timing], config: LayerBenchConfig) -> dict[str, float]:
    """Speedups of case ``name`` (peer median / this median, > 1 = faster), measured in the same run: EP and
    one-process EPMoE cases against every transformers case of their batch (EP: global and per-rank), the
    dropping EP case also against the dropless one."""
    if name.startswith("hf-"):
        return {}
    batches = ("global",) if name == SINGLE_EPMOE else ("global", "per-rank")
    peers = [hf_case(impl, batch) for batch in batches for impl in config.hf_impls]
    if name == ep_case(config, dropping=True):
        peers.append(ep_case(config, dropping=False))
    median = timings[name].median
    return {f"speedup_vs_{peer}": timings[peer].median / median for peer in peers if median > 0}


def case_layout(name: str, config: LayerBenchConfig) -> tuple[str, int]:
    """``(processes x threads, tokens each process forwards)`` of case ``name``."""
    if name.startswith("epmoe/ep"):
        return f"{config.num_ranks} x 1", config.num_tokens
    tokens = config.num_tokens if name.endswith("per-rank") else config.num_ranks * config.num_tokens
    return "1 x 1", tokens


def run_layer_bench(config: LayerBenchConfig | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Spawns ``config.num_ranks`` local ranks and times the layer cases interleaved (see the module doc).

    Args:
        config: shapes and settings (default :class:`LayerBenchConfig`: a Qwen3-MoE layer, E scaled 128 -> 32).
        progress: show a progress bar on stderr.

    Returns:
        ``{"config": dict, "records": [record per case], "table": markdown str}``; a record is
        :func:`moecomm.bench.report.timing_record` (section ``"layer"``) plus ``processes``,
        ``tokens_per_process``, ``max_abs_diff_vs_hf_eager_global`` and, for EP cases, ``dropped_share`` and
        ``received_per_rank``; the reference's own record carries ``max_abs_output``.
    """
    from moecomm.testing.launch import run_local

    config = LayerBenchConfig() if config is None else config
    if not isinstance(config, LayerBenchConfig):
        raise TypeError(f"config: expected a LayerBenchConfig, got {type(config).__name__}")
    with progress_task(f"layer (EP={config.num_ranks} vs transformers)", 1, progress) as advance:
        results = run_local(layer_worker, config.num_ranks, config, timeout_s=config.timeout_s)
        advance()
    timings = {name: Timing(tuple(samples)) for name, samples in results[0]["timings"].items()}
    checks = results[0]["checks"]
    shape = asdict(config)
    shape["hf_impls"] = list(config.hf_impls)
    records = []
    for name, timing in timings.items():
        processes, tokens = case_layout(name, config)
        check = checks[name]
        extra: dict[str, Any] = {
            "processes": processes,
            "tokens_per_process": tokens,
            "max_abs_diff_vs_hf_eager_global": check["max_abs_diff"],
        }
        extra.update({key: value for key, value in check.items() if key in ("dropped_share", "received_per_rank")})
        if name == hf_case("eager", "global"):
            extra["max_abs_output"] = checks["reference"]["max_abs_output"]
        records.append(
            timing_record("layer", name, timing, config=shape, ratios=case_ratios(name, timings, config), extra=extra)
        )
    return {"config": shape, "records": records, "table": layer_table(records)}


def layer_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per case. Step times are the slowest rank's for EP cases; "max abs diff" is the
    output's largest deviation from the eager transformers block over the global batch (its first T
    rows for per-rank cases), from an untimed pass."""

    def speedups(ratios: dict[str, float]) -> str:
        return ", ".join(f"{v:.2f}x vs {short_name(k.removeprefix('speedup_vs_'))}" for k, v in ratios.items()) or "-"

    rows = [
        [
            r["name"],
            r["processes"],
            r["tokens_per_process"],
            ms(r["median_s"]),
            ms(r["p10_s"]),
            ms(r["p90_s"]),
            speedups(r["ratios"]),
            r["max_abs_diff_vs_hf_eager_global"],
            r.get("dropped_share"),
        ]
        for r in records
    ]
    return markdown_table(
        [
            "case",
            "procs x threads",
            "tokens/proc",
            "median ms",
            "p10 ms",
            "p90 ms",
            "speedup (same run)",
            "max abs diff",
            "dropped share",
        ],
        rows,
    )


def short_name(name: str) -> str:
    """A case name without the ``1proc-`` part (``hf-eager/1proc-global`` -> ``hf-eager/global``), for table cells."""
    return name.replace("/1proc-", "/")
