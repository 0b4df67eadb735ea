// Multi-threaded test of the shm transport's flag protocol through the C ABI (moecomm/shm.h): every
// thread is a rank with its own group and its own mappings of the shared segments. Built with
// -fsanitize=thread by scripts/sanitize.sh (TSan must report nothing); also meaningful without it.
//
// Each rank runs rounds of barrier, all_gather (sizes growing past the initial window, so windows are
// re-created while peers map them), all_to_all with uneven and zero splits, reduce_scatter, and the raw
// region API (ensure_region growth, sync, pushes into peers' regions), checking every result against
// values computed locally from (round, rank). Exit code 0 when every check passed.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "moecomm/shm.h"

namespace {

constexpr int kWorld = 4;
constexpr int kRounds = 30;
constexpr double kTimeout = 60.0;

std::atomic<int> g_failures{0};

void check(bool ok, int rank, int round, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "rank %d round %d: %s\n", rank, round, what);
    g_failures.fetch_add(1);
  }
}

bool call(int status, const char* err, int rank, const char* what) {
  if (status != MOECOMM_SHM_OK) {
    std::fprintf(stderr, "rank %d: %s failed (%d): %s\n", rank, what, status, err);
    g_failures.fetch_add(1);
    return false;
  }
  return true;
}

float value(int round, int rank, int64_t i) {
  return static_cast<float>(round * 1000 + rank * 100) + static_cast<float>(i % 97);
}

// Rows rank s sends rank d in `round` (some zero).
int64_t split(int round, int s, int d) {
  return (round + 3 * s + 5 * d) % 4 == 0 ? 0 : (round + s + 2 * d) % 7 + 1;
}

void run_rank(int rank, uint64_t nonce, const std::vector<std::string>* names) {
  char err[1024];
  std::vector<const char*> name_ptrs;
  for (const auto& n : *names) name_ptrs.push_back(n.c_str());
  moecomm_shm_group* group = nullptr;
  if (!call(moecomm_shm_open(rank, kWorld, nonce, name_ptrs.data(), kTimeout, &group, err, sizeof err), err,
            rank, "open"))
    return;
  for (int round = 0; round < kRounds && g_failures.load() == 0; ++round) {
    if (!call(moecomm_shm_barrier(group, kTimeout, err, sizeof err), err, rank, "barrier")) break;

    // all_gather: sizes grow every few rounds (window growth while peers keep reading)
    const int64_t n = 1000 + static_cast<int64_t>(round) * 9000;
    std::vector<float> mine(static_cast<size_t>(n)), gathered(static_cast<size_t>(n * kWorld));
    for (int64_t i = 0; i < n; ++i) mine[static_cast<size_t>(i)] = value(round, rank, i);
    if (!call(moecomm_shm_all_gather(group, mine.data(), static_cast<uint64_t>(n) * 4, gathered.data(), 2,
                                     kTimeout, err, sizeof err),
              err, rank, "all_gather"))
      break;
    bool ok = true;
    for (int r = 0; r < kWorld; ++r) {
      for (int64_t i = 0; i < n; i += 101)
        ok = ok && gathered[static_cast<size_t>(r * n + i)] == value(round, r, i);
    }
    check(ok, rank, round, "all_gather result");

    // all_to_all with uneven and zero splits: row = 3 floats tagged (source, destination, index)
    std::vector<int64_t> send(kWorld), recv(kWorld);
    std::vector<float> out_rows, in_rows;
    for (int d = 0; d < kWorld; ++d) {
      send[static_cast<size_t>(d)] = split(round, rank, d) * 12;
      recv[static_cast<size_t>(d)] = split(round, d, rank) * 12;
      for (int64_t i = 0; i < split(round, rank, d); ++i) {
        out_rows.insert(out_rows.end(),
                        {static_cast<float>(rank), static_cast<float>(d), static_cast<float>(i)});
      }
    }
    int64_t total_recv = 0;
    for (int64_t b : recv) total_recv += b;
    in_rows.assign(static_cast<size_t>(total_recv / 4), -1.0f);
    if (!call(moecomm_shm_all_to_all(group, out_rows.data(), send.data(), in_rows.data(), recv.data(), 1,
                                     kTimeout, err, sizeof err),
              err, rank, "all_to_all"))
      break;
    size_t at = 0;
    ok = true;
    for (int s = 0; s < kWorld; ++s) {
      for (int64_t i = 0; i < split(round, s, rank); ++i, at += 3) {
        ok = ok && in_rows[at] == s && in_rows[at + 1] == rank && in_rows[at + 2] == static_cast<float>(i);
      }
    }
    check(ok && at == in_rows.size(), rank, round, "all_to_all result");

    // reduce_scatter float32 and int64
    const int64_t block = 257;
    std::vector<float> contrib(static_cast<size_t>(block * kWorld)), reduced(static_cast<size_t>(block));
    for (int64_t i = 0; i < block * kWorld; ++i)
      contrib[static_cast<size_t>(i)] = static_cast<float>(rank + 1) * static_cast<float>(i % 13);
    if (!call(moecomm_shm_reduce_scatter(group, contrib.data(), block, MOECOMM_SHM_FLOAT32, reduced.data(), 1,
                                         kTimeout, err, sizeof err),
              err, rank, "reduce_scatter"))
      break;
    ok = true;
    const float ranks_sum = static_cast<float>(kWorld * (kWorld + 1) / 2);
    for (int64_t i = 0; i < block; ++i)
      ok = ok && reduced[static_cast<size_t>(i)] == ranks_sum * static_cast<float>((rank * block + i) % 13);
    check(ok, rank, round, "reduce_scatter result");

    // raw regions: grow, sync, push a tagged block into every peer, sync, read own
    const uint64_t region_bytes = 4096 + static_cast<uint64_t>(round) * 20000;
    if (!call(moecomm_shm_ensure_region(group, "dispatch", region_bytes, err, sizeof err), err, rank,
              "ensure_region"))
      break;
    if (!call(moecomm_shm_sync(group, kTimeout, err, sizeof err), err, rank, "sync")) break;
    for (int peer = 0; peer < kWorld; ++peer) {
      moecomm_shm_view* view = nullptr;
      void* data = nullptr;
      uint64_t bytes = 0;
      if (!call(moecomm_shm_region_view(group, peer, "dispatch", &view, &data, &bytes, err, sizeof err), err,
                rank, "region_view"))
        break;
      check(bytes >= region_bytes, rank, round, "peer region smaller than asked");
      std::memset(static_cast<char*>(data) + rank * 64, round + rank + 1, 64);
      moecomm_shm_view_release(view);
    }
    if (!call(moecomm_shm_sync(group, kTimeout, err, sizeof err), err, rank, "sync")) break;
    moecomm_shm_view* view = nullptr;
    void* data = nullptr;
    uint64_t bytes = 0;
    if (!call(moecomm_shm_region_view(group, rank, "dispatch", &view, &data, &bytes, err, sizeof err), err,
              rank, "own view"))
      break;
    ok = true;
    for (int s = 0; s < kWorld; ++s) {
      for (int i = 0; i < 64; ++i)
        ok = ok && static_cast<unsigned char*>(data)[s * 64 + i] == static_cast<unsigned char>(round + s + 1);
    }
    moecomm_shm_view_release(view);
    check(ok, rank, round, "pushed region contents");
    // nobody may push the next round's tags before everybody has read this round's
    if (!call(moecomm_shm_sync(group, kTimeout, err, sizeof err), err, rank, "sync")) break;
  }
  moecomm_shm_close(group);
}

}  // namespace

int main() {
  char err[256];
  std::vector<std::string> names;
  for (int r = 0; r < kWorld; ++r) {
    char name[MOECOMM_SHM_NAME_MAX];
    if (moecomm_shm_random_name(name, sizeof name, err, sizeof err) != MOECOMM_SHM_OK) return 2;
    names.emplace_back(name);
  }
  uint64_t nonce = 0;
  if (moecomm_shm_random_u64(&nonce, err, sizeof err) != MOECOMM_SHM_OK) return 2;
  std::vector<std::thread> ranks;
  for (int r = 0; r < kWorld; ++r) ranks.emplace_back(run_rank, r, nonce, &names);
  for (auto& t : ranks) t.join();
  if (g_failures.load() != 0) {
    std::fprintf(stderr, "shm_protocol_test: %d failure(s)\n", g_failures.load());
    return 1;
  }
  std::printf("shm_protocol_test: %d ranks x %d rounds passed\n", kWorld, kRounds);
  return 0;
}
