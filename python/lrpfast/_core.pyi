"""Type stub of lrpfast's native CPU engine (private: use the lrpfast package).

All float arrays are float32, NCHW, C-contiguous; other inputs (float64, non-contiguous, anything
numpy can convert) are converted, copying only when needed. Parameters typed ``IntPair`` take an
int (used for both axes) or an (h, w) pair. Bad shapes or parameters raise ValueError.
"""

from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt
from typing_extensions import TypeAlias

IntPair: TypeAlias = int | tuple[int, int] | Sequence[int]
FloatArray: TypeAlias = npt.NDArray[np.float32]
Int32Array: TypeAlias = npt.NDArray[np.int32]
ArrayLike: TypeAlias = npt.ArrayLike

__version__: str
cuda_compiled: bool

def blas_name() -> str:
    """Name, version and CPU kernel of the BLAS in use."""

def blas_config() -> str:
    """The BLAS library's own configuration string."""

def set_num_threads(n: int) -> int:
    """Threads of lrpfast's pool (gemm slices over single-threaded BLAS, and all loops);
    1 <= n <= 4096, capped at available_cpus(); the pool shrinks when lowered. Returns the
    number set."""

def get_num_threads() -> int: ...
def available_cpus() -> int:
    """CPUs this process may run on."""

def pool_threads() -> int:
    """Threads the pool holds now, the caller's included (1 before its first use)."""

def set_deterministic(on: bool) -> None:
    """Deterministic mode: an image's result is bit-identical alone or in any batch, on any
    number of threads (process-wide; default from $LRPFAST_DETERMINISTIC)."""

def get_deterministic() -> bool: ...
def set_simd(algorithm: str) -> None:
    """lrpfast's SIMD kernels: 'native', 'avx2' or 'generic' (process-wide; $LRPFAST_SIMD)."""

def get_simd() -> str: ...
def simd_kernels() -> str:
    """The SIMD kernels the simd setting runs on this CPU: 'avx512', 'avx2' or 'generic'."""

def set_nt_prefetch(floats: int) -> None:
    """Prefetch distance (floats, 0 = none) of the fully connected forward for small batches
    (AVX-512: 1 to 8, AVX2: 1 to 4; process-wide; $LRPFAST_NT_PREFETCH; default 256 on Intel
    CPUs, 0 elsewhere). Speed only: results are the same bits at any distance."""

def get_nt_prefetch() -> int: ...

def set_conv_algorithm(algorithm: str) -> None:
    """3x3 stride-1 convolutions: 'auto', 'direct' or 'winograd' (process-wide)."""

def get_conv_algorithm() -> str: ...
def set_linear_algorithm(algorithm: str) -> None:
    """Fully connected products: 'auto', 'blas' or 'streamed' (process-wide)."""

def get_linear_algorithm() -> str: ...
def set_memory_reuse(on: bool) -> None:
    """Keep freed host memory for reuse (glibc malloc settings, process-wide; default on)."""

def get_memory_reuse() -> bool: ...
def weight_signs(w: ArrayLike, kind: str) -> FloatArray:
    """w (rows, K) -> max(w, 0) ("pos"), min(w, 0) ("neg") or both stacked (2*rows, K) ("pm")."""
def release_memory() -> bool:
    """Return the freed memory the process holds to the system (glibc malloc_trim)."""
def linear_streamed_native() -> bool:
    """True where the streamed fully connected kernels run on AVX-512 (see set_simd)."""

def conv_out_size(
    in_size: int, kernel: int, stride: int = 1, pad: int = 0, dilation: int = 1
) -> int:
    """floor((in + 2*pad - (dilation*(kernel-1)+1)) / stride) + 1; ValueError when < 1."""

def pool_out_size(
    in_size: int, kernel: int, stride: int = 1, pad: int = 0, ceil_mode: bool = True
) -> int:
    """Caffe: ceil((in + 2*pad - kernel)/stride) + 1, minus 1 if pad > 0 and
    (out-1)*stride >= in + pad; floor((in + 2*pad - kernel)/stride) + 1 with ceil_mode=False."""

def conv_forward(
    x: ArrayLike,  # (N, C, H, W)
    w: ArrayLike,  # (O, C/group, kh, kw)
    b: ArrayLike | None,  # (O,) or None
    stride: IntPair = 1,
    pad: IntPair = 0,
    dilation: IntPair = 1,
    group: int = 1,
    *,
    winograd: FloatArray | None = None,  # winograd_kernels(w, group, False), or None
) -> FloatArray:  # (N, O, Ho, Wo)
    ...
def winograd_kernels(
    w: ArrayLike,  # (O, C/group, 3, 3)
    group: int = 1,
    adjoint: bool = False,
) -> FloatArray:  # (16 * O * C/group,): G g G^T of every kernel, as the Winograd path uses it
    """The Winograd F(2x2,3x3) kernel transforms for conv_forward (adjoint False) or
    conv_backward_data (adjoint True)."""
def winograd_applies(
    n: int,
    in_shape: Sequence[int],  # (C, H, W)
    w_shape: Sequence[int],  # (O, C/group, kh, kw)
    stride: IntPair,
    pad: IntPair,
    dilation: IntPair,
    group: int,
    backward: bool,
) -> bool:
    """Whether conv_forward (backward False) or conv_backward_data (True) takes the Winograd path."""
def conv_forward_pair(
    x: ArrayLike,  # (N, C, H, W)
    w: ArrayLike,  # (O, C/group, kh, kw): each group's rows [W_g; V_g], half each
    b: ArrayLike | None,  # (O,) stacked likewise, or None
    stride: IntPair = 1,
    pad: IntPair = 0,
    dilation: IntPair = 1,
    group: int = 1,
    *,
    winograd: FloatArray | None = None,  # winograd_kernels(w, group, False) of the stacked w
) -> tuple[FloatArray, FloatArray]:  # (conv(x, W) + b_W, conv(x, V) + b_V), each (N, O/2, Ho, Wo)
    ...
def conv_forward_algorithm(
    x: ArrayLike,
    w: ArrayLike,
    stride: IntPair = 1,
    pad: IntPair = 0,
    dilation: IntPair = 1,
    group: int = 1,
) -> str:  # 'winograd', 'taps', 'pointwise' or 'im2col'
    ...
@overload
def conv_backward_data(
    dy: ArrayLike,  # (N, O, Ho, Wo)
    w: ArrayLike,  # (O, C/group, kh, kw)
    in_shape: Sequence[int],  # (C, H, W) or (N, C, H, W); N is taken from dy
    stride: IntPair = 1,
    pad: IntPair = 0,
    dilation: IntPair = 1,
    group: int = 1,
    *,
    z: ArrayLike | None = None,  # (N, O, Ho, Wo): dy becomes stabilized_divide(dy, z, eps)
    eps: float = 0.0,
    times: ArrayLike | None = None,  # (N, C, H, W): multiplies the result
    winograd: FloatArray | None = None,  # winograd_kernels(w, group, True), or None
    check_finite: Literal[False] = False,
    add: ArrayLike | None = None,  # (N, C, H, W), with times: (0 + add) + times * result
) -> FloatArray:  # (N, C, H, W): the transposed convolution col2im(W^T dy)
    ...
@overload
def conv_backward_data(
    dy: ArrayLike,  # (N, O, Ho, Wo)
    w: ArrayLike,  # (O, C/group, kh, kw)
    in_shape: Sequence[int],  # (C, H, W) or (N, C, H, W); N is taken from dy
    stride: IntPair = 1,
    pad: IntPair = 0,
    dilation: IntPair = 1,
    group: int = 1,
    *,
    z: ArrayLike | None = None,  # (N, O, Ho, Wo): dy becomes stabilized_divide(dy, z, eps)
    eps: float = 0.0,
    times: ArrayLike | None = None,  # (N, C, H, W): multiplies the result
    winograd: FloatArray | None = None,  # winograd_kernels(w, group, True), or None
    check_finite: Literal[True],
    add: ArrayLike | None = None,  # (N, C, H, W), with times: (0 + add) + times * result
) -> tuple[FloatArray, bool]:  # (dx, no NaN/inf in dx), tested in the pass multiplying by times
    ...
def linear_forward(
    x: ArrayLike,  # (N, K)
    w: ArrayLike,  # (O, K)
    b: ArrayLike | None,  # (O,) or None
) -> FloatArray:  # (N, O) = x w^T + b
    ...
def linear_backward_data(dy: ArrayLike, w: ArrayLike) -> FloatArray:
    """dy (N, O), w (O, K) -> dx (N, K) = dy w. With lrpfast's own kernels, the rows of w
    whose column of dy is zero in every row are not read (the result keeps its bits)."""

def pool_forward(
    x: ArrayLike,  # (N, C, H, W)
    method: str,  # "max" or "ave"
    kernel: IntPair,
    stride: IntPair = 1,
    pad: IntPair = 0,
    ceil_mode: bool = True,
) -> tuple[FloatArray, Int32Array]:
    """(y (N, C, Ho, Wo), argmax): argmax (int32, shape of y) = h*W + w of the first maximum in
    row-major order for "max"; an empty int32 array for "ave"."""

def pool_backward(
    dy: ArrayLike,  # (N, C, Ho, Wo)
    in_shape: Sequence[int],  # (C, H, W) or (N, C, H, W); N is taken from dy
    method: str,
    kernel: IntPair,
    stride: IntPair = 1,
    pad: IntPair = 0,
    argmax: ArrayLike | None = None,  # "max": required, from pool_forward; "ave": ignored
    ceil_mode: bool | None = None,  # None: the mode matching dy's shape (ceil first)
) -> FloatArray:  # (N, C, H, W)
    ...
def lrn_forward(
    x: ArrayLike,  # (N, C, H, W)
    local_size: int,  # odd
    alpha: float,
    beta: float,
    k: float = 1.0,  # ignored for region "within" (Caffe uses 1)
    region: str = "across",  # "across" (ACROSS_CHANNELS) or "within" (WITHIN_CHANNEL)
) -> tuple[FloatArray, FloatArray]:
    """(y, scale), both shaped like x; y = x * scale**(-beta)."""

def stabilized_divide(
    r: ArrayLike, z: ArrayLike, eps: float, zero_to_zero: bool = True
) -> FloatArray:
    """r / (z + eps*sign(z)), sign(0) = +1; 0 where that denominator is exactly 0 (zero_to_zero)."""

def alphabeta_signal(
    r: ArrayLike, z: ArrayLike, zp: ArrayLike, alpha: float, beta: float, groups: int = 1,
    guards: bool = False,
) -> FloatArray:
    """(N, C, ...) -> (N, 2C, ...): per group [alpha*r/zp ; -beta*r/(z-zp)], 0 where a
    denominator is exactly 0 (the alpha-beta signal for x >= 0, for the stacked weights [W+; W-]);
    guards (the LRP Toolbox's alpha-beta): 0 unless zp > 0, resp. z - zp < 0."""

def eltwise_forward(
    xs: Sequence[ArrayLike],  # K >= 1 arrays of one shape (no broadcasting)
    operation: str,  # "sum", "prod" or "max"
    coeffs: Sequence[float] | None = None,  # "sum" only: one per input (None = all 1)
    *,
    relu: bool = False,  # "sum" only: y = relu_forward(the sum), the sum not kept
) -> tuple[FloatArray, Int32Array | None]:
    """Caffe's Eltwise -> (y, argmax), y of the inputs' shape, evaluated per element in input
    order in float32 (bit-identical to the numpy loop): sum_k coeffs[k]*xs[k], the product, or
    the maximum with argmax (int32) = the index of the first input holding it; argmax is None
    except for "max". relu=True: y is the ReLU of the sum, from the same pass."""

@overload
def eltwise_sum_relevance(
    xs: Sequence[ArrayLike],  # K >= 1 arrays of one shape (the Eltwise SUM's operands)
    r: ArrayLike,  # the relevance of the sum, same shape
    y: ArrayLike | None,  # the sum, same shape (None: recomputed with eltwise_forward's bits)
    coeffs: Sequence[float] | None = None,  # K values (None: all 1)
    eps: float = 0.0,
    *,
    check_finite: Literal[False] = False,
) -> list[FloatArray]:  # [coeffs[k] * xs[k] * stabilized_divide(r, y, eps)]
    """Each operand's share of the sum's relevance (z rule, eps-stabilised), threaded; bit-identical
    to the numpy expression."""
@overload
def eltwise_sum_relevance(
    xs: Sequence[ArrayLike],  # K >= 1 arrays of one shape (the Eltwise SUM's operands)
    r: ArrayLike,  # the relevance of the sum, same shape
    y: ArrayLike | None,  # the sum, same shape (None: recomputed with eltwise_forward's bits)
    coeffs: Sequence[float] | None = None,  # K values (None: all 1)
    eps: float = 0.0,
    *,
    check_finite: Literal[True],
) -> tuple[list[FloatArray], bool]:  # (the list, no NaN/inf in it), tested in the same pass
    ...

def all_finite(
    x: FloatArray,  # float32, C-contiguous, any shape
) -> bool:
    """True when x holds no NaN or infinity; one parallel pass over the exponent bits."""

def any_negative(
    x: FloatArray,  # float32, C-contiguous, any shape
) -> bool:
    """True when some x < 0 (as numpy's (x < 0).any()); one parallel pass that stops early."""

def to_float16(
    x: FloatArray,  # float32, C-contiguous, any shape
) -> np.ndarray:  # float16, x's shape
    """numpy's x.astype(np.float16) bit for bit (ties to even, NaN kept); F16C where the CPU has
    it, serial (the pipeline's writer thread calls it beside the engine)."""

def resize_bilinear(
    src: np.ndarray,  # uint8 (h, w, 3) or (h, w, 4), pixels contiguous within rows
    size: tuple[int, int],  # (H, W) of the whole resized image
    window: tuple[int, int, int, int],  # (y0, x0, ny, nx) inside (H, W)
) -> np.ndarray:  # uint8 (ny, nx, 3)
    """The window of Pillow's antialiased bilinear resize of src to size (horizontal pass to 8
    bits, then vertical; a pass is skipped where the side keeps its size), computing only the
    window; serial, GIL released."""

def arrow_pixels(
    schema: Any,  # the 'arrow_schema' capsule of a PIL image's __arrow_c_array__()
    array: Any,  # its 'arrow_array' capsule
    h: int,
    w: int,
) -> np.ndarray:  # uint8 (h, w, 4), a view that keeps the export alive
    """A PIL RGB image's pixels without a copy; ValueError unless one contiguous buffer of
    h * w pixels of 4 bytes."""

def relu_forward(
    x: ArrayLike,  # any shape
    negative_slope: float = 0.0,
) -> FloatArray:  # x > 0 ? x : slope * x (slope 0: +0 where x <= 0, NaN kept)
    """Caffe's ReLU forward, threaded."""

def channel_affine(
    x: ArrayLike,  # (N, C, ...)
    scale: ArrayLike,  # (C,)
    bias: ArrayLike | None = None,  # (C,) or None
) -> FloatArray:  # (N, C, ...) = x * scale[c] + bias[c], rounded as numpy's x*s + b
    """The per-channel affine map of BatchNorm/Scale (after folding) and ops.DiagOp."""
