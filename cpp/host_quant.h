// Host side of the row quantization ops: validate TensorArgs, derive the block layout from q's dtype
// (int8: one scale per row, scales [N]; float8_e4m3fn: one scale per 128 columns, scales [N, ceil(H/128)]),
// call the kernels and turn their error codes into exceptions that name the argument.
#pragma once

#include <optional>
#include <vector>

#include "tensor_arg.h"

namespace moecomm::host {

// x [N,H] float32/float16/bfloat16 (any strides) -> q [N_out,H] int8 or float8_e4m3fn and scales (float32,
// [N_out] or [N_out, ceil(H/128)] by q's dtype); q and scales rows may be any stride apart (wire rows),
// their columns contiguous; each is one buffer or several holding consecutive rows (segmented_rows; q[i] and
// scales[i] the same rows). Without row_of_pair N_out = N; with row_of_pair [N,K] int64, row t goes to the
// rows row_of_pair[t] (permute's rule). Raises naming x if a row holds inf or NaN.
void quantize_rows(const TensorArg& x, const std::vector<TensorArg>& q, const std::vector<TensorArg>& scales,
                   const std::optional<TensorArg>& row_of_pair, int num_threads);

// q [N,H] int8 or float8_e4m3fn and scales as quantize_rows wrote them (row-strided) -> out [N_out,H]
// float32/float16/bfloat16 contiguous, scattered by row_of_pair [N,K] as quantize_rows does.
// Raises naming scales if one is negative, inf or NaN.
void dequantize_rows(const TensorArg& q, const TensorArg& scales, const TensorArg& out,
                     const std::optional<TensorArg>& row_of_pair, int num_threads);

}  // namespace moecomm::host
