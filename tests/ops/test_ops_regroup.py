"""regroup_blocks: native vs reference; the inverse with the transposed block grid; errors."""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_strategies import ACTIVATION_DTYPES

from moecomm import ops
from moecomm.ops import reference


@settings(max_examples=120, deadline=None)
@given(
    num_outer=st.integers(1, 5),
    num_inner=st.integers(1, 6),
    max_rows=st.integers(0, 5),
    hidden=st.sampled_from([1, 3, 16]),
    dtype=st.sampled_from(ACTIVATION_DTYPES),
    strided=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_regroup_matches_reference_and_inverts(num_outer, num_inner, max_rows, hidden, dtype, strided, seed):
    gen = torch.Generator().manual_seed(seed)
    block_rows = torch.randint(0, max_rows + 1, (num_outer, num_inner), generator=gen)
    num_rows = int(block_rows.sum())
    rows = torch.randn(num_rows, hidden * (2 if strided else 1), generator=gen).to(dtype)
    rows = rows[:, ::2] if strided else rows
    got = ops.regroup_blocks(rows, block_rows)
    assert torch.equal(got, reference.regroup_blocks(rows, block_rows))
    assert torch.equal(ops.regroup_blocks(got, block_rows.t()), rows)


def test_regroup_rejects_bad_blocks():
    rows = torch.randn(5, 2)
    with pytest.raises(ValueError, match="block_rows"):
        ops.regroup_blocks(rows, torch.tensor([[2, 2]]))
    with pytest.raises(ValueError, match="block_rows"):
        ops.regroup_blocks(rows, torch.tensor([[6, -1]]))
    with pytest.raises(TypeError, match="block_rows"):
        ops.regroup_blocks(rows, torch.tensor([[2.0, 3.0]]))


HUGE_PAGE_CHECK = """
import torch
from moecomm import ops
from moecomm.ops import reference
buffer = ops.empty_buffer((4096, 1024), torch.bfloat16)  # 8 MiB: large enough for the advice
buffer.fill_(1.5)
assert buffer.shape == (4096, 1024) and bool((buffer == 1.5).all())
ids = torch.randint(0, 16, (2048, 8), generator=torch.Generator().manual_seed(0))
x = torch.randn(2048, 1024)
layout = ops.route_layout(ids, 16)
rows = ops.permute(x, layout)  # 64 MiB fresh output, advised before the first touch
assert torch.equal(rows, reference.permute(x, layout))
assert torch.equal(ops.regroup_blocks(rows, layout.tokens_per_expert.view(4, 4)),
                   reference.regroup_blocks(rows, layout.tokens_per_expert.view(4, 4)))
print("ok")
"""


@pytest.mark.parametrize("huge_pages", ["0", "1"])
def test_buffers_and_outputs_with_and_without_huge_page_advice(huge_pages):
    """MOECOMM_HUGE_PAGES is read once per process: each setting runs in its own interpreter."""
    env = {**os.environ, "MOECOMM_HUGE_PAGES": huge_pages}
    done = subprocess.run([sys.executable, "-c", HUGE_PAGE_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
