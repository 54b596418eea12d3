"""Build and run-time information: version, BLAS, threads, CUDA."""
from __future__ import annotations

import ctypes
import importlib.util

from ._loader import _core


def set_num_threads(n: int) -> None:
    """Threads used by the CPU engine (BLAS and the element-wise kernels)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: need n >= 1, got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    return int(_core.get_num_threads())


def set_conv_algorithm(name: str) -> None:
    """Algorithm of the CPU engine's 3x3 stride-1 convolutions (process-wide):
    "auto" (default: Winograd F(2x2,3x3), Lavin & Gray 2016, where it saves >= 1.6x of the
    multiplications, i.e. >= 16 channels per group and planes of ~14x14 and up), "direct"
    (im2col + gemm everywhere) or "winograd" (wherever the geometry allows). Both agree to
    float32 rounding; an image's result never depends on the rest of its batch under Winograd.
    The default comes from $LRPFAST_CONV_ALGO."""
    _core.set_conv_algorithm(str(name))


def get_conv_algorithm() -> str:
    return str(_core.get_conv_algorithm())


def set_linear_algorithm(name: str) -> None:
    """Kernels of the CPU engine's fully connected products, forward and transposed
    (process-wide): "auto" (default: lrpfast's streamed AVX-512 kernels where the CPU has
    AVX-512, else BLAS), "blas" (OpenBLAS sgemm) or "streamed" (ValueError without AVX-512).
    The streamed kernels read the weight matrix once and are faster for the few rows an LRP
    batch has (bench/README.md); both agree to float32 rounding, and under either an image's
    result never depends on the rest of its batch. The default comes from
    $LRPFAST_LINEAR_ALGO."""
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


def info() -> dict:
    """{'version', 'blas', 'blas_config', 'threads', 'conv_algorithm', 'linear_algorithm',
    'linear_kernels', 'memory_reuse', 'cuda_compiled', 'gpus'} (conv_algorithm: see set_conv_algorithm;
    linear_algorithm: see set_linear_algorithm; linear_kernels: what that setting runs here,
    "streamed (AVX-512)" or "blas")."""
    return {
        "version": _core.__version__,
        "blas": _core.blas_name(),
        "blas_config": _core.blas_config(),
        "threads": get_num_threads(),
        "conv_algorithm": get_conv_algorithm(),
        "linear_algorithm": get_linear_algorithm(),
        "linear_kernels": ("streamed (AVX-512)" if _core.linear_streamed_native()
                           and get_linear_algorithm() != "blas" else "blas"),
        "memory_reuse": get_memory_reuse(),
        # the module file of lrpfast._cuda, found without loading it (nor cuBLAS)
        "cuda_compiled": importlib.util.find_spec("lrpfast._cuda") is not None,
        "gpus": _gpu_count(),
    }
