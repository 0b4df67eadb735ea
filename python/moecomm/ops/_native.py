"""Hands torch CPU tensors to the native core as ``_C.TensorArg`` (pointer, shape, strides, dtype, extent)."""

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


def dtype_code(dtype: torch.dtype) -> int:
    """The native core's ScalarType code of ``dtype`` (one it supports)."""
    return _DTYPE_CODES[dtype]


def tensor_arg(name: str, tensor: torch.Tensor) -> _C.TensorArg:
    """Describes a CPU ``tensor`` of any supported dtype for the native core (no copy).

    The description carries the bytes of storage from the tensor's first element to the end of its
    storage (``untyped_storage().nbytes()`` less ``storage_offset()`` elements): the native core
    refuses a shape and strides that would address anything past them.
    """
    if tensor.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor for the native core, got device {tensor.device}")
    code = _DTYPE_CODES.get(tensor.dtype)
    if code is None:
        raise TypeError(f"{name}: dtype {tensor.dtype} is not supported by the native core")
    return _C.TensorArg(name, tensor.data_ptr(), list(tensor.shape), list(tensor.stride()), code, storage_bytes(tensor))


def storage_bytes(tensor: torch.Tensor) -> int:
    """Bytes of ``tensor``'s storage from its first element to the storage's end (what the core may touch;
    0 for an empty view whose offset lies past its storage, which torch allows)."""
    return max(0, tensor.untyped_storage().nbytes() - tensor.storage_offset() * tensor.element_size())


def num_threads() -> int:
    """Threads the CPU kernels may use: torch's intra-op setting, so one knob rules both."""
    return max(1, torch.get_num_threads())
