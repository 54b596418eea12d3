#!/usr/bin/env bash
# One CI machine covers every SIMD path: the tests that pin the determinism contract run again
# with the other paths forced -- lrpfast's AVX2 kernels with OpenBLAS's Haswell kernels, and the
# generic path (no hand-written SIMD, as on non-x86 machines) with OpenBLAS's Nehalem kernels --
# and the CPU kernels are compiled for aarch64 (no unguarded x86 intrinsics or flags).
set -euo pipefail
TESTS=(tests/test_determinism.py tests/test_conv_algorithms.py tests/test_conv_taps.py tests/test_linear_streamed.py
       tests/test_conservation.py tests/test_net_api.py tests/test_compat.py)
if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
  echo "--- AVX2 path (LRPFAST_SIMD=avx2, OpenBLAS Haswell kernels)"
  LRPFAST_SIMD=avx2 LRPFAST_BLAS_CORETYPE=Haswell python -m pytest -q -p no:cacheprovider "${TESTS[@]}"
fi
echo "--- generic path (LRPFAST_SIMD=generic, OpenBLAS Nehalem kernels)"
LRPFAST_SIMD=generic LRPFAST_BLAS_CORETYPE=Nehalem python -m pytest -q -p no:cacheprovider "${TESTS[@]}"

echo "--- aarch64 compile check of src/cpp/kernels"
if ! command -v aarch64-linux-gnu-g++ >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu) \
    >/dev/null 2>&1 || true
fi
if command -v aarch64-linux-gnu-g++ >/dev/null 2>&1; then
  inc=$(python -c "import scipy_openblas32 as s; print(s.get_include_dir())")
  for f in src/cpp/kernels/*.cpp; do
    aarch64-linux-gnu-g++ -std=gnu++17 -O2 -fsyntax-only -Wall -Wextra -Wno-unused-parameter -Werror \
      -DLRPFAST_BLAS_PREFIX_SCIPY=1 -Isrc/cpp -I"$inc" "$f"
  done
  echo "aarch64: src/cpp/kernels compile"
else
  echo "aarch64 cross compiler not available here: compile check skipped"
fi
