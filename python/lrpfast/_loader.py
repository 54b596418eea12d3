"""Loads the native module after making sure the PyPI OpenBLAS it links is loaded.

lrpfast carries its own OpenBLAS (the scipy-openblas32 wheel, or a copy vendored into a repaired
wheel) and lets that library pick the CPU kernels it detects. ``OPENBLAS_CORETYPE`` is a
process-wide work-around for *older* OpenBLAS builds (some machines set it to Haswell, which
halves sgemm throughput on AVX-512 CPUs); it is hidden from lrpfast's copy while that copy
initialises, and restored at once, so numpy's own OpenBLAS still sees it. To force a core type
for lrpfast's copy, set ``LRPFAST_BLAS_CORETYPE`` (e.g. ``Haswell``); ``lrpfast info`` shows the
kernel in use.
"""
from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager


@contextmanager
def _blas_coretype():
    saved = os.environ.get("OPENBLAS_CORETYPE")
    wanted = os.environ.get("LRPFAST_BLAS_CORETYPE")
    if wanted:
        os.environ["OPENBLAS_CORETYPE"] = wanted
    else:
        os.environ.pop("OPENBLAS_CORETYPE", None)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OPENBLAS_CORETYPE", None)
        else:
            os.environ["OPENBLAS_CORETYPE"] = saved


with _blas_coretype():
    try:  # the module's RPATH finds the library; preloading covers unusual layouts (editable installs)
        import scipy_openblas32 as _sob

        ctypes.CDLL(os.path.join(_sob.get_lib_dir(), "lib" + _sob.get_library() + ".so"),
                    mode=ctypes.RTLD_GLOBAL)
    except (ImportError, OSError):  # pragma: no cover - a repaired wheel carries its own copy
        pass

    from . import _core  # noqa: E402

__all__ = ["_core"]
