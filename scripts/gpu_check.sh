#!/usr/bin/env bash
# First check of lrpfast's CUDA engine on a GPU machine (no network needed): build with CUDA
# forced ON, the GPU tests, exact FP32 / bitwise repeatability / threads / out-of-memory recovery /
# a tensor of more than 2^31 elements / DLPack and __cuda_array_interface__ stream hand-over,
# compute-sanitizer (memcheck, racecheck, synccheck, initcheck) on small cases, and the GPU bench
# with warm-up. Every step has its own time limit, a failed step does not stop the others, and a
# PASS/FAIL summary ends the output (also in $OUT/gpu_check.log). About 6-8 minutes on one H100.
#
#   bash scripts/gpu_check.sh              # from the repository root
#
# The machine needs nvcc (CUDA 13: NVIDIA driver >= 580), cmake, ninja, scikit-build-core,
# pybind11, cuBLAS (toolkit or the nvidia-cublas wheel) and scipy-openblas32; without network, put
# wheels of whatever is missing in .whl/ (e.g. `pip download scipy-openblas32 -d .whl`) first.
# PyTorch and CuPy are optional (their interop checks skip without them).
set -u
cd "$(dirname "$0")/.."
W=$(mktemp -d)
OUT=${OUT:-$W/out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
: > "$LOG"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-570}   # seconds for the whole script
SUMMARY=()

step() {  # step NAME TIMEOUT CMD...: runs, logs, records PASS / FAIL(rc) / TIMEOUT / SKIPPED
  local name=$1 t=$2
  shift 2
  local left=$((BUDGET - SECONDS))
  [ "$t" -gt "$left" ] && t=$left
  if [ "$t" -lt 10 ]; then SUMMARY+=("SKIPPED  $name (time budget)"); return; fi
  echo "=== [$name] $(date +%T)" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$t" "$@" 2>&1 | tee -a "$LOG" | tail -n 40
  local rc=${PIPESTATUS[0]} what=PASS
  [ "$rc" = 124 ] && what=TIMEOUT
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && what="FAIL(rc=$rc)"
  SUMMARY+=("$what  $name ($((SECONDS - t0)) s)")
}

step env 30 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv;
  nvcc --version | tail -1; env | grep -E "NVIDIA_TF32|CUBLAS|LRPFAST" || true'

# Build with CUDA forced ON: a missing nvcc or cuBLAS fails here instead of giving a CPU-only
# build whose GPU tests would all skip.
step build 300 bash -c "
  if ls .whl/*.whl >/dev/null 2>&1; then $PY -m pip install -q --no-index --no-deps .whl/*.whl; fi
  $PY -m pip install -q --no-build-isolation --no-deps -C cmake.define.LRPFAST_CUDA=ON \
      -C build-dir=$W/build . &&
  cd $W && $PY -c 'from lrpfast import cuda; m = cuda.require_gpu(); print(m.device_name(0), m.blas_name(), \"math mode\", m.blas_math_mode())'"

# The GPU tests (the sanitizer runs below on small cases instead of the whole suite).
step pytest-gpu 150 "$PY" -m pytest -q -m gpu tests/test_cuda_gpu.py -k "not compute_sanitizer" \
  -p no:cacheprovider --maxfail=20

cat > "$W/extra.py" <<'PYEOF'
import sys, threading, time
import numpy as np
sys.path.insert(0, "tests")
import cuda_cases as cc, nets, lrpfast
from conftest import seeded_rng
from lrpfast import cuda
m = cuda.require_gpu()
fails = []
def check(name, ok, info=""):
    print(("ok    " if ok else "FAIL  ") + name, info, flush=True)
    if not ok:
        fails.append(name)

check("exact FP32 products (no TF32)", all(cc.exact_fp32_products(m).values()),
      str(cc.exact_fp32_products(m)))
rng = seeded_rng("gpu-check", "threads")
tn = cc.vgg_like(8, rng); x = nets.random_input((8, 3, 12, 12), rng)
ref = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda").relevance(x, -1, "epsilon")
net = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda")
check("relevance bitwise repeatable",
      all(np.array_equal(net.relevance(x, -1, "epsilon"), ref) for _ in range(3)))
big = cuda.to_device(rng.standard_normal(1 << 25).astype(np.float32))
check("sum bitwise repeatable", len({m.sum(big._a) for _ in range(5)}) == 1)
del big
res = {}
def work(k, n):
    res[k] = all(np.array_equal(n.relevance(x, -1, "epsilon"), ref) for _ in range(10))
for shared in (True, False):
    ns = [net] * 4 if shared else [lrpfast.Net.from_text(tn.text, tn.weights, device="cuda")
                                   for _ in range(4)]
    ts = [threading.Thread(target=work, args=(k, ns[k])) for k in range(4)]
    [t.start() for t in ts]; [t.join() for t in ts]
    check(f"4 threads ({'one Net' if shared else 'a Net each'}) identical", all(res.values()))
try:
    m.empty([1 << 40]); check("out of memory raises", False)
except RuntimeError as e:
    check("out of memory: clear error", "out of memory" in str(e), str(e)[:160])
check("usable after out of memory",
      np.array_equal(cuda.DeviceArray(m.relu_forward(m.from_host(np.ones(8, np.float32)), 0.0)).to_host(), np.ones(8)))
# more than 2^31 elements: 64-bit indexing (relu exact, sum, count, max pool against numpy slices)
t0 = time.time()
n_big = (1 << 31) + 4097
ones = cuda.DeviceArray(m.binary_scalar(0, m.zeros([n_big]), 1.0, False))
check("> 2^31 elements: count_nonzero", m.count_nonzero(ones._a) == n_big)
check("> 2^31 elements: sum", m.sum(ones._a) == float(n_big))
neg = cuda.DeviceArray(m.binary_scalar(1, ones._a, 2.0, False))      # -1 everywhere
check("> 2^31 elements: relu", m.count_nonzero(m.relu_forward(neg._a, 0.0)) == 0)
del ones, neg
x4 = cuda.DeviceArray(m.binary_scalar(0, m.zeros([2, (1 << 15) + 8, 256, 128]), 1.0, False))
y, am = m.pool_forward(x4._a, "max", 2, 2, 0, True)
check("> 2^31 elements: max pool", m.count_nonzero(y) == y.size and m.sum(y) == float(y.size))
dx = m.pool_backward(y, ((1 << 15) + 8, 256, 128), "max", 2, 2, 0, am, True)
check("> 2^31 elements: max pool backward", m.sum(dx) == float(y.size))
del x4, y, am, dx; m.synchronize(); m.empty_cache()
print(f"big-tensor checks {time.time() - t0:.1f} s")
try:
    import torch
    if torch.cuda.is_available():
        n = 1 << 26
        d = cuda.to_device(np.ones(n, np.float32)); side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            torch.cuda._sleep(1_000_000_000); t = torch.from_dlpack(d); y2 = t * 2
        del t, d
        d2 = cuda.to_device(np.full(n, 7, np.float32)); torch.cuda.synchronize()
        check("DLPack export: block not reused under the consumer's side stream", bool((y2 == 2).all()))
        with torch.cuda.stream(side):
            torch.cuda._sleep(1_000_000_000); tz = torch.full((n,), 3.0, device="cuda")
            r = np.maximum(cuda.from_dlpack(tz), 0).to_host()
        check("DLPack import waits for the producer's side stream", bool((r == 3).all()))
        try:
            import cupy
            sc = cupy.cuda.Stream(non_blocking=True); z = cupy.zeros(n, cupy.float32)
            cupy.cuda.runtime.deviceSynchronize()
            with torch.cuda.stream(torch.cuda.ExternalStream(sc.ptr)):
                torch.cuda._sleep(1_000_000_000)
            with sc:
                z += 5; rr = cuda.from_cuda(z)
            check("CAI import honours the producer's stream", bool((np.maximum(rr, 0).to_host() == 5).all()))
        except ImportError:
            print("cupy not importable: CAI stream check skipped")
except ImportError:
    print("torch not importable: DLPack stream checks skipped")
print("EXTRA FAILURES:", fails)
sys.exit(1 if fails else 0)
PYEOF
step extra-checks 150 "$PY" "$W/extra.py"

cat > "$W/small.py" <<'PYEOF'
import numpy as np
from lrpfast import cuda
m = cuda.require_gpu(); r = np.random.default_rng(0)
def d(*s): return m.from_host(r.standard_normal(s).astype(np.float32))
x, w, b = d(2, 4, 13, 11), d(8, 2, 3, 3), d(8)
for args in ((1, 1, 1, 2), ((2, 1), (1, 0), (2, 1), 2)):
    y = m.conv_forward(x, w, b, *args); m.conv_forward_pair(x, w, b, *args)
    m.conv_backward_data(d(*y.shape), w, (4, 13, 11), *args, z=d(*y.shape), eps=1e-3, times=d(2, 4, 13, 11))
m.conv_forward(x, d(4, 4, 1, 1), None); m.conv_backward_data(d(2, 4, 13, 11), d(4, 4, 1, 1), (4, 13, 11))
m.linear_backward_data(d(3, 7), d(7, 30)); m.linear_forward(d(3, 30), d(7, 30), d(7))
for meth in ("max", "ave"):
    for k, s, p in ((3, 2, 1), (2, 2, 0), (5, 1, 2)):
        y, am = m.pool_forward(x, meth, k, s, p, True)
        m.pool_backward(d(*y.shape), (4, 13, 11), meth, k, s, p, am, True)
for reg in ("across", "within"): m.lrn_forward(x, 5, 1e-2, 0.75, 2.0, reg)
m.eltwise_forward([x] * 11, "sum", [0.5] * 11); m.eltwise_forward([x] * 9, "max")
m.channel_affine(x, d(4), d(4)); m.binary(4, x, d(1, 4, 1, 11)); m.unary(7, x)
m.binary_scalar(3, x, 2.0, True); m.stabilized_divide(x, d(2, 4, 13, 11), 0.0, True)
print(m.sum(x), m.count_nonzero(x)); cuda.from_dlpack(cuda.DeviceArray(x).__dlpack__(stream=2))
m.synchronize(); print("small kernels done")
PYEOF
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck synccheck initcheck; do
  step "sanitizer-$tool" 60 "$CS" --tool "$tool" --error-exitcode 99 --print-limit 20 "$PY" "$W/small.py"
done

step bench 120 "$PY" bench/bench_gpu.py --batches 1,16,64 --warmup 2

echo
echo "===== SUMMARY =====" | tee -a "$LOG"
for s in "${SUMMARY[@]}"; do echo "$s" | tee -a "$LOG"; done
case " ${SUMMARY[*]} " in *FAIL*|*TIMEOUT*) exit 1 ;; esac
