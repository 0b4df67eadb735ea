"""What every dispatcher shares: setup checks, input checks, the drop plan and the step's stats.

A step begins with :meth:`Dispatcher.plan_step`: local input checks (before any collective), the
(source, expert) count exchange, the drop plan, and a :class:`StepPlan` holding this rank's kept
pairs, their layout, the global kept-count matrix and the stats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from moecomm import ops
from moecomm.comm.drop_plan import effective_weights, plan_ratio, quota_within_pair_capacity
from moecomm.comm.group import EPGroup
from moecomm.comm.handle import DispatchHandle, DropStats
from moecomm.config import MoECommConfig
from moecomm.ops._checks import ACTIVATION_DTYPES, check_tensor, check_topk_ids, check_topk_weights, check_topology

#: Trailing fields of each rank's count message after its ``[E]`` counts.
_META_FIELDS = ("num_tokens", "hidden", "top_k", "dtype")


@dataclass(frozen=True)
class StepPlan:
    """One rank's view of a dispatch step after the count exchange and the drop plan.

    Attributes:
        is_kept: ``[T, K]`` bool pairs this rank sends.
        topk_weights: ``[T, K]`` float32 weights combine applies.
        layout: RouteLayout of the kept pairs (E experts, R ranks).
        kept_counts: ``[R, E]`` int64 kept pairs per (source rank, expert), identical on every rank.
        num_tokens_per_rank: ``[R]`` int64 T of every rank.
        stats: the step's DropStats.
    """

    is_kept: torch.Tensor
    topk_weights: torch.Tensor
    layout: ops.RouteLayout
    kept_counts: torch.Tensor
    num_tokens_per_rank: torch.Tensor
    stats: DropStats


class Dispatcher:
    """Base of the three dispatchers: ``dispatch(x, topk_ids, topk_weights)`` and ``combine``.

    Args:
        config: the MoECommConfig (checked identical on every rank of ``group`` here).
        num_experts: E, divisible by the group's size; rank r owns experts ``[r*E/R, (r+1)*E/R)``.
        group: a torch.distributed ProcessGroup the caller owns, or None for a single process.
    """

    name = "dispatcher"

    def __init__(self, config: MoECommConfig, num_experts: int, group: dist.ProcessGroup | None = None) -> None:
        if not isinstance(config, MoECommConfig):
            raise TypeError(f"config: expected a MoECommConfig, got {type(config).__name__}")
        if config.dispatcher != self.name:
            raise ValueError(f"config: dispatcher is {config.dispatcher!r}, this is the {self.name!r} dispatcher")
        self.config = config
        self.ep = EPGroup(group, config.timeout_s, self.name)
        self.num_experts, _ = check_topology(num_experts, self.ep.world_size)
        self.ep.check_same_config({**config.to_dict(), "num_experts": num_experts})

    @property
    def rank(self) -> int:
        """This process's rank in the EP group."""
        return self.ep.rank

    @property
    def world_size(self) -> int:
        """R, ranks in the EP group."""
        return self.ep.world_size

    @property
    def num_local_experts(self) -> int:
        """E / R experts this rank owns."""
        return self.num_experts // self.ep.world_size

    @property
    def local_experts(self) -> range:
        """Global ids of the experts this rank owns."""
        first = self.rank * self.num_local_experts
        return range(first, first + self.num_local_experts)

    # ---- input checks (local: they run before any collective) ----

    def check_inputs(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Checks ``x [T, H]``, ``topk_ids [T, K]`` (ids in ``[0, E)``) and ``topk_weights [T, K]``."""
        for name, tensor in (("x", x), ("topk_ids", topk_ids), ("topk_weights", topk_weights)):
            if isinstance(tensor, torch.Tensor):
                self.ep.check_device(name, tensor)
        x = check_tensor("x", x, dim=2, dtypes=ACTIVATION_DTYPES)
        ids = check_topk_ids(topk_ids, self.num_experts)
        weights = check_topk_weights(topk_weights, ids)
        if x.shape[0] != ids.shape[0]:
            raise ValueError(f"x: expected {ids.shape[0]} tokens (rows of topk_ids), got {x.shape[0]}")
        if ids.shape[1] == 0:
            raise ValueError("topk_ids: expected at least one expert per token (K >= 1), got K = 0")
        if weights.numel() and not bool(torch.isfinite(weights).all()):
            raise ValueError("topk_weights: contains NaN or infinite values")
        return x, ids, weights

    def check_handle(self, handle: object, handle_type: type) -> None:
        """Raises unless ``handle`` came from this kind of dispatcher's ``dispatch``."""
        if not isinstance(handle, handle_type):
            raise TypeError(f"handle: expected the handle of a {self.name} dispatch, got {type(handle).__name__}")

    def check_expert_output(self, expert_y: torch.Tensor, handle: DispatchHandle) -> torch.Tensor:
        """Checks ``expert_y [N_recv, H]`` against the handle of the dispatch it answers."""
        if isinstance(expert_y, torch.Tensor):
            self.ep.check_device("expert_y", expert_y)
        expert_y = check_tensor("expert_y", expert_y, dim=2, dtypes=ACTIVATION_DTYPES)
        if expert_y.shape[0] != handle.num_received:
            raise ValueError(f"expert_y: expected {handle.num_received} rows (rows dispatch returned), got {expert_y.shape[0]}")
        return expert_y

    # ---- the step plan ----

    def pair_capacity(self, top_k: int) -> int | None:
        """Rows per (source, destination) pair when the wire format caps them (alltoall), else None."""
        return None

    def _exchange_counts(self, counts: torch.Tensor, x: torch.Tensor, top_k: int, step: str) -> torch.Tensor:
        """All-gathers ``[E]`` counts plus T, H, K, dtype of every rank -> ``[R, E + 4]`` int64; checks agreement."""
        dtype_code = ACTIVATION_DTYPES.index(x.dtype)
        message = torch.cat([counts.to(torch.int64), torch.tensor([x.shape[0], x.shape[1], top_k, dtype_code])])
        table = self.ep.all_gather("dispatch", step, message)
        meta = table[:, self.num_experts :]
        for column, field in enumerate(_META_FIELDS[1:], start=1):
            values = meta[:, column]
            if bool((values != values[0]).any()):
                shown = values.tolist()
                if field == "dtype":
                    shown = [str(ACTIVATION_DTYPES[v]).replace("torch.", "") for v in shown]
                per_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(shown))
                raise ValueError(f"rank {self.rank}: {self.name} dispatch: {field} differs across ranks ({per_rank})")
        return table

    def plan_step(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> StepPlan:
        """Count exchange + drop plan for one step (collectives: one all-gather, two with a drop ratio)."""
        cfg = self.config
        num_experts, num_ranks = self.num_experts, self.world_size
        top_k = ids.shape[1]
        pair_capacity = self.pair_capacity(top_k)
        routed = ops.route_layout(ids, num_experts, num_ranks)  # every pair: the counts, or the dropless layout
        cap: int | None = None
        scope: str | None = None
        if cfg.drops_by_ratio:
            table = self._exchange_counts(routed.tokens_per_expert, x, top_k, "count exchange")
            plan = plan_ratio(table[:, :num_experts], cfg.token_drop_ratio, cfg.drop_scope, num_ranks)
            quota = plan.quotas[self.rank]
            if pair_capacity is not None:
                quota = quota_within_pair_capacity(quota, cfg.drop_scope, num_ranks, pair_capacity)
            is_kept = ops.select_kept(
                ids, weights, num_experts, capacity=quota, scope=cfg.drop_scope, num_ranks=num_ranks,
                policy=cfg.drop_policy,
            )
            layout = ops.route_layout(ids, num_experts, num_ranks, is_kept)
            kept_counts = self.ep.all_gather("dispatch", "kept-count exchange", layout.tokens_per_expert)
            cap, scope = plan.cap, cfg.drop_scope
        else:
            if pair_capacity is not None:
                cap, scope = pair_capacity, "pair"
                is_kept = ops.select_kept(
                    ids, weights, num_experts, capacity=pair_capacity, scope="rank", num_ranks=num_ranks,
                    policy=cfg.drop_policy,
                )
            elif cfg.capacity_factor is not None:
                cap, scope = ops.capacity_from_factor(ids.shape[0], top_k, num_experts, cfg.capacity_factor), "expert"
                is_kept = ops.select_kept(
                    ids, weights, num_experts, capacity=cap, scope="expert", num_ranks=num_ranks, policy=cfg.drop_policy
                )
            else:
                is_kept = torch.ones(ids.shape, dtype=torch.bool)
            # no cap in this branch means dropless: the layout of every pair is already at hand
            layout = routed if cap is None else ops.route_layout(ids, num_experts, num_ranks, is_kept)
            table = self._exchange_counts(layout.tokens_per_expert, x, top_k, "count exchange")
            kept_counts = table[:, :num_experts]
        num_tokens = table[:, num_experts]
        total_pairs = int((num_tokens * top_k).sum())
        stats = DropStats(
            dropped_pairs=total_pairs - int(kept_counts.sum()),
            total_pairs=total_pairs,
            local_dropped_pairs=ids.numel() - layout.num_rows,
            received_per_rank=kept_counts.view(num_ranks, num_ranks, -1).sum(dim=(0, 2)),
            cap=cap,
            scope=scope,
        )
        return StepPlan(
            is_kept=is_kept,
            topk_weights=effective_weights(weights, is_kept, cfg.renormalize_kept),
            layout=layout,
            kept_counts=kept_counts.contiguous(),
            num_tokens_per_rank=num_tokens.contiguous(),
            stats=stats,
        )

    def handle_fields(
        self, num_tokens: int, plan: StepPlan, tokens_per_local_expert: torch.Tensor | None = None
    ) -> dict[str, object]:
        """The :class:`DispatchHandle` fields every dispatcher fills the same way (as keyword arguments)."""
        received = self.received_from_rank(plan)
        return {
            "dispatcher": self.name,
            "num_tokens": num_tokens,
            "is_kept": plan.is_kept,
            "topk_weights": plan.topk_weights,
            "layout": plan.layout,
            "tokens_per_local_expert": received.sum(dim=0) if tokens_per_local_expert is None else tokens_per_local_expert,
            "received_from_rank": received,
            "stats": plan.stats,
        }

    def received_from_rank(self, plan: StepPlan) -> torch.Tensor:
        """``[R, E_local]`` int64 rows this rank receives from each source rank per local expert."""
        return plan.kept_counts[:, self.local_experts.start : self.local_experts.stop].contiguous()

    def to_expert_major(self, received_rows: torch.Tensor, handle: DispatchHandle) -> torch.Tensor:
        """Received rows ``[N_recv, H]`` from (source rank, local expert) to (local expert, source rank) order."""
        if self.world_size == 1:
            return received_rows
        return ops.regroup_blocks(received_rows, handle.received_from_rank)

    def to_source_major(self, expert_y: torch.Tensor, handle: DispatchHandle) -> torch.Tensor:
        """Expert outputs ``[N_recv, H]`` from (local expert, source rank) back to (source rank, local expert)."""
        if self.world_size == 1:
            return expert_y
        return ops.regroup_blocks(expert_y, handle.received_from_rank.t())

    # ---- the interface ----

    def dispatch(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[torch.Tensor, DispatchHandle]:
        """Sends each kept (token, expert) pair's row to the expert's rank.

        Args:
            x: ``[T, H]`` float32/float16/bfloat16 tokens of this rank (T may be 0; H, dtype, K equal on all ranks).
            topk_ids: ``[T, K]`` int32/int64 expert ids in ``[0, E)``.
            topk_weights: ``[T, K]`` float32/float16/bfloat16 gate weights.

        Returns:
            ``expert_x [N_recv, H]`` in x's dtype, grouped by local expert (local expert 0 first), within
            an expert by source rank, then token, then k; and the handle for :meth:`combine`.
        """
        raise NotImplementedError

    def combine(self, expert_y: torch.Tensor, handle: DispatchHandle) -> torch.Tensor:
        """Returns ``[T, H]``: ``y[t] = sum over kept k of w[t, k] * expert_y[row of (t, k)]``.

        Args:
            expert_y: ``[N_recv, H]`` float32/float16/bfloat16 expert outputs, in ``expert_x``'s row order.
            handle: the handle :meth:`dispatch` returned for this step.
        """
        raise NotImplementedError

