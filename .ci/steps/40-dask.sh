#!/usr/bin/env bash
# Whole data sets: the [dask] extra's requirements (zarr, dask[distributed]) and pyarrow (the
# Parquet table), then the pipeline's store tests and the LocalCluster tests (2 worker
# processes x 1 thread: identical to one process, a worker killed mid-run, resume).
# Budget: 3 minutes on 2 cores.
set -euo pipefail
extra=$(python - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print(" ".join(f'"{r}"' for r in tomllib.load(f)["project"]["optional-dependencies"]["dask"]))
PY
)
eval python -m pip install --quiet $extra pyarrow
python - <<'PY'
import dask, distributed, zarr
print(f"dask {dask.__version__}, distributed {distributed.__version__}, zarr {zarr.__version__}")
PY
python -m pytest -q -p no:cacheprovider tests/test_pipeline.py tests/test_dask.py
