"""The determinism contract, on every SIMD path this CPU has (AVX-512, AVX2 + FMA, generic C++).

Deterministic mode (lrpfast.set_deterministic): an image's relevance and logits are the same
bits alone, in any batch, on any number of threads and while other Python threads use the same
Net. Default mode: the same bits under concurrency; batch and thread count may change results at
float32 rounding level only (DEFAULT_TOL). Also: threads settings are capped and the pool shrinks,
the toolbox API keeps its state per thread, and a Net owns its weights.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import lrpfast
import numpy as np
import pytest
from conftest import he_weights, seeded_rng
from lrpfast._loader import _core

# A net whose products are large enough to be sliced over threads (>= 2^21 multiply-adds), with
# a small-plane convolution (batched per gemm by default), a Winograd-eligible one (>= 16
# channels, 3x3 stride 1) and fully connected layers.
MID = """
name: "mid"
input: "data" input_shape { dim: 1 dim: 3 dim: 40 dim: 40 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 24 kernel_size: 5 pad: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 32 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
        convolution_param { num_output: 40 kernel_size: 3 pad: 1 } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "fc1" type: "InnerProduct" bottom: "conv3" top: "fc1"
        inner_product_param { num_output: 64 } }
layer { name: "relu4" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
        inner_product_param { num_output: 10 } }
"""
RULES = ["epsilon", "cmp_alpha2_flat"]
# Default mode, an image alone vs in a batch / on other thread counts: the products' float32
# sums may round differently; relevance stays within this fraction of max|R| (measured <= 1e-5
# on these nets with He weights and bias; the epsilon rule can amplify rounding near z = 0).
DEFAULT_TOL = 1e-3


@pytest.fixture(scope="module")
def mid():
    skeleton = lrpfast.Net.from_text(MID)
    w = he_weights(skeleton, seeded_rng("mid"), bias_std=0.1)
    x = seeded_rng("mid", "x").normal(0, 1, (5, 3, 40, 40)).astype(np.float32)
    return lrpfast.Net.from_text(MID, w), w, x


def _threads(n):
    before = lrpfast.get_num_threads()
    _core.set_num_threads(n)   # capped at the CPUs silently (the public setter warns)
    return before


def _concurrently(fn, jobs):
    """fn(job) for each job, each on its own Python thread, all started together."""
    out = [None] * len(jobs)
    errors = []
    start = threading.Barrier(len(jobs))

    def run(i):
        try:
            start.wait()
            out[i] = fn(jobs[i])
        except BaseException as e:   # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return out


@pytest.mark.parametrize("rules", RULES)
def test_deterministic_mode_batch_threads_and_concurrency(mid, rules, simd, deterministic):
    net, _, x = mid
    batch = net.relevance(x, [3, -1, 5, 0, -2], rules=rules)
    logits = net.forward(x)
    assert np.isfinite(batch).all() and np.abs(batch).max() > 0
    for i, c in [(0, 3), (1, -1), (4, -2)]:
        np.testing.assert_array_equal(net.relevance(x[i:i + 1], c, rules=rules)[0], batch[i])
        np.testing.assert_array_equal(net.forward(x[i:i + 1])[0], logits[i])
    np.testing.assert_array_equal(net.relevance(x[1:4], [-1, 5, 0], rules=rules), batch[1:4])
    before = _threads(1)
    try:
        np.testing.assert_array_equal(net.relevance(x, [3, -1, 5, 0, -2], rules=rules), batch)
    finally:
        _core.set_num_threads(before)
    multi = net.relevance_multi(x[:2], [3, 7], rules=rules)
    for k, c in enumerate([3, 7]):
        np.testing.assert_array_equal(multi[k], net.relevance(x[:2], c, rules=rules))
    # three Python threads on one Net, each its own images, while the pool is contended
    jobs = [(0, 3), (1, 5), (2, 2)]
    got = _concurrently(lambda j: net.relevance(x[j[0]:j[0] + j[1]], 3, rules=rules), jobs)
    for (a, n), r in zip(jobs, got):
        np.testing.assert_array_equal(r, net.relevance(x[a:a + n], 3, rules=rules))


@pytest.mark.parametrize("rules", RULES)
def test_default_mode_concurrent_calls_give_the_serial_bits(mid, rules):
    """Default mode: a call made while another Python thread holds the pool runs the same
    slices on its own thread, so results equal the serial ones bit for bit."""
    net, _, x = mid
    assert not lrpfast.get_deterministic()
    serial = [net.relevance(x, -1, rules=rules), net.forward(x),
              net.relevance_multi(x[:3], [1, 2], rules=rules)]
    calls = [lambda: net.relevance(x, -1, rules=rules), lambda: net.forward(x),
             lambda: net.relevance_multi(x[:3], [1, 2], rules=rules)] * 2
    got = _concurrently(lambda f: f(), calls)
    for i, r in enumerate(got):
        np.testing.assert_array_equal(r, serial[i % 3])


@pytest.mark.parametrize("rules", RULES)
def test_default_mode_agrees_across_batches_and_threads(mid, rules, simd):
    net, _, x = mid
    batch = net.relevance(x, 4, rules=rules)
    scale = float(np.abs(batch).max())
    for i in (0, 3):
        alone = net.relevance(x[i:i + 1], 4, rules=rules)[0]
        assert np.abs(alone - batch[i]).max() <= DEFAULT_TOL * scale
    before = _threads(1)
    try:
        assert np.abs(net.relevance(x, 4, rules=rules) - batch).max() <= DEFAULT_TOL * scale
    finally:
        _core.set_num_threads(before)


def test_deterministic_switch_and_environment():
    before = lrpfast.get_deterministic()
    try:
        lrpfast.set_deterministic(True)
        assert lrpfast.get_deterministic() and lrpfast.info()["deterministic"]
        assert lrpfast.info()["linear_kernels"].startswith("streamed")
        lrpfast.set_deterministic(False)
        assert not lrpfast.get_deterministic()
    finally:
        lrpfast.set_deterministic(before)
    code = "import lrpfast; i = lrpfast.info(); print(i['deterministic'], i['simd_kernels'])"
    for value, expect in (("1", "True"), ("0", "False")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env={**os.environ, "LRPFAST_DETERMINISTIC": value,
                                              "LRPFAST_SIMD": "generic"})
        assert out.stdout.split() == [expect, "generic"]


def test_thread_settings_are_capped_and_the_pool_shrinks(mid):
    net, _, x = mid
    cpus = lrpfast.info()["cpus"]
    before = lrpfast.get_num_threads()
    try:
        lrpfast.set_num_threads(cpus)
        net.relevance(x, -1)                     # the pool grows to the setting
        assert _core.pool_threads() == cpus
        with pytest.warns(RuntimeWarning, match="using"):
            assert lrpfast.set_num_threads(4096) == cpus
        assert lrpfast.get_num_threads() == cpus and _core.pool_threads() == cpus
        lrpfast.set_num_threads(1)               # the pool's other threads end
        assert _core.pool_threads() == 1
        lrpfast.set_num_threads(cpus)
        net.relevance(x[:1], -1)
        assert _core.pool_threads() == cpus      # and come back when asked for
    finally:
        lrpfast.set_num_threads(before)


@pytest.mark.parametrize("var", ["LRPFAST_NUM_THREADS", "OMP_NUM_THREADS"])
def test_thread_environment_is_capped_with_a_warning(var):
    env = {k: v for k, v in os.environ.items()
           if k not in ("LRPFAST_NUM_THREADS", "OMP_NUM_THREADS")}
    env[var] = "4096"
    code = "import lrpfast; print(lrpfast.get_num_threads(), lrpfast.info()['cpus'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    threads, cpus = out.stdout.split()
    assert threads == cpus
    assert f"${var}=4096" in out.stderr and "RuntimeWarning" in out.stderr


def test_toolbox_state_is_per_thread(mid):
    """forward(x) then backward_relevance(...): each thread explains its own last input."""
    net, _, x = mid
    opts = lrpfast.RelPropOpts(relpropformulatype=0)
    expect = {}
    for i in range(4):
        net.forward(x[i:i + 1])
        expect[i] = net.backward_relevance(2, opts).R

    def job(i):
        out = []
        for _ in range(5):
            net.forward(x[i:i + 1])
            out.append(net.backward_relevance(2, opts).R)
        return out
    for i, results in enumerate(_concurrently(job, [0, 1, 2, 3])):
        for r in results:   # concurrency does not change bits (any mode)
            np.testing.assert_array_equal(r, expect[i])


def test_net_owns_its_weights(mid):
    """The Net copies the arrays it is given and keeps them read-only: changing the caller's
    arrays changes neither the logits nor any cached derivative (W+, W-: alpha-beta)."""
    _, w, x = mid
    mine = {k: [b.copy() for b in v] for k, v in w.items()}
    net = lrpfast.Net.from_text(MID, mine)
    logits = net.forward(x[:2])
    ab = net.relevance(x[:2], -1, rules="alpha2beta1")
    for blobs in mine.values():
        for b in blobs:
            b *= -3.0
    np.testing.assert_array_equal(net.forward(x[:2]), logits)
    np.testing.assert_array_equal(net.relevance(x[:2], -1, rules="alpha2beta1"), ab)
    blob = net.layer("conv1").blobs[0]
    assert not blob.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        blob[0] = 1.0
