"""Deprecated alias (one release): ``run_local`` lives in :mod:`moecomm.testing.launch`."""

from moecomm.testing.launch import FAILURE_GRACE_S, LocalRunError, run_local

__all__ = ["run_local", "LocalRunError", "FAILURE_GRACE_S"]
