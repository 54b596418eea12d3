#!/usr/bin/env bash
# The real CUDA kernels and bindings without a GPU: builds src/cuda/kernels/*.cu and
# src/cuda/bindings/module.cpp as host C++ over the CUDA stand-in of src/cuda/host (module
# _cuda_host), then runs the GPU test suite against it (tests/cuda_host_plugin.py) minus what needs
# real hardware (compute-sanitizer, PyTorch/CuPy interop), plus the host-build checks of
# tests/test_cuda_host.py (stream hand-over, devices, exact FP32, error reporting). ~2-3 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
"$PY" -m pip install --quiet pybind11 cmake ninja scipy-openblas32
B=build/hostcuda
cmake -S src/cuda/host -B "$B" -G Ninja -DPython_EXECUTABLE="$(command -v "$PY")" >/dev/null
cmake --build "$B" -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
export LRPFAST_CUDA_HOST_DIR="$PWD/$B"
cd tests
"$PY" -m pytest -q -p cuda_host_plugin -p no:cacheprovider -m "gpu and not hardware" \
  test_cuda_gpu.py test_cuda_host.py
