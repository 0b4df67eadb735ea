"""SwiGLU expert FFNs over rows grouped by expert, as one grouped matmul per projection.

torch >= 2.10 ships ``torch.nn.functional.grouped_mm`` with a CPU kernel (float32/float16/bfloat16, int32
offsets, empty groups allowed). It needs the row strides of both operands to be multiples of 16 bytes
(H and I multiples of 4 in float32, of 8 in 16-bit types); it is used whenever that holds. Otherwise a
loop runs over the non-empty experts only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from moecomm.checks import ACTIVATION_DTYPES, ID_DTYPES, check_tensor

GroupedMM = Callable[..., torch.Tensor]


def native_grouped_mm() -> GroupedMM | None:
    """torch's grouped matmul (``F.grouped_mm`` or ``torch._grouped_mm``), or None if this torch has neither."""
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


GROUPED_MM_ALIGNMENT_BYTES = 16


def can_use_grouped_mm(rows: torch.Tensor, weights: torch.Tensor) -> bool:
    """True if torch's grouped matmul exists and takes ``rows [N, D_in]`` and ``weights [E, D_out, D_in]``."""
    if native_grouped_mm() is None or rows.device.type != "cpu":
        return False
    row_bytes = rows.shape[1] * rows.element_size()
    return (
        row_bytes % GROUPED_MM_ALIGNMENT_BYTES == 0
        and rows.stride(1) == 1
        and rows.stride(0) == rows.shape[1]
        and weights.stride(2) == 1
        and (weights.stride(1) * weights.element_size()) % GROUPED_MM_ALIGNMENT_BYTES == 0
    )


def grouped_linear(
    rows: torch.Tensor, weights: torch.Tensor, tokens_per_expert: torch.Tensor, *, use_native: bool = True
) -> torch.Tensor:
    """``rows[group e] @ weights[e]^T`` for each expert e, rows grouped by expert.

    Args:
        rows: ``[N, D_in]`` float, N = tokens_per_expert.sum().
        weights: ``[E, D_out, D_in]`` same dtype as rows (nn.Linear layout per expert).
        tokens_per_expert: ``[E]`` int64 counts (zeros allowed).
        use_native: use torch's grouped matmul when it takes these operands; False forces the per-expert loop.

    Returns:
        ``[N, D_out]`` in rows' dtype.
    """
    differentiable = torch.is_grad_enabled() and (rows.requires_grad or weights.requires_grad)
    if use_native and not differentiable and can_use_grouped_mm(rows, weights):
        offsets = torch.cumsum(tokens_per_expert, dim=0).to(torch.int32)
        return native_grouped_mm()(rows, weights.transpose(-2, -1), offs=offsets)
    ends = torch.cumsum(tokens_per_expert, dim=0).tolist()
    if differentiable:  # out= is not differentiable: one matmul per non-empty expert, concatenated
        blocks = [
            rows[ends[e] - int(tokens_per_expert[e]) : ends[e]] @ weights[e].t()
            for e in torch.nonzero(tokens_per_expert).flatten().tolist()
        ]
        return torch.cat(blocks) if blocks else rows.new_zeros(0, weights.shape[1])
    out = rows.new_empty(rows.shape[0], weights.shape[1])
    for expert in torch.nonzero(tokens_per_expert).flatten().tolist():
        start, end = ends[expert] - int(tokens_per_expert[expert]), ends[expert]
        torch.mm(rows[start:end], weights[expert].t(), out=out[start:end])
    return out


#: /proc/cpuinfo flags of x86 units that run 16-bit matmuls natively (without them, torch emulates).
FAST_16BIT_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16"})


@functools.lru_cache(maxsize=1)
def cpu_has_16bit_matmul_units() -> bool:
    """True if this CPU advertises bf16/fp16 matmul units (or is not an x86 Linux host we can read)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True
    flag_lines = [line for line in text.splitlines() if line.startswith("flags")]
    if not flag_lines:
        return True  # not x86 (e.g. aarch64 lists "Features"): leave 16-bit matmuls to torch
    return bool(FAST_16BIT_CPU_FLAGS & set(flag_lines[0].split(":", 1)[1].split()))


def default_compute_dtype(rows: torch.Tensor) -> torch.dtype:
    """float32 for 16-bit CPU rows on a CPU without 16-bit matmul units (emulated bf16 runs ~4x slower
    than float32 there); otherwise rows' own dtype."""
    if rows.device.type == "cpu" and rows.dtype in (torch.float16, torch.bfloat16) and not cpu_has_16bit_matmul_units():
        return torch.float32
    return rows.dtype


def check_experts_args(
    rows: torch.Tensor, tokens_per_expert: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor
) -> None:
    check_tensor("rows", rows, dim=2, dtypes=ACTIVATION_DTYPES, cpu_only=False)
    check_tensor("tokens_per_expert", tokens_per_expert, dim=1, dtypes=ID_DTYPES, cpu_only=False)
    check_tensor("w13", w13, dim=3, dtypes=ACTIVATION_DTYPES, cpu_only=False)
    check_tensor("w2", w2, dim=3, dtypes=ACTIVATION_DTYPES, cpu_only=False)
    num_experts, two_inter, hidden = w13.shape
    if two_inter % 2:
        raise ValueError(f"w13: expected [E_local, 2*I, H] (gate then up), got odd dim 1 in {list(w13.shape)}")
    if rows.shape[1] != hidden:
        raise ValueError(f"rows: expected hidden size {hidden} (last dim of w13), got shape {list(rows.shape)}")
    if w2.shape != (num_experts, hidden, two_inter // 2):
        raise ValueError(f"w2: expected shape {[num_experts, hidden, two_inter // 2]} (from w13), got {list(w2.shape)}")
    if tokens_per_expert.shape[0] != num_experts:
        raise ValueError(
            f"tokens_per_expert: expected {num_experts} counts (experts in w13), got {tokens_per_expert.shape[0]}"
        )
    for name, weight in (("w13", w13), ("w2", w2)):
        if weight.dtype != rows.dtype:
            raise TypeError(f"{name}: expected the dtype of rows ({rows.dtype}), got {weight.dtype}")
    if tokens_per_expert.numel() and int(tokens_per_expert.min()) < 0:
        raise ValueError("tokens_per_expert: expected counts >= 0")
    total = int(tokens_per_expert.sum())
    if total != rows.shape[0]:
        raise ValueError(f"tokens_per_expert: counts sum to {total}, but rows has {rows.shape[0]} rows")


def swiglu_experts(
    rows: torch.Tensor,
    tokens_per_expert: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    *,
    use_native: bool = True,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Runs each expert's SwiGLU FFN on its block of rows.

    Args:
        rows: ``[N, H]`` float32/float16/bfloat16, grouped by expert (expert 0's rows first).
        tokens_per_expert: ``[E_local]`` int64 (or int32) rows per expert, summing to N; zeros allowed.
        w13: ``[E_local, 2*I, H]`` rows' dtype, gate projection then up projection (vLLM's / HF's layout).
        w2: ``[E_local, H, I]`` rows' dtype, down projection.
        use_native: use torch's grouped matmul when available (False: loop over non-empty experts).
        compute_dtype: dtype of the matmuls (None: :func:`default_compute_dtype`, float32 for 16-bit
            rows on CPUs without 16-bit matmul units).

    Returns:
        ``[N, H]`` in rows' dtype: ``(silu(x @ gate^T) * (x @ up^T)) @ w2^T`` with each row's expert.
    """
    check_experts_args(rows, tokens_per_expert, w13, w2)
    out_dtype = rows.dtype
    compute_dtype = default_compute_dtype(rows) if compute_dtype is None else compute_dtype
    if compute_dtype not in ACTIVATION_DTYPES:
        raise TypeError(f"compute_dtype: expected one of {ACTIVATION_DTYPES}, got {compute_dtype}")
    tokens_per_expert = tokens_per_expert.to(torch.int64)
    rows = rows.to(compute_dtype).contiguous()
    w13, w2 = w13.to(compute_dtype), w2.to(compute_dtype)
    gate_up = grouped_linear(rows, w13, tokens_per_expert, use_native=use_native)
    gate, up = gate_up.chunk(2, dim=-1)
    return grouped_linear(F.silu(gate) * up, w2, tokens_per_expert, use_native=use_native).to(out_dtype)
