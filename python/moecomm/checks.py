"""Argument checks shared by every layer of moecomm (ops, references, dispatchers, transports, config, layer).

Every check raises before any kernel or collective runs, and names the argument it rejects.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import torch

ID_DTYPES = (torch.int32, torch.int64)
ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Rows the data-movement ops (permute, padded pack/unpack, regroup) copy: activations, or int8 wire rows of
#: quantized dispatch (codes and scales as bytes, see :mod:`moecomm.ops.wire`).
ROW_DTYPES = (*ACTIVATION_DTYPES, torch.int8)
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    name: str,
    value: object,
    *,
    dim: int,
    dtypes: Iterable[torch.dtype],
    cpu_only: bool = True,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Checks that ``value`` is a ``dim``-D tensor with a dtype in ``dtypes``, holding data.

    Where it may live: on ``device`` when given (the device of the op's other tensors: mixed devices
    are refused); otherwise on the CPU when ``cpu_only``, anywhere but ``meta`` when not.
    """
    dtypes = tuple(dtypes)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if device is not None and value.device != device:
        raise ValueError(
            f"{name}: expected a tensor on {device} (where the op's other tensors are), got device {value.device}"
        )
    if device is None and cpu_only and value.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, got device {value.device}")
    if value.device.type == "meta":
        raise ValueError(f"{name}: expected a tensor holding data, got device meta")
    if value.dim() != dim:
        raise ValueError(f"{name}: expected a {dim}-D tensor, got shape {list(value.shape)}")
    if value.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in {{{_names(dtypes)}}}, got {str(value.dtype).replace('torch.', '')}")
    return value


#: The largest int the native core (int64) takes; every integer argument of the ops is bounded by it.
INT64_MAX = 2**63 - 1


def check_int(name: str, value: object, *, minimum: int, expected: str) -> int:
    """Checks an integer (a Python or numpy int, not a bool) in ``[minimum, 2**63 - 1]`` -> ``int``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    number = int(value)
    if number < minimum or number > INT64_MAX:
        raise ValueError(f"{name}: expected {expected} (at most 2**63 - 1), got {number!r}")
    return number


def exact_sum(values: torch.Tensor, largest: int) -> int:
    """The exact sum of integer ``values``, each in ``[0, largest]``: torch's int64 sum where it cannot
    wrap, Python ints otherwise (only forged, astronomically large values get there)."""
    if values.numel() * largest <= INT64_MAX:
        return int(values.sum())
    return sum(values.tolist())


def check_positive_int(name: str, value: object) -> int:
    return check_int(name, value, minimum=1, expected="a positive int")


def check_non_negative_int(name: str, value: object) -> int:
    return check_int(name, value, minimum=0, expected="an int >= 0")


def check_topology(num_experts: object, num_ranks: object) -> tuple[int, int]:
    """Checks that ``num_experts`` experts split into ``num_ranks`` equal contiguous blocks."""
    num_experts = check_positive_int("num_experts", num_experts)
    num_ranks = check_positive_int("num_ranks", num_ranks)
    if num_experts % num_ranks:
        raise ValueError(
            f"num_ranks: num_experts={num_experts} is not divisible by num_ranks={num_ranks} "
            "(experts are placed in equal contiguous blocks per rank)"
        )
    return num_experts, num_ranks


def check_topk_ids(topk_ids: object, num_experts: int | None = None, *, cpu_only: bool = True) -> torch.Tensor:
    """Checks ``topk_ids [T, K] int32|int64`` (on the CPU when ``cpu_only``); with ``num_experts``, the id range."""
    ids = check_tensor("topk_ids", topk_ids, dim=2, dtypes=ID_DTYPES, cpu_only=cpu_only)
    if num_experts is not None and ids.numel() > 0:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= num_experts:
            bad = low if low < 0 else high
            raise ValueError(f"topk_ids: expert id {bad} is outside [0, {num_experts})")
    return ids


def check_topk_weights(topk_weights: object, topk_ids: torch.Tensor) -> torch.Tensor:
    """Checks ``topk_weights [T, K] float`` against ``topk_ids [T, K]`` (same shape and device)."""
    weights = check_tensor("topk_weights", topk_weights, dim=2, dtypes=WEIGHT_DTYPES, device=topk_ids.device)
    if weights.shape != topk_ids.shape:
        raise ValueError(
            f"topk_weights: expected shape {list(topk_ids.shape)} (that of topk_ids), got {list(weights.shape)}"
        )
    return weights


def check_is_kept(is_kept: object, topk_ids: torch.Tensor) -> torch.Tensor:
    """Checks ``is_kept [T, K] bool`` against ``topk_ids [T, K]`` (same shape and device)."""
    mask = check_tensor("is_kept", is_kept, dim=2, dtypes=(torch.bool,), device=topk_ids.device)
    if mask.shape != topk_ids.shape:
        raise ValueError(f"is_kept: expected shape {list(topk_ids.shape)} (that of topk_ids), got {list(mask.shape)}")
    return mask


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value  # type: ignore[return-value]


def check_ratio(name: str, value: object) -> float:
    """Checks a ratio in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= float(value) < 1.0):
        raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")
    return float(value)
