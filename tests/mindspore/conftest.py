"""tests/mindspore: puts tests/comm (batch builders, dense references) on the import path, and collects
tests/mindspore/inside/, which needs MindSpore in the running interpreter, only where MindSpore imports (the
main suite runs it through tests/mindspore/test_ms_ops.py with the MindSpore environment's interpreter)."""

import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "comm"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

collect_ignore_glob = [] if importlib.util.find_spec("mindspore") else ["inside/*"]
