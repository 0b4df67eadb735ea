#!/usr/bin/env bash
# Sanitizer run of the native core (CI: call it after scripts/setup.sh; the lead wires it into .ci/run).
#
# 1. AddressSanitizer + UBSan: builds moecomm._C with -fsanitize=address,undefined -fno-sanitize-recover=all
#    in build/sanitize (the normal build is untouched), stages a copy of the package with that module in
#    build/sanitize/site, and runs tests/ops and tests/comm against it with libasan preloaded. Every report
#    aborts the process (abort_on_error / halt_on_error), so a report fails its test even where pytest
#    captures the output. A sitecustomize.py in the staged dir puts the staged package first in every
#    process, the spawned ranks of run_local included.
# 2. ThreadSanitizer: builds tests/native/shm_protocol_test.cpp (threads as ranks, each with its own
#    mappings of the shared segments) with -fsanitize=thread and runs it.
#
# Usage: scripts/sanitize.sh [pytest paths...]   (default: tests/ops tests/comm)
#        SANITIZE_SKIP_PYTEST=1 scripts/sanitize.sh  runs only the TSan program.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
BUILD=$ROOT/build/sanitize
CXX=${CXX:-g++}
JOBS=${SANITIZE_JOBS:-2}

echo "== ThreadSanitizer: shm flag protocol (tests/native/shm_protocol_test.cpp)"
mkdir -p "$BUILD/tsan"
"$CXX" -std=c++17 -O1 -g -fsanitize=thread -Wno-tsan -Ikernels/include \
  tests/native/shm_protocol_test.cpp kernels/cpu/shm/*.cpp kernels/cpu/layout.cpp \
  -o "$BUILD/tsan/shm_protocol_test" -lpthread
TSAN_OPTIONS="halt_on_error=1:abort_on_error=1:second_deadlock_stack=1" "$BUILD/tsan/shm_protocol_test"

if [ "${SANITIZE_SKIP_PYTEST:-0}" = "1" ]; then
  exit 0
fi

echo "== AddressSanitizer + UBSan build of moecomm._C ($BUILD/asan)"
FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1"
cmake -S . -B "$BUILD/asan" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOECOMM_NATIVE_ARCH=OFF \
  -DCMAKE_CXX_FLAGS="$FLAGS" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DPython_EXECUTABLE="$PY" -DPYTHON_EXECUTABLE="$PY" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" >/dev/null
cmake --build "$BUILD/asan" --target _C -j "$JOBS"

SITE=$BUILD/site
rm -rf "$SITE"
mkdir -p "$SITE"
cp -r python/moecomm "$SITE/moecomm"
find "$SITE/moecomm" -name '__pycache__' -prune -exec rm -rf {} +
cp "$BUILD"/asan/_C*.so "$SITE/moecomm/"
cat > "$SITE/sitecustomize.py" <<PYEOF
# Staged by scripts/sanitize.sh: the sanitized package wins over the editable install in every process.
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
sys.path.insert(0, "$SITE")
PYEOF

# libstdc++ is preloaded with libasan: python does not link it, and ASan's __cxa_throw interceptor needs
# it loaded at start-up (otherwise the first C++ exception aborts with "real___cxa_throw != 0").
LIBASAN=$("$CXX" -print-file-name=libasan.so)
LIBSTDCXX=$("$CXX" -print-file-name=libstdc++.so)
export LD_PRELOAD="$LIBASAN $LIBSTDCXX"
# allocator_may_return_null: a too-large allocation must fail as it does without ASan (tests expect MemoryError).
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=0:halt_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import moecomm._C as C, sys; assert C.__file__.startswith('$SITE'), C.__file__; print('sanitized module:', C.__file__)"
if [ "$#" -eq 0 ]; then
  set -- tests/ops tests/comm
fi
echo "== pytest $* under ASan + UBSan"
# -s: pytest must not capture fd 2, where the sanitizers print their report before aborting the test.
"$PY" -m pytest "$@" -x -q -s -p no:cacheprovider
