"""pytest plugin (``-p cuda_host_plugin``): lrpfast.cuda runs on the host build of the CUDA engine,
the real ``.cu`` kernels and bindings compiled as C++ over the CUDA stand-in of src/cuda/host
(module ``_cuda_host``, built by .ci/steps/70-hostcuda.sh into ``build/hostcuda``, or the
folder named by ``LRPFAST_CUDA_HOST_DIR``). The GPU tests then run without a GPU; tests that need
real hardware check :func:`host_build` and skip."""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from lrpfast import cuda

_DIR = Path(os.environ.get("LRPFAST_CUDA_HOST_DIR",
                           Path(__file__).resolve().parents[1] / "build" / "hostcuda"))


def load():
    """The ``_cuda_host`` module (ImportError naming the folder when it was not built)."""
    if str(_DIR) not in sys.path:
        sys.path.insert(0, str(_DIR))
    try:
        return importlib.import_module("_cuda_host")
    except ImportError as e:
        raise ImportError(f"the host build of the CUDA engine is not in {_DIR} ({e}); build it "
                          f"with .ci/steps/70-hostcuda.sh") from None


def pytest_configure(config):
    cuda.set_backend(load())
