"""transport="auto": shared memory when every rank shares this host, torch otherwise, with one log line saying why."""

from __future__ import annotations

import pytest
from step_workers import transport_choice

from moecomm.testing.launch import run_local


@pytest.mark.parametrize(
    "world_size, transport, fake_other_host, expected, why",
    [
        (2, "auto", False, "shm", "share this host"),
        (2, "auto", True, "torch", "do not share this host"),
        (2, "torch", False, "torch", "transport='torch' was asked for"),
        (2, "shm", False, "shm", "transport='shm' was asked for"),
        (1, "auto", False, "torch", "one process"),
    ],
)
def test_auto_transport_choice(world_size: int, transport: str, fake_other_host: bool, expected: str, why: str) -> None:
    results = run_local(transport_choice, world_size, transport, fake_other_host, timeout_s=120.0)
    for result in results:
        assert result["name"] == expected and why in result["why"], result
        assert result["y_shape"] == [6, 8]
        if world_size > 1:
            assert any(f"moecomm: {expected} transport" in line and why in line for line in result["log"]), result
