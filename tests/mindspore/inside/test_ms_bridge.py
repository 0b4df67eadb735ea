"""The zero-copy bridge between MindSpore CPU tensors and torch tensors (runs in the MindSpore environment)."""

from __future__ import annotations

import pytest
import torch

import mindspore as ms
from moecomm.integrations.mindspore.bridge import check_ms_tensor, to_mindspore, to_torch, torch_dtype_of

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool]


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float8_e4m3fn], ids=str)
def test_round_trip_shares_memory_both_ways(dtype):
    source = torch.arange(12).view(3, 4).to(torch.float32).to(dtype)
    mindspore = to_mindspore(source)
    assert tuple(mindspore.shape) == (3, 4)
    view = to_torch("x", mindspore)
    assert view.dtype == dtype and view.data_ptr() == source.data_ptr()
    assert torch.equal(view.view(torch.uint8), source.view(torch.uint8))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_write_through_the_torch_view_shows_in_mindspore(dtype):
    original = to_mindspore(torch.zeros(2, 3).to(dtype))
    to_torch("x", original)[1, 2] = 1
    assert bool(original.asnumpy()[1, 2]) and torch_dtype_of("dtype", original.dtype) == dtype


def test_non_contiguous_torch_tensors_cross_as_their_values():
    wide = torch.arange(24, dtype=torch.float32).view(4, 6)
    strided = wide[:, ::2]
    assert torch.equal(to_torch("x", to_mindspore(strided)), strided)


def test_refusals_name_the_argument():
    with pytest.raises(TypeError, match=r"^rows: expected a mindspore\.Tensor, got numpy\.ndarray$"):
        check_ms_tensor("rows", torch.zeros(2).numpy())
    with pytest.raises(
        ValueError, match=r"^tensor: expected a CPU torch tensor to hand to MindSpore, got device meta$"
    ):
        to_mindspore(torch.empty(2, device="meta"))
    with pytest.raises(TypeError, match=r"^dtype: expected a MindSpore dtype"):
        torch_dtype_of("dtype", torch.float32)
    assert isinstance(to_mindspore(torch.zeros(0, 5)), ms.Tensor)
