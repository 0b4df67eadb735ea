"""Top-k router of an MoE layer: linear gate, softmax/sigmoid scoring, (grouped) top-k, renormalisation.

Covers the routings of Mixtral / Qwen-MoE (softmax, top-k, optional renormalisation) and DeepSeek-V3
(sigmoid, score-correction bias, grouped top-k over ``n_group`` groups keeping ``topk_group`` of them,
renormalisation and a routed scaling factor). Scoring runs in float32; the gate's logits are computed in
the parameters' dtype (as Mixtral / Qwen do) or, with ``fp32_logits``, in float32 (as DeepSeek-V3 does), so
16-bit models pick the same experts as the blocks they replace.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moecomm.checks import ACTIVATION_DTYPES, check_choice, check_positive_int, check_tensor

SCORINGS = ("softmax", "sigmoid")

# added to the renormalisation denominator (as DeepSeek-V3 does) so an all-zero top-k cannot divide by zero
RENORMALIZE_EPS = 1e-20


def check_group_settings(num_experts: int, top_k: int, n_group: int | None, topk_group: int | None) -> None:
    """Checks the grouped top-k settings against ``num_experts`` and ``top_k``; both None means no groups."""
    if n_group is None and topk_group is None:
        return
    if n_group is None or topk_group is None:
        raise ValueError(f"n_group / topk_group: give both or neither, got n_group={n_group}, topk_group={topk_group}")
    check_positive_int("n_group", n_group)
    check_positive_int("topk_group", topk_group)
    if num_experts % n_group:
        raise ValueError(f"n_group: num_experts={num_experts} is not divisible by n_group={n_group}")
    if topk_group > n_group:
        raise ValueError(f"topk_group: expected at most n_group={n_group}, got {topk_group}")
    if top_k > topk_group * (num_experts // n_group):
        raise ValueError(
            f"topk_group: top_k={top_k} experts do not fit in topk_group={topk_group} groups of "
            f"{num_experts // n_group} experts"
        )


def select_experts(
    router_logits: torch.Tensor,
    top_k: int,
    *,
    scoring: str = "softmax",
    renormalize: bool = True,
    n_group: int | None = None,
    topk_group: int | None = None,
    score_correction_bias: torch.Tensor | None = None,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Picks each token's top-k experts and their weights from the router logits.

    Args:
        router_logits: ``[T, E]`` float logits (any float dtype; scoring runs in float32).
        top_k: experts per token, ``1 <= top_k <= E``.
        scoring: ``"softmax"`` (over all experts) or ``"sigmoid"`` (per expert).
        renormalize: divide the kept scores by their sum (plus 1e-20).
        n_group / topk_group: grouped top-k: experts split into ``n_group`` contiguous groups, only the
            ``topk_group`` best groups are eligible. A group's score is the sum of its two best
            (bias-corrected) scores when ``score_correction_bias`` is given, else its best score.
        score_correction_bias: optional ``[E]`` float, added to the scores for choosing experts only;
            the weights come from the uncorrected scores.
        routed_scaling_factor: multiplies the final weights.

    Returns:
        ``(topk_ids [T, K] int64, topk_weights [T, K] float32)``.
    """
    logits = check_tensor("router_logits", router_logits, dim=2, dtypes=ACTIVATION_DTYPES, cpu_only=False)
    num_experts = logits.shape[1]
    check_positive_int("top_k", top_k)
    if top_k > num_experts:
        raise ValueError(f"top_k: expected at most num_experts={num_experts}, got {top_k}")
    check_choice("scoring", scoring, SCORINGS)
    check_group_settings(num_experts, top_k, n_group, topk_group)
    logits = logits.float()
    scores = torch.softmax(logits, dim=-1) if scoring == "softmax" else logits.sigmoid()
    scores_for_choice = scores
    if score_correction_bias is not None:
        bias = check_tensor(
            "score_correction_bias", score_correction_bias, dim=1, dtypes=ACTIVATION_DTYPES, cpu_only=False
        )
        if bias.shape[0] != num_experts:
            raise ValueError(f"score_correction_bias: expected shape [{num_experts}], got {list(bias.shape)}")
        scores_for_choice = scores + bias.float()
    if n_group is not None and n_group > 1:
        sum_top2 = score_correction_bias is not None
        scores_for_choice = mask_to_best_groups(scores_for_choice, n_group, topk_group, sum_top2)
    if n_group is not None or score_correction_bias is not None:
        # the DeepSeek-V3 path: choose with the corrected scores, weigh with the plain ones
        topk_ids = torch.topk(scores_for_choice, k=top_k, dim=-1, sorted=False)[1]
        topk_weights = scores.gather(1, topk_ids)
    else:
        topk_weights, topk_ids = torch.topk(scores, top_k, dim=-1)
    if renormalize:
        topk_weights = topk_weights / (topk_weights.sum(dim=-1, keepdim=True) + RENORMALIZE_EPS)
    if routed_scaling_factor != 1.0:
        topk_weights = topk_weights * routed_scaling_factor
    return topk_ids, topk_weights


def mask_to_best_groups(scores: torch.Tensor, n_group: int, topk_group: int, sum_top2: bool) -> torch.Tensor:
    """Sets the scores of all experts outside each token's ``topk_group`` best groups to -inf.

    Args:
        scores: ``[T, E]`` float32 scores used for choosing experts.
    Returns:
        ``[T, E]`` float32, the masked copy.
    """
    num_tokens, num_experts = scores.shape
    grouped = scores.view(num_tokens, n_group, num_experts // n_group)
    if sum_top2:
        group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1)[0].sum(dim=-1)
    else:
        group_scores = grouped.amax(dim=-1)
    group_idx = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    is_group_kept = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_idx, True)
    is_expert_eligible = is_group_kept.unsqueeze(-1).expand_as(grouped).reshape(num_tokens, num_experts)
    return scores.masked_fill(~is_expert_eligible, float("-inf"))


class TopKRouter(nn.Module):
    """Linear gate plus :func:`select_experts`; replicated on every EP rank.

    Holds ``weight [E, H]`` and, with ``use_score_correction_bias``, the buffer
    ``e_score_correction_bias [E]`` float32 (the names HuggingFace uses). ``fp32_logits`` computes the
    gate's logits in float32 (else in the weight's dtype).
    """

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        *,
        scoring: str = "softmax",
        renormalize: bool = True,
        n_group: int | None = None,
        topk_group: int | None = None,
        use_score_correction_bias: bool = False,
        routed_scaling_factor: float = 1.0,
        fp32_logits: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.top_k = check_positive_int("top_k", top_k)
        if top_k > num_experts:
            raise ValueError(f"top_k: expected at most num_experts={num_experts}, got {top_k}")
        self.scoring = check_choice("scoring", scoring, SCORINGS)
        check_group_settings(num_experts, top_k, n_group, topk_group)
        self.renormalize = bool(renormalize)
        self.n_group = n_group
        self.topk_group = topk_group
        self.routed_scaling_factor = float(routed_scaling_factor)
        self.fp32_logits = bool(fp32_logits)
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size, dtype=dtype))
        if use_score_correction_bias:
            self.register_buffer("e_score_correction_bias", torch.zeros(num_experts, dtype=torch.float32))
        else:
            self.e_score_correction_bias = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform init in +-1/sqrt(H), as ``nn.Linear``; zero bias."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.e_score_correction_bias is not None:
            nn.init.zeros_(self.e_score_correction_bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Routes tokens.

        Args:
            x: ``[T, H]`` float tokens.
        Returns:
            ``(topk_ids [T, K] int64, topk_weights [T, K] float32)``.
        """
        x = check_tensor("x", x, dim=2, dtypes=ACTIVATION_DTYPES, cpu_only=False)
        if x.shape[1] != self.hidden_size:
            raise ValueError(f"x: expected hidden size {self.hidden_size} in the last dim, got shape {list(x.shape)}")
        if self.fp32_logits:
            router_logits = F.linear(x.float(), self.weight.float())
        else:
            router_logits = F.linear(x.to(self.weight.dtype), self.weight)
        return select_experts(
            router_logits,
            self.top_k,
            scoring=self.scoring,
            renormalize=self.renormalize,
            n_group=self.n_group,
            topk_group=self.topk_group,
            score_correction_bias=self.e_score_correction_bias,
            routed_scaling_factor=self.routed_scaling_factor,
        )

    def extra_repr(self) -> str:
        groups = f", n_group={self.n_group}, topk_group={self.topk_group}" if self.n_group else ""
        return (
            f"hidden_size={self.hidden_size}, num_experts={self.num_experts}, top_k={self.top_k}, "
            f"scoring={self.scoring}, renormalize={self.renormalize}{groups}, "
            f"routed_scaling_factor={self.routed_scaling_factor}, fp32_logits={self.fp32_logits}"
        )
