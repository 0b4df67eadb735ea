"""The CPU kernels under UndefinedBehaviorSanitizer: empty tensors (null data pointers, zero sizes) in
every data-movement kernel must not hand a null pointer to memcpy/memset, nor trip any other check.

A small C++ driver is built with the kernels and ``-fsanitize=undefined -fno-sanitize-recover=all`` (the
first finding aborts) and run; the test skips where no C++ compiler with UBSan is at hand.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNELS = sorted((ROOT / "kernels" / "cpu").glob("*.cpp"))

DRIVER = r"""
#include <cstdio>
#include <cstdint>
#include <initializer_list>
#include "moecomm/cpu_kernels.h"
using namespace moecomm::cpu;

static int failures = 0;
static void expect(int64_t got, int64_t want, const char* what) {
  if (got != want) { std::printf("%s: got %lld, want %lld\n", what, (long long)got, (long long)want); ++failures; }
}

int main() {
  const int64_t no_counts[1] = {0};
  const int64_t one_row[1] = {0};
  const float weight[1] = {1.0f};
  char* const no_base[1] = {nullptr};
  const int64_t rows_0_1[2] = {0, 1};
  const int64_t rows_0_0[2] = {0, 0};
  const RowSegments one_empty_row{no_base, rows_0_1, 1, 0};
  const RowSegments no_rows{no_base, rows_0_0, 1, 32};  // rows of 8 float32
  for (int threads : {1, 2}) {
    // H = 0: rows exist but hold no bytes; data pointers are null.
    expect(permute(nullptr, 1, 0, 0, 1, 4, one_row, 1, one_empty_row, threads), kOk, "permute H=0");
    expect(unpermute(nullptr, ScalarType::kFloat32, 1, 0, 0, 1, one_row, weight, 1, 1, 0, 1, nullptr, threads), kOk, "unpermute H=0");
    const int64_t two[2] = {1, 1};
    expect(pack_padded(nullptr, 2, 0, 0, 1, 4, two, 2, 1, nullptr, threads), kOk, "pack_padded H=0");
    expect(unpack_padded(nullptr, 2, 1, 0, 0, 0, 1, 4, two, nullptr, 2, threads), kOk, "unpack_padded H=0");
    const int64_t blocks[2] = {1, 1};
    expect(regroup_blocks(nullptr, 2, 0, 0, 1, 4, blocks, 1, 2, nullptr, threads), kOk, "regroup_blocks H=0");
    // Capacity 0 / no rows: nothing to copy or zero; out is null.
    expect(pack_padded(nullptr, 0, 8, 8, 1, 4, no_counts, 1, 0, nullptr, threads), kOk, "pack_padded capacity 0");
    expect(unpack_padded(nullptr, 1, 0, 8, 0, 8, 1, 4, no_counts, nullptr, 0, threads), kOk, "unpack_padded empty");
    expect(regroup_blocks(nullptr, 0, 8, 8, 1, 4, no_counts, 1, 1, nullptr, threads), kOk, "regroup_blocks empty");
    expect(permute(nullptr, 0, 8, 8, 1, 4, nullptr, 2, no_rows, threads), kOk, "permute T=0");
    expect(unpermute(nullptr, ScalarType::kBFloat16, 0, 8, 8, 1, nullptr, nullptr, 0, 2, 0, 0, nullptr, threads), kOk, "unpermute T=0");
    int64_t per_expert[2] = {7, 7};
    expect(route_layout<int32_t>(nullptr, 0, 2, 2, nullptr, per_expert, nullptr, threads), kOk, "route_layout T=0");
    expect(per_expert[0] + per_expert[1], 0, "route_layout T=0 counts");
    expect(select_kept<int64_t>(nullptr, 0, 2, 2, 1, no_counts, nullptr, nullptr), kOk, "select_kept T=0");
  }
  std::printf(failures ? "FAILED\n" : "ok\n");
  return failures ? 1 : 0;
}
"""


def test_kernels_on_empty_tensors_are_clean_under_ubsan(tmp_path):
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    probe = tmp_path / "probe.cpp"
    probe.write_text("int main() { return 0; }\n")
    if subprocess.run(
        [compiler, "-fsanitize=undefined", str(probe), "-o", str(tmp_path / "probe")], capture_output=True
    ).returncode:
        pytest.skip(f"{compiler} cannot link UBSan")
    driver = tmp_path / "driver.cpp"
    driver.write_text(DRIVER)
    binary = tmp_path / "driver"
    build = subprocess.run(
        [
            compiler,
            "-std=c++17",
            "-O1",
            "-g",
            "-fsanitize=undefined",
            "-fno-sanitize-recover=all",
            "-pthread",
            f"-I{ROOT / 'kernels' / 'include'}",
            f"-I{ROOT / 'kernels' / 'cpu'}",
            str(driver),
            *map(str, KERNELS),
            "-o",
            str(binary),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    done = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (done.stdout + done.stderr)[-3000:]
