"""Tiny random-initialised transformers MoE models (no downloads) for the layer tests.

Every builder makes a 2-layer causal LM whose MoE blocks have 8 routed experts, top-2, small sizes,
random (non-zero) router / bias / expert weights so routing is non-trivial.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHITECTURES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3")
VOCAB_SIZE = 64
HIDDEN_SIZE = 32
NUM_EXPERTS = 8


def tiny_config(architecture: str):
    """A transformers config object of ``architecture`` with tiny sizes (fp32, eager attention)."""
    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        num_experts_per_tok=2,
        hidden_act="silu",
        tie_word_embeddings=False,
    )
    if architecture == "mixtral":
        from transformers import MixtralConfig

        config = MixtralConfig(**common, intermediate_size=24, num_local_experts=NUM_EXPERTS)
    elif architecture == "qwen2_moe":
        from transformers import Qwen2MoeConfig

        config = Qwen2MoeConfig(
            **common,
            intermediate_size=40,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=20,
            num_experts=NUM_EXPERTS,
            norm_topk_prob=False,
            decoder_sparse_step=1,
        )
    elif architecture == "qwen3_moe":
        from transformers import Qwen3MoeConfig

        config = Qwen3MoeConfig(
            **common,
            intermediate_size=40,
            moe_intermediate_size=16,
            num_experts=NUM_EXPERTS,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            head_dim=8,
        )
    elif architecture == "deepseek_v3":
        from transformers import DeepseekV3Config

        config = DeepseekV3Config(
            **{**common, "num_key_value_heads": 4},  # MLA needs as many kv heads as heads
            intermediate_size=40,
            moe_intermediate_size=16,
            n_routed_experts=NUM_EXPERTS,
            n_shared_experts=1,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
            norm_topk_prob=True,
            first_k_dense_replace=1,
            q_lora_rank=None,
            kv_lora_rank=16,
            qk_rope_head_dim=4,
            qk_nope_head_dim=8,
            v_head_dim=8,
        )
    else:
        raise ValueError(f"architecture: expected one of {ARCHITECTURES}, got {architecture!r}")
    config._attn_implementation = "eager"
    return config


def tiny_model(architecture: str, seed: int = 0) -> nn.Module:
    """A tiny ``AutoModelForCausalLM`` of ``architecture`` in fp32, eval mode, random weights from ``seed``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(architecture), dtype=torch.float32)
    with torch.no_grad():
        for value in model.parameters():
            if value.dim() >= 2:
                value.normal_(0.0, 0.2)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.normal_(0.0, 0.1)
    return model.eval()


def tiny_input_ids(seed: int, batch: int = 2, length: int = 12) -> torch.Tensor:
    """``[batch, length]`` int64 token ids."""
    return torch.randint(0, VOCAB_SIZE, (batch, length), generator=torch.Generator().manual_seed(seed))
