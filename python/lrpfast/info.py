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
    """{'version', 'blas', 'blas_config', 'threads', 'cuda_compiled', 'gpus'}."""
    return {
        "version": _core.__version__,
        "blas": _core.blas_name(),
        "blas_config": _core.blas_config(),
        "threads": get_num_threads(),
        # the module file of lrpfast._cuda, found without loading it (nor cuBLAS)
        "cuda_compiled": importlib.util.find_spec("lrpfast._cuda") is not None,
        "gpus": _gpu_count(),
    }
