"""A tiny `moecomm bench all --quick` run: valid JSON with every section, non-empty PNGs, exit code 0."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXPECTED_PLOTS = (
    "kernels_gbps.png",
    "dispatch_time.png",
    "drop_step_time.png",
    "drop_output_error.png",
    "simulate_ep.png",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench") / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "moecomm.bench",
        "all",
        "--quick",
        "--no-progress",
        "--no-megatron",
        "--out",
        str(out),
        "--timeout",
        "240",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    return completed, out


def test_bench_cli_quick_run_exits_0(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    completed, _ = quick_run
    assert completed.returncode == 0, completed.stderr[-4000:]


def test_bench_cli_quick_run_json_has_every_section(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = quick_run
    document = json.loads((out / "all.json").read_text())
    assert document["command"].startswith("moecomm bench all")
    assert document["machine"]["logical_cores"] >= 1
    sections = document["sections"]
    assert set(sections) == {"kernels", "dispatch", "drop", "simulate"}
    for name, section in sections.items():
        assert section["records"], name
    kernel_names = {r["name"] for r in sections["kernels"]["records"]}
    assert {"permute/native", "permute/reference", "unpermute/native", "memcpy/prealloc"} <= kernel_names
    assert all(sections["kernels"]["facts"]["checks"].values())
    for record in sections["kernels"]["records"] + sections["dispatch"]["records"] + sections["drop"]["records"]:
        assert record["p10_s"] <= record["median_s"] <= record["p90_s"]
        assert all(math.isfinite(s) and s > 0 for s in record["samples_s"])
    dispatchers = {r["name"] for r in sections["dispatch"]["records"]}
    # --no-megatron drops the Megatron-Core peers; alltoallv-pairs-fresh runs once make_dispatcher takes fresh_buffers
    assert {"alltoallv/torch", "alltoall/torch", "allgather/torch", "torch-alltoallv", "shm-copy"} <= dispatchers
    assert not any(name.startswith("megatron-") for name in dispatchers)
    # Dropless dispatchers match the dense identity-expert result (bf16 rounding only).
    for record in sections["dispatch"]["records"]:
        if record["name"] != "shm-copy":
            assert record["relative_error_vs_dense"] < 2e-2
        assert record["minor_faults_per_step"] >= 0 and record["moved_pages"] > 0
        assert record["bytes_must_cross_per_step"] > 0
    assert sections["simulate"]["traffic"]["records"]
    for record in sections["drop"]["records"]:
        assert 0.0 <= record["dropped_share"] <= record["token_drop_ratio"] + 1e-12
        if record["token_drop_ratio"] == 0:
            assert record["dropped_share"] == 0 and record["relative_error"] == 0
    assert sections["simulate"]["assumptions"]


def test_bench_cli_quick_run_writes_png_plots(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = quick_run
    for name in EXPECTED_PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
    markdown = (out / "all.md").read_text()
    for section in ("## kernels", "## dispatch", "## drop", "## simulate"):
        assert section in markdown
