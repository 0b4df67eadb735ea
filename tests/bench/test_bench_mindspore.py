"""moecomm bench mindspore: the summary takes the slowest rank per step; a tiny run prints the table of
both transports with identical outputs (needs the MindSpore environment)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moecomm.bench.mindspore_cli import main, summarize

MS_PYTHON = Path(__file__).resolve().parents[2] / ".venv-mindspore" / "bin" / "python"


def test_summary_takes_the_slowest_rank_of_each_step():
    shape = {"tokens": 4, "hidden": 8, "dtype": "float32"}
    ranks = [
        {"samples": {"shm": [0.001, 0.004, 0.002], "mindspore": [0.010, 0.030, 0.020]}, "max_abs_diff": 0.0},
        {"samples": {"shm": [0.003, 0.001, 0.002], "mindspore": [0.040, 0.010, 0.020]}, "max_abs_diff": 0.5},
    ]
    result = summarize(shape, ranks)
    assert result["timings_ms"]["shm"] == pytest.approx([3.0, 4.0, 2.0])
    assert result["timings_ms"]["mindspore"] == pytest.approx([40.0, 30.0, 20.0])
    assert result["max_abs_diff_between_transports"] == 0.5
    shm_row = next(line for line in result["table"].splitlines() if line.startswith("| shm |"))
    assert shm_row.split("|")[2].strip() == "3" and shm_row.split("|")[6].strip() == "10"


def test_missing_mindspore_python_is_a_flag_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--python", "/nonexistent/python"])
    assert exited.value.code == 2
    assert "argument --python: /nonexistent/python does not exist" in capsys.readouterr().err


@pytest.mark.mindspore
def test_tiny_run_prints_both_transports(capsys):
    if not MS_PYTHON.exists():
        pytest.skip("no MindSpore environment (.venv-mindspore, made by scripts/setup.sh)")
    assert (
        main(
            [
                "--python",
                str(MS_PYTHON),
                "--tokens",
                "32",
                "--hidden",
                "16",
                "--repeats",
                "2",
                "--warmup",
                "0",
                "--drop-ratio",
                "0.1",
                "--timeout",
                "240",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| shm |" in printed and "| mindspore |" in printed
    assert "max abs diff between the transports' outputs: 0." in printed
