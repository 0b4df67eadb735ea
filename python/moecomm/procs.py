"""Deprecated alias (one release): the process helpers live in :mod:`moecomm.testing.procs`."""

from moecomm.testing.procs import kill_process_group

__all__ = ["kill_process_group"]
