#include "host_quant.h"

#include <stdexcept>
#include <string>

#include "host_ops.h"
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

// The block layout of `rows` rows of `hidden` codes of code_dtype (int8 or float8_e4m3fn).
QuantLayout quant_layout(int code_dtype, int64_t hidden, int64_t rows = 0) {
  if (code_dtype == kI8) return {QuantKind::kInt8, hidden > 0 ? hidden : 1, 1, {rows}};
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

// A 2-D tensor of `shape` whose rows are contiguous (any row stride): quantized rows may be columns of
// wider wire rows. A 1-D tensor (int8 scales) may have any stride.
void check_rows_of(const TensorArg& t, std::initializer_list<int> allowed,
                   const std::vector<int64_t>& shape) {
  check_tensor(t, static_cast<int64_t>(shape.size()), allowed);
  check_shape(t, shape);
  if (shape.size() == 2 && shape[1] > 1 && t.stride(1) != 1) fail(t, "expected rows with contiguous columns");
}

int64_t row_stride(const TensorArg& t) {
  return t.numel() == 0 ? 0 : t.stride(0);
}

// The scatter of row_of_pair [N, K] (int64, contiguous) onto num_out_rows rows, or none.
cpu::RowScatter scatter_of(const std::optional<TensorArg>& row_of_pair, int64_t num_rows,
                           int64_t num_out_rows, const TensorArg& out) {
  if (!row_of_pair) {
    if (num_out_rows != num_rows) {
      fail(out, "expected " + std::to_string(num_rows) + " rows (one per input row), got " +
                    std::to_string(num_out_rows));
    }
    return {};
  }
  check_tensor(*row_of_pair, 2, {kI64});
  check_contiguous(*row_of_pair);
  if (row_of_pair->size(0) != num_rows) {
    fail(*row_of_pair, "expected " + std::to_string(num_rows) + " rows (one per input row), got " +
                           std::to_string(row_of_pair->size(0)));
  }
  return {row_of_pair->ptr<const int64_t>(), row_of_pair->size(1), num_out_rows};
}

// Turns a kernel's kBadRowMapBase - p into the error naming row_of_pair; true if `bad` was one.
void check_scatter_result(const std::optional<TensorArg>& row_of_pair, int64_t bad, int64_t num_out_rows) {
  if (row_of_pair && bad <= cpu::kBadRowMapBase)
    check_rows(*row_of_pair, cpu::kBadRowMapBase - bad, num_out_rows);
}

}  // namespace

void quantize_rows(const TensorArg& x, int code_dtype, const std::vector<TensorArg>& q_buffers,
                   const TensorArg& q_table, int64_t q_row_stride,
                   const std::vector<TensorArg>& scale_buffers, const TensorArg& scale_table,
                   int64_t scale_row_stride, const std::optional<TensorArg>& row_of_pair, int num_threads) {
  check_tensor(x, 2, {kF32, kF16, kBF16});
  if (code_dtype != kI8 && code_dtype != kF8E4M3)
    throw std::invalid_argument("code_dtype: expected int8 or float8_e4m3fn, got " + dtype_name(code_dtype));
  const QuantLayout layout = quant_layout(code_dtype, x.size(1));
  const SegmentedRows q_rows = ranged_rows(q_buffers, q_table, q_row_stride, x.size(1));
  const SegmentedRows scale_rows = ranged_rows(scale_buffers, scale_table, scale_row_stride,
                                               layout.scales_per_row * static_cast<int64_t>(sizeof(float)));
  if (scale_rows.first_row != q_rows.first_row)
    fail(scale_table, "expected the rows per segment of the codes' table");
  const int64_t num_out_rows = q_rows.num_rows();
  const cpu::RowScatter scatter = scatter_of(row_of_pair, x.size(0), num_out_rows, q_table);
  const int64_t bad =
      cpu::quantize_rows(x.ptr<const void>(), x.scalar_type(), x.size(0), x.size(1), x.stride(0), x.stride(1),
                         layout.kind, layout.block_cols, layout.scales_per_row, scatter, q_rows.segments(),
                         scale_rows.segments(), num_threads);
  check_scatter_result(row_of_pair, bad, num_out_rows);
  if (bad == cpu::kBadQuantArgs) internal_error("quantize_rows");
  if (bad != cpu::kOk)
    fail(x, "row " + std::to_string(bad) + " contains inf or NaN (quantized rows must be finite)");
}

void dequantize_rows(const TensorArg& q, const TensorArg& scales, const TensorArg& out,
                     const std::optional<TensorArg>& row_of_pair, int num_threads) {
  check_tensor(q, 2, {kI8, kF8E4M3});
  check_rows_of(q, {kI8, kF8E4M3}, q.shape);
  const QuantLayout layout = quant_layout(q.dtype, q.size(1), q.size(0));
  check_rows_of(scales, {kF32}, layout.scales_shape);
  check_tensor(out, 2, {kF32, kF16, kBF16});
  const int64_t num_out_rows = out.size(0);
  check_dense(out, {kF32, kF16, kBF16}, {num_out_rows, q.size(1)});
  const cpu::RowScatter scatter = scatter_of(row_of_pair, q.size(0), num_out_rows, out);
  const int64_t bad =
      cpu::dequantize_rows(q.ptr<const void>(), layout.kind, q.size(0), q.size(1), row_stride(q),
                           scales.ptr<const float>(), row_stride(scales), layout.block_cols,
                           layout.scales_per_row, scatter, out.scalar_type(), out.ptr<void>(), num_threads);
  check_scatter_result(row_of_pair, bad, num_out_rows);
  if (bad == cpu::kBadQuantArgs) internal_error("dequantize_rows");
  if (bad != cpu::kOk) {
    fail(scales,
         "entry " + scale_index(bad, layout) + " is negative, inf or NaN (expected finite scales >= 0)");
  }
}

}  // namespace moecomm::host
