// Host side of the row quantization ops: validate TensorArgs, derive the block layout from q's dtype
// (int8: one scale per row, scales [N]; float8_e4m3fn: one scale per 128 columns, scales [N, ceil(H/128)]),
// call the kernels and turn their error codes into exceptions that name the argument.
#pragma once

#include "tensor_arg.h"

namespace moecomm::host {

// x [N,H] float32/float16/bfloat16 (any strides) -> q [N,H] int8 or float8_e4m3fn contiguous and scales
// (float32 contiguous, shape by q's dtype). Raises naming x if a row holds inf or NaN.
void quantize_rows(const TensorArg& x, const TensorArg& q, const TensorArg& scales, int num_threads);

// q [N,H] int8 or float8_e4m3fn contiguous, scales as quantize_rows wrote them -> out [N,H]
// float32/float16/bfloat16 contiguous. Raises naming scales if one is negative, inf or NaN.
void dequantize_rows(const TensorArg& q, const TensorArg& scales, const TensorArg& out, int num_threads);

}  // namespace moecomm::host
