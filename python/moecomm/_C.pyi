"""Type stubs of moecomm's native core (pybind11 module ``moecomm._C``).

Every function takes ``TensorArg`` descriptions of caller-allocated CPU tensors (see
``moecomm.ops._native.tensor_arg``, the one place that builds them), checks them, runs the CPU kernel
with the GIL released, and raises ``ValueError`` naming the argument on bad input (``MemoryError`` when
the kernel runs out of memory). Outputs are written in place. A ``TensorArg`` does not own its memory:
keep the tensor alive across the call. The core touches only ``[data, data + nbytes)`` of each one.
"""

import enum

class ScalarType(enum.IntEnum):
    float32 = 0
    float16 = 1
    bfloat16 = 2
    int32 = 3
    int64 = 4
    bool = 5
    int8 = 6
    float8_e4m3fn = 7

class TensorArg:
    """A tensor as (argument name, data pointer, shape, strides in elements, ScalarType code, and the
    bytes from ``data`` to the end of its storage). Shape and strides that address any byte past
    ``nbytes`` are refused before a kernel runs."""

    def __init__(self, name: str, data: int, shape: list[int], strides: list[int], dtype: int, nbytes: int) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> list[int]: ...
    @property
    def strides(self) -> list[int]: ...
    @property
    def dtype(self) -> int: ...
    @property
    def nbytes(self) -> int: ...

def route_layout(
    topk_ids: TensorArg,
    num_experts: int,
    is_kept: TensorArg | None,
    tokens_per_expert: TensorArg,
    row_of_pair: TensorArg,
    num_threads: int,
) -> None:
    """topk_ids [T,K] int32/int64 contiguous; is_kept [T,K] bool or None; writes
    tokens_per_expert [E] int64 and row_of_pair [T,K] int64 (-1 for dropped pairs)."""

def select_kept(
    topk_ids: TensorArg,
    num_experts: int,
    experts_per_bucket: int,
    capacity: TensorArg,
    topk_weights: TensorArg | None,
    is_kept: TensorArg,
) -> None:
    """capacity [E/experts_per_bucket] int64 >= 0; topk_weights [T,K] float32 (None: position
    policy); writes is_kept [T,K] bool."""

def permute(
    x: TensorArg, row_of_pair: TensorArg, buffers: list[TensorArg], table: TensorArg, row_stride: int, num_threads: int
) -> None:
    """x [T,H] float32/float16/bfloat16/int8 (any strides); row_of_pair [T,K] int64 whose kept rows cover
    [0, N) exactly once (else ValueError naming row_of_pair's TensorArg); the N output rows of H elements are
    byte ranges of buffers: table [S,3] int64 (buffer index, byte offset from its data pointer, rows), ranges
    holding consecutive rows, rows row_stride bytes apart; every row is checked to lie in its buffer's bytes."""

def unpermute(
    y: TensorArg,
    row_of_pair: TensorArg,
    topk_weights: TensorArg,
    out: TensorArg,
    token_begin: int,
    token_end: int,
    num_threads: int,
) -> None:
    """y [N,H]; row_of_pair [T,K] int64 covering [0, N) exactly once; topk_weights [T,K] float32;
    out [token_end - token_begin, H] in y's dtype: the tokens [token_begin, token_end) of the combine
    (0 <= begin <= end <= T, else ValueError naming tokens)."""

def pack_padded(rows: TensorArg, counts: TensorArg, out: TensorArg, num_threads: int) -> None:
    """rows [N,H]; counts [B] int64; out [B,capacity,H] contiguous, zero padded."""

def unpack_padded(buffer: TensorArg, counts: TensorArg, out: TensorArg, num_threads: int) -> None:
    """buffer [B,capacity,H]; counts [B] int64; out [sum(counts),H] contiguous."""

def regroup_blocks(rows: TensorArg, block_rows: TensorArg, out: TensorArg, num_threads: int) -> None:
    """rows [N,H] in (outer, inner) block order; block_rows [outer, inner] int64; out [N,H] contiguous
    receives the blocks in (inner, outer) order."""

def advise_huge_pages(out: TensorArg) -> None:
    """With MOECOMM_HUGE_PAGES=1 (read once), asks for transparent huge pages on a large untouched
    buffer (Linux); otherwise a no-op."""

def quantize_rows(
    x: TensorArg,
    code_dtype: int,
    q_buffers: list[TensorArg],
    q_table: TensorArg,
    q_row_stride: int,
    scale_buffers: list[TensorArg],
    scale_table: TensorArg,
    scale_row_stride: int,
    row_of_pair: TensorArg | None,
    num_threads: int,
) -> None:
    """x [N,H] float32/float16/bfloat16 (any strides) -> N_out rows of H codes of code_dtype (int8 or
    float8_e4m3fn ScalarType code) and their float32 scales (1 per row for int8, ceil(H/128) for fp8), each
    as byte ranges of buffers (see permute; the scale table has the rows per range of the code table; codes
    and scales may interleave in one buffer: wire rows). row_of_pair None: N_out = N, row t to row t; else
    [N,K] int64 contiguous, row t to rows row_of_pair[t] (permute's rule, -1 skips). Raises naming x for a
    row holding inf or NaN, naming row_of_pair for a bad row map."""

def dequantize_rows(
    q: TensorArg, scales: TensorArg, out: TensorArg, row_of_pair: TensorArg | None, num_threads: int
) -> None:
    """q [N,H] int8 or float8_e4m3fn and scales as quantize_rows wrote them (row-strided); out [N_out,H]
    float32/float16/bfloat16 contiguous, scattered by row_of_pair as in quantize_rows. Raises naming scales
    for one that is negative, inf or NaN."""

# ---- shared-memory transport (kernels/cpu/shm/, C ABI kernels/include/moecomm/shm.h) ----

class ShmError(RuntimeError):
    """A shared-memory setup or collective step failed: a peer late, dead, closed or disagreeing, a
    refused segment, or an OS error. The message names the rank and the collective."""

def shm_random_name() -> str:
    """``/moecomm-`` + 32 hex digits (128 bits from getrandom)."""

def shm_random_nonce() -> int:
    """64 random bits (the group nonce)."""

class ShmRegionBuffer:
    """Buffer-protocol view (uint8, 1-D) of one mapped region; the memory stays mapped while it lives."""

    @property
    def nbytes(self) -> int: ...

class ShmGroup:
    """One rank's side of a shared-memory group. The constructor is the setup (creates this rank's
    segment names[rank] with mode 0600, maps every peer's, waits until all have, unlinks its own name);
    bounded by timeout_s. Every method releases the GIL; collectives raise ShmError on failure and
    ValueError on bad arguments."""

    def __init__(self, rank: int, world_size: int, nonce: int, names: list[str], timeout_s: float) -> None: ...
    @property
    def rank(self) -> int: ...
    @property
    def world_size(self) -> int: ...
    def close(self) -> None: ...
    def own_segment_mode(self) -> tuple[int, int]:
        """(st_mode & 0o7777, st_uid) of this rank's header segment as created."""
    def barrier(self, timeout_s: float) -> None: ...
    def all_gather(self, tensor: TensorArg, out: TensorArg, num_threads: int, timeout_s: float) -> None:
        """tensor [N, *S] contiguous (any dtype); out [R * N, *S] (that many elements) contiguous, same dtype."""
    def all_to_all(
        self,
        tensor: TensorArg,
        input_splits: list[int],
        out: TensorArg,
        output_splits: list[int],
        num_threads: int,
        timeout_s: float,
    ) -> None:
        """tensor [N, *S]; input_splits [R] rows per destination (sum N); out [M, *S] same dtype;
        output_splits [R] rows per source (sum M); both contiguous."""
    def reduce_scatter(self, tensor: TensorArg, out: TensorArg, num_threads: int, timeout_s: float) -> None:
        """tensor [R * M, *S] float32/float16/bfloat16/int32/int64; out [M, *S] same dtype; float32
        (integers: int64) accumulation in rank order."""
    def ensure_region(self, region: str, nbytes: int) -> None: ...
    def sync(self, timeout_s: float) -> None: ...
    def region(self, rank: int, region: str) -> ShmRegionBuffer: ...
