#include "host_quant.h"

#include <stdexcept>
#include <string>

#include "moecomm/quant_kernels.h"

namespace moecomm::host {

using cpu::QuantKind;

namespace {

constexpr int64_t kFloat8BlockCols = 128;  // DeepEP's per-128-column scales

// The block layout of a quantized [N, H] tensor, given by its dtype.
struct QuantLayout {
  QuantKind kind;
  int64_t block_cols;
  int64_t scales_per_row;
  std::vector<int64_t> scales_shape;
};

QuantLayout quant_layout(const TensorArg& q) {
  const int64_t rows = q.size(0), hidden = q.size(1);
  if (q.dtype == kI8) return {QuantKind::kInt8, hidden > 0 ? hidden : 1, 1, {rows}};
  const int64_t blocks = (hidden + kFloat8BlockCols - 1) / kFloat8BlockCols;
  return {QuantKind::kFloat8E4M3, kFloat8BlockCols, blocks, {rows, blocks}};
}

std::string scale_index(int64_t flat, const QuantLayout& layout) {
  if (layout.scales_shape.size() == 1) return "[" + std::to_string(flat) + "]";
  return "[" + std::to_string(flat / layout.scales_per_row) + ", " +
         std::to_string(flat % layout.scales_per_row) + "]";
}

[[noreturn]] void internal_error(const char* op) {
  throw std::logic_error(std::string(op) + ": kernel rejected sizes the host had checked (a moecomm bug)");
}

}  // namespace

void quantize_rows(const TensorArg& x, const TensorArg& q, const TensorArg& scales, int num_threads) {
  check_tensor(x, 2, {kF32, kF16, kBF16});
  check_dense(q, {kI8, kF8E4M3}, x.shape);
  const QuantLayout layout = quant_layout(q);
  check_dense(scales, {kF32}, layout.scales_shape);
  const int64_t bad = cpu::quantize_rows(
      x.ptr<const void>(), x.scalar_type(), x.size(0), x.size(1), x.stride(0), x.stride(1), layout.kind,
      layout.block_cols, layout.scales_per_row, q.ptr<void>(), scales.ptr<float>(), num_threads);
  if (bad == cpu::kBadQuantArgs) internal_error("quantize_rows");
  if (bad != cpu::kOk)
    fail(x, "row " + std::to_string(bad) + " contains inf or NaN (quantized rows must be finite)");
}

void dequantize_rows(const TensorArg& q, const TensorArg& scales, const TensorArg& out, int num_threads) {
  check_tensor(q, 2, {kI8, kF8E4M3});
  check_contiguous(q);
  const QuantLayout layout = quant_layout(q);
  check_dense(scales, {kF32}, layout.scales_shape);
  check_dense(out, {kF32, kF16, kBF16}, q.shape);
  const int64_t bad = cpu::dequantize_rows(
      q.ptr<const void>(), layout.kind, q.size(0), q.size(1), scales.ptr<const float>(), layout.block_cols,
      layout.scales_per_row, out.scalar_type(), out.ptr<void>(), num_threads);
  if (bad == cpu::kBadQuantArgs) internal_error("dequantize_rows");
  if (bad != cpu::kOk) {
    fail(scales,
         "entry " + scale_index(bad, layout) + " is negative, inf or NaN (expected finite scales >= 0)");
  }
}

}  // namespace moecomm::host
