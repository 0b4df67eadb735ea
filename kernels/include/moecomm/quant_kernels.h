// Plain C++17 ABI of the row quantization kernels (quantized dispatch). No torch, no Python.
//
// A row of H values is cut into blocks of block_cols columns (the last one may be shorter); each block
// gets one float32 scale = absmax(block) / max_code, with max_code 127 (int8) or 448 (float8 e4m3fn).
// Per-token int8 is one block per row (block_cols = H); DeepEP's fp8 layout is block_cols = 128.
//
// Exact definition (the pure-torch reference in python/moecomm/ops/reference_quant.py computes the same):
//   scale = absmax / max_code                    (float32 division; 0 for an all-zero block)
//   v     = clamp(x / scale, -max_code, max_code) (float32 division)
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
// a flat scale index >= 0 (dequantize: the first scale that is negative, inf or NaN), or kBadQuantArgs.
constexpr int64_t kBadQuantArgs = -2;

// x: [N, H] float32/float16/bfloat16 with strides (x_stride_row, x_stride_hidden);
// q: [N, H] contiguous (int8 or e4m3fn bytes); scales: [N, scales_per_row] contiguous float32.
// Needs block_cols >= 1 and scales_per_row * block_cols >= H (blocks past column H are empty: scale 0).
// Returns kOk, the first row holding a non-finite value, or kBadQuantArgs.
int64_t quantize_rows(const void* x, ScalarType type, int64_t num_rows, int64_t hidden, int64_t x_stride_row,
                      int64_t x_stride_hidden, QuantKind kind, int64_t block_cols, int64_t scales_per_row,
                      void* q, float* scales, int num_threads);

// q: [N, H] contiguous codes of `kind`; scales: [N, scales_per_row] contiguous float32 (same blocks as
// quantize_rows); out: [N, H] contiguous float32/float16/bfloat16.
// Returns kOk, the flat index of the first scale that is negative or not finite, or kBadQuantArgs.
int64_t dequantize_rows(const void* q, QuantKind kind, int64_t num_rows, int64_t hidden, const float* scales,
                        int64_t block_cols, int64_t scales_per_row, ScalarType out_type, void* out,
                        int num_threads);

}  // namespace moecomm::cpu
