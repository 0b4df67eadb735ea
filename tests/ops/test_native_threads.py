"""The native thread helper under resource exhaustion: a thread that cannot be created leaves its work to
the calling thread, and memory running out inside a kernel is a Python MemoryError; never an abort.

Each case runs in its own interpreter under an address-space limit (RLIMIT_AS) set just above what the
process already uses: too tight for a new thread's stack, enough for the small op itself.
"""

import os
import subprocess
import sys

import pytest

pytest.importorskip("resource")
# AddressSanitizer reserves terabytes of shadow address space and aborts when an allocation fails: an
# address-space limit tests ASan there, not moecomm (scripts/sanitize.sh preloads libasan).
pytestmark = pytest.mark.skipif(
    "libasan" in os.environ.get("LD_PRELOAD", ""), reason="address-space limits do not work under AddressSanitizer"
)

PRELUDE = """
import resource, torch
from moecomm import ops
from moecomm.ops import reference

def vm_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))

def limit_address_space(extra_bytes):
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + extra_bytes, resource.RLIM_INFINITY))
"""

NO_THREADS = (
    PRELUDE
    + """
import sys
threads, extra_mib = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
gen = torch.Generator().manual_seed(0)
ids = torch.randint(0, 8, (256, 2), generator=gen)
x = torch.randn(256, 16, generator=gen)
weights = torch.rand(256, 2, generator=gen)
layout = ops.route_layout(ids, 8)
rows_out = torch.empty(layout.num_rows, 16)
tokens_out = torch.empty(256, 16)
want_rows = reference.permute(x, layout)
want_tokens = reference.unpermute(want_rows, layout, weights)
limit_address_space(extra_mib << 20)  # 8 MiB per thread stack: room for none, or for one of three
ops.permute(x, layout, out=rows_out)
ops.unpermute(rows_out, layout, weights, out=tokens_out)
assert torch.equal(rows_out, want_rows)
assert torch.allclose(tokens_out, want_tokens, rtol=1e-6, atol=1e-6)
print("ok")
"""
)

OUT_OF_MEMORY = (
    PRELUDE
    + """
torch.set_num_threads(2)
hidden = 1 << 22  # unpermute's float32 accumulator: 16 MiB per thread
ids = torch.zeros(16, 1, dtype=torch.int64)
layout = ops.route_layout(ids, 1)
y = torch.ones(16, hidden, dtype=torch.bfloat16)
weights = torch.ones(16, 1)
out = torch.empty(16, hidden, dtype=torch.bfloat16)
limit_address_space(12 << 20)  # one thread stack fits, a 16 MiB accumulator on no thread
try:
    ops.unpermute(y, layout, weights, out=out)
except MemoryError:
    print("MemoryError")
"""
)


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("threads", "extra_mib"), [(2, 2), (4, 12)], ids=["no-thread-starts", "first-of-three-starts"])
def test_threads_that_cannot_start_leave_their_work_to_the_caller(threads, extra_mib):
    done = run(NO_THREADS, str(threads), str(extra_mib))
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


def test_memory_running_out_in_a_kernel_is_a_python_memory_error():
    done = run(OUT_OF_MEMORY)
    assert done.returncode == 0 and done.stdout.strip() == "MemoryError", (done.returncode, done.stderr[-2000:])
