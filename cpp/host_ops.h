// Host side of the native ops: validate TensorArgs, dispatch on dtype, call the CPU kernels and turn
// kernel error codes into exceptions that name the argument. Outputs are preallocated by the caller.
#pragma once

#include <optional>
#include <vector>

#include "tensor_arg.h"

namespace moecomm::host {

void route_layout(const TensorArg& topk_ids, int64_t num_experts, const std::optional<TensorArg>& is_kept,
                  const TensorArg& tokens_per_expert, const TensorArg& row_of_pair, int num_threads);

void select_kept(const TensorArg& topk_ids, int64_t num_experts, int64_t experts_per_bucket,
                 const TensorArg& capacity, const std::optional<TensorArg>& topk_weights,
                 const TensorArg& is_kept);

// Output rows split over buffers (cpu::RowSegments) and the storage its pointers live in.
struct SegmentedRows {
  std::vector<char*> bases;
  std::vector<int64_t> first_row;
  int64_t row_stride = 0;  // bytes
  int64_t num_rows() const { return first_row.back(); }
  cpu::RowSegments segments() const {
    return {bases.data(), first_row.data(), static_cast<int64_t>(bases.size()), row_stride};
  }
};

// The rows of `outs` (one buffer, or several holding consecutive rows) as SegmentedRows: each out is 1-D
// [n] or 2-D [n, cols] of a dtype in `allowed` (all the same), its cols contiguous, its rows stride(0)
// elements apart: the same stride in every out holding two rows or more, and at least cols (rows do not
// overlap); without such an out, the stride of the first one-row out (if at least cols) or cols. Raises
// naming the first out that fails.
SegmentedRows segmented_rows(const std::vector<TensorArg>& outs, int64_t dim,
                             std::initializer_list<int> allowed, int64_t cols);

// x [T,H] -> out rows (one buffer or several, see segmented_rows; dtype of x) by row_of_pair [T,K].
void permute(const TensorArg& x, const TensorArg& row_of_pair, const std::vector<TensorArg>& out,
             int num_threads);

void unpermute(const TensorArg& y, const TensorArg& row_of_pair, const TensorArg& topk_weights,
               const TensorArg& out, int64_t token_begin, int64_t token_end, int num_threads);

void pack_padded(const TensorArg& rows, const TensorArg& counts, const TensorArg& out, int num_threads);

void unpack_padded(const TensorArg& buffer, const TensorArg& counts, const TensorArg& out, int num_threads);

// rows [N,H] in (outer, inner) block order with block_rows [outer, inner] int64 -> out [N,H] in
// (inner, outer) block order.
void regroup_blocks(const TensorArg& rows, const TensorArg& block_rows, const TensorArg& out,
                    int num_threads);

// Turns cpu::check_row_cover's code `bad` (kOk, or the flat index of the first bad pair) for row_of_pair
// [T, K] and num_rows output rows into an error naming row_of_pair.
void check_rows(const TensorArg& row_of_pair, int64_t bad, int64_t num_rows);

// With MOECOMM_HUGE_PAGES=1, asks the OS for transparent huge pages on a large, not yet touched buffer
// (otherwise, and off Linux, a no-op).
void advise_huge_pages(const TensorArg& out);

}  // namespace moecomm::host
