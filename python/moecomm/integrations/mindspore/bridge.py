"""Zero-copy views between MindSpore CPU tensors and torch tensors (no row is copied either way).

moecomm's kernels, dispatchers and transports work on torch tensors; a MindSpore CPU tensor crosses over
as a torch *view* of the same memory through DLPack (``mindspore.utils.dlpack``), and a torch result comes
back as a MindSpore tensor over the torch tensor's memory the same way. MindSpore's DLPack has no bool
(nor float8): bool tensors cross through numpy (``asnumpy`` and ``Tensor.from_numpy`` share memory on CPU),
float8 codes as their uint8 bytes reinterpreted in place.

Only CPU tensors are bridged: a MindSpore tensor on another device (Ascend) is refused naming the argument.
"""

from __future__ import annotations

import numpy as np
import torch
from mindspore.utils import dlpack as ms_dlpack

import mindspore as ms

#: torch dtypes that cross as their bytes (MindSpore's DLPack does not know them), with MindSpore's name.
_BYTE_DTYPES = {torch.float8_e4m3fn: ms.float8_e4m3fn}


def _device_of(tensor: ms.Tensor) -> str:
    device = getattr(tensor, "device", "CPU")
    return str(device)


def check_ms_tensor(name: str, value: object) -> ms.Tensor:
    """Checks that ``value`` is a MindSpore tensor on the CPU (the only device bridged zero-copy)."""
    if not isinstance(value, ms.Tensor):
        kind = type(value)
        raise TypeError(f"{name}: expected a mindspore.Tensor, got {kind.__module__.split('.')[0]}.{kind.__name__}")
    device = _device_of(value)
    if not device.upper().startswith("CPU"):
        raise ValueError(f"{name}: expected a CPU mindspore.Tensor (zero-copy bridge), got device {device}")
    return value


def to_torch(name: str, value: ms.Tensor) -> torch.Tensor:
    """A torch view of the MindSpore CPU tensor ``value`` (same memory, shape, strides and dtype)."""
    tensor = check_ms_tensor(name, value)
    if tensor.dtype == ms.bool_:
        return torch.from_numpy(tensor.asnumpy())
    for torch_dtype, ms_dtype in _BYTE_DTYPES.items():
        if tensor.dtype == ms_dtype:
            return to_torch(name, tensor.view(ms.uint8)).view(torch_dtype)
    return torch.utils.dlpack.from_dlpack(ms_dlpack.to_dlpack(tensor))


def to_mindspore(tensor: torch.Tensor) -> ms.Tensor:
    """A MindSpore tensor over the memory of the CPU torch tensor ``tensor`` (made contiguous first if it is
    not: MindSpore kernels assume dense rows)."""
    if tensor.device.type != "cpu":
        raise ValueError(f"tensor: expected a CPU torch tensor to hand to MindSpore, got device {tensor.device}")
    tensor = tensor.contiguous()
    if tensor.dtype == torch.bool:
        return ms.Tensor.from_numpy(tensor.numpy())
    if tensor.dtype in _BYTE_DTYPES:
        return to_mindspore(tensor.view(torch.uint8)).view(_BYTE_DTYPES[tensor.dtype])
    return ms_dlpack.from_dlpack(torch.utils.dlpack.to_dlpack(tensor))


def torch_dtype_of(name: str, dtype: object) -> torch.dtype:
    """torch's dtype for the MindSpore dtype ``dtype`` (e.g. ``mindspore.float32`` -> ``torch.float32``)."""
    if not isinstance(dtype, ms.dtype.Type):
        raise TypeError(f"{name}: expected a MindSpore dtype (e.g. mindspore.float32), got {dtype!r}")
    return to_torch(name, ms.Tensor(np.zeros(0, np.float32)).astype(dtype)).dtype
