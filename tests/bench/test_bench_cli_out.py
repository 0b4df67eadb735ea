"""`moecomm bench --out`: an unwritable folder exits 2 naming --out before any benchmark runs."""

from __future__ import annotations

from pathlib import Path

import pytest

import moecomm.bench.runner as runner
from moecomm.bench.cli import main as bench_main


@pytest.fixture
def no_benchmarks(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Replaces the runner: records a call instead of running minutes of benchmarks."""
    calls: list[object] = []

    def fake_run_command(args, command):
        calls.append(args.out)
        return []

    monkeypatch.setattr(runner, "run_command", fake_run_command)
    return calls


def test_out_under_a_file_exits_2_before_any_work(tmp_path: Path, no_benchmarks, capsys) -> None:
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["simulate", "--quick", "--out", str(blocker / "bench")])
    assert exit_info.value.code == 2
    assert "--out" in capsys.readouterr().err
    assert no_benchmarks == []


def test_out_that_is_a_file_exits_2(tmp_path: Path, no_benchmarks, capsys) -> None:
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["kernels", "--quick", "--out", str(blocker)])
    assert exit_info.value.code == 2
    assert "argument --out" in capsys.readouterr().err
    assert no_benchmarks == []


def test_missing_out_folder_is_created_then_the_run_starts(tmp_path: Path, no_benchmarks) -> None:
    target = tmp_path / "a" / "b"
    assert bench_main(["simulate", "--quick", "--out", str(target)]) == 0
    assert target.is_dir() and list(target.iterdir()) == []  # the write check leaves nothing behind
    assert no_benchmarks == [target]
