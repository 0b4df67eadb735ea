"""moecomm.layer: the drop-in expert-parallel MoE layer and its parts.

- :class:`EPMoE`: router -> dispatch -> local SwiGLU experts -> combine (+ shared experts).
- :class:`TopKRouter` / :func:`select_experts`: softmax/sigmoid, top-k, grouped top-k, bias, scaling.
- :func:`swiglu_experts`: grouped SwiGLU FFN over rows grouped by expert.
- :class:`SharedExperts`: dense SwiGLU FFN with optional sigmoid gate.
"""

from moecomm.layer.ep_moe import EPMoE
from moecomm.layer.experts import swiglu_experts
from moecomm.layer.router import TopKRouter, select_experts
from moecomm.layer.shared_experts import SharedExperts

__all__ = ["EPMoE", "TopKRouter", "select_experts", "swiglu_experts", "SharedExperts"]
