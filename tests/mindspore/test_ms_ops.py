"""The MindSpore ops' property tests (tests/mindspore/inside/), run in the MindSpore environment."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest
from ms_env import REPO, needs_mindspore

pytestmark = pytest.mark.mindspore


def test_mindspore_ops_match_torch_ops_in_the_mindspore_environment():
    if importlib.util.find_spec("mindspore"):
        pytest.skip("MindSpore imports here: tests/mindspore/inside/ is collected directly in this run")
    python = needs_mindspore()
    done = subprocess.run(
        [python, "-m", "pytest", "tests/mindspore/inside", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, f"the MindSpore ops tests failed:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1], done.stdout[-2000:]
