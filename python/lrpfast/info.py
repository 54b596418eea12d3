"""Build and run-time information: version, BLAS, threads, CUDA."""
from __future__ import annotations

import ctypes
import importlib.util
import operator
import os
import warnings

from ._loader import _core


def set_num_threads(n: int) -> int:
    """Threads used by the CPU engine (BLAS and the element-wise kernels); returns the number set.

    More threads than the CPUs this process may run on only slow lrpfast down, so ``n`` is capped
    there, with a warning. Lowering the number ends the pool's extra threads. Results never depend
    on whether the pool is busy with another Python thread's call; in deterministic mode
    (:func:`set_deterministic`) they do not depend on the number of threads either."""
    n = operator.index(n) if not isinstance(n, bool) else int(n)
    if n < 1 or n > 4096:
        raise ValueError(f"set_num_threads: need 1 <= n <= 4096, got {n}")
    cpus = int(_core.available_cpus())
    if n > cpus:
        warnings.warn(f"set_num_threads({n}): this process may run on {cpus} CPUs; using {cpus} "
                      "threads", RuntimeWarning, stacklevel=2)
    return int(_core.set_num_threads(n))


def _warn_capped_env_threads() -> None:
    """At import: say so when $LRPFAST_NUM_THREADS / $OMP_NUM_THREADS ask for more threads than
    the CPUs this process may run on (the engine caps them)."""
    cpus = int(_core.available_cpus())
    for name in ("LRPFAST_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").split(",")[0].strip()
        if value:
            if value.isdigit() and int(value) > cpus:
                warnings.warn(f"${name}={value}: this process may run on {cpus} CPUs; lrpfast uses "
                              f"{cpus} threads", RuntimeWarning, stacklevel=3)
            return


def set_deterministic(on: bool = True) -> None:
    """Deterministic mode (process-wide; default off, or ``$LRPFAST_DETERMINISTIC=1``), as
    PyTorch's ``torch.use_deterministic_algorithms``.

    On: an image's result is bit-identical whatever else is in its batch and whatever the
    number of threads -- every matrix product is cut into calls that depend on the image and the
    layer alone, and the fully connected layers run lrpfast's own kernels (one fused
    multiply-add chain per output, the same bits on AVX-512, AVX2 and the generic path).
    Off: products may span several images and are sliced by the thread count; on BLAS kernels
    whose arithmetic depends on a call's shape (OpenBLAS's Haswell kernels, its small-matrix
    kernels) results then differ at float32 rounding level between batch compositions and
    thread counts. In both modes concurrent calls from several Python threads give the serial
    results bit for bit. The cost is measured in bench/README.md."""
    _core.set_deterministic(bool(on))


def get_deterministic() -> bool:
    return bool(_core.get_deterministic())


def set_simd(name: str) -> None:
    """lrpfast's hand-written SIMD kernels (process-wide): "native" (default: the best the CPU
    has), "avx2" (at most AVX2 + FMA, as on a CPU without AVX-512) or "generic" (plain C++, the
    path of non-x86 machines; slow on x86 CPUs without FMA). Default from ``$LRPFAST_SIMD``.
    The BLAS library picks its own kernels; ``$LRPFAST_BLAS_CORETYPE`` (e.g. ``Haswell``, set
    before import) forces those."""
    _core.set_simd(str(name))


def get_simd() -> str:
    return str(_core.get_simd())


def get_num_threads() -> int:
    return int(_core.get_num_threads())


def set_conv_algorithm(name: str) -> None:
    """Algorithm of the CPU engine's convolutions (process-wide):
    "auto" (default: Winograd F(2x2,3x3), Lavin & Gray 2016, for 3x3 stride-1 kernels where it
    saves >= 1.2x of the multiplications, i.e. >= 16 channels per group and planes of ~6x6 and
    up; the taps path for forwards with <= 4 input channels per group, a net's first layer on
    RGB images, where the CPU has AVX2 + FMA; im2col + gemm otherwise), "direct" (im2col +
    gemm everywhere), "winograd" (wherever the geometry allows) or "taps" (every forward, where
    the CPU has AVX2 + FMA). The taps path sums each output's terms in one chain of fused
    multiply-adds, tap by tap, with the vector lanes along the output row: the same bits on
    every CPU with those instructions. All agree to float32 rounding; an image's result never
    depends on the rest of its batch under Winograd or taps. The default comes from
    $LRPFAST_CONV_ALGO."""
    _core.set_conv_algorithm(str(name))


def get_conv_algorithm() -> str:
    return str(_core.get_conv_algorithm())


def set_linear_algorithm(name: str) -> None:
    """Kernels of the CPU engine's fully connected products, forward and transposed
    (process-wide): "auto" (default: lrpfast's streamed kernels where they run on AVX-512, on
    AVX2 + FMA for batches of 1 to 4, and in deterministic mode on every CPU; else BLAS),
    "blas" (OpenBLAS sgemm; one row at a time in deterministic mode) or "streamed" (lrpfast's
    kernels on every CPU: AVX-512, AVX2 + FMA or generic C++, all giving the same bits). The
    streamed kernels read the weight matrix once and are faster for the few rows an LRP batch
    has (bench/README.md); with them an image's result never depends on the rest of its batch.
    BLAS agrees to float32 rounding.
    The default comes from $LRPFAST_LINEAR_ALGO."""
    _core.set_linear_algorithm(str(name))


def get_linear_algorithm() -> str:
    return str(_core.get_linear_algorithm())


def set_memory_reuse(on: bool) -> None:
    """Keep freed host memory for reuse (process-wide; default on). A relevance pass allocates
    its activation and relevance arrays afresh; with glibc's defaults each large one is mapped
    from the system and every page faults in zeroed on first touch, ~10% of a CaffeNet batch-16
    pass. On: blocks up to 32 MiB come from malloc's heap, and up to 1 GiB of freed memory stays
    in the process for the next allocation (glibc mallopt; it applies to numpy's arrays too).
    Peak memory is unchanged; between passes the process holds on to what it freed. Off restores
    glibc's fixed defaults. At import it is on unless $LRPFAST_MEMORY_REUSE=0 or glibc's
    MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ / MALLOC_TOP_PAD_ are set. ValueError where
    the C library is not glibc."""
    _core.set_memory_reuse(bool(on))


def get_memory_reuse() -> bool:
    return bool(_core.get_memory_reuse())


def release_memory() -> bool:
    """Return the freed memory this process holds for reuse to the system (glibc malloc_trim;
    see ``set_memory_reuse``), e.g. after a large batch. What lrpfast objects still reference
    stays: ``Net.release()`` also drops a net's kept forward pass and derived weights. Returns
    False where the C library is not glibc (nothing to do)."""
    return bool(_core.release_memory())


def _gpu_count() -> int:
    """Number of CUDA devices the driver reports (0 without a driver); loads nothing else."""
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def _linear_kernels() -> str:
    algo = get_linear_algorithm()
    if algo == "streamed" or (algo == "auto" and (_core.linear_streamed_native()
                                                  or get_deterministic())):
        return f"streamed ({_core.simd_kernels()})"
    if get_deterministic():
        return "blas (one row at a time)"
    if algo == "auto" and _core.simd_kernels() == "avx2":
        return "blas; streamed (avx2) for batches of 1 to 4"
    return "blas"


def info() -> dict:
    """{'version', 'blas', 'blas_config', 'threads', 'conv_algorithm', 'linear_algorithm',
    'linear_kernels', 'nt_prefetch', 'simd', 'simd_kernels', 'deterministic', 'cpus',
    'memory_reuse', 'cuda_compiled', 'gpus'} (conv_algorithm: see set_conv_algorithm;
    linear_algorithm: see set_linear_algorithm; linear_kernels: what that setting runs here, e.g.
    "streamed (avx512)" or "blas"; nt_prefetch: the software prefetch distance, in floats, of
    lrpfast's fully connected forward kernels at small batches -- 256 on Intel CPUs, 0
    elsewhere, set by $LRPFAST_NT_PREFETCH; speed only, never the result; simd: see set_simd;
    simd_kernels: the SIMD path that setting runs here)."""
    return {
        "version": _core.__version__,
        "blas": _core.blas_name(),
        "blas_config": _core.blas_config(),
        "threads": get_num_threads(),
        "conv_algorithm": get_conv_algorithm(),
        "linear_algorithm": get_linear_algorithm(),
        "linear_kernels": _linear_kernels(),
        "nt_prefetch": int(_core.get_nt_prefetch()),
        "simd": get_simd(),
        "simd_kernels": _core.simd_kernels(),
        "deterministic": get_deterministic(),
        "cpus": int(_core.available_cpus()),
        "memory_reuse": get_memory_reuse(),
        # the module file of lrpfast._cuda, found without loading it (nor cuBLAS)
        "cuda_compiled": importlib.util.find_spec("lrpfast._cuda") is not None,
        "gpus": _gpu_count(),
    }
