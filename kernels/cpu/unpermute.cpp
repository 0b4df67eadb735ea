// unpermute: weighted sum of each token's expert rows back into token order (float32 accumulation).
#include <cstdint>
#include <vector>

#include "convert.h"
#include "copy.h"
#include "moecomm/cpu_kernels.h"
#include "parallel.h"
#include "row_cover.h"
#include "weighted_rows.h"

namespace moecomm::cpu {

namespace {

template <typename Type>
void unpermute_typed(const typename Type::Storage* y, int64_t hidden, int64_t y_stride_row,
                     int64_t y_stride_hidden, const int64_t* row_of_pair, const float* weights,
                     int64_t token_begin, int64_t token_end, int64_t top_k, typename Type::Storage* out,
                     int num_threads) {
  using Storage = typename Type::Storage;
  parallel_for(token_end - token_begin, num_threads, 8, [&](int64_t s0, int64_t s1, int64_t) {
    const int64_t t0 = token_begin + s0, t1 = token_begin + s1;
    std::vector<float> acc(static_cast<size_t>(hidden));
    // Strided rows are gathered into contiguous scratch rows first (one per pair of a token).
    std::vector<Storage> gathered(y_stride_hidden == 1 ? 0 : static_cast<size_t>(hidden * top_k));
    std::vector<const Storage*> rows(static_cast<size_t>(top_k));
    std::vector<float> row_weights(static_cast<size_t>(top_k));
    for (int64_t t = t0; t < t1; ++t) {
      int64_t count = 0;
      for (int64_t k = 0; k < top_k; ++k) {
        const int64_t row = row_of_pair[t * top_k + k];
        if (row < 0) continue;
        const Storage* src = y + row * y_stride_row;
        if (y_stride_hidden != 1) {
          Storage* into = gathered.data() + count * hidden;
          copy_row(reinterpret_cast<char*>(into), reinterpret_cast<const char*>(src), hidden, y_stride_hidden,
                   sizeof(Storage));
          src = into;
        }
        rows[static_cast<size_t>(count)] = src;
        row_weights[static_cast<size_t>(count)] = weights[t * top_k + k];
        ++count;
      }
      weighted_rows<Type>(rows.data(), row_weights.data(), count, hidden, acc.data(),
                          out + (t - token_begin) * hidden);
    }
  });
}

}  // namespace

int64_t unpermute(const void* y, ScalarType type, int64_t num_rows, int64_t hidden, int64_t y_stride_row,
                  int64_t y_stride_hidden, const int64_t* row_of_pair, const float* weights,
                  int64_t num_tokens, int64_t top_k, int64_t token_begin, int64_t token_end, void* out,
                  int num_threads) {
  const int64_t bad = check_row_cover(row_of_pair, num_tokens * top_k, num_rows);
  if (bad != kOk) return bad;
  if (token_begin < 0 || token_end < token_begin || token_end > num_tokens) return kBadTokenRange;
  switch (type) {
    case ScalarType::kFloat32:
      unpermute_typed<Float32>(static_cast<const float*>(y), hidden, y_stride_row, y_stride_hidden,
                               row_of_pair, weights, token_begin, token_end, top_k, static_cast<float*>(out),
                               num_threads);
      return kOk;
    case ScalarType::kBFloat16:
      unpermute_typed<BFloat16>(static_cast<const uint16_t*>(y), hidden, y_stride_row, y_stride_hidden,
                                row_of_pair, weights, token_begin, token_end, top_k,
                                static_cast<uint16_t*>(out), num_threads);
      return kOk;
    case ScalarType::kFloat16:
      unpermute_typed<Float16>(static_cast<const uint16_t*>(y), hidden, y_stride_row, y_stride_hidden,
                               row_of_pair, weights, token_begin, token_end, top_k,
                               static_cast<uint16_t*>(out), num_threads);
      return kOk;
    default:
      return -2;
  }
}

}  // namespace moecomm::cpu
