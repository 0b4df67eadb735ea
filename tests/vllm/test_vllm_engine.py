"""End-to-end tests of the vLLM plugin: offline engines and ``vllm serve`` on tiny MoE checkpoints.

Each engine runs in its own process group (vLLM spawns workers), bounded by a timeout and killed afterwards.
Outputs are compared as prompt logprobs (log-softmax of the logits), not sampled tokens.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from vllm_procs import (  # noqa: E402
    HERE,
    free_port,
    run_bounded,
    run_dp_engines,
    run_driver,
    serve_one_completion,
    server_cmd,
)
from vllm_tiny_models import prompts, write_tiny_moe  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(900)]

ACTIVE_LINE = "MoE expert parallel through moecomm"
INACTIVE_LINE = "--enable-expert-parallel is not set"
TOLERANCE = 1e-4  # float32 end to end; observed differences are ~3e-6


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("moe_models")
    return {arch: write_tiny_moe(str(root / arch), arch) for arch in ("mixtral", "qwen3_moe")}


@pytest.fixture(scope="module")
def runs(models, tmp_path_factory):
    """Memoised driver runs: (arch, tp, ep, moecomm settings, other top-level keys) -> (result, log)."""
    cache: dict = {}
    out_dir = tmp_path_factory.mktemp("runs")

    def run(arch: str, tp: int, ep: bool, moecomm: dict | None = None, top_level: dict | None = None):
        key = (arch, tp, ep, repr(moecomm), repr(top_level))
        if key not in cache:
            spec = {
                "model": models[arch],
                "tp": tp,
                "ep": ep,
                "prompts": prompts(),
                "additional_config": ({"moecomm": moecomm} if moecomm is not None else {}) | (top_level or {}),
                "out": str(out_dir / f"run{len(cache)}.json"),
                "max_tokens": 2,
            }
            cache[key] = run_driver(spec, timeout_s=400)
        return cache[key]

    return run


def assert_same_logprobs(actual: list, expected: list) -> None:
    assert len(actual) == len(expected)
    compared = 0
    for prompt, got, want in zip(prompts(), actual, expected):
        positions = zip(got["prompt_logprobs"], want["prompt_logprobs"])
        for position, (got_lp, want_lp) in enumerate(positions):
            if want_lp is None:
                assert got_lp is None
                continue
            assert str(prompt[position]) in got_lp and str(prompt[position]) in want_lp
            for token, value in want_lp.items():
                if token in got_lp:
                    assert abs(got_lp[token] - value) <= TOLERANCE, (position, token, got_lp[token], value)
                    compared += 1
    assert compared >= sum(len(p) - 1 for p in prompts())


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe"])
def test_vllm_tp1_moecomm_equals_in_tree(runs, arch):
    in_tree, in_tree_log = runs(arch, tp=1, ep=False)
    through_moecomm, moecomm_log = runs(arch, tp=1, ep=True, moecomm={"dispatcher": "alltoallv"})
    assert INACTIVE_LINE in in_tree_log and ACTIVE_LINE not in in_tree_log
    assert ACTIVE_LINE in moecomm_log
    assert_same_logprobs(through_moecomm, in_tree)


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe"])
@pytest.mark.parametrize("expert_parallel", [1, 2])
def test_vllm_tp2_expert_parallel_layouts_equal_dense_reference(runs, arch, expert_parallel):
    """TP=2: EP degree 2 (each rank 4 whole experts) and 1 (each rank half of all 8: MoE tensor parallel)."""
    dense, _ = runs(arch, tp=1, ep=False)  # one process, all experts, vLLM's own MoE kernel
    settings = {"dispatcher": "alltoallv", "log_stats_every": 1}
    where = {"expert_parallel": expert_parallel} if arch == "mixtral" else {}  # both places the key is read
    moecomm = settings | ({} if where else {"expert_parallel": expert_parallel})
    result, log = runs(arch, tp=2, ep=True, moecomm=moecomm, top_level=where)
    moe_tp = 2 // expert_parallel
    layout = f"EP degree {expert_parallel}, MoE-TP degree {moe_tp}, {8 // expert_parallel} local experts of 8"
    assert log.count(layout) == 2, log[-4000:]  # once per worker
    for rank in range(2):
        assert f"EP rank {rank // moe_tp}/{expert_parallel} (MoE-TP {rank % moe_tp}/{moe_tp}" in log
    assert all(len(r["generated"]) == 2 for r in result)
    assert "moecomm drop stats" in log and "dropped share 0.0000" in log
    assert_same_logprobs(result, dense)
    dense_tokens = [r["generated"] for r in dense]
    assert [r["generated"] for r in result] == dense_tokens


@pytest.mark.parametrize("expert_parallel", [None, 1])
def test_vllm_dp2_offline_all_busy_equals_dense_reference(runs, models, tmp_path, expert_parallel):
    """vLLM's offline data parallel (one process per DP rank), both ranks busy: EP 2 (default) and MoE-TP 2."""
    dense, _ = runs("mixtral", tp=1, ep=False)
    additional = {"moecomm": {"dispatcher": "alltoallv", "log_stats_every": 1}}
    if expert_parallel is not None:
        additional["expert_parallel"] = expert_parallel
    spec = {"model": models["mixtral"], "ep": True, "additional_config": additional, "max_tokens": 2}
    ps = prompts()
    per_rank, log = run_dp_engines(spec, [ps[0::2], ps[1::2]], str(tmp_path), timeout_s=400)
    ep_size = expert_parallel or 2
    layout = f"EP degree {ep_size}, MoE-TP degree {2 // ep_size}, {8 // ep_size} local experts of 8"
    assert log.count(layout) == 2 and "DP 0/2" in log and "DP 1/2" in log, log[-4000:]
    assert "moecomm drop stats" in log
    generated = {0: per_rank[0][0], 2: per_rank[0][1], 1: per_rank[1][0]}
    for i, result in generated.items():
        assert result["generated"] == dense[i]["generated"], (i, result, dense[i]["generated"])


def test_vllm_serve_dp2_one_busy_one_idle_equals_dense_reference(runs, models):
    """``--data-parallel-size 2``: one request, so one DP engine serves it while the other runs vLLM's dummy
    batches, whose MoE layers join every step with zero tokens (padding rows are not dispatched)."""
    dense, _ = runs("mixtral", tp=1, ep=False)
    port = free_port()
    settings = {"moecomm": {"dispatcher": "alltoallv", "log_stats_every": 1}}
    body = {"model": models["mixtral"], "prompt": prompts()[0], "max_tokens": 2, "temperature": 0}
    response, log = serve_one_completion(
        server_cmd(models["mixtral"], port, tp=1, dp=2, additional_config=settings),
        port,
        body | {"return_token_ids": True},
        timeout_s=400,
        env=dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="0|1"),
    )
    assert "DP 0/2" in log and "DP 1/2" in log and log.count("EP degree 2, MoE-TP degree 1") == 2, log[-4000:]
    assert response["choices"][0]["token_ids"] == dense[0]["generated"]


def _drop_shares(log: str) -> list[float]:
    return [float(line.split("dropped share ")[1].split()[0]) for line in log.splitlines() if "dropped share" in line]


def test_vllm_serve_answers_completion_with_drops(models):
    port = free_port()
    settings = {"moecomm": {"dispatcher": "alltoallv", "token_drop_ratio": 0.2, "log_stats_every": 1}}
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="0|1")
    prompt = prompts(1, length=20)[0]
    response, log = serve_one_completion(
        server_cmd(models["mixtral"], port, tp=2, additional_config=settings),
        port,
        {"model": models["mixtral"], "prompt": prompt, "max_tokens": 3, "temperature": 0},
        timeout_s=400,
        env=env,
    )
    assert response["usage"]["prompt_tokens"] == len(prompt)
    assert response["usage"]["completion_tokens"] == 3
    shares = _drop_shares(log)
    assert shares and max(shares) > 0.1, log[-4000:]  # the 20-token prefill drops ~20% of its pairs
    assert all(share <= 0.2 + 1e-9 for share in shares)


def test_vllm_serve_bad_additional_config_exits_with_message(models):
    port = free_port()
    cmd = server_cmd(models["mixtral"], port, tp=2, additional_config={"moecomm": {"dispatcher": "alltoallx"}})
    code, log = run_bounded(cmd, timeout_s=300, env=dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="0|1"))
    assert code != 0
    assert (
        "key \"moecomm\": dispatcher: expected one of 'alltoallv', 'alltoallv-pairs', 'alltoall', 'allgather', got 'alltoallx'"
        in log
    )


def test_vllm_bad_expert_parallel_stops_startup_before_workers(models, tmp_path):
    """TP=2, ``expert_parallel`` 3: refused while the engine config is built, before any worker process starts."""
    spec = {
        "model": models["mixtral"],
        "tp": 2,
        "ep": True,
        "prompts": prompts(1),
        "additional_config": {"expert_parallel": 3, "moecomm": {"dispatcher": "alltoallv"}},
        "out": str(tmp_path / "never.json"),
    }
    code, log = run_bounded([sys.executable, os.path.join(HERE, "vllm_driver.py"), json.dumps(spec)], timeout_s=300)
    assert code != 0
    assert 'key "expert_parallel": the EP degree 3 must divide TP x DP = 2' in log, log[-4000:]
    assert "Worker" not in log and "EngineCore" not in log  # no engine process, no worker, no weights loaded
