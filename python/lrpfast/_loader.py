"""Loads the native module after making sure the PyPI OpenBLAS it links is loaded."""
from __future__ import annotations

import ctypes
import os

try:  # the module's RPATH finds the library; preloading covers unusual layouts (editable installs)
    import scipy_openblas32 as _sob

    ctypes.CDLL(os.path.join(_sob.get_lib_dir(), "lib" + _sob.get_library() + ".so"),
                mode=ctypes.RTLD_GLOBAL)
except (ImportError, OSError):  # pragma: no cover - a repaired wheel carries its own copy
    pass

from . import _core  # noqa: E402

__all__ = ["_core"]
