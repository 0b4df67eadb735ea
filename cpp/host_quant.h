// Host side of the row quantization ops: validate TensorArgs, derive the block layout from q's dtype
// (int8: one scale per row, scales [N]; float8_e4m3fn: one scale per 128 columns, scales [N, ceil(H/128)]),
// call the kernels and turn their error codes into exceptions that name the argument.
#pragma once

#include <optional>
#include <vector>

#include "tensor_arg.h"

namespace moecomm::host {

// x [N,H] float32/float16/bfloat16 (any strides) -> N_out rows of H codes of code_dtype (int8 or
// float8_e4m3fn) and their float32 scales (1 per row for int8, ceil(H/128) for float8_e4m3fn). Codes and
// scales rows are byte ranges of buffers (ranged_rows: q_* for the codes, scales_* for the scales, with the
// same rows per segment); they may interleave in one buffer (wire rows). Without row_of_pair N_out = N; with
// row_of_pair [N,K] int64, row t goes to the rows row_of_pair[t] (permute's rule). Raises naming x if a row
// holds inf or NaN.
void quantize_rows(const TensorArg& x, int code_dtype, const std::vector<TensorArg>& q_buffers,
                   const TensorArg& q_table, int64_t q_row_stride,
                   const std::vector<TensorArg>& scale_buffers, const TensorArg& scale_table,
                   int64_t scale_row_stride, const std::optional<TensorArg>& row_of_pair, int num_threads);

// q [N,H] int8 or float8_e4m3fn and scales as quantize_rows wrote them (row-strided) -> out [N_out,H]
// float32/float16/bfloat16 contiguous, scattered by row_of_pair [N,K] as quantize_rows does.
// Raises naming scales if one is negative, inf or NaN.
void dequantize_rows(const TensorArg& q, const TensorArg& scales, const TensorArg& out,
                     const std::optional<TensorArg>& row_of_pair, int num_threads);

}  // namespace moecomm::host
