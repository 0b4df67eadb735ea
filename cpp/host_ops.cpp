#include "host_ops.h"

#include <cstdlib>
#include <sstream>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace moecomm::host {

using cpu::ScalarType;

namespace {

std::string pair_string(int64_t flat, int64_t top_k) {
  std::ostringstream s;
  s << "[" << flat / top_k << ", " << flat % top_k << "]";
  return s.str();
}

}  // namespace

std::string dtype_name(int dtype) {
  switch (dtype) {
    case kF32:
      return "float32";
    case kF16:
      return "float16";
    case kBF16:
      return "bfloat16";
    case kI32:
      return "int32";
    case kI64:
      return "int64";
    case kBool:
      return "bool";
    case kI8:
      return "int8";
    case kF8E4M3:
      return "float8_e4m3fn";
  }
  return "unknown dtype code " + std::to_string(dtype);
}

// Large fresh outputs fault in 4 KiB pages one by one. Asking for transparent huge pages on the 2 MiB-
// aligned interior of the buffer before the kernel first touches it removes most of those faults (a fresh
// 256 MiB permute output: 65k faults -> 641), but where the kernel's THP defrag policy compacts memory
// synchronously for advised regions (defrag=madvise, a common default) a fragmented host stalls on it:
// in the dispatchers that made steps slower and noisier. So the advice is opt-in: MOECOMM_HUGE_PAGES=1.
void advise_huge_pages(const TensorArg& out) {
  const auto bytes = static_cast<uintptr_t>(check_extent(out));  // only bytes the tensor addresses
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* value = std::getenv("MOECOMM_HUGE_PAGES");
    return value != nullptr && std::string(value) == "1";
  }();
  if (!enabled) return;
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (bytes < 4 * kHuge) return;
  const uintptr_t begin = (out.data + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (out.data + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)bytes;
#endif
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

void check_tensor(const TensorArg& t, int64_t expected_dim, std::initializer_list<int> allowed) {
  if (t.dim() != expected_dim) {
    fail(t, "expected a " + std::to_string(expected_dim) + "-D tensor, got shape " + shape_string(t.shape));
  }
  bool ok = false;
  std::string names;
  for (int a : allowed) {
    ok = ok || a == t.dtype;
    names += (names.empty() ? "" : ", ") + dtype_name(a);
  }
  if (!ok) fail(t, "expected dtype in {" + names + "}, got " + dtype_name(t.dtype));
  if (check_extent(t) > 0 && t.data == 0) fail(t, "null data pointer");
}

int64_t check_extent(const TensorArg& t) {
  if (t.shape.size() != t.strides.size()) fail(t, "shape and strides differ in length");
  if (t.nbytes < 0) fail(t, "negative byte size " + std::to_string(t.nbytes));
  for (size_t d = 0; d < t.shape.size(); ++d) {
    if (t.shape[d] < 0 || t.strides[d] < 0) fail(t, "negative size or stride");
  }
  for (int64_t size : t.shape) {
    if (size == 0) return 0;  // no element is addressed
  }
  // Offset of the last addressed element, and the end of its bytes, without int64 overflow.
  int64_t last = 0, term = 0, end_bytes = 0;
  for (size_t d = 0; d < t.shape.size(); ++d) {
    if (__builtin_mul_overflow(t.shape[d] - 1, t.strides[d], &term) ||
        __builtin_add_overflow(last, term, &last)) {
      fail(t, "shape " + shape_string(t.shape) + " with strides " + shape_string(t.strides) +
                  " addresses elements past 2**63");
    }
  }
  const auto elem = static_cast<int64_t>(cpu::element_size(t.scalar_type()));
  const bool overflow = __builtin_mul_overflow(last + 1, elem, &end_bytes);
  if (overflow || end_bytes > t.nbytes) {
    fail(t, "shape " + shape_string(t.shape) + " with strides " + shape_string(t.strides) + " reaches " +
                (overflow ? std::string("more than 2**63") : std::to_string(end_bytes)) +
                " bytes past the data pointer, but the storage holds " + std::to_string(t.nbytes));
  }
  return end_bytes;
}

void check_contiguous(const TensorArg& t) {
  if (t.numel() == 0) return;  // no element is ever addressed
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 0; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) fail(t, "expected a contiguous tensor");
    expected *= t.size(d);
  }
}

void check_shape(const TensorArg& t, const std::vector<int64_t>& expected) {
  if (t.shape != expected) {
    fail(t, "expected shape " + shape_string(expected) + ", got " + shape_string(t.shape));
  }
}

void check_dense(const TensorArg& t, std::initializer_list<int> allowed, const std::vector<int64_t>& shape) {
  check_tensor(t, static_cast<int64_t>(shape.size()), allowed);
  check_contiguous(t);
  check_shape(t, shape);
}

namespace {

// Checks topk_ids [T, K] int32/int64 contiguous and num_experts > 0.
void check_topk_ids(const TensorArg& topk_ids, int64_t num_experts) {
  check_tensor(topk_ids, 2, {kI32, kI64});
  check_contiguous(topk_ids);
  if (num_experts <= 0)
    throw std::invalid_argument("num_experts: expected > 0, got " + std::to_string(num_experts));
}

// Calls fn(typed ids pointer) for int32 or int64 ids; raises naming the first id outside [0, E).
template <typename Fn>
void run_on_ids(const TensorArg& topk_ids, int64_t num_experts, Fn&& fn) {
  const int64_t bad =
      topk_ids.dtype == kI32 ? fn(topk_ids.ptr<const int32_t>()) : fn(topk_ids.ptr<const int64_t>());
  if (bad != cpu::kOk) {
    fail(topk_ids, "expert id at " + pair_string(bad, topk_ids.size(1)) + " is outside [0, " +
                       std::to_string(num_experts) + ")");
  }
}

}  // namespace

// Turns cpu::check_row_cover's code `bad` for row_of_pair [T, K] and N rows into an error naming the
// argument (the Python ops name it "layout").
void check_rows(const TensorArg& row_of_pair, int64_t bad, int64_t num_rows) {
  if (bad == cpu::kOk) return;
  const int64_t K = row_of_pair.size(1), num_pairs = row_of_pair.size(0) * K;
  const std::string rows = "[0, " + std::to_string(num_rows) + ")";
  if (bad == num_pairs) {
    fail(row_of_pair, "row_of_pair covers fewer than the " + std::to_string(num_rows) +
                          " rows its counts promise: every row in " + rows + " must be used exactly once");
  }
  const int64_t row = row_of_pair.ptr<const int64_t>()[bad];
  const std::string at = "row_of_pair" + pair_string(bad, K) + " = " + std::to_string(row);
  if (row < -1 || row >= num_rows)
    fail(row_of_pair, at + " is outside [-1, " + std::to_string(num_rows) + ")");
  fail(row_of_pair,
       at + " repeats a row of an earlier pair: every row in " + rows + " must be used exactly once");
}

void route_layout(const TensorArg& topk_ids, int64_t num_experts, const std::optional<TensorArg>& is_kept,
                  const TensorArg& tokens_per_expert, const TensorArg& row_of_pair, int num_threads) {
  check_topk_ids(topk_ids, num_experts);
  const int64_t T = topk_ids.size(0), K = topk_ids.size(1);
  const bool* kept = nullptr;
  if (is_kept) {
    check_dense(*is_kept, {kBool}, {T, K});
    kept = is_kept->ptr<const bool>();
  }
  check_dense(tokens_per_expert, {kI64}, {num_experts});
  check_dense(row_of_pair, {kI64}, {T, K});
  run_on_ids(topk_ids, num_experts, [&](auto ids) {
    return cpu::route_layout(ids, T, K, num_experts, kept, tokens_per_expert.ptr<int64_t>(),
                             row_of_pair.ptr<int64_t>(), num_threads);
  });
}

void select_kept(const TensorArg& topk_ids, int64_t num_experts, int64_t experts_per_bucket,
                 const TensorArg& capacity, const std::optional<TensorArg>& topk_weights,
                 const TensorArg& is_kept) {
  check_topk_ids(topk_ids, num_experts);
  if (experts_per_bucket <= 0 || num_experts % experts_per_bucket != 0) {
    throw std::invalid_argument("num_ranks: experts per bucket must divide num_experts");
  }
  const int64_t T = topk_ids.size(0), K = topk_ids.size(1);
  const int64_t num_buckets = num_experts / experts_per_bucket;
  check_dense(capacity, {kI64}, {num_buckets});
  const int64_t* cap = capacity.ptr<const int64_t>();
  for (int64_t b = 0; b < num_buckets; ++b) {
    if (cap[b] < 0) fail(capacity, "expected every capacity >= 0, got " + std::to_string(cap[b]));
  }
  const float* weights = nullptr;
  if (topk_weights) {
    check_dense(*topk_weights, {kF32}, {T, K});
    weights = topk_weights->ptr<const float>();
  }
  check_dense(is_kept, {kBool}, {T, K});
  run_on_ids(topk_ids, num_experts, [&](auto ids) {
    return cpu::select_kept(ids, T, K, num_experts, experts_per_bucket, cap, weights, is_kept.ptr<bool>());
  });
}

SegmentedRows ranged_rows(const std::vector<TensorArg>& buffers, const TensorArg& table, int64_t row_stride,
                          int64_t row_bytes) {
  check_tensor(table, 2, {kI64});
  check_contiguous(table);
  if (table.size(1) != 3 || table.size(0) < 1)
    fail(table, "expected [S, 3] (buffer, byte offset, rows) with S >= 1, got " + shape_string(table.shape));
  if (row_bytes < 0 || row_stride < row_bytes) {
    fail(table, "expected a row stride of at least " + std::to_string(row_bytes) + " bytes, got " +
                    std::to_string(row_stride));
  }
  for (const TensorArg& buffer : buffers) check_extent(buffer);
  SegmentedRows rows;
  rows.row_stride = row_stride;
  rows.first_row.push_back(0);
  const int64_t* entry = table.ptr<const int64_t>();
  for (int64_t i = 0; i < table.size(0); ++i, entry += 3) {
    const int64_t index = entry[0], offset = entry[1], count = entry[2];
    const std::string where = "segment " + std::to_string(i);
    if (index < 0 || index >= static_cast<int64_t>(buffers.size()))
      fail(table, where + ": buffer " + std::to_string(index) + " of " + std::to_string(buffers.size()));
    if (offset < 0 || count < 0) fail(table, where + ": negative byte offset or rows");
    const TensorArg& buffer = buffers[static_cast<size_t>(index)];
    int64_t last = 0, end = 0;
    if (count > 0 && row_bytes > 0 &&
        (__builtin_mul_overflow(count - 1, row_stride, &last) || __builtin_add_overflow(offset, last, &end) ||
         __builtin_add_overflow(end, row_bytes, &end) || end > buffer.nbytes || buffer.data == 0)) {
      fail(buffer, where + ": " + std::to_string(count) + " rows of " + std::to_string(row_bytes) +
                       " bytes, " + std::to_string(row_stride) + " apart, from byte " +
                       std::to_string(offset) + " pass the " + std::to_string(buffer.nbytes) +
                       " bytes of the buffer");
    }
    int64_t total = 0;
    if (__builtin_add_overflow(rows.first_row.back(), count, &total))
      fail(table, where + ": rows past 2**63");
    rows.bases.push_back(count > 0 && row_bytes > 0 ? buffer.ptr<char>() + offset : nullptr);
    rows.first_row.push_back(total);
  }
  return rows;
}

void permute(const TensorArg& x, const TensorArg& row_of_pair, const std::vector<TensorArg>& buffers,
             const TensorArg& table, int64_t row_stride, int num_threads) {
  check_tensor(x, 2, {kF32, kF16, kBF16, kI8});
  check_tensor(row_of_pair, 2, {kI64});
  check_contiguous(row_of_pair);
  const int64_t T = x.size(0), H = x.size(1);
  if (row_of_pair.size(0) != T) {
    fail(row_of_pair, "expected " + std::to_string(T) + " tokens (x has " + std::to_string(T) + "), got " +
                          std::to_string(row_of_pair.size(0)));
  }
  const size_t elem = cpu::element_size(x.scalar_type());
  const SegmentedRows rows = ranged_rows(buffers, table, row_stride, H * static_cast<int64_t>(elem));
  for (const TensorArg& buffer : buffers) advise_huge_pages(buffer);
  const int64_t K = row_of_pair.size(1);
  const int64_t bad = cpu::permute(x.ptr<const void>(), T, H, x.stride(0), x.stride(1), elem,
                                   row_of_pair.ptr<const int64_t>(), K, rows.segments(), num_threads);
  if (bad == cpu::kBadRowSegments)
    throw std::logic_error("permute: the kernel refused output rows the host checked");
  check_rows(row_of_pair, bad, rows.num_rows());
}

void unpermute(const TensorArg& y, const TensorArg& row_of_pair, const TensorArg& topk_weights,
               const TensorArg& out, int64_t token_begin, int64_t token_end, int num_threads) {
  check_tensor(y, 2, {kF32, kF16, kBF16});
  check_tensor(row_of_pair, 2, {kI64});
  check_contiguous(row_of_pair);
  const int64_t T = row_of_pair.size(0), K = row_of_pair.size(1), H = y.size(1);
  if (token_begin < 0 || token_end < token_begin || token_end > T) {
    throw std::invalid_argument("tokens: expected a range [begin, end) with 0 <= begin <= end <= " +
                                std::to_string(T) + " (the tokens of row_of_pair), got [" +
                                std::to_string(token_begin) + ", " + std::to_string(token_end) + ")");
  }
  check_dense(topk_weights, {kF32}, {T, K});
  check_dense(out, {y.dtype}, {token_end - token_begin, H});
  advise_huge_pages(out);
  const int64_t bad =
      cpu::unpermute(y.ptr<const void>(), y.scalar_type(), y.size(0), H, y.stride(0), y.stride(1),
                     row_of_pair.ptr<const int64_t>(), topk_weights.ptr<const float>(), T, K, token_begin,
                     token_end, out.ptr<void>(), num_threads);
  if (bad == cpu::kBadTokenRange)
    throw std::logic_error("unpermute: the kernel refused a token range the host checked");
  check_rows(row_of_pair, bad, y.size(0));
}

void pack_padded(const TensorArg& rows, const TensorArg& counts, const TensorArg& out, int num_threads) {
  check_tensor(rows, 2, {kF32, kF16, kBF16, kI8});
  check_tensor(counts, 1, {kI64});
  check_contiguous(counts);
  check_tensor(out, 3, {rows.dtype});
  check_contiguous(out);
  const int64_t B = counts.size(0), H = rows.size(1);
  if (out.size(0) != B || out.size(2) != H) {
    fail(out, "expected shape [" + std::to_string(B) + ", capacity, " + std::to_string(H) + "], got " +
                  shape_string(out.shape));
  }
  const int64_t capacity = out.size(1);
  advise_huge_pages(out);
  const int64_t bad =
      cpu::pack_padded(rows.ptr<const void>(), rows.size(0), H, rows.stride(0), rows.stride(1),
                       cpu::element_size(rows.scalar_type()), counts.ptr<const int64_t>(), B, capacity,
                       out.ptr<void>(), num_threads);
  if (bad != cpu::kOk) {
    fail(counts, "expected every count in [0, " + std::to_string(capacity) + "] summing to the " +
                     std::to_string(rows.size(0)) + " rows (first bad bucket " + std::to_string(bad) + ")");
  }
}

void unpack_padded(const TensorArg& buffer, const TensorArg& counts, const TensorArg& out, int num_threads) {
  check_tensor(buffer, 3, {kF32, kF16, kBF16, kI8});
  check_dense(counts, {kI64}, {buffer.size(0)});
  check_tensor(out, 2, {buffer.dtype});
  check_contiguous(out);
  const int64_t H = buffer.size(2);
  if (out.size(1) != H) fail(out, "expected hidden size " + std::to_string(H));
  advise_huge_pages(out);
  const int64_t bad =
      cpu::unpack_padded(buffer.ptr<const void>(), buffer.size(0), buffer.size(1), H, buffer.stride(0),
                         buffer.stride(1), buffer.stride(2), cpu::element_size(buffer.scalar_type()),
                         counts.ptr<const int64_t>(), out.ptr<void>(), out.size(0), num_threads);
  if (bad != cpu::kOk) {
    fail(counts, "expected every count in [0, " + std::to_string(buffer.size(1)) + "] summing to the " +
                     std::to_string(out.size(0)) + " output rows (first bad bucket " + std::to_string(bad) +
                     ")");
  }
}

void regroup_blocks(const TensorArg& rows, const TensorArg& block_rows, const TensorArg& out,
                    int num_threads) {
  check_tensor(rows, 2, {kF32, kF16, kBF16, kI8});
  check_tensor(block_rows, 2, {kI64});
  check_contiguous(block_rows);
  check_dense(out, {rows.dtype}, rows.shape);
  advise_huge_pages(out);
  const int64_t bad =
      cpu::regroup_blocks(rows.ptr<const void>(), rows.size(0), rows.size(1), rows.stride(0), rows.stride(1),
                          cpu::element_size(rows.scalar_type()), block_rows.ptr<const int64_t>(),
                          block_rows.size(0), block_rows.size(1), out.ptr<void>(), num_threads);
  if (bad != cpu::kOk) {
    fail(block_rows, "expected non-negative block sizes summing to the " + std::to_string(rows.size(0)) +
                         " rows (first bad block " + std::to_string(bad) + ")");
  }
}

}  // namespace moecomm::host
