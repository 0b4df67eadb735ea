"""vLLM throughput benchmark: flags, config validation, checkpoint, prompts and log parsing (no engine starts)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moecomm.bench import vllm_throughput
from moecomm.bench.vllm_throughput import (
    VllmBenchConfig,
    additional_config,
    case_settings,
    drop_stats_from_log,
    make_prompts,
    max_model_len,
    merge_dp_results,
    summarise,
    write_mixtral_checkpoint,
)

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "vllm_throughput.py"


def load_script():
    spec = importlib.util.spec_from_file_location("vllm_throughput_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> list:
    """Replaces run_vllm_bench so no test can start vLLM; records the configs it was called with."""
    calls: list = []

    def fake_run(config, **kwargs):
        calls.append((config, kwargs))
        return {"config": {}, "records": [], "table": "| fake |", "failed_cases": {}}

    monkeypatch.setattr(vllm_throughput, "run_vllm_bench", fake_run)
    return calls


@pytest.mark.parametrize(
    ("overrides", "argument"),
    [
        ({"hidden": 0}, "hidden"),
        ({"num_experts": 33}, "num_experts"),  # not divisible by TP=2
        ({"tensor_parallel": 1}, "tensor_parallel"),
        ({"num_heads": 3}, "num_heads"),
        ({"top_k": 40}, "top_k"),
        ({"drop_ratio": 0.0}, "drop_ratio"),
        ({"drop_ratio": 1.0}, "drop_ratio"),
        ({"dtype": "fp16"}, "dtype"),
        ({"repeats": 0}, "repeats"),
        ({"warmup": -1}, "warmup"),
        ({"cpu_bind": ""}, "cpu_bind"),
        ({"timeout_s": 0}, "timeout_s"),
    ],
)
def test_config_rejects_bad_values_naming_the_argument(overrides: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        VllmBenchConfig(**overrides)


@pytest.mark.parametrize(
    "argv",
    [
        ["--drop-ratio", "0"],
        ["--drop-ratio", "1.5"],
        ["--experts", "7"],
        ["--dtype", "int8"],
        ["--tp", "1"],
        ["--repeats", "0"],
        ["--prompt-len", "abc"],
        ["--timeout", "-1"],
        ["--top-k", "64"],
    ],
)
def test_script_rejects_bad_flags_with_exit_code_2(
    argv: list[str], no_engine: list, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_script().main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip()
    assert no_engine == []


def test_script_flags_reach_the_config(no_engine: list, tmp_path: Path) -> None:
    argv = [
        "--hidden",
        "512",
        "--intermediate",
        "256",
        "--experts",
        "8",
        "--top-k",
        "2",
        "--layers",
        "1",
        "--drop-ratio",
        "0.25",
        "--dtype",
        "fp32",
        "--prompts",
        "4",
        "--prompt-len",
        "100",
        "--repeats",
        "5",
        "--warmup",
        "0",
        "--seed",
        "7",
        "--cpu-bind",
        "2|3",
        "--timeout",
        "99",
        "--log-dir",
        str(tmp_path),
        "--no-progress",
    ]
    assert load_script().main(argv) == 0
    ((config, kwargs),) = no_engine
    assert config == VllmBenchConfig(
        hidden=512,
        intermediate=256,
        num_experts=8,
        top_k=2,
        num_layers=1,
        drop_ratio=0.25,
        dtype="fp32",
        num_prompts=4,
        prompt_len=100,
        repeats=5,
        warmup=0,
        seed=7,
        cpu_bind="2|3",
        timeout_s=99.0,
    )
    assert kwargs == {"model_dir": None, "log_dir": str(tmp_path), "progress": False}


def test_case_settings_compare_in_tree_with_moecomm_dropless_dropping_and_layouts() -> None:
    cases = case_settings(VllmBenchConfig(drop_ratio=0.2))
    assert list(cases) == [
        "in-tree/tp2",
        "moecomm/tp2-ep2-dropless",
        "moecomm/tp2-ep2-drop0.2",
        "moecomm/tp2-ep1-dropless",
        "moecomm/dp2-ep2-dropless",
    ]
    assert cases["in-tree/tp2"] == {"ep": False, "moecomm": None}
    assert [cases[n]["moecomm"]["token_drop_ratio"] for n in list(cases)[1:]] == [0.0, 0.2, 0.0, 0.0]
    from moecomm import MoECommConfig
    from moecomm.integrations.vllm.settings import parse_expert_parallel, parse_plugin_config

    for name in list(cases)[1:]:  # the plugin must accept the settings
        assert MoECommConfig.from_dict(cases[name]["moecomm"]).dispatcher == "alltoallv"
        assert parse_plugin_config(additional_config(cases[name])) == MoECommConfig.from_dict(cases[name]["moecomm"])
    assert parse_expert_parallel(additional_config(cases["moecomm/tp2-ep1-dropless"]), 2) == 1
    assert parse_expert_parallel(additional_config(cases["moecomm/tp2-ep2-dropless"]), 2) == 2
    assert cases["moecomm/dp2-ep2-dropless"]["data_parallel"] == 2
    assert additional_config(cases["in-tree/tp2"]) == {}


def test_dp_results_merge_in_prompt_order_and_slowest_rank() -> None:
    rank0 = {"samples_s": [1.0, 2.0], "startup_s": 5.0, "first_tokens": [10, 12, 14]}
    rank1 = {"samples_s": [1.5, 1.0], "startup_s": 4.0, "first_tokens": [11, 13]}
    merged = merge_dp_results([rank0, rank1])
    assert merged == {"samples_s": [1.5, 2.0], "startup_s": 5.0, "first_tokens": [10, 11, 12, 13, 14]}


@settings(max_examples=25, deadline=None)
@given(num_prompts=st.integers(1, 8), prompt_len=st.integers(1, 700), vocab=st.integers(2, 300), seed=st.integers(0, 5))
def test_prompts_are_seeded_and_in_range(num_prompts: int, prompt_len: int, vocab: int, seed: int) -> None:
    config = VllmBenchConfig(num_prompts=num_prompts, prompt_len=prompt_len, vocab=vocab, seed=seed)
    prompts = make_prompts(config)
    assert prompts == make_prompts(config)
    ids = torch.tensor(prompts)
    assert ids.shape == (num_prompts, prompt_len)
    assert int(ids.min()) >= 0 and int(ids.max()) < vocab
    assert prompt_len < max_model_len(config) and max_model_len(config) % 256 == 0


def test_checkpoint_loads_into_transformers_mixtral(tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import MixtralForCausalLM

    config = VllmBenchConfig(
        hidden=64,
        intermediate=32,
        num_experts=4,
        top_k=2,
        num_layers=2,
        num_heads=2,
        head_dim=32,
        vocab=50,
        dtype="fp32",
    )
    model_dir = write_mixtral_checkpoint(str(tmp_path / "m"), config)
    model, info = MixtralForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    hf = model.config
    assert (
        hf.hidden_size,
        hf.intermediate_size,
        hf.num_local_experts,
        hf.num_experts_per_tok,
        hf.num_hidden_layers,
        hf.num_attention_heads,
        hf.head_dim,
        hf.vocab_size,
    ) == (64, 32, 4, 2, 2, 2, 32, 50)
    assert json.loads((Path(model_dir) / "config.json").read_text())["torch_dtype"] == "float32"
    weights = load_file(str(Path(model_dir) / "model.safetensors"))
    again = load_file(str(Path(write_mixtral_checkpoint(str(tmp_path / "m2"), config)) / "model.safetensors"))
    assert all(torch.equal(weights[k], again[k]) for k in weights)  # seeded: TP runs load the same model


def test_drop_stats_parsed_from_the_plugins_log_line() -> None:
    from moecomm.comm.handle import DropStats
    from moecomm.integrations.vllm.stats_log import DropStatsLog

    lines: list[str] = []
    log = DropStatsLog(every=1, rank=0, emit=lines.append)
    steps = [(10, 200, [100, 90]), (0, 100, [60, 40]), (3, 50, [30, 17])]
    for dropped, total, received in steps + [(0, 1, [1, 0])]:  # the extra step flushes the last one
        for layer in ("l0", "l1"):
            log.record(layer, DropStats(dropped, total, 0, torch.tensor(received), None, None))
    parsed = drop_stats_from_log("noise\n" + "\n".join(f"(Worker pid=1) INFO {line}" for line in lines))
    assert [(p["dropped_pairs"], p["total_pairs"]) for p in parsed] == [(2 * d, 2 * t) for d, t, _ in steps]
    assert [p["max_load"] for p in parsed] == [2 * max(r) for _, _, r in steps]
    for p, (_, _, received) in zip(parsed, steps):
        assert p["max_over_mean"] == pytest.approx(max(received) / (sum(received) / len(received)), abs=1e-3)


def test_summary_ratios_tokens_per_s_and_drop_share() -> None:
    config = VllmBenchConfig(num_prompts=2, prompt_len=10, repeats=3)
    names = list(case_settings(config))
    line = (
        "moecomm drop stats (steps 1-1, 2 MoE layer calls): dropped share {s:.4f} ({d}/{t} pairs), "
        "load per EP rank max 5 mean 4.0 (max/mean 1.250), received per rank [5, 3]"
    )
    results = {
        names[0]: ({"samples_s": [2.0, 1.0, 3.0], "startup_s": 1.0, "first_tokens": [1, 2]}, ""),
        names[1]: (
            {"samples_s": [1.0, 0.5, 0.25], "startup_s": 1.0, "first_tokens": [1, 2]},
            line.format(s=0, d=0, t=40),
        ),
        names[2]: (
            {"samples_s": [0.25, 0.25, 0.25], "startup_s": 1.0, "first_tokens": [1, 3]},
            line.format(s=0.1, d=4, t=40) + "\n" + line.format(s=0.05, d=1, t=20),
        ),
    }
    records = {r["name"]: r for r in summarise(config, results)["records"]}
    assert records[names[0]]["tokens_per_s"] == pytest.approx(20 / 2.0)
    assert records[names[1]]["ratios"] == {f"speedup_vs_{names[0]}": pytest.approx(2.0 / 0.5)}
    assert records[names[2]]["ratios"][f"speedup_vs_{names[1]}"] == pytest.approx(0.5 / 0.25)
    assert records[names[2]]["logged_dropped_share"] == pytest.approx(5 / 60)
    assert records[names[2]]["same_first_tokens_as_in_tree"] == "1/2"
    assert "logged_dropped_share" not in records[names[0]]


def test_a_case_failing_twice_leaves_the_others_measured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One case's engine fails on both attempts, another only on its first: the run still measures every other
    case, reports the failures, and the script exits with code 1."""
    config = VllmBenchConfig(num_prompts=2, prompt_len=10, repeats=3)
    names = list(case_settings(config))
    broken, flaky = names[2], names[3]
    attempts: dict[str, int] = {}

    def fake_case(name, spec, config):
        attempts[name] = attempts.get(name, 0) + 1
        if name == broken or (name == flaky and attempts[name] == 1):
            raise vllm_throughput.CaseFailed(
                name, f"engine exited with code 1 (try {attempts[name]})", "RuntimeError: x"
            )
        seconds = 2.0 if name == names[0] else 1.0
        return {"samples_s": [seconds] * 3, "startup_s": 1.0, "first_tokens": [1, 2]}, ""

    monkeypatch.setattr(vllm_throughput, "run_case", fake_case)
    monkeypatch.setattr(vllm_throughput, "write_mixtral_checkpoint", lambda model_dir, config: model_dir)
    result = vllm_throughput.run_vllm_bench(config, progress=False)
    assert attempts == {name: 2 if name in (broken, flaky) else 1 for name in names}
    assert [r["name"] for r in result["records"]] == [n for n in names if n != broken]
    assert list(result["failed_cases"]) == [broken]
    assert [("try 1" in line, "try 2" in line) for line in result["failed_cases"][broken]] == [
        (True, False),
        (False, True),
    ]
    records = {r["name"]: r for r in result["records"]}
    assert len(records[flaky]["failed_attempts"]) == 1 and records[names[1]]["failed_attempts"] == []
    assert records[flaky]["ratios"] == {f"speedup_vs_{names[0]}": 2.0, f"speedup_vs_{names[1]}": 1.0}
    assert broken not in result["table"]

    script = load_script()
    monkeypatch.setattr(vllm_throughput, "run_vllm_bench", lambda config, **kwargs: result)
    assert script.main(["--json", str(tmp_path / "vllm.json")]) == 1
    assert json.loads((tmp_path / "vllm.json").read_text())


def test_summary_without_the_in_tree_case_has_no_ratios_against_it() -> None:
    config = VllmBenchConfig(num_prompts=2, prompt_len=10, repeats=3)
    names = list(case_settings(config))
    results = {
        name: ({"samples_s": [1.0, 1.0, 1.0], "startup_s": 1.0, "first_tokens": [1, 2]}, "") for name in names[1:]
    }
    records = {r["name"]: r for r in summarise(config, results)["records"]}
    assert records[names[1]]["ratios"] == {}
    assert records[names[2]]["ratios"] == {f"speedup_vs_{names[1]}": 1.0}
    assert all(r["same_first_tokens_as_in_tree"] is None for r in records.values())
