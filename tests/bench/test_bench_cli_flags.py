"""`moecomm bench` flag parsing: bad values exit with code 2 and name the flag."""

from __future__ import annotations

import pytest

from moecomm.bench.cli import build_parser
from moecomm.bench.cli import main as bench_main
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
    (["dispatch", "--transports", "torch,carrier-pigeon"], "--transports"),
    (["dispatch", "--transports", "torch,torch"], "--transports"),
    (["dispatch", "--transports", ""], "--transports"),
    (["dispatch", "--dispatchers", "alltoallv,alltoallv"], "--dispatchers"),
    (["dispatch", "--dispatchers", "megatron-alltoall", "--no-megatron"], "--no-megatron"),
    (["simulate", "--traffic-skews", "0,-1"], "--traffic-skews"),
    (["simulate", "--traffic-tokens", "0"], "--traffic-tokens"),
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
        [
            "all",
            "--tokens",
            "64",
            "--ratios",
            "0, 0.05,0.1",
            "--skews",
            "0,1.5",
            "--ep-sizes",
            "16,64",
            "--dispatchers",
            "alltoallv,torch-alltoallv",
            "--dtype",
            "fp32",
            "--quick",
        ]
    )
    assert args.tokens == 64
    assert args.ratios == [0.0, 0.05, 0.1]
    assert args.skews == [0.0, 1.5]
    assert args.ep_sizes == [16, 64]
    assert args.dispatchers == ["alltoallv", "torch-alltoallv"]
    assert args.dtype == "fp32" and args.quick
    args = build_parser().parse_args(
        [
            "dispatch",
            "--transports",
            "torch",
            "--dispatchers",
            "alltoallv-pairs-fresh,megatron-allgather,shm-copy",
            "--no-megatron",
        ]
    )
    assert args.transports == ["torch"] and args.no_megatron
    assert args.dispatchers == ["alltoallv-pairs-fresh", "megatron-allgather", "shm-copy"]


def test_bench_cli_dispatch_flags_reach_the_config() -> None:
    from moecomm.bench.runner import dispatch_config, simulation_config

    args = build_parser().parse_args(
        ["dispatch", "--transports", "torch", "--dispatchers", "alltoallv,megatron-alltoall,shm-copy", "--no-megatron"]
    )
    config = dispatch_config(args)
    assert config.transports == ("torch",) and config.dispatchers == ("alltoallv", "shm-copy")
    from moecomm import registry

    assert dispatch_config(build_parser().parse_args(["dispatch"])).transports == tuple(registry.TRANSPORTS)
    args = build_parser().parse_args(
        ["simulate", "--traffic-tokens", "99", "--traffic-skews", "0,2", "--sim-row-cost-us", "5"]
    )
    config, _ = simulation_config(args)
    assert config.traffic_tokens == 99 and config.traffic_skews == (0.0, 2.0)


@pytest.mark.parametrize(
    "argv", [["layer", "--tokens", "0"], ["vllm", "--drop-ratio", "1.5"], ["layer", "--dtype", "int8"]]
)
def test_standalone_subcommands_validate_their_flags(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main(argv)
    assert exit_info.value.code == 2
    assert f"moecomm bench {argv[0]}" in capsys.readouterr().err
