/* C ABI of moecomm's shared-memory transport: collectives between the processes of one host through
 * POSIX shared memory. No torch, no Python; usable from C, C++, numpy or MindSpore callers.
 *
 * Lifecycle
 *   1. Every rank picks a segment name (moecomm_shm_random_name) and the group agrees on a 64-bit nonce
 *      (moecomm_shm_random_u64 on one rank); the caller exchanges names and nonce over its own channel.
 *   2. Every rank calls moecomm_shm_open with all names: it creates its own segment (O_CREAT|O_EXCL,
 *      mode 0600), maps every peer's (checking owner uid, mode, magic, nonce, rank and world), waits until
 *      every peer has mapped everything, then unlinks its own name. After a successful open nothing of the
 *      group is left in /dev/shm; if the open fails, every name of the group is unlinked.
 *   3. Collectives: every rank calls the same sequence; each waits at most timeout_s and fails naming the
 *      rank that did not arrive (or died) and the collective's number. After any failure the group is
 *      broken and every later call fails at once.
 *   4. moecomm_shm_close unmaps and unlinks whatever this rank still has pending (also the pending names of
 *      peers it sees dead).
 *
 * Every function returns MOECOMM_SHM_OK or an error code and writes a NUL-terminated message into
 * err[0..err_len) (err may be NULL). Data pointers may be NULL when the byte count is 0.
 */
#ifndef MOECOMM_SHM_H_
#define MOECOMM_SHM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOECOMM_SHM_OK 0
#define MOECOMM_SHM_EINVAL 1    /* a bad argument (the message names it) */
#define MOECOMM_SHM_ETIMEOUT 2  /* a peer did not arrive within timeout_s (the message names it) */
#define MOECOMM_SHM_EPEERDEAD 3 /* a peer process exited (the message names it) */
#define MOECOMM_SHM_ESYS 4      /* an OS call failed (errno text in the message) */
#define MOECOMM_SHM_EREFUSED 5  /* a segment failed verification, peers disagree, or the group is broken */

#define MOECOMM_SHM_NAME_MAX 64 /* bytes a segment name needs, NUL included */

/* Dtype codes for reduce_scatter: the same codes as moecomm::cpu::ScalarType. */
#define MOECOMM_SHM_FLOAT32 0
#define MOECOMM_SHM_FLOAT16 1
#define MOECOMM_SHM_BFLOAT16 2
#define MOECOMM_SHM_INT32 3
#define MOECOMM_SHM_INT64 4

typedef struct moecomm_shm_group moecomm_shm_group;
/* A counted reference to one mapping of a region: its memory stays mapped until released. */
typedef struct moecomm_shm_view moecomm_shm_view;

/* Writes "/moecomm-<32 hex digits>" (128 random bits) into out (at least MOECOMM_SHM_NAME_MAX bytes). */
int moecomm_shm_random_name(char* out, size_t out_len, char* err, size_t err_len);
int moecomm_shm_random_u64(uint64_t* out, char* err, size_t err_len);

/* names: world_size segment names, names[rank] is this rank's. */
int moecomm_shm_open(int rank, int world_size, uint64_t nonce, const char* const* names, double timeout_s,
                     moecomm_shm_group** out, char* err, size_t err_len);
void moecomm_shm_close(moecomm_shm_group* group);

/* st_mode & 07777 and st_uid of this rank's header segment as fstat saw it right after creation. */
int moecomm_shm_own_segment_mode(const moecomm_shm_group* group, unsigned* mode, unsigned* uid);

int moecomm_shm_barrier(moecomm_shm_group* group, double timeout_s, char* err, size_t err_len);

/* dst [world_size * nbytes] receives every rank's src [nbytes] in rank order; nbytes equal on every rank. */
int moecomm_shm_all_gather(moecomm_shm_group* group, const void* src, uint64_t nbytes, void* dst,
                           int num_threads, double timeout_s, char* err, size_t err_len);

/* src holds send_bytes[d] bytes for each rank d in rank order; dst receives recv_bytes[s] bytes from each
 * rank s in rank order. recv_bytes[s] must equal rank s's send_bytes[this rank]. */
int moecomm_shm_all_to_all(moecomm_shm_group* group, const void* src, const int64_t* send_bytes, void* dst,
                           const int64_t* recv_bytes, int num_threads, double timeout_s, char* err,
                           size_t err_len);

/* src [world_size * block_elems] of dtype; dst [block_elems] = sum over ranks of their block `rank`,
 * accumulated in float32 (float types) or int64 (integer types), in rank order. */
int moecomm_shm_reduce_scatter(moecomm_shm_group* group, const void* src, int64_t block_elems, int dtype,
                               void* dst, int num_threads, double timeout_s, char* err, size_t err_len);

/* Raw regions (push model). ensure_region grows this rank's region `label` (created on first use) to at
 * least nbytes, keeping its contents; it is local and never waits. sync is a barrier after which every
 * write any rank made before its sync is visible, and region views taken after it reflect every peer's
 * latest generation. region_view maps rank's region as this rank last saw it (after sync). */
int moecomm_shm_ensure_region(moecomm_shm_group* group, const char* label, uint64_t nbytes, char* err,
                              size_t err_len);
int moecomm_shm_sync(moecomm_shm_group* group, double timeout_s, char* err, size_t err_len);
int moecomm_shm_region_view(moecomm_shm_group* group, int rank, const char* label, moecomm_shm_view** out,
                            void** data, uint64_t* nbytes, char* err, size_t err_len);
void moecomm_shm_view_release(moecomm_shm_view* view);

#ifdef __cplusplus
}
#endif

#endif /* MOECOMM_SHM_H_ */
