"""The fully connected products (linear_forward, linear_backward_data) under the algorithms:
lrpfast's streamed kernels ('streamed'; 'auto' where the CPU has AVX-512 or in deterministic
mode) on every SIMD path this CPU has (AVX-512, AVX2 + FMA, generic C++), and BLAS ('blas').

References are float64 numpy products (x @ w.T, dy @ w), independent of the kernels' tiling.
Shapes cross every boundary of the kernels (src/cpp/kernels/streamed.cpp): rows of A around 4
and 8 (the small-batch kernels of AVX2 and AVX-512: nt with the outputs in the lanes), 16 (the nt tile's lanes), 128 (nt -> nn on transposed blocks) and 256 (nn's row blocks); columns
around 16 (nt's output tile) and 64 (nn's strips); K around 16, 64 (nn's row tiles) and 256 (nt's
column tiles), and for 1 to 4 rows around 8192 (the nn sweep's column blocks, on one thread or
split over two). The streamed kernels compute every element as one chain of FMAs over k in order,
so a row's result is bit-identical alone, in any batch and on any number of threads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import lrpfast
import numpy as np
import pytest
from lrpfast._loader import _core

# |float32 result - float64 reference| <= ERR_FACTOR * K * 2^-24 * (|x| @ |w|^T) per element: the
# classical bound for a sum of K products rounded in float32 (gamma_K ~ K u, u = 2^-24), with a
# factor 2 for the FMA chain's product and sum roundings counted separately.
ERR_FACTOR = 2.0
U32 = 2.0 ** -24

NATIVE = _core.linear_streamed_native()


def rng_for(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


@pytest.fixture(params=["auto", "blas", "streamed"])
def algorithm(request):
    lrpfast.set_linear_algorithm(request.param)
    yield request.param
    lrpfast.set_linear_algorithm("auto")


@pytest.fixture
def streamed(simd):
    """lrpfast's own kernels on one SIMD path (the conftest's simd fixture)."""
    lrpfast.set_linear_algorithm("streamed")
    yield simd
    lrpfast.set_linear_algorithm("auto")


def check_bound(actual, a, b):
    """actual ~ a @ b (float64 reference) within the rounding bound of a K-term float32 sum."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = a64 @ b64
    bound = ERR_FACTOR * a.shape[1] * U32 * (np.abs(a64) @ np.abs(b64)) + 1e-30
    err = np.abs(actual.astype(np.float64) - ref)
    assert actual.shape == ref.shape
    worst = float((err / bound).max())
    assert worst <= 1.0, f"error {worst:.2f}x the float32 bound"


# (M rows, K inputs, O outputs)
SHAPES = [
    (1, 1, 1), (1, 3, 7), (2, 17, 5), (3, 300, 65), (4, 16, 16), (4, 33, 19), (5, 64, 64), (15, 255, 16), (16, 256, 17),
    (17, 257, 63), (31, 520, 130), (33, 16, 1000), (64, 1100, 70), (65, 70, 129), (100, 65, 33),
    (128, 77, 20), (129, 300, 64), (256, 40, 200), (257, 129, 65), (300, 600, 20),
    (1, 8200, 9), (2, 16400, 5), (4, 8193, 17), (6, 8200, 9), (7, 1030, 70), (8, 300, 33),
    (9, 257, 17),
]


@pytest.mark.parametrize("m,k,o", SHAPES)
def test_forward_and_transpose_against_float64(algorithm, m, k, o):
    rng = rng_for("fc", m, k, o)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((o, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    check_bound(_core.linear_forward(x, w, None), x, w.T)
    y = _core.linear_forward(x, w, b)
    np.testing.assert_array_equal(y, _core.linear_forward(x, w, None) + b)  # bias added after
    dy = rng.standard_normal((m, o)).astype(np.float32)
    check_bound(_core.linear_backward_data(dy, w), dy, w)


def test_algorithms_agree_and_switch():
    rng = rng_for("switch")
    x = rng.standard_normal((20, 333)).astype(np.float32)
    w = rng.standard_normal((90, 333)).astype(np.float32)
    out = {}
    for a in ("blas", "auto"):
        lrpfast.set_linear_algorithm(a)
        assert lrpfast.get_linear_algorithm() == _core.get_linear_algorithm() == a
        assert lrpfast.info()["linear_algorithm"] == a
        out[a] = _core.linear_forward(x, w, None)
    assert lrpfast.info()["linear_kernels"] == (
        "streamed (avx512)" if NATIVE else "blas; streamed (avx2) for batches of 1 to 4"
        if _core.simd_kernels() == "avx2" else "blas")
    lrpfast.set_linear_algorithm("blas")
    assert lrpfast.info()["linear_kernels"] == "blas"
    lrpfast.set_linear_algorithm("auto")
    scale = np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64)
    assert (np.abs(out["auto"] - out["blas"]) <= 4 * 333 * U32 * scale).all()
    with pytest.raises(ValueError, match="'auto', 'blas' or 'streamed'"):
        lrpfast.set_linear_algorithm("mkl")
    lrpfast.set_linear_algorithm("streamed")   # lrpfast's own kernels run on every CPU
    assert lrpfast.get_linear_algorithm() == "streamed"
    assert lrpfast.info()["linear_kernels"] == f"streamed ({_core.simd_kernels()})"
    lrpfast.set_linear_algorithm("auto")


def test_simd_paths_give_the_same_bits():
    """Every element is one fma chain over k in order on every path: AVX-512, AVX2 + FMA and
    generic C++ give the same bits (shapes across the tiles' edges of each path)."""
    from conftest import simd_paths
    rng = rng_for("paths")
    lrpfast.set_linear_algorithm("streamed")
    before = lrpfast.get_simd()
    try:
        for m, k, o in [(1, 3, 7), (1, 1030, 70), (2, 257, 33), (3, 9, 16), (4, 100, 129),
                        (5, 70, 33), (17, 257, 63), (129, 300, 64), (40, 70, 33),
                        (1, 16400, 9), (4, 8200, 17), (8, 8200, 33), (7, 1030, 17),
                        (9, 100, 129)]:
            x = rng.standard_normal((m, k)).astype(np.float32)
            w = rng.standard_normal((o, k)).astype(np.float32)
            dy = rng.standard_normal((m, o)).astype(np.float32)
            out = {}
            for path in simd_paths():
                lrpfast.set_simd(path)
                out[path] = (_core.linear_forward(x, w, None), _core.linear_backward_data(dy, w))
            for path, (y, dx) in out.items():
                np.testing.assert_array_equal(y, out["native"][0], err_msg=path)
                np.testing.assert_array_equal(dx, out["native"][1], err_msg=path)
        with pytest.raises(ValueError, match="'native', 'avx2' or 'generic'"):
            lrpfast.set_simd("sse2")
    finally:
        lrpfast.set_simd(before)
        lrpfast.set_linear_algorithm("auto")


def test_algorithm_from_environment():
    code = "from lrpfast._loader import _core; print(_core.get_linear_algorithm())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "LRPFAST_LINEAR_ALGO": "blas"}, check=True)
    assert out.stdout.strip() == "blas"


@pytest.mark.parametrize("m,o,k", [(1, 33, 9216), (1, 1, 1), (3, 17, 1000), (5, 16, 16),
                                   (8, 70, 257), (4, 9, 100)])
def test_prefetch_distance_changes_no_bit(m, o, k, streamed):
    """The small-batch forward's software prefetch (AVX-512 and AVX2 kernels; none, the Intel
    default, an odd distance, one vector, the whole row, past the row's end) gives the same
    bits, within the float32 bound of the float64 product, on every SIMD path."""
    rng = rng_for("prefetch", m, o, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((o, k)).astype(np.float32)
    old = _core.get_nt_prefetch()
    try:
        outs = []
        for d in (0, 256, 17, 16, k, k + 1000):
            _core.set_nt_prefetch(d)
            outs.append(_core.linear_forward(x, w, None))
    finally:
        _core.set_nt_prefetch(old)
    for y in outs[1:]:
        np.testing.assert_array_equal(bits(y), bits(outs[0]))
    check_bound(outs[0], x, w.T)


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def test_prefetch_setting_default_environment_and_bad_values():
    """Default 256 on Intel CPUs and 0 on others; $LRPFAST_NT_PREFETCH overrides it (a value
    that is not a count leaves the default); a negative distance is a ValueError."""
    code = "from lrpfast._loader import _core; print(_core.get_nt_prefetch())"

    def run(value):
        env = {k: v for k, v in os.environ.items() if k != "LRPFAST_NT_PREFETCH"}
        if value is not None:
            env["LRPFAST_NT_PREFETCH"] = value
        return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  env=env, check=True).stdout)
    default = run(None)
    vendor = _cpu_vendor()
    if vendor:
        assert default == (256 if vendor == "GenuineIntel" else 0), vendor
    assert run("64") == 64 and run("0") == 0
    assert run("-5") == default and run("lots") == default
    with pytest.raises(ValueError, match="floats must be >= 0"):
        _core.set_nt_prefetch(-1)
    assert lrpfast.info()["nt_prefetch"] == _core.get_nt_prefetch()


@pytest.mark.parametrize("k,o", [(257, 70), (1030, 33), (16500, 9)])
def test_rows_are_bit_identical_alone_and_in_any_batch(k, o, streamed):
    """Row i of a batch of M equals the same row computed alone or in a batch of another size,
    for M across the nt/nn switch (128) and nn's row blocks (256), both products."""
    rng = rng_for("inv", k, o)
    x = rng.standard_normal((300, k)).astype(np.float32)
    w = rng.standard_normal((o, k)).astype(np.float32)
    dy = rng.standard_normal((300, o)).astype(np.float32)
    y_all, dx_all = _core.linear_forward(x, w, None), _core.linear_backward_data(dy, w)
    for lo, hi in [(0, 1), (7, 8), (299, 300), (0, 2), (5, 8), (9, 13), (1, 6), (3, 20),
                   (2, 9), (0, 8), (0, 9), (10, 74), (0, 128), (0, 129), (40, 297)]:
        np.testing.assert_array_equal(_core.linear_forward(x[lo:hi], w, None), y_all[lo:hi])
        np.testing.assert_array_equal(_core.linear_backward_data(dy[lo:hi], w), dx_all[lo:hi])


def bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


@pytest.mark.parametrize("m,o,k", [(1, 9, 3), (1, 1000, 70), (1, 4096, 300), (2, 300, 65),
                                   (3, 70, 8200), (4, 257, 33), (5, 300, 70), (8, 130, 1030),
                                   (10, 520, 130), (130, 300, 64), (257, 70, 20)])
def test_backward_skips_rows_of_zero_signal(m, o, k, streamed):
    """Columns of dy that are zero in every row (a ReLU's switched-off outputs, the other classes
    of a one-class seed; +0 and -0) leave their rows of w unread: NaN there does not reach dx.
    The terms left out add +-0 to chains that start at +0, so including them changes no bit: each
    row equals the same row computed beside rows that are nonzero everywhere (2 and 6 rows: the
    small and the batch kernels), and lies within the float32 bound of the float64 product."""
    rng = rng_for("sparse", m, o, k)
    dy = rng.standard_normal((m, o)).astype(np.float32)
    dead = rng.random(o) < 0.6
    dead[0] = dead[-1] = True
    dy[:, dead] = np.where(rng.random((m, int(dead.sum()))) < 0.5, 0.0, -0.0)
    dy[rng.random((m, o)) < 0.3] = 0.0          # zeros in some rows only: those rows stay live
    w = rng.standard_normal((o, k)).astype(np.float32)
    dx = _core.linear_backward_data(dy, w)
    check_bound(dx, dy, w)
    w_nan = w.copy()
    w_nan[dead] = np.nan
    np.testing.assert_array_equal(bits(_core.linear_backward_data(dy, w_nan)), bits(dx))
    live = rng.standard_normal((5, o)).astype(np.float32) + 4.0   # nonzero in every column
    for i in range(m):
        for batch in (np.vstack([dy[i:i + 1], live[:1]]), np.vstack([dy[i:i + 1], live])):
            np.testing.assert_array_equal(bits(_core.linear_backward_data(batch, w)[0]),
                                          bits(dx[i]), err_msg=f"row {i}, {len(batch)} rows")
    tiny = np.zeros((m, o), np.float32)   # a sum that underflows to -0 becomes +0, alone or not
    tiny[:, 1] = -1e-30
    w_tiny = np.abs(w) * 1e-30
    alone = _core.linear_backward_data(tiny, w_tiny)
    np.testing.assert_array_equal(bits(alone), 0)
    np.testing.assert_array_equal(bits(_core.linear_backward_data(np.vstack([tiny, live]),
                                                                  w_tiny)[:m]), 0)
    zero = np.zeros((m, o), np.float32)
    zero[:, ::2] = -0.0
    np.testing.assert_array_equal(bits(_core.linear_backward_data(zero, w_nan)), 0)  # all +0


@pytest.mark.parametrize("m", [1, 3, 6])
def test_backward_of_a_one_class_seed_reads_one_row(m, streamed):
    """A one-class seed (every row of dy zero but one column): dx is that row of w times the
    seed's value, exactly (one FMA from +0), and NaN in every other row of w does not reach it."""
    rng = rng_for("onehot", m)
    w = rng.standard_normal((1000, 70)).astype(np.float32)
    w[np.arange(1000) != 417] = np.nan
    dy = np.zeros((m, 1000), np.float32)
    dy[:, 417] = rng.standard_normal(m).astype(np.float32)
    dx = _core.linear_backward_data(dy, w)
    np.testing.assert_array_equal(bits(dx), bits(dy[:, 417:418] * w[417] + np.float32(0)))


def test_bit_identical_on_one_and_two_threads(streamed):
    rng = rng_for("threads")
    x = rng.standard_normal((40, 2000)).astype(np.float32)
    w = rng.standard_normal((700, 2000)).astype(np.float32)
    dy = rng.standard_normal((40, 700)).astype(np.float32)
    before = lrpfast.get_num_threads()
    try:
        out = []
        for t in (1, 2):
            lrpfast.set_num_threads(t)
            out.append((_core.linear_forward(x, w, None), _core.linear_backward_data(dy, w),
                        _core.linear_forward(x[:1], w, None), _core.linear_forward(x[:3], w, None),
                        _core.linear_forward(x[:7], w, None),
                        _core.linear_backward_data(dy[:8], w)))
    finally:
        lrpfast.set_num_threads(before)
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_strided_and_non_float32_inputs_are_converted(algorithm):
    """Non-contiguous and float64 arguments give the product of their float32 values."""
    rng = rng_for("layout")
    x = rng.standard_normal((9, 2 * 130))[:, ::2]
    w = np.asfortranarray(rng.standard_normal((40, 130)).astype(np.float32))
    y = _core.linear_forward(x, w, None)
    np.testing.assert_array_equal(
        y, _core.linear_forward(np.ascontiguousarray(x, np.float32), np.ascontiguousarray(w), None))


@pytest.mark.parametrize("rules", ["epsilon", "cmp_alpha2_flat"])
def test_net_relevance_alone_equals_in_batch_and_multi(rules, deterministic):
    """Deterministic mode, through a net with fully connected layers: an image's heatmap is the
    same bits alone and in a batch of 140 (its forward products cross the nt/nn switch), and among 70 class selections
    of relevance_multi (the transposed products run on 70 x 2 rows)."""
    from test_net_api import SMALL, build, images
    net, _ = build(SMALL, "streamed")
    x = images("streamed", n=140)
    batch = net.relevance(x, 2, rules=rules)
    for i in (0, 33, 139):
        np.testing.assert_array_equal(net.relevance(x[i:i + 1], 2, rules=rules)[0], batch[i])
    sets = [c % 7 for c in range(70)]
    multi = net.relevance_multi(x[:2], sets, rules=rules)
    for j in (0, 5, 69):
        np.testing.assert_array_equal(multi[j], net.relevance(x[:2], sets[j], rules=rules))


# ============================================================================ sign variants, blocked
def test_weight_signs_kernel():
    w = rng_for("signs").normal(0, 1, (37, 53)).astype(np.float32)
    w[0, :5] = [0.0, -0.0, 1e-38, -1e-38, 3.0]
    np.testing.assert_array_equal(_core.weight_signs(w, "pos"), np.maximum(w, 0))
    np.testing.assert_array_equal(_core.weight_signs(w, "neg"), np.minimum(w, 0))
    np.testing.assert_array_equal(_core.weight_signs(w, "pm"),
                                  np.concatenate([np.maximum(w, 0), np.minimum(w, 0)]))
    with pytest.raises(ValueError, match="kind"):
        _core.weight_signs(w, "sq")


@pytest.mark.parametrize("o,k", [(70, 33), (9, 1000)])
def test_large_layers_derive_sign_variants_per_block(monkeypatch, o, k):
    """Above SIGN_VARIANTS_KEPT_UP_TO an InnerProduct keeps no W+ / W- / [W+; W-]: the products
    run over blocks of output rows (several here, as the limits are lowered) and match the
    float64 products, and (lrpfast's streamed kernels) a row's result does not depend on its
    batch."""
    from lrpfast import ops
    monkeypatch.setattr(ops, "SIGN_VARIANTS_KEPT_UP_TO", 0)
    monkeypatch.setattr(ops, "SIGN_BLOCK_BYTES", 8 * k * 4)      # 8 rows per block
    rng = rng_for("blocked", o, k)
    w = rng.normal(0, 1, (o, k)).astype(np.float32)
    b = rng.normal(0, 1, o).astype(np.float32)
    op = ops.InnerProductOp(w, b, (k,))
    assert len(op._row_blocks(1)) > 1
    x = np.abs(rng.normal(0, 1, (5, k))).astype(np.float32)
    s = rng.normal(0, 1, (5, 2 * o)).astype(np.float32)
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    check_bound(op.fwd(x, "pos", None), x, wp.T)
    check_bound(op.fwd(x, "neg", None), x, wn.T)
    check_bound(op.fwd(x, "pos", "pos"), np.hstack([x, np.ones((5, 1), np.float32)]),
                np.vstack([wp.T, np.maximum(b, 0)[None]]))               # with the bias b+
    check_bound(op.bwd(s[:, :o], "pos"), s[:, :o], wp)
    check_bound(op.bwd(s[:, :o], "neg"), s[:, :o], wn)
    check_bound(op.bwd(s, "pm"), s, np.concatenate([wp, wn]))
    assert set(op._w_cache) == {"w"}                              # nothing derived was kept
    lrpfast.set_linear_algorithm("streamed")   # rows independent of the batch (BLAS: not)
    try:
        for kind in ("pos", "neg"):
            np.testing.assert_array_equal(op.fwd(x[2:3], kind), op.fwd(x, kind)[2:3])
        np.testing.assert_array_equal(op.bwd(s[2:3], "pm"), op.bwd(s, "pm")[2:3])
    finally:
        lrpfast.set_linear_algorithm("auto")


def test_auto_takes_the_avx2_kernels_for_batches_of_one_to_four():
    """Where the CPU runs AVX2 (natively or forced on AVX-512), 'auto' computes batches of 1 to 4
    with lrpfast's kernels (their bits) and larger batches with OpenBLAS (its bits), outside
    deterministic mode (which takes lrpfast's kernels for every batch)."""
    before, det = lrpfast.get_simd(), lrpfast.get_deterministic()
    try:
        lrpfast.set_deterministic(False)
        lrpfast.set_simd("avx2")
        if _core.simd_kernels() != "avx2":
            pytest.skip("this CPU has no AVX2 + FMA")
        rng = rng_for("auto-avx2")
        x = rng.standard_normal((5, 1030)).astype(np.float32)
        w = rng.standard_normal((70, 1030)).astype(np.float32)
        dy = rng.standard_normal((5, 70)).astype(np.float32)

        def run(algo, m):
            lrpfast.set_linear_algorithm(algo)
            return _core.linear_forward(x[:m], w, None), _core.linear_backward_data(dy[:m], w)
        for m in (1, 4, 5):
            auto, own, blas = run("auto", m), run("streamed", m), run("blas", m)
            expected = own if m <= 4 else blas
            for a, e in zip(auto, expected):
                np.testing.assert_array_equal(a, e, err_msg=f"{m} rows")
        # the check above can tell the two apart: their bits differ on these products
        assert any(not np.array_equal(a, b) for a, b in zip(run("streamed", 1), run("blas", 1)))
        lrpfast.set_linear_algorithm("auto")
        assert lrpfast.info()["linear_kernels"] == "blas; streamed (avx2) for batches of 1 to 4"
    finally:
        lrpfast.set_simd(before)
        lrpfast.set_deterministic(det)
        lrpfast.set_linear_algorithm("auto")
