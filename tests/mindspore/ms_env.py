"""Where the MindSpore environment is, for the MindSpore tests of the main suite.

MindSpore 2.10 needs numpy<2 and the main environment's vLLM wants numpy 2, so MindSpore lives in its own
venv, ``.venv-mindspore`` (scripts/setup.sh makes it; ``MOECOMM_MINDSPORE_PYTHON`` points elsewhere). The
tests here run in the main environment and start their MindSpore work with that venv's interpreter; they
skip, saying why, only when no such interpreter exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"


def mindspore_python() -> str | None:
    """The MindSpore environment's interpreter, or None when there is none."""
    configured = os.environ.get("MOECOMM_MINDSPORE_PYTHON")
    candidate = Path(configured) if configured else REPO / ".venv-mindspore" / "bin" / "python"
    return str(candidate) if candidate.exists() else None


def needs_mindspore() -> str:
    """The interpreter, or skips the calling test when the MindSpore environment is absent."""
    python = mindspore_python()
    if python is None:
        pytest.skip("no MindSpore environment (.venv-mindspore, made by scripts/setup.sh; or MOECOMM_MINDSPORE_PYTHON)")
    return python


def worker_env() -> dict[str, str]:
    """``PYTHONPATH`` for the workers: this folder (rank functions) and tests/comm (batch builders)."""
    return {"PYTHONPATH": os.pathsep.join([str(TESTS / "mindspore"), str(TESTS / "comm")])}
