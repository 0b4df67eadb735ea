"""Hands torch CPU tensors to the native core as ``_C.TensorArg`` (pointer, shape, strides, dtype)."""

from __future__ import annotations

import torch

from moecomm import _C

_DTYPE_CODES = {
    torch.float32: int(_C.ScalarType.float32),
    torch.float16: int(_C.ScalarType.float16),
    torch.bfloat16: int(_C.ScalarType.bfloat16),
    torch.int32: int(_C.ScalarType.int32),
    torch.int64: int(_C.ScalarType.int64),
    torch.bool: int(_C.ScalarType.bool),
    torch.int8: int(_C.ScalarType.int8),
    torch.float8_e4m3fn: int(_C.ScalarType.float8_e4m3fn),
}


def tensor_arg(name: str, tensor: torch.Tensor) -> _C.TensorArg:
    """Describes a CPU ``tensor`` of any supported dtype for the native core (no copy)."""
    code = _DTYPE_CODES.get(tensor.dtype)
    if code is None:
        raise TypeError(f"{name}: dtype {tensor.dtype} is not supported by the native core")
    return _C.TensorArg(name, tensor.data_ptr(), list(tensor.shape), list(tensor.stride()), code)


def num_threads() -> int:
    """Threads the CPU kernels may use: torch's intra-op setting, so one knob rules both."""
    return max(1, torch.get_num_threads())
