"""vLLM offline prefill throughput (issues 5, 12): TP=2 in-tree MoE vs the parallel layouts through moecomm.

One run writes a Mixtral-style checkpoint with seeded random weights (real weights, not vLLM's dummy loader,
so every engine loads the same model), then starts one offline engine per case, one after another, each in
its own process group (``VLLM_CPU_OMP_THREADS_BIND`` = one core per TP worker; the engine core in the
front-end process, the workers in their own, see :data:`IN_PROCESS_ENGINE_CORE`), bounded by a timeout and
killed at the end:

- ``in-tree/tp2``: ``tensor_parallel_size=2`` without ``--enable-expert-parallel``: vLLM's own CPU fused MoE
  on TP-sharded experts (each rank holds every expert's 1/2 of the FFN, outputs all-reduced).
- ``moecomm/tp2-ep2-dropless`` and ``moecomm/tp2-ep2-drop{r}``: ``enable_expert_parallel=True`` with the
  moecomm plugin (``alltoallv`` dispatcher, ``token_drop_ratio`` 0 and r): each rank holds half of the
  experts whole, dispatches its half of the tokens, combines and all-gathers.
- ``moecomm/tp2-ep1-dropless``: the same with ``"expert_parallel": 1``: pure MoE tensor parallel through
  moecomm (each rank holds half of every expert; the ranks pool their tokens and reduce the partial sums).
- ``moecomm/dp2-ep2-dropless``: two offline data-parallel engines (vLLM's SPMD offline DP, one process per
  DP rank, TP=1 each) with EP 2 across them; each DP rank gets every other prompt, a call lasts as long as
  the slower rank's.

Each engine gets the same prefill-heavy batch (``num_prompts`` x ``prompt_len`` random token ids, one
generated token, prefix caching off so every repeat prefills everything), ``warmup`` untimed then
``repeats`` timed ``llm.generate`` calls; tokens/s = prompt tokens / seconds of one call. The moecomm cases
log drop statistics every step; the run collects them from the engine log. The first generated token of
every prompt is compared with the in-tree case's (a sanity signal only: bf16 rounding may flip a close argmax).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from moecomm.bench.report import markdown_table, timing_record
from moecomm.bench.timing import Timing
from moecomm.checks import check_choice, check_non_negative_int, check_positive_int, check_ratio, check_topology
from moecomm.testing.procs import dp_rank_env, engine_env, free_port, kill_process_group, wait_for_dp_peers

#: dtype names of the benchmark -> vLLM's ``dtype`` argument.
VLLM_DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
IN_TREE = "in-tree/tp{tp}"
#: Start of the line the plugin logs every ``log_stats_every`` steps (see moecomm.integrations.vllm.stats_log).
DROP_STATS_PATTERN = re.compile(
    r"moecomm drop stats .*?dropped share (?P<share>[0-9.]+) \((?P<dropped>\d+)/(?P<total>\d+) pairs\), "
    r"load per EP rank max (?P<max>\d+) mean (?P<mean>[0-9.]+) \(max/mean (?P<imbalance>[0-9.]+)\)"
)
RESULT_MARK = "VLLM_BENCH_RESULT "
#: Environment of every case's engine: the engine core runs in the front-end process, so a ``generate`` call
#: queues all its prompts before the first engine step (one step of ``batch_tokens``). With the engine core in
#: its own process (vLLM's default) requests reach it one by one while it already steps: a call could take two
#: steps, and in the DP case a rank could run a ``max_tokens=1`` call's first step on part of its prompts; all
#: of those finish in that step, the ranks end the wave at its first all-reduce, and the late prompts start a
#: wave of their own that the other rank's idle engine never joins (the run hung in ``_synchronize_dp_ranks``).
#: In-process, DP ranks also agree on "work left?" before every step.
IN_PROCESS_ENGINE_CORE = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


@dataclass(frozen=True)
class VllmBenchConfig:
    """Model shape and engine settings of the vLLM throughput benchmark.

    Defaults: the tests' tiny Mixtral scaled up (H=1024, E=32 experts, top-4, expert FFN I=1024, 2 layers,
    8 heads x 128), bf16 weights, 16 prompts x 512 tokens in one engine step (``max_num_batched_tokens`` =
    16 x 512), one warm-up and 3 timed calls per case: ~5 minutes on 2 loaded cores, mostly engine start-up.

    Attributes:
        hidden / intermediate / num_experts / top_k / num_layers / num_heads / head_dim / vocab: model shape
            (H, expert FFN I, E, K, decoder layers, attention heads, head size, vocabulary).
        tensor_parallel: TP size of every case (= EP size of the moecomm cases); one CPU core per worker.
        drop_ratio: ``token_drop_ratio`` of the dropping moecomm case, in (0, 1).
        dtype: ``bf16`` or ``fp32`` (checkpoint and engine dtype).
        num_prompts / prompt_len: the batch: ``num_prompts`` prompts of ``prompt_len`` random token ids.
        repeats / warmup: timed and untimed ``llm.generate`` calls per case.
        seed: weights and prompt ids.
        kv_cache_bytes: ``kv_cache_memory_bytes`` of each engine (explicit: auto sizing fails on a loaded host).
        cpu_bind: ``VLLM_CPU_OMP_THREADS_BIND`` of each engine ("0|1": worker r on core r).
        timeout_s: each case's engine process group is killed after this many seconds.
    """

    hidden: int = 1024
    intermediate: int = 1024
    num_experts: int = 32
    top_k: int = 4
    num_layers: int = 2
    num_heads: int = 8
    head_dim: int = 128
    vocab: int = 256
    tensor_parallel: int = 2
    drop_ratio: float = 0.1
    dtype: str = "bf16"
    num_prompts: int = 16
    prompt_len: int = 512
    repeats: int = 3
    warmup: int = 1
    seed: int = 0
    kv_cache_bytes: int = 256 << 20
    cpu_bind: str = "0|1"
    timeout_s: float = 240.0

    def __post_init__(self) -> None:
        for name in (
            "hidden",
            "intermediate",
            "top_k",
            "num_layers",
            "num_heads",
            "head_dim",
            "vocab",
            "num_prompts",
            "prompt_len",
            "repeats",
            "kv_cache_bytes",
        ):
            check_positive_int(name, getattr(self, name))
        check_non_negative_int("warmup", self.warmup)
        check_non_negative_int("seed", self.seed)
        check_topology(self.num_experts, self.tensor_parallel)
        if self.tensor_parallel < 2:
            raise ValueError(f"tensor_parallel: expected at least 2 (TP=EP ranks), got {self.tensor_parallel}")
        if self.num_heads % self.tensor_parallel:
            raise ValueError(
                f"num_heads: expected a multiple of tensor_parallel={self.tensor_parallel}, got {self.num_heads}"
            )
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k: expected at most num_experts={self.num_experts}, got {self.top_k}")
        if check_ratio("drop_ratio", self.drop_ratio) == 0.0:
            raise ValueError("drop_ratio: expected a ratio in (0, 1) for the dropping case, got 0")
        check_choice("dtype", self.dtype, VLLM_DTYPES)
        if not isinstance(self.cpu_bind, str) or not self.cpu_bind:
            raise ValueError(f"cpu_bind: expected a VLLM_CPU_OMP_THREADS_BIND string like '0|1', got {self.cpu_bind!r}")
        if not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            raise ValueError(f"timeout_s: expected a number of seconds > 0, got {self.timeout_s!r}")

    @property
    def batch_tokens(self) -> int:
        """Prompt tokens of one ``llm.generate`` call (``num_prompts * prompt_len``)."""
        return self.num_prompts * self.prompt_len


def case_settings(config: VllmBenchConfig) -> dict[str, dict[str, Any]]:
    """Case name -> ``{"ep": bool, "moecomm": dict | None}`` (the plugin settings) plus, for the layout cases,
    ``expert_parallel`` (the ``--additional-config`` key) or ``data_parallel`` (DP engines of TP = R / DP), in
    run order. Every case uses ``tensor_parallel`` (R) workers."""
    tp = config.tensor_parallel
    dropless = {"dispatcher": "alltoallv", "token_drop_ratio": 0.0, "log_stats_every": 1}
    return {
        IN_TREE.format(tp=tp): {"ep": False, "moecomm": None},
        f"moecomm/tp{tp}-ep{tp}-dropless": {"ep": True, "moecomm": dropless},
        f"moecomm/tp{tp}-ep{tp}-drop{config.drop_ratio:g}": {
            "ep": True,
            "moecomm": dict(dropless, token_drop_ratio=config.drop_ratio),
        },
        f"moecomm/tp{tp}-ep1-dropless": {"ep": True, "moecomm": dropless, "expert_parallel": 1},
        f"moecomm/dp{tp}-ep{tp}-dropless": {"ep": True, "moecomm": dropless, "data_parallel": tp},
    }


def additional_config(spec: dict[str, Any]) -> dict[str, Any]:
    """vLLM's ``additional_config`` of a case spec (``moecomm`` settings, ``expert_parallel``)."""
    additional: dict[str, Any] = {"moecomm": spec["moecomm"]} if spec["moecomm"] is not None else {}
    if spec.get("expert_parallel") is not None:
        additional["expert_parallel"] = spec["expert_parallel"]
    return additional


# ---- model and prompts ----------------------------------------------------------------------------------


def write_mixtral_checkpoint(model_dir: str, config: VllmBenchConfig) -> str:
    """Writes a Mixtral checkpoint of ``config``'s shape (config.json + model.safetensors, seeded normal
    weights scaled by 1/sqrt(fan_in), in ``config.dtype``) into ``model_dir``; returns ``model_dir``."""
    from safetensors.torch import save_file

    os.makedirs(model_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(config.seed)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[config.dtype]
    hidden, inter, attn = config.hidden, config.intermediate, config.num_heads * config.head_dim

    def linear(out_features: int, in_features: int) -> torch.Tensor:
        return (torch.randn(out_features, in_features, generator=gen) * in_features**-0.5).to(dtype)

    def norm(size: int) -> torch.Tensor:
        return (1 + 0.1 * torch.randn(size, generator=gen)).to(dtype)

    weights = {
        "model.embed_tokens.weight": torch.randn(config.vocab, hidden, generator=gen).to(dtype),
        "model.norm.weight": norm(hidden),
        "lm_head.weight": linear(config.vocab, hidden),
    }
    for layer in range(config.num_layers):
        p = f"model.layers.{layer}."
        weights |= {
            p + "self_attn.q_proj.weight": linear(attn, hidden),
            p + "self_attn.k_proj.weight": linear(attn, hidden),
            p + "self_attn.v_proj.weight": linear(attn, hidden),
            p + "self_attn.o_proj.weight": linear(hidden, attn),
            p + "input_layernorm.weight": norm(hidden),
            p + "post_attention_layernorm.weight": norm(hidden),
            p + "block_sparse_moe.gate.weight": linear(config.num_experts, hidden),
        }
        for e in range(config.num_experts):
            q = f"{p}block_sparse_moe.experts.{e}."
            weights |= {
                q + "w1.weight": linear(inter, hidden),
                q + "w3.weight": linear(inter, hidden),
                q + "w2.weight": linear(hidden, inter),
            }
    model_config = dict(
        architectures=["MixtralForCausalLM"],
        model_type="mixtral",
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        head_dim=config.head_dim,
        vocab_size=config.vocab,
        max_position_embeddings=max_model_len(config),
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        torch_dtype=VLLM_DTYPES[config.dtype],
        tie_word_embeddings=False,
        hidden_act="silu",
        num_local_experts=config.num_experts,
        num_experts_per_tok=config.top_k,
        sliding_window=None,
    )
    with open(os.path.join(model_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(model_config, f)
    save_file(weights, os.path.join(model_dir, "model.safetensors"))
    return model_dir


def max_model_len(config: VllmBenchConfig) -> int:
    """Context length of the engines: the prompt plus the generated token, rounded up to a multiple of 256."""
    return -(-(config.prompt_len + 1) // 256) * 256


def make_prompts(config: VllmBenchConfig) -> list[list[int]]:
    """``num_prompts`` lists of ``prompt_len`` token ids, uniform in ``[0, vocab)``, seeded (``seed + 1``)."""
    gen = torch.Generator().manual_seed(config.seed + 1)
    return torch.randint(0, config.vocab, (config.num_prompts, config.prompt_len), generator=gen).tolist()


# ---- one case: an engine in its own process group -------------------------------------------------------


def engine_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs one case in this process (called in the case's subprocess): starts ``vllm.LLM``, runs the
    warm-up and timed ``generate`` calls; returns ``{"samples_s", "startup_s", "first_tokens"}``."""
    config = VllmBenchConfig(**spec["config"])
    dp_size, dp_rank = spec.get("data_parallel", 1), spec.get("dp_rank", 0)
    os.environ.update(IN_PROCESS_ENGINE_CORE)
    if dp_size > 1:  # vLLM's offline data parallel: this process is DP rank dp_rank, with its share of prompts
        os.environ.update(dp_rank_env(dp_rank, dp_size, spec["master_port"]))
    from vllm import LLM, SamplingParams

    prompts = [{"prompt_token_ids": ids} for ids in make_prompts(config)[dp_rank::dp_size]]
    started = time.perf_counter()
    llm = LLM(
        model=spec["model"],
        skip_tokenizer_init=True,
        enforce_eager=True,
        dtype=VLLM_DTYPES[config.dtype],
        tensor_parallel_size=config.tensor_parallel // dp_size,
        enable_expert_parallel=spec["ep"],
        additional_config=additional_config(spec),
        max_model_len=max_model_len(config),
        max_num_seqs=config.num_prompts,
        max_num_batched_tokens=config.batch_tokens,
        kv_cache_memory_bytes=config.kv_cache_bytes,
        enable_prefix_caching=False,
        seed=config.seed,
        distributed_executor_backend="mp",  # CPU workers in their own processes (vLLM's OMP binding needs it)
    )
    startup_s = time.perf_counter() - started
    params = SamplingParams(max_tokens=1, temperature=0, detokenize=False)
    samples, first_tokens = [], []
    for call in range(config.warmup + config.repeats):
        started = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - started
        if len(outputs) != len(prompts) or any(len(o.prompt_token_ids) != config.prompt_len for o in outputs):
            raise RuntimeError(
                f"generate call {call}: expected {len(prompts)} outputs of "
                f"{config.prompt_len} prompt tokens, got {len(outputs)}"
            )
        first_tokens = [int(o.outputs[0].token_ids[0]) for o in outputs]
        if call >= config.warmup:
            samples.append(elapsed)
    if dp_size > 1:
        wait_for_dp_peers(spec["done_dir"], dp_rank, dp_size, config.timeout_s)
    return {"samples_s": samples, "startup_s": startup_s, "first_tokens": first_tokens}


def merge_dp_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One case result from its DP ranks' (rank r ran prompts r, r+D, ...): a call lasts as long as its slowest
    rank, the engines start together, the first tokens go back to prompt order."""
    size = len(results)
    first_tokens = [0] * sum(len(r["first_tokens"]) for r in results)
    for rank, result in enumerate(results):
        first_tokens[rank::size] = result["first_tokens"]
    return {
        "samples_s": [max(samples) for samples in zip(*(r["samples_s"] for r in results))],
        "startup_s": max(r["startup_s"] for r in results),
        "first_tokens": first_tokens,
    }


def run_case(name: str, spec: dict[str, Any], config: VllmBenchConfig) -> tuple[dict[str, Any], str]:
    """Runs case ``name`` in a subprocess (own process group, ``VLLM_CPU_OMP_THREADS_BIND`` set), or one per DP
    rank for a ``data_parallel`` case, bounded by ``config.timeout_s``.

    Returns (the worker's result, merged over the DP ranks by :func:`merge_dp_results`; the engine log, the
    DP ranks' one after another). Raises :class:`CaseFailed` (with the log) if it fails or times out; the
    process groups are killed either way and their engines' shared memory removed."""
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=config.cpu_bind, PYTHONUNBUFFERED="1")
    dp_size = spec.get("data_parallel", 1)
    deadline = time.monotonic() + config.timeout_s
    with tempfile.TemporaryDirectory(prefix="moecomm_vllm_dp_") as done_dir, contextlib.ExitStack() as stack:
        procs, port = [], free_port()
        for rank in range(dp_size):
            rank_spec = dict(spec, dp_rank=rank, master_port=port, done_dir=done_dir) if dp_size > 1 else spec
            cmd = [sys.executable, "-m", "moecomm.bench.vllm_throughput", "--worker", json.dumps(rank_spec)]
            run_env = stack.enter_context(engine_env(env))
            log_file = stack.enter_context(tempfile.TemporaryFile("w+"))
            proc = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=run_env
            )
            stack.callback(kill_process_group, proc)
            procs.append((proc, log_file))
        timed_out = False
        for proc, _ in procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                kill_process_group(proc)
        logs = []
        for _, log_file in procs:
            log_file.seek(0)
            logs.append(log_file.read())
    log = "\n".join(logs)
    if timed_out:
        raise CaseFailed(name, f"no result within {config.timeout_s} s (killed)", log)
    results = []
    for (proc, _), rank_log in zip(procs, logs):
        lines = [line for line in rank_log.splitlines() if line.startswith(RESULT_MARK)]
        if proc.returncode != 0 or not lines:
            raise CaseFailed(name, f"engine exited with code {proc.returncode}", log)
        results.append(json.loads(lines[-1][len(RESULT_MARK) :]))
    return (results[0] if dp_size == 1 else merge_dp_results(results)), log


class CaseFailed(RuntimeError):
    """A case's engine failed or timed out; ``log`` holds its whole output, the message its error lines."""

    def __init__(self, name: str, reason: str, log: str) -> None:
        errors = [line for line in log.splitlines() if re.search(r"Error|Exception|Segmentation|Killed", line)]
        super().__init__(
            f"case {name}: {reason}; error lines:\n" + "\n".join(errors[:30]) + f"\nlog tail:\n{log[-3000:]}"
        )
        self.log = log


def run_case_with_retry(
    name: str, spec: dict[str, Any], config: VllmBenchConfig, log_dir: str | None
) -> tuple[tuple[dict[str, Any], str] | None, list[str]]:
    """:func:`run_case`, tried a second time if the first attempt fails (engines on a shared host sometimes
    fail to start); returns ((result, log), or None when both attempts failed; the error lines of each failed
    attempt). Logs go to ``log_dir`` if given."""
    failures: list[str] = []
    for attempt in (1, 2):
        try:
            result, log = run_case(name, spec, config)
        except CaseFailed as failure:
            write_log(log_dir, f"{name}.attempt{attempt}-failed", failure.log)
            failures.append(str(failure).split("\nlog tail:")[0])
            continue
        write_log(log_dir, name, log)
        return (result, log), failures
    return None, failures


def write_log(log_dir: str | None, name: str, log: str) -> None:
    """Writes ``log`` to ``log_dir/<name with / -> _>.log`` (nothing if ``log_dir`` is None)."""
    if log_dir is not None:
        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(log_dir, name.replace("/", "_") + ".log"), "w", encoding="utf-8") as f:
            f.write(log)


def drop_stats_from_log(log: str) -> list[dict[str, float]]:
    """The plugin's drop-statistics lines in ``log`` as ``{"dropped_share", "dropped_pairs", "total_pairs",
    "max_load", "mean_load", "max_over_mean"}`` dicts, in log order."""
    return [
        {
            "dropped_share": float(m["share"]),
            "dropped_pairs": int(m["dropped"]),
            "total_pairs": int(m["total"]),
            "max_load": int(m["max"]),
            "mean_load": float(m["mean"]),
            "max_over_mean": float(m["imbalance"]),
        }
        for m in DROP_STATS_PATTERN.finditer(log)
    ]


# ---- the whole run --------------------------------------------------------------------------------------


def run_vllm_bench(
    config: VllmBenchConfig | None = None,
    *,
    model_dir: str | None = None,
    log_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Writes the checkpoint and runs every case of :func:`case_settings` one after another (see the module doc).

    Args:
        config: model shape and engine settings (default :class:`VllmBenchConfig`).
        model_dir: where to write the checkpoint (default: a temporary directory, removed afterwards).
        log_dir: if given, each case's engine log is written there as ``<case name with / -> _>.log``.
        progress: show a progress bar on stderr (one step per case).

    Returns:
        ``{"config": dict, "records": [record per case that ran], "table": markdown str, "failed_cases":
        {name: [error lines per attempt]}}``; a record is
        :func:`moecomm.bench.report.timing_record` (section ``"vllm"``, samples = seconds per ``generate``
        call) plus ``tokens_per_s`` (median), ``startup_s``, ``same_first_tokens_as_in_tree`` ("n/N"; None
        when the in-tree case failed),
        and for moecomm cases ``drop_stats`` (the logged lines, one per engine step, parsed),
        ``logged_dropped_share`` (dropped / total pairs over the logged steps) and ``logged_max_over_mean``
        (the largest max/mean rows received per EP rank of a logged step). Ratios: ``speedup_vs_in-tree/tp2`` (> 1 =
        faster) and for the dropping case ``speedup_vs_moecomm/tp2-ep2-dropless``.

        Every record also has ``failed_attempts``: the error lines of a failed first attempt (a case is
        tried twice), or ``[]``. ``failed_cases`` maps each case that failed twice to the error lines of both
        attempts; the other cases are still measured and summarised (ratios only against peers that ran).
    """
    from moecomm.bench.progress import progress_task

    config = VllmBenchConfig() if config is None else config
    if not isinstance(config, VllmBenchConfig):
        raise TypeError(f"config: expected a VllmBenchConfig, got {type(config).__name__}")
    settings = case_settings(config)
    with tempfile.TemporaryDirectory(prefix="moecomm_vllm_bench_") as scratch:
        model = write_mixtral_checkpoint(model_dir or os.path.join(scratch, "model"), config)
        results: dict[str, tuple[dict[str, Any], str]] = {}
        failures: dict[str, list[str]] = {}
        description = f"vllm (TP={config.tensor_parallel}, {len(settings)} engines)"
        with progress_task(description, len(settings), progress) as advance:
            for name, setting in settings.items():
                spec = {"model": model, "config": asdict(config), **setting}
                outcome, failures[name] = run_case_with_retry(name, spec, config, log_dir)
                if outcome is not None:
                    results[name] = outcome
                advance()
    summary = summarise(config, results)
    for record in summary["records"]:
        record["failed_attempts"] = failures[record["name"]]
    summary["failed_cases"] = {name: failures[name] for name in settings if name not in results}
    return summary


def summarise(config: VllmBenchConfig, results: dict[str, tuple[dict[str, Any], str]]) -> dict[str, Any]:
    """Records and table from the cases' ``(worker result, log)`` (see :func:`run_vllm_bench`); cases missing
    from ``results`` (failed) are left out, and so are the ratios and first-token matches against them."""
    settings = case_settings(config)
    names = list(settings)
    in_tree, dropless = names[0], names[1]
    timings = {name: Timing(tuple(result["samples_s"])) for name, (result, _) in results.items()}
    reference_tokens = results[in_tree][0]["first_tokens"] if in_tree in results else None
    records = []
    for name, (result, log) in results.items():
        median = timings[name].median
        peers = [in_tree] if name in (in_tree, dropless) else [in_tree, dropless]
        ratios = {f"speedup_vs_{peer}": timings[peer].median / median for peer in peers if peer in timings}
        same = None
        if reference_tokens is not None:  # a failed in-tree case has no tokens to compare with
            matches = sum(a == b for a, b in zip(result["first_tokens"], reference_tokens))
            same = f"{matches}/{len(reference_tokens)}"
        extra: dict[str, Any] = {
            "tokens_per_s": config.batch_tokens / median,
            "startup_s": result["startup_s"],
            "same_first_tokens_as_in_tree": same,
            "moecomm": settings[name]["moecomm"],
        }
        if settings[name]["ep"]:
            # One line per engine step (one per call: the in-process engine core queues a call's prompts
            # before it steps); every call runs the same prompts, so all logged steps (warm-up and timed) are
            # summed. The last step is only flushed by a later one.
            stats = drop_stats_from_log(log)
            total = sum(s["total_pairs"] for s in stats)
            extra["drop_stats"] = stats
            extra["logged_dropped_share"] = sum(s["dropped_pairs"] for s in stats) / total if total else None
            extra["logged_max_over_mean"] = max((s["max_over_mean"] for s in stats), default=None)
        records.append(timing_record("vllm", name, timings[name], config=asdict(config), ratios=ratios, extra=extra))
    return {"config": asdict(config), "records": records, "table": vllm_table(records)}


def vllm_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per case (tokens/s from the median call; speedups measured in the same run)."""
    rows = [
        [
            r["name"],
            r["tokens_per_s"],
            tokens_per_s_at(r, "p90_s"),
            tokens_per_s_at(r, "p10_s"),
            r["median_s"],
            ", ".join(f"{v:.2f}x vs {k.removeprefix('speedup_vs_')}" for k, v in r["ratios"].items()),
            r.get("logged_dropped_share"),
            r.get("logged_max_over_mean"),
            r["same_first_tokens_as_in_tree"],
            r["startup_s"],
        ]
        for r in records
    ]
    return markdown_table(
        [
            "case",
            "tokens/s (median)",
            "tokens/s (p10)",
            "tokens/s (p90)",
            "s per call",
            "speedup (same run)",
            "dropped share (logged)",
            "max/mean load per EP rank",
            "first token = in-tree",
            "engine start s",
        ],
        rows,
    )


def tokens_per_s_at(record: dict[str, Any], time_key: str) -> float:
    """Tokens/s of ``record`` at its ``time_key`` time (``p90_s`` gives the p10 throughput)."""
    return record["config"]["num_prompts"] * record["config"]["prompt_len"] / record[time_key]


# ---- flags (shared by bench/vllm_throughput.py and, later, ``moecomm bench vllm``) ----------------------


def add_vllm_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the benchmark's flags (defaults from :class:`VllmBenchConfig`) to ``parser``."""
    from moecomm.bench.cli import drop_ratio, non_negative_int, positive_float, positive_int

    d = VllmBenchConfig()
    add = parser.add_argument
    add("--hidden", type=positive_int, default=d.hidden, help=f"hidden size H (default {d.hidden})")
    add(
        "--intermediate",
        type=positive_int,
        default=d.intermediate,
        help=f"expert FFN size I (default {d.intermediate})",
    )
    add("--experts", type=positive_int, default=d.num_experts, help=f"experts E (default {d.num_experts})")
    add("--top-k", type=positive_int, default=d.top_k, help=f"experts per token K (default {d.top_k})")
    add("--layers", type=positive_int, default=d.num_layers, help=f"decoder layers (default {d.num_layers})")
    add(
        "--tp",
        type=positive_int,
        default=d.tensor_parallel,
        help=f"tensor parallel size = EP size (default {d.tensor_parallel})",
    )
    add(
        "--drop-ratio",
        type=drop_ratio,
        default=d.drop_ratio,
        help=f"token_drop_ratio of the dropping case, in (0, 1) (default {d.drop_ratio})",
    )
    add("--dtype", choices=tuple(VLLM_DTYPES), default=d.dtype, help=f"weights and activations (default {d.dtype})")
    add("--prompts", type=positive_int, default=d.num_prompts, help=f"prompts per call (default {d.num_prompts})")
    add("--prompt-len", type=positive_int, default=d.prompt_len, help=f"tokens per prompt (default {d.prompt_len})")
    add("--repeats", type=positive_int, default=d.repeats, help=f"timed generate calls per case (default {d.repeats})")
    add("--warmup", type=non_negative_int, default=d.warmup, help=f"untimed calls first (default {d.warmup})")
    add("--seed", type=non_negative_int, default=d.seed, help=f"weights and prompts seed (default {d.seed})")
    add("--cpu-bind", default=d.cpu_bind, help=f"VLLM_CPU_OMP_THREADS_BIND of each engine (default {d.cpu_bind!r})")
    add(
        "--timeout",
        type=positive_float,
        default=d.timeout_s,
        help=f"seconds before a case is killed (default {d.timeout_s:g})",
    )


def config_from_args(args: argparse.Namespace) -> VllmBenchConfig:
    """The :class:`VllmBenchConfig` of parsed flags; raises ValueError naming a bad or inconsistent value."""
    return VllmBenchConfig(
        hidden=args.hidden,
        intermediate=args.intermediate,
        num_experts=args.experts,
        top_k=args.top_k,
        num_layers=args.layers,
        tensor_parallel=args.tp,
        drop_ratio=args.drop_ratio,
        dtype=args.dtype,
        num_prompts=args.prompts,
        prompt_len=args.prompt_len,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        cpu_bind=args.cpu_bind,
        timeout_s=args.timeout,
    )


if __name__ == "__main__":
    # Case subprocess: python -m moecomm.bench.vllm_throughput --worker '<json spec>'
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        sys.exit(
            "usage: python -m moecomm.bench.vllm_throughput --worker '<json spec>' (run by run_vllm_bench; "
            "to benchmark, run bench/vllm_throughput.py)"
        )
    print(RESULT_MARK + json.dumps(engine_worker(json.loads(sys.argv[2]))), flush=True)
