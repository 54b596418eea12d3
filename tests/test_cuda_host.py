"""The CUDA engine's edges on the host build (the real kernels and bindings over the CUDA
stand-in of src/cuda/host, run by .ci/steps/70-hostcuda.sh with ``-p cuda_host_plugin``): stream
hand-over of DLPack export and ``__cuda_array_interface__`` import with deferred streams, several
devices, exact FP32 (and that the check would catch TF32), error reports naming the kernel or
cuBLAS call, the debug switch, out-of-memory recovery and threads. Each ordering test also runs
its negative control (the hand-over left out) to show that the emulation would expose the bug.
Skipped without the host build; tests/test_cuda_gpu.py has the GPU twins."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import cuda_cases as cc
import lrpfast
import nets
from conftest import seeded_rng
from lrpfast import cuda

pytestmark = pytest.mark.gpu

m = cuda._mod if cuda.emulated() else None
if m is None or not hasattr(m, "host"):
    pytest.skip("needs the host build of the CUDA engine (pytest -p cuda_host_plugin)",
                allow_module_level=True)
H = m.host
N = 1 << 12   # elements of the stream test buffers


def _dev(a, device=None):
    return cuda.to_device(np.asarray(a, np.float32), device=device)


# ---- DLPack export: the consumer's stream is waited for before the block is reused --------------
@pytest.mark.parametrize("stream_kind", ["handle", "none"])
def test_dlpack_export_block_not_reused_under_consumer(stream_kind):
    m.empty_cache()
    d = _dev(np.ones(N))
    out = _dev(np.zeros(N))
    s = H.stream_create(False)                     # the consumer's non-blocking stream
    cap = d.__dlpack__(stream=s if stream_kind == "handle" else -1)
    view = m.from_dlpack(cap)                      # the consumer's import of the capsule
    H.enqueue_copy(s, out._a.ptr, view.ptr, 4 * N)    # consumer work on s reading d, still queued
    assert H.stream_pending(s) == 1
    ptr = d._a.ptr
    del view, cap, d                               # the deleter runs, the block goes back
    d2 = _dev(np.full(N, 7.0))                     # same size: the same block again
    assert d2._a.ptr == ptr
    m.synchronize()
    got = out.to_host()
    if stream_kind == "handle":
        np.testing.assert_array_equal(got, 1.0)    # the consumer read d before the reuse
    else:
        # negative control: stream=-1 (the consumer synchronises itself, and here did not): the
        # emulation shows the overwrite that a missing hand-over would cause
        np.testing.assert_array_equal(got, 7.0)


@pytest.mark.parametrize("key", [slice(1, 3), 2])
def test_dlpack_exported_slice_hands_consumer_stream_to_parent_block(key):
    """A view (``d[a:b]``, ``d[i]``) shares its parent's block: the consumer's stream recorded at
    export keeps the whole block from reuse until the consumer's queued work is done."""
    m.empty_cache()
    rows = 4
    d = _dev((np.arange(rows * N) % 97).reshape(rows, N))
    part = d[key]
    out = _dev(np.zeros(part.size))
    s = H.stream_create(False)
    view = m.from_dlpack(part.__dlpack__(stream=s))
    H.enqueue_copy(s, out._a.ptr, view.ptr, 4 * part.size)   # consumer reads the slice, queued
    expect = (np.arange(rows * N) % 97).reshape(rows, N)[key].astype(np.float32)
    ptr = d._a.ptr
    del view, part, d                              # the parent goes back with the last view
    d2 = _dev(np.full(rows * N, -1.0))             # same size: the same block again
    assert d2._a.ptr == ptr
    m.synchronize()
    np.testing.assert_array_equal(out.to_host(), expect.reshape(-1))


def test_view_bounds_checked():
    d = _dev(np.zeros(8))
    with pytest.raises(ValueError, match="do not fit"):
        d._a.view(6, [3])
    np.testing.assert_array_equal(d[3:5].to_host(), [0, 0])


def test_dlpack_export_orders_consumer_after_queued_work():
    """The consumer's stream waits for the work queued on the array (stream_wait)."""
    x = _dev(np.arange(N) - 5.0)
    y = np.maximum(x, 0)                           # lrpfast work on the legacy stream
    s = H.stream_create(False)
    out = _dev(np.zeros(N))
    view = m.from_dlpack(y.__dlpack__(stream=s))
    H.enqueue_copy(s, out._a.ptr, view.ptr, 4 * N)
    m.synchronize()
    np.testing.assert_array_equal(out.to_host(), np.maximum(np.arange(N) - 5.0, 0))


# ---- __cuda_array_interface__ import: the producer's stream is waited for -----------------------
class _Producer:
    def __init__(self, raw, stream):
        self.__cuda_array_interface__ = {"shape": (N,), "typestr": "<f4",
                                         "data": (raw._a.ptr, False), "version": 3, "stream": stream}
        self.raw = raw


@pytest.mark.parametrize("declared", [True, False])
def test_cai_import_waits_for_producer_stream(declared):
    buf = _dev(np.zeros(N))
    s = H.stream_create(False)
    H.enqueue_fill(s, buf._a.ptr, 5.0, N)             # the producer's write, still queued on s
    r = cuda.from_cuda(_Producer(buf, s if declared else None))
    y = np.maximum(r, 0).to_host()                 # an lrpfast kernel reading it
    if declared:
        np.testing.assert_array_equal(y, 5.0)
    else:
        # negative control: a producer that does not name its stream is read too early
        np.testing.assert_array_equal(y, 0.0)
    m.synchronize()


def test_cai_stream_zero_rejected():
    with pytest.raises(ValueError, match="stream 0 is disallowed"):
        cuda.from_cuda(_Producer(_dev(np.zeros(N)), 0))


# ---- exact FP32 ------------------------------------------------------------------------------
def test_exact_fp32_and_tf32_would_be_caught():
    assert m.blas_math_mode() == 2                 # CUBLAS_PEDANTIC_MATH on lrpfast's handles
    assert all(cc.exact_fp32_products(m).values())
    H.set_force_tf32(True)                         # what TF32 tensor cores would do
    try:
        caught = cc.exact_fp32_products(m)
    finally:
        H.set_force_tf32(False)
    assert not any(caught.values()), caught


# ---- errors name the kernel or cuBLAS call and the status; the debug switch ---------------------
def test_launch_error_names_kernel():
    x = _dev(np.ones(8))
    H.fail_next_launch(719, False)                 # cudaErrorLaunchFailure at launch time
    with pytest.raises(RuntimeError, match=r"kernel relu_forward: cudaErrorLaunchFailure"):
        m.relu_forward(x._a, 0.0)
    np.testing.assert_array_equal(np.maximum(x, 0).to_host(), 1.0)   # usable afterwards


def test_async_fault_reported_at_sync_with_hint_and_under_kernel_with_switch():
    x = _dev(np.ones(8))
    H.fail_next_launch(700, True)                  # an illegal address, found asynchronously
    m.relu_forward(x._a, 0.0)
    with pytest.raises(RuntimeError, match=r"cudaDeviceSynchronize.*LRPFAST_CUDA_SYNC=1.*"
                                           r"cudaErrorIllegalAddress"):
        m.synchronize()
    m.set_sync_launches(True)
    try:
        H.fail_next_launch(700, True)
        with pytest.raises(RuntimeError, match=r"kernel relu_forward \(LRPFAST_CUDA_SYNC=1\): "
                                               r"cudaErrorIllegalAddress"):
            m.relu_forward(x._a, 0.0)
    finally:
        m.set_sync_launches(False)


def test_cublas_error_names_call_and_status():
    a = _dev(np.ones((3, 4)))
    H.fail_next_gemm(13)                           # CUBLAS_STATUS_EXECUTION_FAILED
    with pytest.raises(RuntimeError, match=r"cuBLAS error in cublasSgemm \(m=5, n=3, k=4\): "
                                           r"CUBLAS_STATUS_EXECUTION_FAILED"):
        m.linear_forward(a._a, _dev(np.ones((5, 4)))._a, None)
    assert m.blas_name().startswith("cuBLAS 13.")


def test_out_of_memory_is_a_clear_error_and_recoverable():
    H.set_memory_limit(1 << 26)
    try:
        with pytest.raises(RuntimeError, match=r"cudaMalloc of \d+ bytes on device 0: "
                                               r"cudaErrorMemoryAllocation.*out of memory"):
            m.empty([1 << 25])                     # 128 MB > 64 MB
    finally:
        H.set_memory_limit(1 << 40)
    np.testing.assert_array_equal(np.maximum(_dev(np.ones(8)), 0).to_host(), 1.0)


# ---- devices ------------------------------------------------------------------------------------
def test_arrays_know_their_device():
    a0, a1 = _dev(np.ones(6)), _dev(np.ones(6), device=1)
    assert (a0.device, a1.device) == (0, 1)
    assert H.device_of(a1._a.ptr) == 1 and a1.__dlpack_device__() == (2, 1)
    assert cuda.from_dlpack(a1.__dlpack__()).device == 1
    assert (a1 * 2).device == 1 and np.zeros_like(a1).device == 1 and (a1 * np.ones(6)).device == 1
    with pytest.raises(ValueError, match="different GPUs: a is on cuda:0 but b is on cuda:1"):
        a0 + a1
    with pytest.raises(ValueError, match="cuda:7.*does not exist"):
        cuda.to_device(np.ones(3), device="cuda:7")
    assert cuda.to_device(a0, device=1).device == 1          # copied across


def test_net_on_second_device():
    rng = seeded_rng("cuda-host", "device1")
    tn = cc.vgg_like(2, rng)
    x = nets.random_input((2, 3, 12, 12), rng)
    cpu = lrpfast.Net.from_text(tn.text, tn.weights)
    dev = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda:1")
    before = H.device_bytes(0)
    want = cpu.relevance(x, -1, "epsilon")
    assert cc.nmse(dev.relevance(x, -1, "epsilon"), want) <= cc.NMSE_TOL
    got = dev.relevance(cuda.to_device(x, device=1), -1, "epsilon")
    assert isinstance(got, cuda.DeviceArray) and got.device == 1
    assert cc.nmse(got, want) <= cc.NMSE_TOL
    assert H.device_bytes(0) == before                        # nothing allocated on device 0
    with pytest.raises(ValueError, match="is on cuda:0 but the net runs on cuda:1"):
        dev.relevance(cuda.to_device(x, device=0), -1, "epsilon")
    with pytest.raises(ValueError, match="'cuda:2' does not exist"):
        lrpfast.Net.from_text(tn.text, tn.weights, device="cuda:2")


# ---- threads ------------------------------------------------------------------------------------
def test_threads_and_devices_concurrently():
    rng = seeded_rng("cuda-host", "threads")
    tn = cc.vgg_like(2, rng)
    x = nets.random_input((2, 3, 12, 12), rng)
    want = lrpfast.Net.from_text(tn.text, tn.weights).relevance(x, -1, "epsilon")
    shared = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda:0")
    nets_ = [shared, shared, lrpfast.Net.from_text(tn.text, tn.weights, device="cuda:1"),
             lrpfast.Net.from_text(tn.text, tn.weights, device="cuda:0")]
    res: dict = {}

    def work(k):
        try:
            res[k] = [nets_[k].relevance(x, -1, "epsilon") for _ in range(3)]
        except Exception as e:  # noqa: BLE001 - reported below
            res[k] = e

    ts = [threading.Thread(target=work, args=(k,)) for k in range(len(nets_))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for k, r in res.items():
        assert not isinstance(r, Exception), (k, r)
        for got in r:
            assert cc.nmse(got, want) <= cc.NMSE_TOL
            np.testing.assert_array_equal(got, r[0])          # bitwise repeatable


def test_sum_deterministic_and_exact_enough():
    x = seeded_rng("cuda-host", "sum").standard_normal(300_001).astype(np.float32)
    d = _dev(x)
    sums = {m.sum(d._a) for _ in range(3)}
    assert len(sums) == 1
    # float64 partial sums of float32 values: far below float32 resolution of the total
    assert abs(sums.pop() - float(x.astype(np.float64).sum())) < 1e-9 * np.abs(x).sum()
