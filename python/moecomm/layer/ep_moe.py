"""EPMoE: a drop-in expert-parallel MoE layer (router -> dispatch -> local SwiGLU experts -> combine).

Every rank of the EP group holds the router (and shared experts) in full and only its own block of
routed experts: rank r of R holds experts [r*E/R, (r+1)*E/R). Each rank feeds its own tokens; the
dispatcher (any of ``MoECommConfig.dispatcher``) moves them to the ranks holding their experts and back,
dropping pairs as the config asks. All ranks of the group must call ``forward`` the same number of times.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from moecomm.checks import ACTIVATION_DTYPES, check_positive_int, check_tensor
from moecomm.comm.moe_step import run_moe_step
from moecomm.layer.experts import swiglu_experts
from moecomm.layer.router import TopKRouter
from moecomm.layer.shared_experts import SharedExperts
from moecomm.registry import BLOCK_ADAPTERS, load

if TYPE_CHECKING:
    from moecomm.comm.transports.base import Transport
    from moecomm.config import MoECommConfig


def group_size(group: dist.ProcessGroup | None) -> int:
    """Ranks in ``group``; 1 for None (single process)."""
    if group is None:
        return 1
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("group: a process group was given but torch.distributed is not initialised")
    return dist.get_world_size(group)


class EPMoE(nn.Module):
    """Expert-parallel MoE layer with SwiGLU experts.

    Args:
        hidden_size: H.
        intermediate_size: I of each routed expert.
        num_experts: E, the global number of routed experts; must be divisible by the group size.
        top_k: experts per token.
        group: the EP process group (each rank holds E / group size experts); None = single process.
        transport: instead of ``group``, a Transport already built over the EP ranks (MindSpore jobs:
            :func:`moecomm.integrations.mindspore.make_mindspore_transport`); the layer's dispatcher owns it.
        config: a :class:`moecomm.MoECommConfig` (or a dict of its fields): dispatcher and drop settings.
        scoring / renormalize / n_group / topk_group / routed_scaling_factor: the router's settings
            (see :func:`moecomm.layer.router.select_experts`).
        fp32_logits: compute the gate's logits in float32 (DeepSeek-V3) rather than the layer's dtype.
        use_score_correction_bias: give the router an ``e_score_correction_bias [E]`` buffer (DeepSeek-V3).
        shared_intermediate_size: I of the shared experts (None: no shared experts).
        shared_expert_gate: scale the shared experts' output by ``sigmoid(Linear(H, 1)(x))`` (Qwen2-MoE).
        dtype: parameter dtype (default: torch's default dtype); forward takes inputs of this dtype.

    Attributes:
        router: :class:`TopKRouter` (``weight [E, H]``), replicated.
        w13: ``[E_local, 2*I, H]`` gate then up projections of the local experts.
        w2: ``[E_local, H, I]`` down projections of the local experts.
        shared_experts: :class:`SharedExperts` or None, replicated.
        dispatcher: from :func:`moecomm.make_dispatcher`.
        first_local_expert / num_local_experts: this rank's expert block.
        last_stats: the dispatcher's ``DropStats`` of the last forward (None before the first).
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_experts: int,
        top_k: int,
        *,
        group: dist.ProcessGroup | None = None,
        config: MoECommConfig | dict[str, Any] | None = None,
        scoring: str = "softmax",
        renormalize: bool = True,
        n_group: int | None = None,
        topk_group: int | None = None,
        use_score_correction_bias: bool = False,
        routed_scaling_factor: float = 1.0,
        fp32_logits: bool = False,
        shared_intermediate_size: int | None = None,
        shared_expert_gate: bool = False,
        dtype: torch.dtype | None = None,
        transport: Transport | None = None,
    ) -> None:
        super().__init__()
        from moecomm.comm import make_dispatcher

        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.intermediate_size = check_positive_int("intermediate_size", intermediate_size)
        self.num_experts = check_positive_int("num_experts", num_experts)
        world_size = group_size(group) if transport is None else transport.world_size
        if num_experts % world_size:
            raise ValueError(
                f"num_experts: {num_experts} experts cannot be split evenly over the EP group of "
                f"{world_size} ranks (num_experts must be divisible by the group size)"
            )
        self.router = TopKRouter(
            hidden_size,
            num_experts,
            top_k,
            scoring=scoring,
            renormalize=renormalize,
            n_group=n_group,
            topk_group=topk_group,
            use_score_correction_bias=use_score_correction_bias,
            routed_scaling_factor=routed_scaling_factor,
            fp32_logits=fp32_logits,
            dtype=dtype,
        )
        self.shared_experts = (
            None
            if shared_intermediate_size is None
            else SharedExperts(hidden_size, shared_intermediate_size, use_gate=shared_expert_gate, dtype=dtype)
        )
        # local checks above raise on every rank alike; make_dispatcher is collective (config agreement)
        self.dispatcher = make_dispatcher(config, num_experts, group, transport=transport)
        self.config: MoECommConfig = self.dispatcher.config
        self.rank, self.world_size = self.dispatcher.rank, self.dispatcher.world_size
        self.num_local_experts = self.dispatcher.num_local_experts
        self.first_local_expert = self.rank * self.num_local_experts
        self.w13 = nn.Parameter(torch.empty(self.num_local_experts, 2 * intermediate_size, hidden_size, dtype=dtype))
        self.w2 = nn.Parameter(torch.empty(self.num_local_experts, hidden_size, intermediate_size, dtype=dtype))
        self.last_stats: Any = None
        self.reset_expert_parameters()

    @property
    def top_k(self) -> int:
        """Experts per token."""
        return self.router.top_k

    @property
    def local_experts(self) -> range:
        """Global ids of the experts this rank holds."""
        return range(self.first_local_expert, self.first_local_expert + self.num_local_experts)

    def reset_expert_parameters(self) -> None:
        """Uniform init in +-1/sqrt(fan_in) of the local experts (as ``nn.Linear``)."""
        nn.init.uniform_(self.w13, -1 / math.sqrt(self.hidden_size), 1 / math.sqrt(self.hidden_size))
        nn.init.uniform_(self.w2, -1 / math.sqrt(self.intermediate_size), 1 / math.sqrt(self.intermediate_size))

    @torch.no_grad()
    def load_expert_weights(
        self,
        *,
        w2: torch.Tensor,
        w13: torch.Tensor | None = None,
        gate_proj: torch.Tensor | None = None,
        up_proj: torch.Tensor | None = None,
    ) -> None:
        """Loads the routed experts from full (global) tensors, keeping this rank's shard.

        Args:
            w2: ``[E, H, I]`` float, every expert's down projection.
            w13: ``[E, 2*I, H]`` float, gate then up projections (HF's ``gate_up_proj``, vLLM's ``w13``);
                or instead both of
            gate_proj / up_proj: ``[E, I, H]`` float each.
        """
        num_experts, hidden, inter = self.num_experts, self.hidden_size, self.intermediate_size
        if w13 is None:
            if gate_proj is None or up_proj is None:
                raise ValueError("w13: give w13, or both gate_proj and up_proj")
            for name, value in (("gate_proj", gate_proj), ("up_proj", up_proj)):
                check_full_shape(name, value, (num_experts, inter, hidden))
            w13 = torch.cat([gate_proj, up_proj], dim=1)
        elif gate_proj is not None or up_proj is not None:
            raise ValueError("w13: give either w13 or gate_proj and up_proj, not both")
        check_full_shape("w13", w13, (num_experts, 2 * inter, hidden))
        check_full_shape("w2", w2, (num_experts, hidden, inter))
        shard = slice(self.first_local_expert, self.first_local_expert + self.num_local_experts)
        self.w13.copy_(w13[shard])
        self.w2.copy_(w2[shard])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the MoE layer on this rank's tokens.

        Args:
            x: ``[..., H]`` float tokens in the layer's dtype (any leading shape, may be empty).
        Returns:
            ``[..., H]`` in x's dtype: routed experts' weighted sum (+ shared experts).
        """
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.hidden_size:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a tensor [..., {self.hidden_size}] (hidden_size), got {shape}")
        if x.dtype != self.w13.dtype:
            raise TypeError(f"x: expected the layer's dtype {self.w13.dtype}, got {x.dtype}")
        tokens = check_tensor("x", x.reshape(-1, self.hidden_size), dim=2, dtypes=ACTIVATION_DTYPES, cpu_only=False)
        topk_ids, topk_weights = self.router(tokens)
        # With gradients the step is differentiable (tokens, router and experts get them; every rank runs the
        # backward together); under torch.no_grad() / inference_mode it is the plain inference step.
        differentiable = torch.is_grad_enabled() and (
            tokens.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        out, handle = run_moe_step(
            self.dispatcher, tokens, topk_ids, topk_weights, self.local_experts_forward, differentiable=differentiable
        )
        out = out.to(x.dtype)
        if self.shared_experts is not None:
            out = out + self.shared_experts(tokens)
        self.last_stats = handle.stats
        return out.reshape(x.shape)

    def local_experts_forward(self, expert_x: torch.Tensor, tokens_per_local_expert: torch.Tensor) -> torch.Tensor:
        """This rank's SwiGLU experts on ``expert_x [N_recv, H]`` grouped by ``tokens_per_local_expert [E_local]``."""
        return swiglu_experts(expert_x, tokens_per_local_expert, self.w13, self.w2)

    @classmethod
    def from_module(
        cls,
        block: nn.Module,
        group: dist.ProcessGroup | None = None,
        config: MoECommConfig | dict[str, Any] | None = None,
    ) -> EPMoE:
        """An EPMoE with the weights and routing of a HuggingFace MoE block (this rank's experts only).

        Supported: Mixtral, Qwen2-MoE, Qwen3-MoE and DeepSeek-V3 blocks of transformers 5.x
        (see :data:`moecomm.integrations.transformers.SUPPORTED_BLOCKS`). The adapter is found through
        :data:`moecomm.registry.BLOCK_ADAPTERS`: the layer does not import it.
        """
        return load(BLOCK_ADAPTERS, "transformers")(cls, block, group, config)

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, intermediate_size={self.intermediate_size}, "
            f"num_experts={self.num_experts}, local_experts=[{self.local_experts.start}, {self.local_experts.stop}), "
            f"rank={self.rank}/{self.world_size}, dispatcher={self.config.dispatcher}, "
            f"token_drop_ratio={self.config.token_drop_ratio}"
        )


def check_full_shape(name: str, value: object, expected: tuple[int, int, int]) -> None:
    """Checks a global expert tensor ``[E, ., .]`` against the layer's sizes."""
    tensor = check_tensor(name, value, dim=3, dtypes=ACTIVATION_DTYPES, cpu_only=False)
    if tuple(tensor.shape) != expected:
        raise ValueError(
            f"{name}: expected the full expert tensor of shape {list(expected)} "
            f"(num_experts, and the layer's hidden_size / intermediate_size), got {list(tensor.shape)}"
        )
