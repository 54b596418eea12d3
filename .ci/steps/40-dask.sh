#!/usr/bin/env bash
# Whole data sets: the [dask] extra's requirements (zarr, dask[distributed]) and pyarrow (the
# Parquet table), then the pipeline's store tests and the LocalCluster tests (2 worker
# processes x 1 thread: identical to one process, a worker killed mid-run, resume).
# Budget: 3 minutes on 2 cores (both zarr versions).
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
# The zarr 2 code path (Python 3.9/3.10 users get zarr 2): the same tests in a virtual
# environment that sees this one's packages but has zarr 2 in front (zarr 3's pytest plugin,
# visible through this environment's site, is switched off there). A .pth file adds this
# environment's site-packages after the new one's own, whether this one is the system Python
# or itself a virtual environment (which --system-site-packages would skip).
Z2=$(mktemp -d)
python -m venv "$Z2"
inner=$("$Z2/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python -c "import sysconfig; p = sysconfig.get_paths(); print(*dict.fromkeys([p['purelib'], p['platlib']]), sep='\n')" \
  > "$inner/_lrpfast_ci_outer.pth"
"$Z2/bin/python" -m pip install --quiet "zarr>=2.16,<3"
"$Z2/bin/python" -c "import zarr; assert zarr.__version__.startswith('2.'), zarr.__version__; print('zarr', zarr.__version__)"
"$Z2/bin/python" -m pytest -q -p no:cacheprovider -p no:zarr tests/test_pipeline.py tests/test_dask.py
rm -rf "$Z2"
