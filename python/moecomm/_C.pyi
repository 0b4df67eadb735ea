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

def permute(x: TensorArg, row_of_pair: TensorArg, out: TensorArg, num_threads: int) -> None:
    """x [T,H] float32/float16/bfloat16 (any strides); row_of_pair [T,K] int64 whose kept rows cover
    [0, N) exactly once (else ValueError naming row_of_pair's TensorArg); out [N,H] contiguous."""

def unpermute(y: TensorArg, row_of_pair: TensorArg, topk_weights: TensorArg, out: TensorArg, num_threads: int) -> None:
    """y [N,H]; row_of_pair [T,K] int64 covering [0, N) exactly once; topk_weights [T,K] float32;
    out [T,H] in y's dtype."""

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
