"""Harnesses for tests, examples and benchmarks: ``run_local`` (spawned gloo ranks) and process helpers."""

from moecomm.testing.launch import LocalRunError, run_local

__all__ = ["run_local", "LocalRunError"]
