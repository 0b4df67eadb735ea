"""Every op on CUDA tensors (the torch backend) against the native CPU op; skipped without CUDA.

Runnable as is on a machine with a GPU: ``python -m pytest tests/cuda -q``.
"""

import pytest
import torch

from moecomm import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def batch(seed, num_tokens=257, top_k=4, num_experts=16, hidden=33, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, num_experts, (num_tokens, top_k), generator=gen)
    weights = torch.rand(num_tokens, top_k, generator=gen)
    x = torch.randn(num_tokens, hidden, generator=gen).to(dtype)
    return ids, weights, x


def on_cuda(*tensors):
    return [t.cuda() for t in tensors]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
def test_every_op_on_cuda_matches_the_native_cpu_op(dtype, seed, id_dtype):
    ids, weights, x = batch(seed, dtype=dtype)
    ids = ids.to(id_dtype)
    ids_d, weights_d, x_d = on_cuda(ids, weights, x)
    num_experts, num_ranks = 16, 4

    for policy in ("position", "probs"):
        for scope in ("expert", "rank"):
            want = ops.select_kept(
                ids, weights, num_experts, capacity=50, scope=scope, num_ranks=num_ranks, policy=policy
            )
            got = ops.select_kept(
                ids_d, weights_d, num_experts, capacity=50, scope=scope, num_ranks=num_ranks, policy=policy
            )
            assert got.device.type == "cuda" and torch.equal(got.cpu(), want)
    caps = torch.randint(0, 80, (num_experts,), generator=torch.Generator().manual_seed(seed))
    is_kept = ops.select_kept(ids, weights, num_experts, capacity=caps, policy="probs")
    assert torch.equal(
        ops.select_kept(ids_d, weights_d, num_experts, capacity=caps.cuda(), policy="probs").cpu(), is_kept
    )

    for mask in (None, is_kept):
        mask_d = None if mask is None else mask.cuda()
        layout = ops.route_layout(ids, num_experts, num_ranks, mask)
        layout_d = ops.route_layout(ids_d, num_experts, num_ranks, mask_d)
        assert layout_d.row_of_pair.device.type == "cuda"
        assert torch.equal(layout_d.row_of_pair.cpu(), layout.row_of_pair)
        assert torch.equal(layout_d.tokens_per_expert.cpu(), layout.tokens_per_expert)
        assert torch.equal(layout_d.tokens_per_rank.cpu(), layout.tokens_per_rank)

        rows = ops.permute(x, layout)
        rows_d = ops.permute(x_d, layout_d)
        assert rows_d.device.type == "cuda" and torch.equal(rows_d.cpu(), rows)
        full_layout_d = ops.route_layout(ids_d, num_experts, num_ranks)
        assert torch.equal(ops.permute(x_d, full_layout_d, mask_d).cpu(), rows)
        buffer = torch.full_like(rows_d, float("nan"))
        assert ops.permute(x_d, layout_d, out=buffer) is buffer and torch.equal(buffer.cpu(), rows)

        y = (rows * 1.5).to(dtype)
        tol = TOLERANCE[dtype]
        combined = ops.unpermute(y, layout, weights)
        combined_d = ops.unpermute(y.cuda(), layout_d, weights_d)
        assert combined_d.device.type == "cuda" and combined_d.dtype == dtype
        torch.testing.assert_close(combined_d.cpu(), combined, rtol=tol, atol=tol)
        tokens = torch.full_like(x_d, float("nan"))
        ops.unpermute(y.cuda(), layout_d, weights_d, out=tokens)
        torch.testing.assert_close(tokens.cpu(), combined, rtol=tol, atol=tol)

        counts = layout.tokens_per_rank
        capacity = int(counts.max()) + 3
        packed = ops.pack_padded(rows, counts, capacity)
        packed_d = ops.pack_padded(rows_d, counts.cuda(), capacity)
        assert packed_d.device.type == "cuda" and torch.equal(packed_d.cpu(), packed)
        packed_out = torch.full_like(packed_d, float("nan"))
        ops.pack_padded(rows_d, counts.cuda(), capacity, out=packed_out)
        assert torch.equal(packed_out.cpu(), packed)
        unpacked_d = ops.unpack_padded(packed_d, counts.cuda())
        assert torch.equal(unpacked_d.cpu(), ops.unpack_padded(packed, counts))
        unpacked_out = torch.full_like(rows_d, float("nan"))
        ops.unpack_padded(packed_d, counts.cuda(), out=unpacked_out)
        assert torch.equal(unpacked_out.cpu(), rows)

        blocks = layout.tokens_per_expert.view(num_ranks, -1)
        regrouped = ops.regroup_blocks(rows, blocks)
        regrouped_d = ops.regroup_blocks(rows_d, blocks.cuda())
        assert regrouped_d.device.type == "cuda" and torch.equal(regrouped_d.cpu(), regrouped)
        regrouped_out = torch.full_like(rows_d, float("nan"))
        ops.regroup_blocks(rows_d, blocks.cuda(), out=regrouped_out)
        assert torch.equal(regrouped_out.cpu(), regrouped)
        assert torch.equal(ops.regroup_blocks(regrouped_d, blocks.t().cuda()).cpu(), rows)


def test_mixed_devices_and_aliasing_are_refused_on_cuda():
    ids, weights, x = batch(0)
    layout = ops.route_layout(ids, 16)
    layout_d = ops.route_layout(ids.cuda(), 16)
    with pytest.raises(ValueError, match="^layout: topk_ids: expected a tensor on cuda"):
        ops.permute(x.cuda(), layout)
    with pytest.raises(ValueError, match="^layout: topk_ids: expected a tensor on cpu"):
        ops.permute(x, layout_d)
    with pytest.raises(ValueError, match="^topk_weights: expected a tensor on cuda"):
        ops.unpermute(ops.permute(x.cuda(), layout_d), layout_d, weights)
    with pytest.raises(ValueError, match="^out: expected a tensor on cuda"):
        ops.permute(x.cuda(), layout_d, out=torch.empty(layout.num_rows, x.shape[1]))
    rows_d = ops.permute(x.cuda(), layout_d)
    with pytest.raises(ValueError, match="^out: shares memory with y"):
        ops.unpermute(rows_d, layout_d, weights.cuda(), out=rows_d[: x.shape[0]])
    with pytest.raises(ValueError, match="^counts: expected a tensor on cuda"):
        ops.pack_padded(rows_d, layout.tokens_per_rank, 1000)
