"""Where each rank sits in the MoE layout ``EP degree N x MoE-TP degree M`` over the TP x DP MoE ranks.

vLLM flattens the MoE ranks of an engine group: flat rank ``f = dp_rank * TP + tp_rank`` of ``W = TP x DP``.
With an EP degree N (``"expert_parallel"``), the ``M = W / N`` consecutive flat ranks ``[e*M, (e+1)*M)`` hold
the same expert block ``e`` (EP rank e), each a 1/M slice of every expert's intermediate dimension (MoE-TP
rank ``f % M``: vLLM's weight loader column-splits w13 and row-splits w2 by it). Dispatch runs over the EP
group of the ranks with the same MoE-TP rank (``{m, m+M, ...}``: one per expert block); the partial sums of
the M slices are reduced over the *inner* group ``[e*M, (e+1)*M)``. N = W is vLLM's own EP layout (M = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from moecomm.checks import check_int, check_positive_int


@dataclass(frozen=True)
class MoELayout:
    """This rank's place: ``ep_rank`` of ``ep_size`` (= N) expert blocks, ``moe_tp_rank`` of ``moe_tp_size`` (= M)."""

    flat_rank: int
    flat_size: int
    ep_size: int

    def __post_init__(self) -> None:
        check_positive_int("flat_size", self.flat_size)
        check_int("flat_rank", self.flat_rank, minimum=0, expected=f"a rank in [0, {self.flat_size})")
        if self.flat_rank >= self.flat_size:
            raise ValueError(f"flat_rank: expected a rank in [0, {self.flat_size}), got {self.flat_rank}")
        check_positive_int("ep_size", self.ep_size)
        if self.flat_size % self.ep_size:
            raise ValueError(f"ep_size: expected a divisor of flat_size {self.flat_size}, got {self.ep_size}")

    @property
    def moe_tp_size(self) -> int:
        return self.flat_size // self.ep_size

    @property
    def ep_rank(self) -> int:
        return self.flat_rank // self.moe_tp_size

    @property
    def moe_tp_rank(self) -> int:
        return self.flat_rank % self.moe_tp_size

    def ep_groups(self) -> list[list[int]]:
        """Flat ranks of every EP group (dispatch), group m first: ``[m, m+M, ..., m+(N-1)M]``."""
        return [list(range(m, self.flat_size, self.moe_tp_size)) for m in range(self.moe_tp_size)]

    def inner_groups(self) -> list[list[int]]:
        """Flat ranks of every inner (MoE-TP) group, expert block e first: ``[e*M, (e+1)*M)``."""
        m = self.moe_tp_size
        return [list(range(e * m, (e + 1) * m)) for e in range(self.ep_size)]

    def describe(self, num_local_experts: int, num_experts: int) -> str:
        """The startup log's layout words: ``EP degree N, MoE-TP degree M, L local experts of E``."""
        return (
            f"EP degree {self.ep_size}, MoE-TP degree {self.moe_tp_size}, "
            f"{num_local_experts} local experts of {num_experts}"
        )


def dispatch_token_bound(max_num_batched_tokens: int, tp_size: int, moe_tp_size: int) -> int:
    """The most tokens one rank dispatches in a step: its TP slice of a full batch (``ceil(T / TP)``) pooled
    with those of its ``moe_tp_size`` - 1 inner-group peers (the ``alltoall`` dispatcher's default bound)."""
    check_positive_int("max_num_batched_tokens", max_num_batched_tokens)
    check_positive_int("tp_size", tp_size)
    check_positive_int("moe_tp_size", moe_tp_size)
    return -(-max_num_batched_tokens // tp_size) * moe_tp_size
