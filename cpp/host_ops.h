// Host side of the native ops: validate TensorArgs, dispatch on dtype, call the CPU kernels and turn
// kernel error codes into exceptions that name the argument. Outputs are preallocated by the caller.
#pragma once

#include <optional>

#include "tensor_arg.h"

namespace moecomm::host {

void route_layout(const TensorArg& topk_ids, int64_t num_experts, const std::optional<TensorArg>& is_kept,
                  const TensorArg& tokens_per_expert, const TensorArg& row_of_pair, int num_threads);

void select_kept(const TensorArg& topk_ids, int64_t num_experts, int64_t experts_per_bucket,
                 const TensorArg& capacity, const std::optional<TensorArg>& topk_weights,
                 const TensorArg& is_kept);

void permute(const TensorArg& x, const TensorArg& row_of_pair, const TensorArg& out, int num_threads);

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
