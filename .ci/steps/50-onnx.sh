#!/usr/bin/env bash
# ONNX import: the [onnx] extra's requirements, onnxruntime (forward reference), the CPU build of
# torch (models exported with torch.onnx) and zennit (relevance reference; --no-deps: its
# torchvision imports are served by tests/torchvision_stub), then every test marked onnx,
# the slow ones included. Budget: 5 minutes on 2 cores.
set -euo pipefail
extra=$(python - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print(" ".join(tomllib.load(f)["project"]["optional-dependencies"]["onnx"]))
PY
)
python -m pip install --quiet $extra onnxruntime "torch==2.13.0"
python -m pip install --quiet --no-deps "zennit==0.5.1"
python -m pytest -q -m onnx tests/test_onnx.py tests/test_onnx_zennit.py
