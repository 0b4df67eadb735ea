"""quantize_rows / dequantize_rows: native vs the pure-torch reference (bit for bit), the definition checked
independently (error bounds, ties, saturation, the e4m3fn code table), inf/NaN, out= buffers, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_strategies import ACTIVATION_DTYPES

from moecomm import _C, ops
from moecomm.ops import reference
from moecomm.ops._native import tensor_arg

KINDS = ("int8", "fp8")
IMPLS = [pytest.param(ops, id="native"), pytest.param(reference, id="reference")]
MAX_CODE = {"int8": 127.0, "fp8": 448.0}
HIDDEN_SIZES = st.one_of(st.sampled_from([1, 2, 127, 128, 129, 255, 256, 384, 7168, 9000]), st.integers(1, 9000))
ROW_MODES = ("normal", "zeros", "outlier", "tiny", "edge", "ties", "huge")


def codes(q: torch.Tensor) -> torch.Tensor:
    """The raw code bytes (float8 tensors compare NaN codes unequal; bytes do not)."""
    return q.view(torch.uint8)


def make_rows(num_rows: int, hidden: int, dtype: torch.dtype, modes: list[str], seed: int) -> torch.Tensor:
    """``[num_rows, hidden]`` float32 rows, one mode each, representable in ``dtype`` (which then holds them)."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.empty((num_rows, hidden))
    for r, mode in enumerate(modes):
        if mode == "zeros":
            rows[r] = 0.0
        elif mode == "outlier":  # one large value, the rest small: most codes round to 0
            rows[r] = torch.randn(hidden, generator=gen) * 1e-3
            rows[r, int(torch.randint(0, hidden, (1,), generator=gen))] = 300.0
        elif mode == "tiny":  # subnormal scales (absmax / 127 below 2^-126), inverses that overflow, or scale 0
            rows[r] = torch.randn(hidden, generator=gen) * (1e-5 if dtype == torch.float16 else 1e-38)
        elif mode == "edge":  # absmax near max_code / FLT_MAX: the inverse overflows (divide) or just does not
            rows[r] = torch.randn(hidden, generator=gen) * (1e-5 if dtype == torch.float16 else 1.5e-37)
        elif mode == "ties":  # absmax 127 (int8 scale 1): k + 0.5 values are exact ties
            rows[r] = (torch.randint(-254, 255, (hidden,), generator=gen) / 2.0).clamp(-127, 127)
            rows[r, 0] = 127.0
        elif mode == "huge":
            rows[r] = torch.randn(hidden, generator=gen) * (1e30 if dtype != torch.float16 else 6e4 / 5)
        else:
            rows[r] = torch.randn(hidden, generator=gen) * float(10.0 ** torch.randint(-3, 4, (1,), generator=gen))
    return rows.to(dtype)


def strided(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x itself, every second column of a wider tensor, or a transposed copy (column-major)."""
    if layout == "columns":
        wide = torch.zeros((x.shape[0], 2 * x.shape[1]), dtype=x.dtype)
        wide[:, ::2] = x
        return wide[:, ::2]
    if layout == "transposed":
        return x.t().contiguous().t()
    return x


@settings(max_examples=150, deadline=None)
@given(
    num_rows=st.integers(0, 5),
    hidden=HIDDEN_SIZES,
    dtype=st.sampled_from(ACTIVATION_DTYPES),
    kind=st.sampled_from(KINDS),
    modes=st.lists(st.sampled_from(ROW_MODES), min_size=5, max_size=5),
    layout=st.sampled_from(["contiguous", "columns", "transposed"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_native_matches_reference_bit_for_bit(num_rows, hidden, dtype, kind, modes, layout, seed):
    x = strided(make_rows(num_rows, hidden, dtype, modes[:num_rows], seed), layout)
    q, scales = ops.quantize_rows(x, kind)
    q_ref, scales_ref = reference.quantize_rows(x, kind)
    assert q.dtype == q_ref.dtype and q.shape == x.shape
    assert torch.equal(codes(q), codes(q_ref))
    assert torch.equal(scales, scales_ref)
    for out_dtype in ACTIVATION_DTYPES:
        assert torch.equal(
            ops.dequantize_rows(q, scales, kind, out_dtype), reference.dequantize_rows(q, scales, kind, out_dtype)
        )


@settings(max_examples=80, deadline=None)
@given(
    num_rows=st.integers(1, 4),
    hidden=HIDDEN_SIZES,
    kind=st.sampled_from(KINDS),
    scale_exp=st.integers(-30, 30),
    seed=st.integers(0, 2**31 - 1),
)
def test_definition_holds_in_float64(num_rows, hidden, kind, scale_exp, seed):
    """The native op meets the definition, checked in float64 without the reference: scales are the block
    absmax over the largest code (to float32 rounding), the absmax value gets the largest code, and every
    value is within the rounding error of its code."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((num_rows, hidden), generator=gen) * 10.0**scale_exp
    q, scales = ops.quantize_rows(x, kind)
    max_code = MAX_CODE[kind]
    cols = hidden if kind == "int8" else 128
    blocks = -(-hidden // cols)
    per_block = scales.reshape(num_rows, -1).double()
    assert per_block.shape == (num_rows, blocks)
    x64 = x.double()
    for b in range(blocks):
        part = x64[:, b * cols : (b + 1) * cols]
        absmax = part.abs().amax(dim=1)
        assert torch.allclose(per_block[:, b], absmax / max_code, rtol=2**-23, atol=0)
        peak_codes = q.float()[:, b * cols : (b + 1) * cols].gather(1, part.abs().argmax(dim=1, keepdim=True))
        assert torch.equal(peak_codes.abs().squeeze(1), torch.full((num_rows,), max_code))
    expanded = per_block.repeat_interleave(cols, dim=1)[:, :hidden]
    error = (ops.dequantize_rows(q, scales, kind, torch.float32).double() - x64).abs()
    float32_slack = x64.abs() * 2**-21  # the float32 division and product each round once
    if kind == "int8":  # half a code step
        bound = 0.5 * expanded + float32_slack
    else:  # half an e4m3 ulp: 2^-4 relative for normal codes, 2^-10 of the scale below 2^-6
        bound = torch.maximum(x64.abs() * 2**-4, expanded * 2**-10) + float32_slack
    assert bool((error <= bound).all())


@pytest.mark.parametrize("impl", IMPLS)
def test_int8_rounds_half_to_even_and_zero_rows_are_zero(impl):
    values = [127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.49, -126.5, 0.0]
    x = torch.tensor([values, [0.0] * len(values)])
    q, scales = impl.quantize_rows(x, "int8")
    assert scales.tolist() == [1.0, 0.0]  # 127 / 127; an all-zero row sends scale 0
    assert q[0].tolist() == [round(v) for v in values]  # Python's round() is half to even
    assert q[1].tolist() == [0] * len(values)
    assert impl.dequantize_rows(q, scales, "int8", torch.float32)[1].tolist() == [0.0] * len(values)


@pytest.mark.parametrize("impl", IMPLS)
def test_scales_that_underflow_send_zero_codes(impl):
    x = torch.tensor([[1e-44, -1e-44, 0.0], [1e-40, 5e-41, -1e-40]])  # absmax/127: 0, then a subnormal
    for kind in KINDS:
        q, scales = impl.quantize_rows(x, kind)
        flat = scales.reshape(2, -1)[:, 0]
        assert float(flat[0]) == 0.0 and int(codes(q)[0].abs().max()) == 0
        assert 0.0 < float(flat[1]) < 1.2e-38
        assert float(q[1, 0].float()) == MAX_CODE[kind] and float(q[1, 2].float()) == -MAX_CODE[kind]


def test_fp8_code_table_matches_torch():
    """Every e4m3fn code decodes like torch's float8_e4m3fn (NaN codes to NaN), and every finite code
    value quantizes back to its own code (scale 1: the block's absmax is 448)."""
    all_codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).reshape(2, 128)
    ones = torch.ones(2, 1)
    decoded = ops.dequantize_rows(all_codes, ones, "fp8", torch.float32)
    expected = all_codes.float()
    assert torch.equal(decoded.isnan(), expected.isnan())
    assert torch.equal(torch.nan_to_num(decoded), torch.nan_to_num(expected))
    finite = expected.clone()
    finite[:, 127] = finite[:, 126]  # replace the NaN codes by +-448
    q, scales = ops.quantize_rows(finite, "fp8")
    assert scales.tolist() == [[1.0], [1.0]]
    assert torch.equal(codes(q)[:, :127], codes(all_codes)[:, :127])


@pytest.mark.parametrize("impl", IMPLS)
def test_fp8_block_layout_and_peak_codes(impl):
    hidden = 300  # blocks of 128, 128 and 44 columns
    x = torch.zeros(1, hidden)
    x[0, 5], x[0, 130], x[0, 299] = -7.0, 1000.0, 2.0**-20
    q, scales = impl.quantize_rows(x, "fp8")
    assert scales.shape == (1, 3)
    assert torch.equal(scales, torch.tensor([[7.0, 1000.0, 2.0**-20]]) / 448.0)  # float32 division
    assert q.float()[0, [5, 130, 299]].tolist() == [-448.0, 448.0, 448.0]
    assert ops.wire_row_bytes(hidden, "fp8") == hidden + 4 * 3


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_inf_or_nan_raises_naming_the_first_row(impl, kind, bad):
    x = torch.randn(64, 200)
    x[50, 3] = bad
    x[10, 199] = bad  # rows in different threads' chunks: the first is reported
    with pytest.raises(ValueError, match=r"x: row 10 contains inf or NaN"):
        impl.quantize_rows(x.to(torch.bfloat16), kind)


@pytest.mark.parametrize("kind", KINDS)
def test_out_buffers_are_filled_and_returned(kind):
    x = torch.randn(6, 260, dtype=torch.bfloat16)
    q_ref, scales_ref = reference.quantize_rows(x, kind)
    out = torch.empty_like(q_ref)
    out_scales = torch.empty_like(scales_ref)
    q, scales = ops.quantize_rows(x, kind, out=out, out_scales=out_scales)
    assert q is out and scales is out_scales
    assert torch.equal(codes(out), codes(q_ref)) and torch.equal(out_scales, scales_ref)
    out_rows = torch.empty(6, 260, dtype=torch.float16)
    assert ops.dequantize_rows(q, scales, kind, torch.float16, out=out_rows) is out_rows
    assert torch.equal(out_rows, reference.dequantize_rows(q, scales, kind, torch.float16))


@pytest.mark.parametrize("kind", KINDS)
def test_dequantize_accepts_strided_codes_and_scales(kind):
    x = torch.randn(5, 384)
    q, scales = ops.quantize_rows(x, kind)
    wide_q = torch.cat([q.view(torch.uint8), q.view(torch.uint8)], dim=1)[:, ::2].view(q.dtype)
    wide_scales = torch.stack([scales, scales], dim=-1)[..., 0]
    assert not wide_scales.is_contiguous()
    got = ops.dequantize_rows(wide_q, wide_scales, kind, torch.float32)
    assert torch.equal(got, reference.dequantize_rows(wide_q.contiguous(), scales, kind, torch.float32))


@pytest.mark.parametrize("kind", KINDS)
def test_large_output_streaming_path_matches_reference(kind):
    """q of 33.8 MB crosses the streaming-store threshold (32 MiB); H=8256 is 64-byte aligned rows, not a
    multiple of 128 columns."""
    x = torch.randn(4096, 8256, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    q, scales = ops.quantize_rows(x, kind)
    q_ref, scales_ref = reference.quantize_rows(x, kind)
    assert torch.equal(codes(q), codes(q_ref)) and torch.equal(scales, scales_ref)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_agree(threads):
    x = torch.randn(37, 1000)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for kind in KINDS:
            q, scales = ops.quantize_rows(x, kind)
            q_ref, scales_ref = reference.quantize_rows(x, kind)
            assert torch.equal(codes(q), codes(q_ref)) and torch.equal(scales, scales_ref)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("hidden", [0, 1, 127, 128, 129, 7168])
def test_row_bytes_match_what_quantize_produces(hidden):
    for kind in KINDS:
        q, scales = ops.quantize_rows(torch.randn(3, hidden), kind)
        padding = -hidden % 4  # the wire row keeps its scales 4-byte aligned
        assert ops.wire_row_bytes(hidden, kind) * 3 == q.numel() * q.element_size() + scales.numel() * 4 + 3 * padding


# ---- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_quantize_arguments(impl):
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="kind"):
        impl.quantize_rows(x, "int4")
    with pytest.raises(TypeError, match="x"):
        impl.quantize_rows(x.to(torch.int32), "int8")
    with pytest.raises(ValueError, match="x"):
        impl.quantize_rows(x.reshape(-1), "fp8")
    with pytest.raises(TypeError, match="x"):
        impl.quantize_rows(x.numpy(), "int8")


def test_bad_out_buffers():
    x = torch.randn(4, 8)
    with pytest.raises(TypeError, match="out"):
        ops.quantize_rows(x, "int8", out=torch.empty(4, 8, dtype=torch.float8_e4m3fn))
    with pytest.raises(ValueError, match="out"):
        ops.quantize_rows(x, "int8", out=torch.empty(4, 9, dtype=torch.int8))
    with pytest.raises(ValueError, match="out"):
        ops.quantize_rows(x, "int8", out=torch.empty(8, 4, dtype=torch.int8).t())
    with pytest.raises(ValueError, match="out_scales"):
        ops.quantize_rows(x, "int8", out_scales=torch.empty(4, 1))
    with pytest.raises(ValueError, match="out_scales"):
        ops.quantize_rows(x, "fp8", out_scales=torch.empty(4, 2))
    with pytest.raises(TypeError, match="out_scales"):
        ops.quantize_rows(x, "fp8", out_scales=torch.empty(4, 1, dtype=torch.float64))
    q, scales = ops.quantize_rows(x, "fp8")
    with pytest.raises(ValueError, match="out"):
        ops.dequantize_rows(q, scales, "fp8", torch.float32, out=torch.empty(4, 7))
    with pytest.raises(TypeError, match="out"):
        ops.dequantize_rows(q, scales, "fp8", torch.float32, out=torch.empty(4, 8, dtype=torch.bfloat16))


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_dequantize_arguments(impl):
    q8, s8 = reference.quantize_rows(torch.randn(4, 200), "int8")
    qf, sf = reference.quantize_rows(torch.randn(4, 200), "fp8")
    with pytest.raises(TypeError, match="q"):
        impl.dequantize_rows(qf, s8, "int8", torch.float32)  # codes of the other kind
    with pytest.raises(ValueError, match="scales"):
        impl.dequantize_rows(qf, sf[:, :1], "fp8", torch.float32)
    with pytest.raises(ValueError, match="scales"):
        impl.dequantize_rows(q8, s8[:3], "int8", torch.float32)
    with pytest.raises(TypeError, match="scales"):
        impl.dequantize_rows(q8, s8.double(), "int8", torch.float32)
    with pytest.raises(TypeError, match="dtype"):
        impl.dequantize_rows(q8, s8, "int8", torch.int8)
    with pytest.raises(ValueError, match="kind"):
        impl.dequantize_rows(q8, s8, "fp4", torch.float32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan])
def test_bad_scale_values_are_named(impl, bad):
    qf, sf = reference.quantize_rows(torch.randn(4, 200), "fp8")
    sf[2, 1] = bad
    with pytest.raises(ValueError, match=r"scales: entry \[2, 1\] is negative, inf or NaN"):
        impl.dequantize_rows(qf, sf, "fp8", torch.bfloat16)
    q8, s8 = reference.quantize_rows(torch.randn(4, 200), "int8")
    s8[3] = bad
    with pytest.raises(ValueError, match=r"scales: entry \[3\] is negative, inf or NaN"):
        impl.dequantize_rows(q8, s8, "int8", torch.float32)


def test_forged_tensor_args_are_rejected_by_the_core():
    from moecomm.ops._native import dtype_code

    x = torch.randn(4, 300)
    q = torch.empty(4, 300, dtype=torch.float8_e4m3fn)
    fp8 = dtype_code(torch.float8_e4m3fn)

    def call(x_arg, code, q_rows, q_stride, scales, scale_rows, scale_stride):
        q_table, scale_table = torch.tensor([[0, 0, q_rows]]), torch.tensor([[0, 0, scale_rows]])
        _C.quantize_rows(  # a TensorArg holds no memory: the tables must outlive the call
            x_arg,
            code,
            [tensor_arg("q", q)],
            tensor_arg("q", q_table),
            q_stride,
            [tensor_arg("scales", scales)],
            tensor_arg("scales", scale_table),
            scale_stride,
            None,
            1,
        )

    call(tensor_arg("x", x), fp8, 4, 300, torch.empty(4, 3), 4, 12)  # honest: 3 scales per row for H=300
    with pytest.raises(ValueError, match="^scales: segment 0: 4 rows of 12 bytes, 12 apart, from byte 0 pass the 16"):
        call(tensor_arg("x", x), fp8, 4, 300, torch.empty(4), 4, 12)  # fp8 needs [4, 3]
    with pytest.raises(ValueError, match="^q: expected 4 rows"):
        call(tensor_arg("x", x), fp8, 3, 300, torch.empty(3, 3), 3, 12)
    with pytest.raises(ValueError, match="^scales: expected the rows per segment of the codes' table"):
        call(tensor_arg("x", x), fp8, 4, 300, torch.empty(4, 3), 3, 12)
    with pytest.raises(ValueError, match="^x"):
        call(tensor_arg("x", torch.ones(4, 300, dtype=torch.int32)), fp8, 4, 300, torch.empty(4, 3), 4, 12)
    with pytest.raises(ValueError, match="^code_dtype: expected int8 or float8_e4m3fn, got float32"):
        call(tensor_arg("x", x), dtype_code(torch.float32), 4, 300, torch.empty(4, 3), 4, 12)
    wide = torch.empty(4, 600, dtype=torch.int8)[:, ::2]
    with pytest.raises(ValueError, match="q"):
        _C.dequantize_rows(tensor_arg("q", wide), tensor_arg("scales", torch.ones(4)), tensor_arg("out", x), None, 1)
    with pytest.raises(ValueError, match="out"):
        _C.dequantize_rows(
            tensor_arg("q", q), tensor_arg("scales", torch.ones(4, 3)), tensor_arg("out", torch.empty(4, 299)), None, 1
        )
    forged = _C.TensorArg("scales", torch.ones(4, 3).data_ptr(), [4, 3], [3, -1], int(_C.ScalarType.float32), 48)
    with pytest.raises(ValueError, match="scales"):
        _C.dequantize_rows(tensor_arg("q", q), forged, tensor_arg("out", x), None, 1)
