"""Snapshots of moecomm's entries in /dev/shm, to prove a test left none behind."""

from __future__ import annotations

import os

SHM_DIR = "/dev/shm"


def moecomm_segments() -> set[str]:
    """Names of the ``moecomm-*`` entries in /dev/shm now."""
    return {name for name in os.listdir(SHM_DIR) if name.startswith("moecomm-")}


def assert_no_new_segments(before: set[str]) -> None:
    """Fails naming every ``moecomm-*`` entry that appeared since ``before``."""
    leaked = moecomm_segments() - before
    assert not leaked, f"segments left in {SHM_DIR}: {sorted(leaked)}"
