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

// Output rows in byte ranges of `buffers`: table [S, 3] int64 (contiguous) holds per segment (buffer index,
// byte offset from the buffer's data pointer, rows); segments hold consecutive output rows in table order,
// row r of a segment starting r * row_stride bytes after its first. Checks the table's values and that every
// row's row_bytes lie in its buffer (TensorArg.nbytes: the storage from its data pointer on) and row_stride
// >= row_bytes; raises naming the table or the buffer. Overlapping rows are not checked (not a bounds
// matter).
SegmentedRows ranged_rows(const std::vector<TensorArg>& buffers, const TensorArg& table, int64_t row_stride,
                          int64_t row_bytes);

// x [T,H] -> output rows (byte ranges of buffers, see ranged_rows; H elements of x's type each) by
// row_of_pair [T,K].
void permute(const TensorArg& x, const TensorArg& row_of_pair, const std::vector<TensorArg>& buffers,
             const TensorArg& table, int64_t row_stride, int num_threads);

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
