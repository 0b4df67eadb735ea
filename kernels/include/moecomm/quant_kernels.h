// Plain C++17 ABI of the row quantization kernels (quantized dispatch). No torch, no Python.
//
// A row of H values is cut into blocks of block_cols columns (the last one may be shorter); each block
// gets one float32 scale = absmax(block) / max_code, with max_code 127 (int8) or 448 (float8 e4m3fn).
// Per-token int8 is one block per row (block_cols = H); DeepEP's fp8 layout is block_cols = 128.
//
// Exact definition (the pure-torch reference in python/moecomm/ops/reference_quant.py computes the same):
//   scale   = absmax / max_code                     (float32 division; 0 for an all-zero block)
//   inverse = max_code / absmax                     (float32 division, once per block)
//   v       = clamp(x * inverse, -max_code, max_code) (float32 product; vLLM's dynamic int8 and DeepEP's fp8
//             quantizers multiply by this inverse too); x / scale instead when inverse overflows to inf
//             (absmax < max_code / FLT_MAX, about 3.7e-37 for int8)
//   int8: q = round_half_even(v);  fp8: q = e4m3fn(v), round to nearest even
//   a block whose scale is 0 (all zeros, or absmax so small that absmax / max_code underflows) gets q = 0.
//   dequantize: out = float(q) * scale (float32), then rounded to the output type (nearest even).
// Strides are in elements, not bytes. Every kernel re-checks its sizes and never reads or writes outside
// the extents it is given.
#pragma once

#include <cstdint>

#include "moecomm/cpu_kernels.h"

namespace moecomm::cpu {

enum class QuantKind : int {
  kInt8 = 0,        // int8 codes in [-127, 127]
  kFloat8E4M3 = 1,  // float8 e4m3fn codes, saturated to +-448
};

// kOk, or: a row index >= 0 (quantize: the first row holding inf or NaN; its outputs are unspecified),
// a flat scale index >= 0 (dequantize: the first scale that is negative, inf or NaN), kBadQuantArgs, or
// kBadRowMapBase - p (p >= 0) when the scatter's row_of_pair fails the permute rule at pair p (a row outside
// [-1, num_out_rows) or repeated; p = num_rows * top_k when some output row is never written).
constexpr int64_t kBadQuantArgs = -2;
constexpr int64_t kBadRowMapBase = -3;

// Where each input row's result goes: to the output rows row_of_pair[r * top_k + k] (k < top_k; -1 skips),
// covering [0, num_out_rows) exactly once (the rule of permute); with row_of_pair null, row r goes to row r
// (top_k and num_out_rows are then ignored). Quantizing with a scatter is permute fused with quantize_rows;
// dequantizing with one is dequantize_rows fused with permute.
struct RowScatter {
  const int64_t* row_of_pair = nullptr;
  int64_t top_k = 1;
  int64_t num_out_rows = 0;
};

// x: [N, H] float32/float16/bfloat16 with strides (x_stride_row, x_stride_hidden).
// q: output rows of H codes (int8 or e4m3fn bytes); scales: output rows of scales_per_row float32, in
// segments with the same first_row as q's (one buffer each, or several holding consecutive rows: the rows
// for several peers written in one pass that quantizes each input row once). The two may interleave in one
// buffer of wire rows (each row: H code bytes, padding, its scales, rows equally far apart, in every
// segment): then the kernel writes each output row's span from its first code to its last scale, padding
// zeroed; otherwise exactly the H code bytes and the scales_per_row scales of each output row.
// Needs block_cols >= 1 and scales_per_row * block_cols >= H (blocks past column H are empty: scale 0).
// Every row of x is checked for inf/NaN, also one the scatter sends nowhere. The scatter's num_out_rows
// must equal the segments' rows.
int64_t quantize_rows(const void* x, ScalarType type, int64_t num_rows, int64_t hidden, int64_t x_stride_row,
                      int64_t x_stride_hidden, QuantKind kind, int64_t block_cols, int64_t scales_per_row,
                      const RowScatter& scatter, const RowSegments& q, const RowSegments& scales,
                      int num_threads);

// q: [N, H] codes of `kind`, rows q_stride_row bytes apart; scales: [N, scales_per_row] float32, rows
// scales_stride_row floats apart (same blocks as quantize_rows); out: contiguous output rows of H
// float32/float16/bfloat16 values (N rows, or scatter.num_out_rows with a scatter).
int64_t dequantize_rows(const void* q, QuantKind kind, int64_t num_rows, int64_t hidden, int64_t q_stride_row,
                        const float* scales, int64_t scales_stride_row, int64_t block_cols,
                        int64_t scales_per_row, const RowScatter& scatter, ScalarType out_type, void* out,
                        int num_threads);

}  // namespace moecomm::cpu
