"""Which backend runs an op: tensors on a native device go to the C++ core (``moecomm._C``), tensors on
any other device to the device-generic pure-torch reference (``moecomm.ops.reference``), whose results
stay on that device."""

from __future__ import annotations

from types import ModuleType

import torch

#: Device types the native core serves (it is built for the CPU only).
NATIVE_DEVICE_TYPES: tuple[str, ...] = ("cpu",)


def runs_natively(value: object) -> bool:
    """Whether an op whose first tensor argument is ``value`` runs in the native core.

    Non-tensors answer True: the native path's argument checks then reject them by name.
    """
    return not isinstance(value, torch.Tensor) or value.device.type in NATIVE_DEVICE_TYPES


def reference_ops() -> ModuleType:
    """``moecomm.ops.reference``, imported on first use (it imports the op modules' argument checks)."""
    from moecomm.ops import reference

    return reference
