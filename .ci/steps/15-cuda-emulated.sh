#!/usr/bin/env bash
# The CUDA engine's Python-level emulation tests that load lrpfast._cuda (DLPack hand-over) need
# cuBLAS, which the [cuda] extra brings (the nvidia-cublas wheel; the build fetched it already,
# so pip takes it from its cache). Skipped when this build has no CUDA engine.
set -euo pipefail
if ! python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('lrpfast._cuda') is None)"; then
  echo "no CUDA engine in this build: skipped"
  exit 0
fi
python -m pip install --quiet --disable-pip-version-check "nvidia-cublas>=13,<14"
python -m pytest -q -p no:cacheprovider tests/test_cuda_emulated.py
