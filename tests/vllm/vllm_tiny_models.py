"""Writes tiny MoE checkpoints (config.json + model.safetensors with seeded random weights) for vLLM tests.

Real weights (not load_format="dummy") so that runs at different TP sizes load the same full model: vLLM's
dummy loader fills each TP shard on its own, which would give TP=1 and TP=2 different weights.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, VOCAB, LAYERS = 64, 2, 2, 32, 256, 2
NUM_EXPERTS, TOP_K, MOE_INTER = 8, 2, 64


def _attention_and_norms(layer: int, gen: torch.Generator, qk_norm: bool) -> dict[str, torch.Tensor]:
    p = f"model.layers.{layer}."
    w = {
        p + "self_attn.q_proj.weight": torch.randn(HEADS * HEAD_DIM, HIDDEN, generator=gen) * 0.08,
        p + "self_attn.k_proj.weight": torch.randn(KV_HEADS * HEAD_DIM, HIDDEN, generator=gen) * 0.08,
        p + "self_attn.v_proj.weight": torch.randn(KV_HEADS * HEAD_DIM, HIDDEN, generator=gen) * 0.08,
        p + "self_attn.o_proj.weight": torch.randn(HIDDEN, HEADS * HEAD_DIM, generator=gen) * 0.08,
        p + "input_layernorm.weight": 1 + 0.1 * torch.randn(HIDDEN, generator=gen),
        p + "post_attention_layernorm.weight": 1 + 0.1 * torch.randn(HIDDEN, generator=gen),
    }
    if qk_norm:
        w[p + "self_attn.q_norm.weight"] = 1 + 0.1 * torch.randn(HEAD_DIM, generator=gen)
        w[p + "self_attn.k_norm.weight"] = 1 + 0.1 * torch.randn(HEAD_DIM, generator=gen)
    return w


def _experts(prefix: str, names: tuple[str, str, str], gen: torch.Generator) -> dict[str, torch.Tensor]:
    gate, up, down = names
    w = {prefix + "gate.weight": torch.randn(NUM_EXPERTS, HIDDEN, generator=gen) * 0.3}
    for e in range(NUM_EXPERTS):
        w[f"{prefix}experts.{e}.{gate}.weight"] = torch.randn(MOE_INTER, HIDDEN, generator=gen) * 0.15
        w[f"{prefix}experts.{e}.{up}.weight"] = torch.randn(MOE_INTER, HIDDEN, generator=gen) * 0.15
        w[f"{prefix}experts.{e}.{down}.weight"] = torch.randn(HIDDEN, MOE_INTER, generator=gen) * 0.15
    return w


def write_tiny_moe(model_dir: str, arch: str, seed: int = 0) -> str:
    """Writes a 2-layer MoE model of ``arch`` ("mixtral" or "qwen3_moe") into ``model_dir``; returns it."""
    os.makedirs(model_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    common = dict(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        vocab_size=VOCAB,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        torch_dtype="float32",
        tie_word_embeddings=False,
        hidden_act="silu",
        num_experts_per_tok=TOP_K,
    )
    weights = {
        "model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=gen),
        "model.norm.weight": 1 + 0.1 * torch.randn(HIDDEN, generator=gen),
        "lm_head.weight": torch.randn(VOCAB, HIDDEN, generator=gen) * 0.2,
    }
    if arch == "mixtral":
        config = dict(
            common,
            architectures=["MixtralForCausalLM"],
            model_type="mixtral",
            intermediate_size=MOE_INTER,
            num_local_experts=NUM_EXPERTS,
            sliding_window=None,
        )
        for layer in range(LAYERS):
            weights |= _attention_and_norms(layer, gen, qk_norm=False)
            weights |= _experts(f"model.layers.{layer}.block_sparse_moe.", ("w1", "w3", "w2"), gen)
    elif arch == "qwen3_moe":
        config = dict(
            common,
            architectures=["Qwen3MoeForCausalLM"],
            model_type="qwen3_moe",
            intermediate_size=128,
            moe_intermediate_size=MOE_INTER,
            num_experts=NUM_EXPERTS,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            attention_bias=False,
        )
        for layer in range(LAYERS):
            weights |= _attention_and_norms(layer, gen, qk_norm=True)
            weights |= _experts(f"model.layers.{layer}.mlp.", ("gate_proj", "up_proj", "down_proj"), gen)
    else:
        raise ValueError(f"arch: expected 'mixtral' or 'qwen3_moe', got {arch!r}")
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config, f)
    save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(model_dir, "model.safetensors"))
    return model_dir


def prompts(num_prompts: int = 3, length: int = 12, seed: int = 1) -> list[list[int]]:
    """Deterministic prompt token ids."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (length + i,), generator=gen).tolist() for i in range(num_prompts)]
