"""`moecomm bench` flag parsing: bad values exit with code 2 and name the flag."""

from __future__ import annotations

import pytest

from moecomm.bench.cli import build_parser, main as bench_main
from moecomm.cli import main as moecomm_main

BAD_FLAGS = [
    (["kernels", "--tokens", "0"], "--tokens"),
    (["kernels", "--tokens", "abc"], "--tokens"),
    (["kernels", "--hidden", "-4"], "--hidden"),
    (["kernels", "--dtype", "int8"], "--dtype"),
    (["kernels", "--repeats", "0"], "--repeats"),
    (["kernels", "--warmup", "-1"], "--warmup"),
    (["kernels", "--top-k", "9", "--experts", "8"], "--top-k"),
    (["kernels", "--allocator", "jemalloc"], "--allocator"),
    (["kernels", "--threads", "0"], "--threads"),
    (["dispatch", "--ranks", "3", "--experts", "64"], "--ranks"),
    (["dispatch", "--dispatchers", "alltoallv,nccl"], "--dispatchers"),
    (["dispatch", "--timeout", "0"], "--timeout"),
    (["drop", "--ratios", "0,1.0"], "--ratios"),
    (["drop", "--ratios", "0,,0.1"], "--ratios"),
    (["drop", "--ratios", "-0.1"], "--ratios"),
    (["drop", "--skews", "-1"], "--skews"),
    (["drop", "--routing", "hot", "--skews", "0.5"], "--skews"),
    (["drop", "--compute", "gpu"], "--compute"),
    (["simulate", "--ep-sizes", "16,48"], "--ep-sizes"),
    (["simulate", "--link-gbps", "0"], "--link-gbps"),
    (["simulate", "--sim-top-k", "9", "--sim-experts", "8"], "--sim-top-k"),
    (["all", "--quick", "--tokens", "1.5"], "--tokens"),
    (["nonsense"], "invalid choice"),
    ([], "required"),
]


@pytest.mark.parametrize(("argv", "named"), BAD_FLAGS)
def test_bench_cli_bad_flag_exits_2_naming_it(argv: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_main(argv)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "named"), BAD_FLAGS[:3])
def test_bench_cli_console_script_delegates(argv: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        moecomm_main(["bench", *argv])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


def test_bench_cli_unknown_top_level_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        moecomm_main(["benchmark"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_bench_cli_good_flags_parse_to_values() -> None:
    args = build_parser().parse_args(
        ["all", "--tokens", "64", "--ratios", "0, 0.05,0.1", "--skews", "0,1.5", "--ep-sizes", "16,64",
         "--dispatchers", "alltoallv,torch-alltoallv", "--dtype", "fp32", "--quick"]
    )
    assert args.tokens == 64
    assert args.ratios == [0.0, 0.05, 0.1]
    assert args.skews == [0.0, 1.5]
    assert args.ep_sizes == [16, 64]
    assert args.dispatchers == ["alltoallv", "torch-alltoallv"]
    assert args.dtype == "fp32" and args.quick


@pytest.mark.parametrize("argv", [["layer", "--tokens", "0"], ["vllm", "--drop-ratio", "1.5"], ["layer", "--dtype", "int8"]])
def test_standalone_subcommands_validate_their_flags(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main(argv)
    assert exit_info.value.code == 2
    assert f"moecomm bench {argv[0]}" in capsys.readouterr().err
