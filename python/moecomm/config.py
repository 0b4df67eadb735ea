"""MoECommConfig: the one configuration schema of every moecomm entry point (layer, vLLM, benchmarks)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from moecomm.checks import check_choice, check_non_negative_int, check_positive_int, check_ratio
from moecomm.ops.quant import QUANT_KINDS
from moecomm.registry import DISPATCHERS as _DISPATCHER_TABLE
from moecomm.registry import FRAMEWORK_TRANSPORTS, KERNEL_BACKENDS, TRANSPORTS, names

DISPATCHERS = names(_DISPATCHER_TABLE)
DROP_POLICIES = ("position", "probs")
DROP_SCOPES = ("rank", "expert")
DISPATCH_QUANT_KINDS = QUANT_KINDS


def _check_positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class MoECommConfig:
    """How an EP MoE layer moves tokens and which it may drop. Must be identical on every EP rank.

    Attributes:
        dispatcher: ``"alltoallv"`` (count exchange + variable-split all-to-all), ``"alltoall"``
            (fixed-capacity padded buffers, equal splits; needs ``max_tokens_per_rank``) or
            ``"allgather"`` (all-gather tokens, reduce-scatter outputs).
        token_drop_ratio: r in [0, 1): at most ``floor(r * total pairs)`` routed (token, expert) pairs
            of a step are dropped, from the most loaded buckets first (water-filling cap).
        capacity_factor: f > 0 or None. ``alltoallv`` / ``allgather``: Megatron per-expert cap
            ``ceil(f * T * K / E)`` on each source rank (exclusive with ``token_drop_ratio``).
            ``alltoall``: rows per (source, destination) buffer ``ceil(f * max_tokens_per_rank * K / R)``;
            None there means ``f = R`` (buffers hold every pair: never drops, R times the mean size).
        drop_policy: ``"position"`` (later tokens dropped first) or ``"probs"`` (lowest gate weight first).
        drop_scope: ``"rank"`` (cap each destination rank's received rows) or ``"expert"`` (each expert's).
        renormalize_kept: if True, a token's kept weights are scaled so they sum to its original total.
        max_tokens_per_rank: most tokens any rank passes to one ``dispatch`` (required by ``alltoall``).
        log_stats_every: log drop statistics every N steps (0 = never; used by the vLLM plugin).
        timeout_s: seconds a dispatcher waits on one collective before raising (> 0).
        transport: how bytes move: ``"auto"`` (shared memory when every rank is on this host, else
            torch.distributed), ``"shm"`` or ``"torch"`` (the caller's torch.distributed group); MindSpore
            jobs: ``"auto"`` (shm, else MindSpore's collectives), ``"shm"`` or ``"mindspore"``.
        kernel_backend: which kernels compute: ``"auto"`` (native C++ for CPU tensors, pure torch on other
            devices), ``"native"`` or ``"torch"`` (device-generic pure torch, also on CPU).
        dispatch_quant: None (rows travel in the activation dtype), ``"int8"`` (symmetric per-token absmax,
            one float32 scale per row) or ``"fp8"`` (float8 e4m3fn, one float32 scale per 128 columns): the
            sender quantizes each row once, the receiver dequantizes (combine stays in the activation dtype).
    """

    dispatcher: str = "alltoallv"
    token_drop_ratio: float = 0.0
    capacity_factor: float | None = None
    drop_policy: str = "position"
    drop_scope: str = "rank"
    renormalize_kept: bool = False
    max_tokens_per_rank: int | None = None
    log_stats_every: int = 0
    timeout_s: float = 60.0
    transport: str = "auto"
    kernel_backend: str = "auto"
    dispatch_quant: str | None = None

    def __post_init__(self) -> None:
        check_choice("dispatcher", self.dispatcher, DISPATCHERS)
        check_choice("transport", self.transport, names(TRANSPORTS, with_auto=True) + names(FRAMEWORK_TRANSPORTS))
        check_choice("kernel_backend", self.kernel_backend, names(KERNEL_BACKENDS, with_auto=True))
        object.__setattr__(self, "token_drop_ratio", check_ratio("token_drop_ratio", self.token_drop_ratio))
        if self.capacity_factor is not None:
            object.__setattr__(self, "capacity_factor", _check_positive_float("capacity_factor", self.capacity_factor))
        check_choice("drop_policy", self.drop_policy, DROP_POLICIES)
        check_choice("drop_scope", self.drop_scope, DROP_SCOPES)
        if not isinstance(self.renormalize_kept, bool):
            raise ValueError(f"renormalize_kept: expected True or False, got {self.renormalize_kept!r}")
        if self.max_tokens_per_rank is not None:
            check_positive_int("max_tokens_per_rank", self.max_tokens_per_rank)
        check_non_negative_int("log_stats_every", self.log_stats_every)
        if self.dispatch_quant is not None:
            check_choice("dispatch_quant", self.dispatch_quant, DISPATCH_QUANT_KINDS)
        object.__setattr__(self, "timeout_s", _check_positive_float("timeout_s", self.timeout_s))
        if self.dispatcher == "alltoall" and self.max_tokens_per_rank is None:
            raise ValueError("max_tokens_per_rank: required with dispatcher='alltoall' (it sizes the fixed buffers)")
        if self.dispatcher != "alltoall" and self.capacity_factor is not None and self.token_drop_ratio > 0:
            raise ValueError(
                "capacity_factor: set either capacity_factor or token_drop_ratio, not both "
                f"(both set the drop cap with dispatcher={self.dispatcher!r})"
            )

    @property
    def drops_by_ratio(self) -> bool:
        """True when the drop cap comes from ``token_drop_ratio`` (needs the global count matrix)."""
        return self.token_drop_ratio > 0

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of every field, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> MoECommConfig:
        """Builds a config from a dict (e.g. vLLM's ``additional_config["moecomm"]``); None = defaults.

        Raises:
            ValueError: on a key that is not a field (the message lists the valid keys) or a bad value.
        """
        if values is None:
            return cls()
        if not isinstance(values, dict):
            raise TypeError(f"values: expected a dict of MoECommConfig fields, got {type(values).__name__}")
        valid = cls.field_names()
        unknown = sorted(str(k) for k in values if k not in valid)
        if unknown:
            raise ValueError(f"MoECommConfig: unknown key(s) {unknown}; valid keys: {', '.join(valid)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain dict (``from_dict(c.to_dict()) == c``)."""
        return dataclasses.asdict(self)
