"""Shared experts: a dense SwiGLU FFN every token goes through (DeepSeek / Qwen2-MoE style).

Replicated on every EP rank (no communication). Optionally scaled per token by
``sigmoid(x @ gate^T)`` (Qwen2-MoE's ``shared_expert_gate``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moecomm.checks import ACTIVATION_DTYPES, check_positive_int, check_tensor


class SharedExperts(nn.Module):
    """SwiGLU FFN with the submodule names of HuggingFace's MLPs (``gate_proj``, ``up_proj``, ``down_proj``).

    Args:
        hidden_size: H.
        intermediate_size: I (for DeepSeek, moe_intermediate_size * n_shared_experts).
        use_gate: add ``shared_expert_gate``, a ``Linear(H, 1)`` whose sigmoid scales the output.
        dtype: parameter dtype (default: torch's default dtype).
    """

    def __init__(
        self, hidden_size: int, intermediate_size: int, *, use_gate: bool = False, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.intermediate_size = check_positive_int("intermediate_size", intermediate_size)
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False, dtype=dtype)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False, dtype=dtype)
        self.shared_expert_gate = nn.Linear(hidden_size, 1, bias=False, dtype=dtype) if use_gate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[T, H]`` float in the parameters' dtype. Returns ``[T, H]`` in that dtype."""
        x = check_tensor("x", x, dim=2, dtypes=ACTIVATION_DTYPES, cpu_only=False)
        if x.shape[1] != self.hidden_size:
            raise ValueError(f"x: expected hidden size {self.hidden_size} in the last dim, got shape {list(x.shape)}")
        out = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        if self.shared_expert_gate is not None:
            out = torch.sigmoid(self.shared_expert_gate(x)) * out
        return out
