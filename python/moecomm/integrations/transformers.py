"""HuggingFace transformers interop: adopt a transformers MoE block as an :class:`moecomm.EPMoE`.

Supported blocks (transformers 5.x, whose experts are fused 3-D parameters ``gate_up_proj [E, 2I, H]``
(gate then up) and ``down_proj [E, H, I]``):

| block class | router | shared experts |
|---|---|---|
| ``MixtralSparseMoeBlock`` | softmax, top-k, renormalised | none |
| ``Qwen2MoeSparseMoeBlock`` | softmax, top-k, renormalised if ``norm_topk_prob`` | ``shared_expert`` with sigmoid ``shared_expert_gate`` |
| ``Qwen3MoeSparseMoeBlock`` | softmax, top-k, renormalised if ``norm_topk_prob`` | none |
| ``DeepseekV3MoE`` | sigmoid + ``e_score_correction_bias``, grouped top-k (``n_group``, ``topk_group``), renormalised if ``norm_topk_prob``, times ``routed_scaling_factor`` | ``shared_experts`` |

Blocks are recognised by class (subclasses included) without importing transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from moecomm.config import MoECommConfig
    from moecomm.layer.ep_moe import EPMoE


@dataclass
class BlockSpec:
    """What an EPMoE needs from a HF block: sizes, routing settings and the modules holding weights."""

    router: nn.Module  # .weight [E, H] (and .e_score_correction_bias [E] for DeepSeek-V3)
    experts: nn.Module  # .gate_up_proj [E, 2I, H], .down_proj [E, H, I], .act_fn
    top_k: int
    scoring: str = "softmax"
    renormalize: bool = True
    n_group: int | None = None
    topk_group: int | None = None
    use_score_correction_bias: bool = False
    routed_scaling_factor: float = 1.0
    fp32_logits: bool = False
    shared_mlp: nn.Module | None = None  # .gate_proj / .up_proj / .down_proj Linear, .act_fn
    shared_gate: nn.Module | None = None  # Linear(H, 1)


def mixtral_spec(block: nn.Module) -> BlockSpec:
    """MixtralSparseMoeBlock: softmax, top-k, always renormalised."""
    return BlockSpec(router=block.gate, experts=block.experts, top_k=block.gate.top_k, renormalize=True)


def qwen2_moe_spec(block: nn.Module) -> BlockSpec:
    """Qwen2MoeSparseMoeBlock: softmax top-k, ``norm_topk_prob``, gated shared expert."""
    return BlockSpec(
        router=block.gate,
        experts=block.experts,
        top_k=block.gate.top_k,
        renormalize=bool(block.gate.norm_topk_prob),
        shared_mlp=block.shared_expert,
        shared_gate=block.shared_expert_gate,
    )


def qwen3_moe_spec(block: nn.Module) -> BlockSpec:
    """Qwen3MoeSparseMoeBlock: softmax top-k, ``norm_topk_prob``, no shared expert."""
    return BlockSpec(
        router=block.gate, experts=block.experts, top_k=block.gate.top_k, renormalize=bool(block.gate.norm_topk_prob)
    )


def deepseek_v3_spec(block: nn.Module) -> BlockSpec:
    """DeepseekV3MoE: sigmoid, bias-corrected grouped top-k, scaling factor, shared experts."""
    gate = block.gate
    return BlockSpec(
        router=gate,
        experts=block.experts,
        top_k=gate.top_k,
        scoring="sigmoid",
        renormalize=bool(gate.norm_topk_prob),
        n_group=gate.num_group,
        topk_group=gate.topk_group,
        use_score_correction_bias=True,
        routed_scaling_factor=float(gate.routed_scaling_factor),
        fp32_logits=True,
        shared_mlp=block.shared_experts,
    )


#: fully qualified class name -> reader of its settings
SUPPORTED_BLOCKS: dict[str, Callable[[nn.Module], BlockSpec]] = {
    "transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock": mixtral_spec,
    "transformers.models.qwen2_moe.modeling_qwen2_moe.Qwen2MoeSparseMoeBlock": qwen2_moe_spec,
    "transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeSparseMoeBlock": qwen3_moe_spec,
    "transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3MoE": deepseek_v3_spec,
}


def spec_reader(module: nn.Module) -> Callable[[nn.Module], BlockSpec] | None:
    """The reader for ``module``'s class or its nearest supported base class, else None."""
    for cls in type(module).__mro__:
        reader = SUPPORTED_BLOCKS.get(f"{cls.__module__}.{cls.__qualname__}")
        if reader is not None:
            return reader
    return None


def is_supported_block(module: nn.Module) -> bool:
    """True if ``module`` is one of :data:`SUPPORTED_BLOCKS` (or a subclass)."""
    return spec_reader(module) is not None


def block_spec(block: nn.Module) -> BlockSpec:
    """Reads and checks a supported block's settings; raises TypeError for any other module."""
    if not isinstance(block, nn.Module):
        raise TypeError(f"block: expected a torch.nn.Module, got {type(block).__name__}")
    reader = spec_reader(block)
    if reader is None:
        supported = ", ".join(name.rsplit(".", 1)[1] for name in SUPPORTED_BLOCKS)
        raise TypeError(
            f"block: unsupported MoE block type {type(block).__module__}.{type(block).__qualname__}; "
            f"supported: {supported}"
        )
    spec = reader(block)
    check_experts_layout(spec.experts)
    check_is_silu("block.experts.act_fn", spec.experts.act_fn)
    if spec.shared_mlp is not None:
        check_is_silu("block shared expert act_fn", spec.shared_mlp.act_fn)
    num_experts, two_inter, hidden = spec.experts.gate_up_proj.shape
    if tuple(spec.router.weight.shape) != (num_experts, hidden):
        raise ValueError(
            f"block: router weight has shape {list(spec.router.weight.shape)}, expected "
            f"[{num_experts}, {hidden}] (num_experts, hidden_size of the experts)"
        )
    return spec


def check_experts_layout(experts: nn.Module) -> None:
    """Checks for the fused, non-transposed, bias-free layout (HF's default for these blocks)."""
    expected_flags = {"is_transposed": False, "has_bias": False, "is_concatenated": True, "has_gate": True}
    for flag, expected in expected_flags.items():
        if getattr(experts, flag, expected) != expected:
            raise ValueError(
                f"block.experts: expected {flag}={expected} (fused gate_up_proj [E, 2I, H]), got {not expected}"
            )
    for name in ("gate_up_proj", "down_proj"):
        weight = getattr(experts, name, None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
            raise ValueError(f"block.experts.{name}: expected a 3-D expert weight tensor, got {type(weight).__name__}")


def check_is_silu(name: str, activation: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """SwiGLU only: checks that ``activation`` computes SiLU."""
    probe = torch.linspace(-6.0, 6.0, 25)
    if not torch.allclose(activation(probe), F.silu(probe), atol=1e-6):
        raise ValueError(f"{name}: only SiLU (SwiGLU experts) is supported, got {activation!r}")


@torch.no_grad()
def adopt_block(
    cls: type[EPMoE],
    block: nn.Module,
    group: dist.ProcessGroup | None = None,
    config: MoECommConfig | dict[str, Any] | None = None,
) -> EPMoE:
    """Builds ``cls`` (an EPMoE) with ``block``'s routing, router, shared experts and local expert shard.

    Args:
        block: a supported transformers MoE block (weights ``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``).
        group: the EP process group (None: single process).
        config: MoECommConfig or dict of its fields.
    """
    spec = block_spec(block)
    experts = spec.experts
    num_experts, two_inter, hidden = experts.gate_up_proj.shape
    dtype = experts.gate_up_proj.dtype
    shared_inter = None if spec.shared_mlp is None else spec.shared_mlp.gate_proj.out_features
    layer = cls(
        hidden,
        two_inter // 2,
        num_experts,
        spec.top_k,
        group=group,
        config=config,
        scoring=spec.scoring,
        renormalize=spec.renormalize,
        n_group=spec.n_group,
        topk_group=spec.topk_group,
        use_score_correction_bias=spec.use_score_correction_bias,
        routed_scaling_factor=spec.routed_scaling_factor,
        fp32_logits=spec.fp32_logits,
        shared_intermediate_size=shared_inter,
        shared_expert_gate=spec.shared_gate is not None,
        dtype=dtype,
    ).to(experts.gate_up_proj.device)
    layer.router.weight.copy_(spec.router.weight)
    if spec.use_score_correction_bias:
        layer.router.e_score_correction_bias.copy_(spec.router.e_score_correction_bias)
    layer.load_expert_weights(w13=experts.gate_up_proj, w2=experts.down_proj)
    if spec.shared_mlp is not None:
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(layer.shared_experts, name).weight.copy_(getattr(spec.shared_mlp, name).weight)
    if spec.shared_gate is not None:
        layer.shared_experts.shared_expert_gate.weight.copy_(spec.shared_gate.weight)
    return layer.train(block.training)


def patch_model(
    model: nn.Module,
    group: dist.ProcessGroup | None = None,
    config: MoECommConfig | dict[str, Any] | None = None,
) -> dict[str, nn.Module]:
    """Replaces every supported MoE block in ``model`` (in place) by an :class:`moecomm.EPMoE`.

    Args:
        model: a transformers model (or any module) containing supported MoE blocks.
        group: the EP process group (None: single process); every rank must patch the same model.
        config: MoECommConfig or dict of its fields, used for every replaced block.

    Returns:
        ``{qualified name: original block}`` of what was replaced (drop it to free the full expert weights).

    Raises:
        ValueError: ``model`` is itself a block (use ``EPMoE.from_module``) or holds no supported block.
    """
    from moecomm.layer.ep_moe import EPMoE

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if is_supported_block(model):
        raise ValueError("model: is itself an MoE block and cannot be patched in place; use EPMoE.from_module(model)")
    names = [name for name, module in model.named_modules() if name and is_supported_block(module)]
    if not names:
        supported = ", ".join(name.rsplit(".", 1)[1] for name in SUPPORTED_BLOCKS)
        raise ValueError(f"model: no supported MoE block found in {type(model).__name__} (supported: {supported})")
    replaced: dict[str, nn.Module] = {}
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        original = getattr(parent, child_name)
        setattr(parent, child_name, EPMoE.from_module(original, group=group, config=config))
        replaced[name] = original
    return replaced
