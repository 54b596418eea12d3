"""CPU kernels of lrpfast._core against independent float64 numpy references.

The references below are written from the layer definitions (Caffe semantics), not from the C++
code: convolution sums shifted slices of the zero-padded input tap by tap (no im2col), pooling
loops over output positions, LRN loops over channel / spatial offsets. Adjoint ("transpose")
kernels are also checked with the dot-product test <A x, y> == <x, A^T y>.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
import threading

import numpy as np
import pytest
from conftest import seeded_rng
from lrpfast import _core as core

# float32 kernels vs float64 references: a dot product of K float32 terms carries a rounding
# error of about sqrt(K) * 2^-24 relative to the magnitude of its terms (K <= ~600 here, BLAS
# accumulates in blocks), i.e. ~1e-6; RTOL/ATOL leave an order of magnitude of margin. ATOL is
# scaled by the largest |expected| value (results near 0 from cancelling terms have absolute, not
# relative, error).
RTOL = 1e-4
ATOL = 1e-5
# Dot-product (adjoint) tests compare two float64 sums of float32 results over thousands of
# products: relative error ~ 2^-24 * sqrt(n); 1e-4 is safely above it.
ADJOINT_RTOL = 1e-4


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale)


def pair(v):
    return (v, v) if np.isscalar(v) else tuple(v)


# ---------------------------------------------------------------------------------------------
# float64 references
# ---------------------------------------------------------------------------------------------


def ref_conv_out(n, k, s, p, d):
    return (n + 2 * p - (d * (k - 1) + 1)) // s + 1


def ref_pool_out(n, k, s, p, ceil_mode=True):
    if ceil_mode:
        out = math.ceil((n + 2 * p - k) / s) + 1
        if p > 0 and (out - 1) * s >= n + p:
            out -= 1
        return out
    return (n + 2 * p - k) // s + 1


def ref_conv(x, w, b, stride, pad, dilation, group):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(pad), pair(dilation)
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // group
    ho, wo = ref_conv_out(h, kh, sh, ph, dh), ref_conv_out(wd, kw, sw, pw, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((n, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            tap = xp[
                :,
                :,
                i * dh : i * dh + sh * (ho - 1) + 1 : sh,
                j * dw : j * dw + sw * (wo - 1) + 1 : sw,
            ]
            for g in range(group):
                y[:, g * og : (g + 1) * og] += np.einsum(
                    "nchw,oc->nohw",
                    tap[:, g * cg : (g + 1) * cg],
                    w[g * og : (g + 1) * og, :, i, j],
                )
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def ref_conv_backward_data(dy, w, in_chw, stride, pad, dilation, group):
    dy = np.asarray(dy, np.float64)
    w = np.asarray(w, np.float64)
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(pad), pair(dilation)
    c, h, wd = in_chw
    n, o, ho, wo = dy.shape
    _, cg, kh, kw = w.shape
    og = o // group
    dxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    for i in range(kh):
        for j in range(kw):
            sl = (
                slice(None),
                slice(None),
                slice(i * dh, i * dh + sh * (ho - 1) + 1, sh),
                slice(j * dw, j * dw + sw * (wo - 1) + 1, sw),
            )
            for g in range(group):
                contrib = np.einsum(
                    "nohw,oc->nchw", dy[:, g * og : (g + 1) * og], w[g * og : (g + 1) * og, :, i, j]
                )
                view = dxp[sl]
                view[:, g * cg : (g + 1) * cg] += contrib
    return dxp[:, :, ph : ph + h, pw : pw + wd]


def caffe_window(o, n, k, s, p):
    """(start, end) clipped to the input, and Caffe's AVE divisor along one axis."""
    start = o * s - p
    end = min(start + k, n + p)
    size = end - start
    return max(start, 0), min(end, n), size


def ref_pool(x, method, kernel, stride, pad, ceil_mode=True):
    x = np.asarray(x, np.float64)
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(pad)
    n, c, h, w = x.shape
    ho, wo = ref_pool_out(h, kh, sh, ph, ceil_mode), ref_pool_out(w, kw, sw, pw, ceil_mode)
    y = np.zeros((n, c, ho, wo))
    am = np.zeros((n, c, ho, wo), np.int64)
    for oh in range(ho):
        h0, h1, hs = caffe_window(oh, h, kh, sh, ph)
        for ow in range(wo):
            w0, w1, ws = caffe_window(ow, w, kw, sw, pw)
            win = x[:, :, h0:h1, w0:w1].reshape(n, c, -1)
            if method == "max":
                k = win.argmax(axis=2)  # numpy: first maximum in row-major order
                y[:, :, oh, ow] = win.max(axis=2)
                am[:, :, oh, ow] = (h0 + k // (w1 - w0)) * w + (w0 + k % (w1 - w0))
            else:
                y[:, :, oh, ow] = win.sum(axis=2) / (hs * ws)
    return y, am


def ref_pool_backward(dy, in_chw, method, kernel, stride, pad, argmax=None):
    dy = np.asarray(dy, np.float64)
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(pad)
    c, h, w = in_chw
    n, _, ho, wo = dy.shape
    dx = np.zeros((n, c, h, w))
    if method == "max":
        flat = dx.reshape(n * c, h * w)
        rows = np.repeat(np.arange(n * c), ho * wo)
        np.add.at(flat, (rows, argmax.reshape(-1)), dy.reshape(-1))
        return flat.reshape(n, c, h, w)
    for oh in range(ho):
        h0, h1, hs = caffe_window(oh, h, kh, sh, ph)
        for ow in range(wo):
            w0, w1, ws = caffe_window(ow, w, kw, sw, pw)
            dx[:, :, h0:h1, w0:w1] += dy[:, :, oh : oh + 1, ow : ow + 1] / (hs * ws)
    return dx


def ref_lrn(x, n_size, alpha, beta, k, region):
    x = np.asarray(x, np.float64)
    sq = x * x
    half = (n_size - 1) // 2
    if region == "across":
        c = x.shape[1]
        s = np.zeros_like(x)
        for ch in range(c):
            lo, hi = max(0, ch - half), min(c, ch + half + 1)
            s[:, ch] = sq[:, lo:hi].sum(axis=1)
        scale = k + alpha / n_size * s
    else:
        h, w = x.shape[2:]
        sp = np.pad(sq, ((0, 0), (0, 0), (half, half), (half, half)))
        s = np.zeros_like(x)
        for i in range(n_size):
            for j in range(n_size):
                s += sp[:, :, i : i + h, j : j + w]
        scale = 1.0 + alpha / (n_size * n_size) * s
    return x * scale ** (-beta), scale


# ---------------------------------------------------------------------------------------------
# output sizes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,k,s,p,d",
    [
        (7, 3, 1, 1, 1),
        (224, 11, 4, 0, 1),
        (13, 3, 2, 2, 2),
        (5, 5, 1, 0, 1),
        (9, 2, 3, 1, 3),
        (1, 1, 1, 0, 1),
    ],
)
def test_conv_out_size(n, k, s, p, d):
    assert core.conv_out_size(n, k, s, p, d) == ref_conv_out(n, k, s, p, d)


@pytest.mark.parametrize(
    "n,k,s,p",
    [
        (6, 3, 2, 1),
        (5, 2, 2, 1),
        (55, 3, 2, 0),
        (13, 3, 2, 0),
        (7, 7, 1, 0),
        (112, 2, 2, 0),
        (10, 3, 3, 2),
        (8, 3, 2, 1),
    ],
)
@pytest.mark.parametrize("ceil_mode", [True, False])
def test_pool_out_size(n, k, s, p, ceil_mode):
    assert core.pool_out_size(n, k, s, p, ceil_mode) == ref_pool_out(n, k, s, p, ceil_mode)


def test_pool_out_size_caffe_rule():
    assert core.pool_out_size(55, 3, 2, 0) == 27  # AlexNet pool1
    assert core.pool_out_size(6, 3, 2, 1) == 4  # last window starts inside the padding: kept
    assert core.pool_out_size(5, 2, 2, 1) == 3  # would start in the padding past in+p: dropped
    assert core.pool_out_size(6, 3, 2, 1, ceil_mode=False) == 3


@pytest.mark.parametrize(
    "args",
    [
        (3, 5, 1, 0, 1),
        (3, 3, 1, 0, 2),
        (0, 1, 1, 0, 1),
        (5, 3, 0, 0, 1),
        (5, 3, -1, 0, 1),
        (5, 3, 1, -1, 1),
        (5, 3, 1, 0, 0),
    ],
)
def test_conv_out_size_errors(args):
    with pytest.raises(ValueError):
        core.conv_out_size(*args)


@pytest.mark.parametrize(
    "args", [(2, 3, 1, 0), (5, 3, 1, 3), (5, 3, 0, 0), (5, 0, 1, 0), (5, 1, 3, 0)]
)
def test_pool_out_size_errors(args):
    with pytest.raises(ValueError):
        core.pool_out_size(*args)


# ---------------------------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------------------------


def conv_cases():
    rng = np.random.default_rng(1234)
    cases = [
        # (N, C, H, W, O, kh, kw, stride, pad, dilation, group, bias)
        (1, 3, 11, 9, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1, True),
        (3, 4, 9, 7, 6, 3, 2, (2, 1), (0, 2), (1, 1), 2, False),
        (3, 6, 13, 13, 9, 3, 3, (3, 3), (2, 2), (2, 2), 3, True),
        (1, 8, 7, 7, 8, 1, 1, (1, 1), (0, 0), (1, 1), 1, True),  # pointwise: no im2col
        (3, 6, 5, 9, 6, 1, 1, (1, 1), (0, 0), (1, 1), 3, False),  # pointwise, grouped
        (3, 4, 7, 7, 4, 1, 1, (2, 2), (1, 1), (1, 1), 1, True),  # 1x1 with stride/pad
        (1, 3, 15, 17, 5, 5, 5, (2, 2), (2, 2), (1, 1), 1, False),
        (3, 3, 17, 15, 4, 3, 3, (1, 2), (1, 0), (2, 1), 1, True),
        (1, 64, 61, 67, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1, True),  # several row blocks per image
        (3, 64, 37, 33, 8, 3, 3, (1, 1), (1, 1), (1, 1), 2, True),  # row blocks, batch, groups
        (5, 16, 9, 11, 12, 3, 3, (1, 1), (1, 1), (1, 1), 4, True),  # small planes: batched gemm
        (2, 2, 5, 5, 3, 5, 5, (1, 1), (0, 0), (1, 1), 1, True),  # kernel == input: 1x1 output
        (1, 64, 5, 5, 256, 3, 3, (1, 1), (1, 1), (1, 1), 1, True),  # gemm split by rows (W^T)
        # column strides (im2col/col2im by column phase): CaffeNet's first layer, scaled down;
        # and several row blocks per image with stride, padding and dilation
        (2, 3, 67, 66, 8, 11, 11, (4, 4), (0, 0), (1, 1), 1, True),
        (1, 96, 101, 99, 4, 5, 5, (2, 3), (2, 1), (1, 2), 2, False),
        # pointwise with enough images to spread whole images over the threads (planes of
        # >= 64 outputs), and small planes of several images batched in one product
        (5, 8, 9, 8, 8, 1, 1, (1, 1), (0, 0), (1, 1), 1, True),
        (6, 6, 8, 9, 9, 1, 1, (1, 1), (0, 0), (1, 1), 3, True),
        (5, 8, 7, 7, 8, 1, 1, (1, 1), (0, 0), (1, 1), 1, True),
        (6, 6, 4, 5, 9, 1, 1, (1, 1), (0, 0), (1, 1), 3, True),
    ]
    for _ in range(8):  # random odd shapes
        group = int(rng.choice([1, 2, 3]))
        c = group * int(rng.integers(1, 4))
        o = group * int(rng.integers(1, 4))
        kh, kw = (int(v) for v in rng.choice([1, 2, 3, 5], size=2))
        s = tuple(int(v) for v in rng.integers(1, 4, size=2))
        p = tuple(int(v) for v in rng.integers(0, 3, size=2))
        d = tuple(int(v) for v in rng.integers(1, 3, size=2))
        h = int(rng.integers(1, 8)) * 2 + 1 + d[0] * (kh - 1)
        w = int(rng.integers(1, 8)) * 2 + 1 + d[1] * (kw - 1)
        cases.append(
            (int(rng.choice([1, 3])), c, h, w, o, kh, kw, s, p, d, group, bool(rng.integers(0, 2)))
        )
    return cases


CONV_CASES = conv_cases()


def conv_data(case, seed=0):
    n, c, h, w, o, kh, kw, _, _, _, group, bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c // group, kh, kw)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    return x, wt, b


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(i) for i in range(len(CONV_CASES))])
def test_conv_forward(case):
    x, w, b = conv_data(case)
    _, _, _, _, _, _, _, s, p, d, group, _ = case
    y = core.conv_forward(x, w, b, s, p, d, group)
    assert y.dtype == np.float32 and y.flags.c_contiguous
    assert_close(y, ref_conv(x, w, b, s, p, d, group))


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(i) for i in range(len(CONV_CASES))])
def test_conv_backward_data(case):
    x, w, _ = conv_data(case, seed=1)
    _, _, _, _, _, _, _, s, p, d, group, _ = case
    rng = np.random.default_rng(2)
    y_shape = ref_conv(x[:1], w, None, s, p, d, group).shape
    dy = rng.standard_normal((x.shape[0],) + y_shape[1:]).astype(np.float32)
    dx = core.conv_backward_data(dy, w, x.shape[1:], s, p, d, group)
    assert dx.shape == x.shape and dx.dtype == np.float32
    assert_close(dx, ref_conv_backward_data(dy, w, x.shape[1:], s, p, d, group))
    # the adjoint of the forward's linear part: <conv(x), dy> == <x, conv^T(dy)>
    y = core.conv_forward(x, w, None, s, p, d, group)
    lhs = float(np.dot(y.ravel().astype(np.float64), dy.ravel()))
    rhs = float(np.dot(x.ravel().astype(np.float64), dx.ravel()))
    scale = float(np.abs(y).ravel() @ np.abs(dy).ravel())
    assert abs(lhs - rhs) <= ADJOINT_RTOL * scale


def test_conv_backward_data_accepts_nchw_in_shape():
    x, w, _ = conv_data(CONV_CASES[1])
    dy = core.conv_forward(x, w, None, (2, 1), (0, 2), 1, 2)
    a = core.conv_backward_data(dy, w, x.shape, (2, 1), (0, 2), 1, 2)
    b = core.conv_backward_data(dy, w, (99,) + x.shape[1:], (2, 1), (0, 2), 1, 2)  # N from dy
    np.testing.assert_array_equal(a, b)


def test_conv_int_params_and_conversion():
    """ints for (h, w) pairs; float64 / non-contiguous inputs are converted."""
    rng = np.random.default_rng(3)
    x64 = rng.standard_normal((2, 4, 19, 18))
    x = x64[:, :, :, ::2]  # non-contiguous float64
    w = rng.standard_normal((3, 4, 3, 3))
    y = core.conv_forward(x, w, None, 2, 1, 1, 1)
    assert_close(y, ref_conv(x.astype(np.float32), w.astype(np.float32), None, 2, 1, 1, 1))
    y2 = core.conv_forward(x, w, None, stride=(np.int64(2), 2), pad=[1, 1], dilation=1, group=1)
    np.testing.assert_array_equal(y, y2)


def test_conv_empty_batch():
    y = core.conv_forward(
        np.zeros((0, 3, 8, 8), np.float32), np.ones((2, 3, 3, 3), np.float32), None, 1, 1, 1, 1
    )
    assert y.shape == (0, 2, 8, 8)


# ---------------------------------------------------------------------------------------------
# linear
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,k,o,bias",
    [
        (1, 7, 5, True),
        (3, 33, 17, False),
        (4, 257, 65, True),
        (2, 1, 1, True),
        (1, 300, 1000, True),
        (300, 200, 64, True),  # large enough for gemm to be split across threads (by rows)
        (8, 512, 1024, False),  # (by columns)
    ],
)
def test_linear(n, k, o, bias):
    rng = np.random.default_rng(n * k + o)
    x = rng.standard_normal((n, k)).astype(np.float32)
    w = rng.standard_normal((o, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    y = core.linear_forward(x, w, b)
    expect = x.astype(np.float64) @ w.astype(np.float64).T
    if bias:
        expect += b
    assert_close(y, expect)
    dy = rng.standard_normal((n, o)).astype(np.float32)
    dx = core.linear_backward_data(dy, w)
    assert_close(dx, dy.astype(np.float64) @ w.astype(np.float64))
    lhs = float(np.dot(core.linear_forward(x, w, None).ravel().astype(np.float64), dy.ravel()))
    rhs = float(np.dot(x.ravel().astype(np.float64), dx.ravel()))
    assert abs(lhs - rhs) <= ADJOINT_RTOL * float(np.abs(x).ravel() @ np.abs(dx).ravel() + 1)


# ---------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------

POOL_CASES = [
    # (N, C, H, W, kernel, stride, pad, ceil_mode)
    (1, 2, 6, 6, 3, 2, 1, True),  # last window starts inside the padding
    (3, 3, 6, 7, 3, 2, 1, True),
    (1, 2, 5, 5, 2, 2, 1, True),  # Caffe drops the window that would start past in + pad
    (3, 2, 55, 55, 3, 2, 0, True),  # AlexNet pool1 geometry (ceil, partial last window)
    (1, 3, 13, 11, (3, 2), (2, 3), (1, 0), True),
    (3, 2, 9, 9, 3, 3, 2, True),
    (1, 4, 7, 7, 7, 1, 0, True),  # global pooling
    (3, 2, 5, 3, (5, 3), 1, 0, True),  # global, non-square
    (1, 2, 8, 9, 2, 2, 0, True),
    (3, 2, 6, 6, 3, 2, 1, False),  # floor mode
    (1, 1, 10, 10, 4, 3, 3, False),
    (3, 5, 9, 13, 3, 1, 1, True),  # overlapping stride 1
]


@pytest.mark.parametrize("case", POOL_CASES, ids=[str(i) for i in range(len(POOL_CASES))])
@pytest.mark.parametrize("method", ["max", "ave"])
def test_pool_forward_backward(case, method):
    n, c, h, w, k, s, p, ceil_mode = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    y, am = core.pool_forward(x, method, k, s, p, ceil_mode)
    y_ref, am_ref = ref_pool(x, method, k, s, p, ceil_mode)
    assert_close(y, y_ref)
    if method == "max":
        assert am.dtype == np.int32 and am.shape == y.shape
        np.testing.assert_array_equal(am, am_ref)
        np.testing.assert_array_equal(
            y,
            np.take_along_axis(x.reshape(n, c, -1), am.reshape(n, c, -1), axis=2).reshape(y.shape),
        )
    else:
        assert am.dtype == np.int32 and am.size == 0
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = core.pool_backward(
        dy, (c, h, w), method, k, s, p, am if method == "max" else None, ceil_mode=ceil_mode
    )
    assert dx.shape == x.shape
    assert_close(dx, ref_pool_backward(dy, (c, h, w), method, k, s, p, am_ref))
    # ceil_mode left out: taken from dy's shape
    dx2 = core.pool_backward(dy, x.shape, method, k, s, p, am if method == "max" else None)
    np.testing.assert_array_equal(dx, dx2)
    if method == "ave":  # <A x, dy> == <x, A^T dy>
        lhs = float(np.dot(y.ravel().astype(np.float64), dy.ravel()))
        rhs = float(np.dot(x.ravel().astype(np.float64), dx.ravel()))
        assert abs(lhs - rhs) <= ADJOINT_RTOL * float(np.abs(y).ravel() @ np.abs(dy).ravel())
    else:  # max: sum of dy is moved, not changed, and lands on the winners only
        assert math.isclose(
            float(dx.sum(dtype=np.float64)),
            float(dy.sum(dtype=np.float64)),
            rel_tol=1e-5,
            abs_tol=1e-4,
        )


def test_pool_ave_padding_divisor():
    """H=6, k=3, s=2, p=1: the last window [5, 8) is clipped to [5, 7) for the divisor (padding
    cells count, cells past in + pad do not) and to [5, 6) for the sum."""
    x = np.ones((1, 1, 6, 6), np.float32)
    y, _ = core.pool_forward(x, "ave", 3, 2, 1)
    assert y.shape == (1, 1, 4, 4)
    assert y[0, 0, 0, 0] == pytest.approx(4 / 9)  # window [-1, 2): 2 of 3 rows inside
    assert y[0, 0, 1, 1] == pytest.approx(1.0)
    assert y[0, 0, 3, 3] == pytest.approx(1 / 4)  # [5, 7) x [5, 7): divisor 4, one cell inside
    assert y[0, 0, 0, 3] == pytest.approx(2 / 6)  # rows [-1, 2) (2 inside), cols [5, 7)


def test_pool_max_tie_breaking():
    """Equal values: the FIRST maximum in row-major order wins (Caffe's strict '>')."""
    x = np.zeros((1, 1, 5, 5), np.float32)
    y, am = core.pool_forward(x, "max", 3, 2, 1)
    # windows start at -1, 1, 3 (clipped to 0, 1, 3): the winner is each window's top-left cell
    starts = [0, 1, 3]
    expect = np.array([[r * 5 + c for c in starts] for r in starts])
    np.testing.assert_array_equal(am[0, 0], expect)
    x = np.array([[[[1, 2, 2], [2, 0, 2], [2, 2, 2]]]], np.float32)
    _, am = core.pool_forward(x, "max", 3, 1, 0)
    assert am.ravel().tolist() == [1]  # first 2 in row-major order, not any later one
    x = np.array([[[[-np.inf, -np.inf], [-np.inf, -np.inf]]]], np.float32)
    y, am = core.pool_forward(x, "max", 2, 1, 0)
    assert y.ravel().tolist() == [-np.inf] and am.ravel().tolist() == [0]  # always a valid index


@pytest.mark.parametrize("k,s,p", [(2, 1, 0), (3, 1, 1), (3, 2, 0), (3, 2, 1), (2, 2, 0),
                                   (5, 2, 2), (3, 3, 1), (4, 4, 0), (11, 4, 0)])
def test_pool_max_rows_with_ties(k, s, p):
    """Max pooling over wide rows, whose whole-window columns are computed four at a time, with
    many ties (values from {0, 1, 2}): values and the first-maximum argmax equal the reference
    in every column, edge and interior, for row widths around the 4-wide blocks."""
    rng = np.random.default_rng(k * 100 + s * 10 + p)
    for w in (k + 3 * s, k + 4 * s, k + 5 * s + 1, 31, 56):
        if w + 2 * p < k:
            continue
        x = rng.integers(0, 3, (2, 3, max(9, k), w)).astype(np.float32)
        y, am = core.pool_forward(x, "max", k, s, p, True)
        y_ref, am_ref = ref_pool(x, "max", k, s, p, True)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(am, am_ref)


def test_global_pooling():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 4, 7, 5)).astype(np.float32)
    y, am = core.pool_forward(x, "ave", (7, 5), 1, 0)
    assert_close(y, x.astype(np.float64).mean(axis=(2, 3), keepdims=True))
    y, am = core.pool_forward(x, "max", (7, 5), 1, 0)
    np.testing.assert_array_equal(y[:, :, 0, 0], x.max(axis=(2, 3)))
    np.testing.assert_array_equal(am[:, :, 0, 0], x.reshape(3, 4, -1).argmax(axis=2))


# ---------------------------------------------------------------------------------------------
# LRN
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("region", ["across", "within"])
@pytest.mark.parametrize(
    "n,c,h,w,size,alpha,beta,k",
    [
        (1, 7, 5, 6, 5, 1e-4, 0.75, 1.0),  # AlexNet's parameters
        (3, 4, 7, 3, 3, 0.5, 0.75, 2.0),  # window wider than the channel count at the ends
        (2, 9, 4, 5, 1, 0.3, 0.5, 1.5),
        (1, 3, 9, 8, 7, 2.0, 1.0, 0.5),  # window wider than the image (within)
    ],
)
def test_lrn(region, n, c, h, w, size, alpha, beta, k):
    rng = np.random.default_rng(5)
    x = (3 * rng.standard_normal((n, c, h, w))).astype(np.float32)
    y, scale = core.lrn_forward(x, size, alpha, beta, k, region)
    y_ref, scale_ref = ref_lrn(x, size, alpha, beta, k, region)
    assert_close(scale, scale_ref)
    assert_close(y, y_ref)


def test_lrn_within_ignores_k():
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    a = core.lrn_forward(x, 3, 0.1, 0.75, 1.0, "within")
    b = core.lrn_forward(x, 3, 0.1, 0.75, 5.0, "within")
    np.testing.assert_array_equal(a[0], b[0])


# ---------------------------------------------------------------------------------------------
# stabilized divide
# ---------------------------------------------------------------------------------------------


def test_stabilized_divide():
    r = np.array([1.0, 2.0, -3.0, 4.0, 5.0, 6.0, 0.0], np.float32)
    z = np.array([2.0, -4.0, 0.0, -0.0, 1e-8, -1e-8, 0.0], np.float32)
    eps = 0.5
    out = core.stabilized_divide(r, z, eps)
    sign = np.where(z >= 0, 1.0, -1.0)  # sign(0) = +1, -0.0 included
    expect = r.astype(np.float64) / (z + eps * sign)
    assert_close(out, expect)
    assert out[3] == pytest.approx(8.0)  # -0.0 counts as positive: 4 / (0 + 0.5)


def test_stabilized_divide_zero_denominator():
    r = np.array([[1.0, -2.0], [3.0, 0.0]], np.float32)
    z = np.array([[0.0, 0.0], [2.0, 0.0]], np.float32)
    out = core.stabilized_divide(r, z, 0.0)
    np.testing.assert_array_equal(out, [[0.0, 0.0], [1.5, 0.0]])
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = core.stabilized_divide(r, z, 0.0, zero_to_zero=False)
    assert raw[0, 0] == np.inf and raw[0, 1] == -np.inf and raw[1, 0] == 1.5 and np.isnan(raw[1, 1])
    # eps > 0: no zero denominator, z = 0 takes +eps
    np.testing.assert_allclose(core.stabilized_divide(r, z, 1e-6)[0], [1e6, -2e6], rtol=1e-6)


def test_stabilized_divide_large_and_shapes():
    rng = np.random.default_rng(9)
    r = rng.standard_normal((3, 5, 64, 33)).astype(np.float32)  # large enough to run threaded
    z = rng.standard_normal((3, 5, 64, 33)).astype(np.float32)
    z[0, 0, 0, :5] = 0
    out = core.stabilized_divide(r, z, 1e-3)
    assert_close(out, r / (z + 1e-3 * np.where(z >= 0, 1.0, -1.0)), rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------------
# threads, GIL, fork
# ---------------------------------------------------------------------------------------------


def test_threads_setting_and_results():
    old = core.get_num_threads()
    x, w, b = conv_data(CONV_CASES[8])
    try:
        core.set_num_threads(1)
        assert core.get_num_threads() == 1
        y1 = core.conv_forward(x, w, b, 1, 1, 1, 1)
        core.set_num_threads(3)   # capped at the CPUs this process may run on
        assert core.get_num_threads() == min(3, core.available_cpus())
        y3 = core.conv_forward(x, w, b, 1, 1, 1, 1)
    finally:
        core.set_num_threads(old)
    assert_close(y3, y1.astype(np.float64))
    with pytest.raises(ValueError):
        core.set_num_threads(0)


def test_concurrent_python_threads():
    """The GIL is released; concurrent callers share (or bypass) the pool and stay correct."""
    x, w, b = conv_data(CONV_CASES[9])
    expect = core.conv_forward(x, w, b, 1, 1, 1, 2)
    results = [None] * 6

    def work(i):
        results[i] = core.conv_forward(x, w, b, 1, 1, 1, 2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert_close(r, expect.astype(np.float64))


def _child_conv(q):
    x, w, b = conv_data(CONV_CASES[8])
    q.put(float(core.conv_forward(x, w, b, 1, 1, 1, 1).sum(dtype=np.float64)))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # Python >= 3.12, threads alive
def test_fork_after_use():
    """A forked child must not wait for the parent's (nonexistent) pool threads."""
    x, w, b = conv_data(CONV_CASES[8])
    expect = float(core.conv_forward(x, w, b, 1, 1, 1, 1).sum(dtype=np.float64))
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_child_conv, args=(q,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    assert q.get(timeout=5) == pytest.approx(expect, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# errors: ValueError with a message, never a crash
# ---------------------------------------------------------------------------------------------

X = np.zeros((2, 4, 8, 8), np.float32)
W = np.zeros((6, 4, 3, 3), np.float32)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: core.conv_forward(X[0], W, None, 1, 1, 1, 1), "x must be 4-D"),
        (lambda: core.conv_forward(X, W[0], None, 1, 1, 1, 1), "w must be 4-D"),
        (lambda: core.conv_forward(None, W, None, 1, 1, 1, 1), "x is required"),
        (lambda: core.conv_forward(X, None, None, 1, 1, 1, 1), "w is required"),
        (
            lambda: core.conv_forward(X, np.zeros((6, 3, 3, 3), np.float32), None, 1, 1, 1, 1),
            "input channels",
        ),
        (lambda: core.conv_forward(X, W, None, 1, 1, 1, 2), "input channels per group"),
        (
            lambda: core.conv_forward(X, np.zeros((6, 1, 3, 3), np.float32), None, 1, 1, 1, 3),
            "not divisible by group",
        ),
        (
            lambda: core.conv_forward(X, np.zeros((5, 2, 3, 3), np.float32), None, 1, 1, 1, 2),
            "output channels 5 are not divisible",
        ),
        (
            lambda: core.conv_forward(X, np.zeros((6, 4, 11, 3), np.float32), None, 1, 1, 1, 1),
            "larger than the padded input",
        ),
        (lambda: core.conv_forward(X, W, None, -1, 1, 1, 1), "stride"),
        (lambda: core.conv_forward(X, W, None, (1, 0), 1, 1, 1), "stride"),
        (lambda: core.conv_forward(X, W, None, 1, -1, 1, 1), "pad"),
        (lambda: core.conv_forward(X, W, None, 1, 1, 0, 1), "dilation"),
        (lambda: core.conv_forward(X, W, None, 1, 1, 1, 0), "group"),
        (lambda: core.conv_forward(X, W, None, (1, 2, 3), 1, 1, 1), "pair"),
        (lambda: core.conv_forward(X, W, None, 1.5, 1, 1, 1), "integer"),
        (lambda: core.conv_forward(X, W, None, None, 1, 1, 1), "stride is required"),
        (lambda: core.conv_forward(X, W, None, 1, 1, 1, None), "group is required"),
        (lambda: core.lrn_forward(X, None, 1e-4, 0.75, 1.0, "across"), "local_size is required"),
        (lambda: core.conv_forward(X, W, np.zeros(5, np.float32), 1, 1, 1, 1), "b must have shape"),
        (
            lambda: core.conv_forward(X, W, np.zeros((6, 1), np.float32), 1, 1, 1, 1),
            "b must be 1-D",
        ),
        (lambda: core.conv_forward("abc", W, None, 1, 1, 1, 1), "float32"),
        (
            lambda: core.conv_backward_data(
                np.zeros((2, 6, 7, 8), np.float32), W, (4, 8, 8), 1, 1, 1, 1
            ),
            "dy must have shape",
        ),
        (
            lambda: core.conv_backward_data(
                np.zeros((2, 6, 8, 8), np.float32), W, (8, 8), 1, 1, 1, 1
            ),
            "in_shape",
        ),
        (
            lambda: core.conv_backward_data(
                np.zeros((2, 6, 8, 8), np.float32), W, None, 1, 1, 1, 1
            ),
            "in_shape is required",
        ),
        (
            lambda: core.linear_forward(
                np.zeros((2, 5), np.float32), np.zeros((3, 4), np.float32), None
            ),
            "5 features",
        ),
        (
            lambda: core.linear_forward(
                np.zeros(5, np.float32), np.zeros((3, 5), np.float32), None
            ),
            "x must be 2-D",
        ),
        (
            lambda: core.linear_backward_data(
                np.zeros((2, 4), np.float32), np.zeros((3, 5), np.float32)
            ),
            "outputs per row",
        ),
        (lambda: core.pool_forward(X, "maximum", 2, 2, 0), "unknown method"),
        (lambda: core.pool_forward(X, "max", 3, 2, 3), "smaller than the kernel"),
        (lambda: core.pool_forward(X, "max", 9, 1, 0), "larger than the padded input"),
        (lambda: core.pool_forward(X, "max", 1, 3, 0), "starts past the input"),
        (lambda: core.pool_forward(X, "ave", 2, 0, 0), "stride"),
        (lambda: core.pool_forward(X[0], "ave", 2, 2, 0), "x must be 4-D"),
        (
            lambda: core.pool_backward(
                np.zeros((2, 4, 4, 4), np.float32), (4, 8, 8), "max", 2, 2, 0, None
            ),
            "argmax is required",
        ),
        (
            lambda: core.pool_backward(
                np.zeros((2, 4, 4, 4), np.float32),
                (4, 8, 8),
                "max",
                2,
                2,
                0,
                np.zeros((2, 4, 4), np.int32),
            ),
            "argmax must be 4-D",
        ),
        (
            lambda: core.pool_backward(
                np.zeros((2, 4, 4, 4), np.float32),
                (4, 8, 8),
                "max",
                2,
                2,
                0,
                np.full((2, 4, 4, 4), 64, np.int32),
            ),
            "outside the input plane",
        ),
        (
            lambda: core.pool_backward(
                np.zeros((2, 4, 4, 4), np.float32),
                (4, 8, 8),
                "max",
                2,
                2,
                0,
                np.full((2, 4, 4, 4), -1, np.int32),
            ),
            "outside the input plane",
        ),
        (
            lambda: core.pool_backward(
                np.zeros((2, 4, 5, 4), np.float32), (4, 8, 8), "ave", 2, 2, 0
            ),
            "dy must have shape",
        ),
        (lambda: core.lrn_forward(X, 4, 1e-4, 0.75, 1.0, "across"), "odd"),
        (lambda: core.lrn_forward(X, 5, 1e-4, 0.75, 1.0, "diagonal"), "unknown region"),
        (lambda: core.lrn_forward(X, 5, float("nan"), 0.75, 1.0, "across"), "finite"),
        (lambda: core.lrn_forward(X[0], 5, 1e-4, 0.75, 1.0, "across"), "x must be 4-D"),
        (
            lambda: core.stabilized_divide(np.zeros(3, np.float32), np.zeros(4, np.float32), 0.1),
            "same shape",
        ),
        (lambda: core.stabilized_divide(np.zeros(3, np.float32), None, 0.1), "z is required"),
        (
            lambda: core.stabilized_divide(np.zeros(3, np.float32), np.zeros(3, np.float32), -1.0),
            "eps",
        ),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_module_metadata():
    assert isinstance(core.__version__, str) and core.__version__
    assert isinstance(core.cuda_compiled, bool)
    assert "openblas" in core.blas_name().lower()
    assert isinstance(core.blas_config(), str)


# ---------------------------------------------------------------- alphabeta_signal
# Float32 division on both sides; the reference divides in float64, so allow float32 rounding.
AB_SIGNAL_RTOL = 1e-5


@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (2.0, 1.0), (3.0, 2.0)])
def test_alphabeta_signal_matches_numpy(groups, alpha, beta):
    rng = np.random.default_rng(100 * groups + int(alpha))
    n, c, h, w = 2, 2 * groups, 3, 4
    r = rng.normal(size=(n, c, h, w)).astype(np.float32)
    zp = np.abs(rng.normal(size=(n, c, h, w))).astype(np.float32)
    z = (zp - np.abs(rng.normal(size=(n, c, h, w)))).astype(np.float32)
    zp[0, 0, 0, 0] = 0.0            # zero z+ -> 0
    z[1, -1, 2, 3] = zp[1, -1, 2, 3]  # zero z- = z - z+ -> 0
    got = core.alphabeta_signal(r, z, zp, alpha, beta, groups)
    cg = c // groups
    r64, z64, zp64 = (a.astype(np.float64) for a in (r, z, zp))
    zn = z64 - zp64
    with np.errstate(divide="ignore", invalid="ignore"):
        sp = np.where(zp64 != 0, alpha * r64 / zp64, 0.0)
        sn = np.where(zn != 0, -beta * r64 / zn, 0.0)
    parts = []
    for g in range(groups):
        parts += [sp[:, g * cg:(g + 1) * cg], sn[:, g * cg:(g + 1) * cg]]
    want = np.concatenate(parts, axis=1)
    assert got.shape == (n, 2 * c, h, w)
    np.testing.assert_allclose(got, want, rtol=AB_SIGNAL_RTOL, atol=1e-6)
    assert got[0, 0, 0, 0] == 0.0


# ---------------------------------------------------------------------------------------------
# Eltwise and the per-channel affine map (BatchNorm/Scale after folding)
# ---------------------------------------------------------------------------------------------
# odd sizes, 1..5-D, one large enough to run threaded, one empty
ELT_SHAPES = [(7,), (2, 3), (3, 5, 7), (2, 3, 5, 9), (1, 1, 1, 1), (4, 16, 33, 17), (0, 4)]


def ref_eltwise(xs, op, coeffs):
    x64 = np.stack([np.asarray(x, np.float64) for x in xs])
    if op == "sum":
        c = np.asarray(coeffs if coeffs is not None else [1.0] * len(xs), np.float64)
        return np.tensordot(c, x64, axes=1), None
    if op == "prod":
        return np.prod(x64, axis=0), None
    return x64.max(axis=0), np.argmax(x64, axis=0)  # argmax: the first maximum


def numpy_eltwise_f32(xs, op, coeffs):
    """The float32 numpy loop layers.Eltwise ran before the kernel (the kernel must match it
    bit for bit)."""
    if op == "sum":
        y = np.zeros_like(xs[0])
        for c, x in zip(coeffs if coeffs is not None else [1.0] * len(xs), xs):
            y += np.float32(c) * x
        return y
    y = xs[0].copy()
    for x in xs[1:]:
        if op == "prod":
            y *= x
        else:
            np.maximum(y, x, out=y)
    return y


@pytest.mark.parametrize("shape", ELT_SHAPES, ids=str)
@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("op", ["sum", "prod", "max"])
def test_eltwise_forward(op, k, shape):
    rng = np.random.default_rng([k, len(shape), int(np.prod(shape)), len(op)])
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(k)]
    if op == "max" and k > 1:  # ties: the first input holding the maximum wins
        for x in xs[1:]:
            x.reshape(-1)[::3] = xs[0].reshape(-1)[::3]
    coeffs = rng.uniform(-2, 2, k).tolist() if op == "sum" else None
    y, am = core.eltwise_forward(xs, op, coeffs)
    want, want_am = ref_eltwise(xs, op, coeffs)
    assert y.dtype == np.float32 and y.shape == shape
    assert_close(y, want)
    np.testing.assert_array_equal(y, numpy_eltwise_f32(xs, op, coeffs))
    if op == "max":
        assert am.dtype == np.int32 and am.shape == shape
        np.testing.assert_array_equal(am, want_am)
    else:
        assert am is None
    if op == "sum":  # no coeffs = all ones
        np.testing.assert_array_equal(core.eltwise_forward(xs, "sum")[0],
                                      numpy_eltwise_f32(xs, "sum", None))
        # a sum of -0 terms is +0, as numpy's loop from zeros gives (bit patterns compared)
        neg = [np.full(shape, -0.0, np.float32) for _ in range(k)]
        got = core.eltwise_forward(neg, "sum")[0]
        np.testing.assert_array_equal(got.view(np.uint32),
                                      numpy_eltwise_f32(neg, "sum", None).view(np.uint32))
        assert not np.signbit(got).any()


def test_eltwise_max_nan_and_conversion():
    a = np.array([1.0, np.nan, 2.0, -1.0], np.float32)
    b = np.array([np.nan, 3.0, 1.0, -1.0], np.float32)
    y, am = core.eltwise_forward([a, b], "max")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(np.maximum(a, b)))  # NaN propagates
    np.testing.assert_array_equal(am, [1, 0, 0, 0])
    # float64 / non-contiguous inputs are converted; the result is float32
    x = np.arange(24, dtype=np.float64).reshape(4, 6)
    y, _ = core.eltwise_forward((x.T, x.T), "sum", np.array([0.5, 2.0]))
    np.testing.assert_array_equal(y, (2.5 * x.T).astype(np.float32))


CA_SHAPES = [(2, 3), (2, 3, 5), (1, 4, 7, 9), (3, 5, 2, 3, 4), (2, 40, 33, 17), (0, 3, 2)]


@pytest.mark.parametrize("shape", CA_SHAPES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
def test_channel_affine(shape, with_bias):
    rng = np.random.default_rng([len(shape), int(np.prod(shape)), with_bias])
    x = rng.standard_normal(shape).astype(np.float32)
    s = rng.standard_normal(shape[1]).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32) if with_bias else None
    bc = (1, -1) + (1,) * (len(shape) - 2)
    y = core.channel_affine(x, s, b)
    want = x.astype(np.float64) * s.reshape(bc)
    if b is not None:
        want = want + b.astype(np.float64).reshape(bc)
    assert y.dtype == np.float32 and y.shape == shape
    assert_close(y, want)
    f32 = x * s.reshape(bc)  # numpy's float32 x*s + b, which DiagOp computed before
    np.testing.assert_array_equal(y, f32 if b is None else f32 + b.reshape(bc))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: core.eltwise_forward([], "sum"), "xs must be a non-empty sequence"),
        (lambda: core.eltwise_forward(None, "sum"), "xs must be"),
        (lambda: core.eltwise_forward(X, "sum"), None),  # an array is a sequence of arrays
        (lambda: core.eltwise_forward([X, X[:1]], "sum"), r"xs\[1\] must have the shape of xs\[0\]"),
        (lambda: core.eltwise_forward([X, X, X[..., :1]], "max"), r"xs\[2\] must have the shape"),
        (lambda: core.eltwise_forward([X, "a"], "prod"), r"xs\[1\] must be an array of float32"),
        (lambda: core.eltwise_forward([X, X], "min"), "operation must be 'sum', 'prod' or 'max'"),
        (lambda: core.eltwise_forward([X, X], "sum", [1.0]), "coeffs must have one value per input"),
        (lambda: core.eltwise_forward([X, X], "max", [1.0, 1.0]), "coeffs are only defined"),
        (lambda: core.eltwise_forward([X, X], "sum", "ab"), "coeffs must be a sequence"),
        (lambda: core.eltwise_forward([X, X], "sum", [1.0, "a"]), "coeffs must be a sequence"),
        (lambda: core.channel_affine(X[0, 0, 0], np.ones(8, np.float32)), "x must be"),
        (lambda: core.channel_affine(None, np.ones(4, np.float32)), "x is required"),
        (lambda: core.channel_affine(X, np.ones(3, np.float32)), r"scale must have shape \(4,\)"),
        (lambda: core.channel_affine(X, np.ones((4, 1), np.float32)), "scale must be 1-D"),
        (lambda: core.channel_affine(X, np.ones(4, np.float32), np.ones(5, np.float32)),
         r"bias must have shape \(4,\)"),
    ],
)
def test_eltwise_affine_errors(call, match):
    if match is None:  # X (2, 4, 8, 8) as xs: two inputs of shape (4, 8, 8)
        y, _ = call()
        np.testing.assert_array_equal(y, X[0] + X[1])
        return
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("slope", [0.0, 0.01, -0.5, 2.0])
@pytest.mark.parametrize("shape", [(0,), (7,), (3, 5, 4, 9), (2, 40000)])
def test_relu_forward_matches_numpy_bitwise(slope, shape):
    """Caffe's ReLU: x > 0 ? x : slope*x, bit-identical to numpy's expressions, including signed
    zeros (slope 0 gives +0 like np.maximum), NaN and infinities, on the threaded kernel too."""
    rng = seeded_rng("relu", slope, shape)
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    special = np.array([-0.0, 0.0, np.nan, np.inf, -np.inf], np.float32)
    flat[:min(flat.size, 5)] = special[:min(flat.size, 5)]
    got = core.relu_forward(x, slope)
    want = np.maximum(x, 0) if slope == 0 else np.where(x > 0, x, np.float32(slope) * x)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("K,coeffs,shape", [(2, None, (2, 3, 5, 7)), (3, [0.5, -2.0, 1.0], (7,)),
                                             (2, [1.0, -1.0], (3, 64, 33, 31)), (1, None, (1,)),
                                             (4, [0.3, 1.7, -0.9, 2.5], (2, 8, 1025))])
@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.25])
def test_eltwise_sum_relevance_matches_numpy_bitwise(K, coeffs, shape, eps):
    """Eltwise SUM relevance (z rule): coeffs[k] * xs[k] * stabilized_divide(r, y, eps) for every
    operand, bit for bit as numpy's float32 expression, on the threaded kernel too (the larger
    shapes), with sums that are exactly 0 (a zero denominator gives 0 for eps 0), signed zeros
    and operands that cancel."""
    rng = seeded_rng("eltwise-sum", K, coeffs, shape, eps)
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(K)]
    flat = xs[0].reshape(-1)
    flat[:3] = np.array([0.0, -0.0, 1.0], np.float32)[:flat.size]
    c = [1.0] * K if coeffs is None else coeffs
    y = np.zeros(shape, np.float32)
    for ck, x in zip(c, xs):
        y = y + np.float32(ck) * x
    y.reshape(-1)[-1:] = 0.0   # an exactly-zero sum
    r = rng.standard_normal(shape).astype(np.float32)
    got = core.eltwise_sum_relevance(xs, r, y, coeffs, eps)
    s = core.stabilized_divide(r, y, eps, True)
    assert len(got) == K
    for ck, x, g in zip(c, xs, got):
        want = np.float32(ck) * x * s
        assert g.dtype == np.float32 and g.shape == x.shape
        np.testing.assert_array_equal(g.view(np.uint32), want.view(np.uint32))
    # the z rule, independently in float64: each share is c_k x_k r / y where y != 0, y the sum
    # the kernel is given (float32; against the exact float64 sum a cancelling y would make the
    # comparison ill-conditioned). Three float32 roundings: within 4 u relative.
    if eps == 0.0:
        nz = y != 0
        y64 = y.astype(np.float64)
        for ck, x, g in zip(c, xs, got):
            ref = np.float64(np.float32(ck)) * x.astype(np.float64) * r / np.where(nz, y64, 1.0)
            np.testing.assert_allclose(g[nz], ref[nz], rtol=4 * 2.0 ** -24, atol=0)
            assert not g[~nz].any()


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 4, 9), (2, 40000), (3, 1030)], ids=str)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_eltwise_sum_relu_fused_matches_separate_bitwise(k, shape):
    """eltwise_forward(..., relu=True) is relu_forward of the sum from one pass: the same bits as
    the two kernels in turn and as numpy's float32 loop then np.maximum(., 0), with and without
    coeffs, for sums that are exactly zero, signed zeros, NaN and infinities, on the threaded
    kernel too (the larger shapes; blocks of 4096 with a remainder)."""
    rng = seeded_rng("sum-relu", k, shape)
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(k)]
    flat = xs[0].reshape(-1)
    special = np.array([-0.0, 0.0, np.nan, np.inf, -np.inf], np.float32)
    flat[:min(flat.size, 5)] = special[:min(flat.size, 5)]
    if k > 1 and flat.size > 7:
        xs[1].reshape(-1)[5:8] = -flat[5:8]   # sums that cancel to +-0
    for coeffs in (None, rng.uniform(-2, 2, k).tolist()):
        y = core.eltwise_forward(xs, "sum", coeffs)[0]
        got, am = core.eltwise_forward(xs, "sum", coeffs, relu=True)
        assert am is None and got.dtype == np.float32 and got.shape == shape
        np.testing.assert_array_equal(got.view(np.uint32),
                                      core.relu_forward(y).view(np.uint32))
        want = np.maximum(numpy_eltwise_f32(xs, "sum", coeffs), np.float32(0))
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    for op in ("max", "prod"):
        with pytest.raises(ValueError, match="relu=True needs operation 'sum'"):
            core.eltwise_forward(xs, op, relu=True)


@pytest.mark.parametrize("K,coeffs,shape", [(2, None, (2, 3, 5, 7)), (3, [0.5, -2.0, 1.0], (7,)),
                                             (2, [1.0, -1.0], (3, 64, 33, 31)), (1, None, (1,)),
                                             (4, [0.3, 1.7, -0.9, 2.5], (2, 8, 1025))])
@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.25])
def test_eltwise_sum_relevance_recomputes_the_sum_bitwise(K, coeffs, shape, eps):
    """y None (the forward fused the sum with its ReLU and kept no sum): the kernel recomputes
    the sum with eltwise_forward's bits, so the shares are those of the call given that sum,
    bit for bit, for cancelling operands (exact zero sums) too; and the fused finiteness flag
    agrees."""
    rng = seeded_rng("eltwise-sum-none", K, coeffs, shape, eps)
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(K)]
    if K > 1:
        xs[1].reshape(-1)[:4] = -xs[0].reshape(-1)[:4] * np.float32(
            (coeffs or [1.0] * K)[0] / (coeffs or [1.0] * K)[1])
    r = rng.standard_normal(shape).astype(np.float32)
    y = core.eltwise_forward(xs, "sum", coeffs)[0]
    want = core.eltwise_sum_relevance(xs, r, y, coeffs, eps)
    got = core.eltwise_sum_relevance(xs, r, None, coeffs, eps)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.view(np.uint32), w.view(np.uint32))
    got2, finite = core.eltwise_sum_relevance(xs, r, None, coeffs, eps, check_finite=True)
    assert finite == all(np.isfinite(w).all() for w in want)
    for g, w in zip(got2, want):
        np.testing.assert_array_equal(g.view(np.uint32), w.view(np.uint32))
    # and independently in float64 where the (recomputed float32) sum is well away from 0
    y64 = sum(np.float64(np.float32(c)) * x.astype(np.float64)
              for c, x in zip(coeffs or [1.0] * K, xs))
    ok = np.abs(y64) > 1e-2   # (float32 sums of operands ~1 are within ~1e-7 of y64)
    d = np.where(ok, y64 + np.where(y64 >= 0, eps, -eps), 1.0)
    for c, x, g in zip(coeffs or [1.0] * K, xs, got):
        ref = np.float64(np.float32(c)) * x * r / d
        np.testing.assert_allclose(g[ok], ref[ok], rtol=1e-4, atol=0)


def test_eltwise_sum_relevance_rejects_bad_arguments():
    a = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"y must have the shape of the inputs \(2, 3\)"):
        core.eltwise_sum_relevance([a, a], a, np.ones(6, np.float32))
    with pytest.raises(ValueError, match=r"r must have the shape of the inputs \(2, 3\)"):
        core.eltwise_sum_relevance([a, a], np.ones(6, np.float32), None)
    with pytest.raises(ValueError, match=r"xs\[1\] must have the shape of xs\[0\]"):
        core.eltwise_sum_relevance([a, np.ones(6, np.float32)], a, a)
    with pytest.raises(ValueError, match="one value per input"):
        core.eltwise_sum_relevance([a, a], a, a, [1.0])
    with pytest.raises(ValueError, match="stabilizer eps"):
        core.eltwise_sum_relevance([a], a, a, None, -1.0)
    with pytest.raises(ValueError, match="non-empty sequence"):
        core.eltwise_sum_relevance([], a, a)


@pytest.mark.parametrize("n", [0, 1, 4095, 4096, 4097, 70001, 1 << 18])
def test_all_finite_matches_numpy(n):
    """The engine's finiteness check (every layer's output and relevance): the same answer as
    np.isfinite(x).all() for a NaN, +inf or -inf at random places -- the ends, the 4096-element
    block edges and the threads' split of the array included -- while the extremes of the
    finite range (max, tiny, subnormal, -0) count as finite."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    edge = [v for v in (0, n - 1, 4095, 4096, n // 2, n // 2 - 1) if 0 <= v < n]
    fi = np.finfo(np.float32)
    x[edge] = np.array([fi.max, -fi.max, fi.tiny, fi.smallest_subnormal, -0.0, 0.0],
                       np.float32)[:len(edge)]
    assert core.all_finite(x) is True
    places = edge + [int(p) for p in rng.integers(0, max(n, 1), 6)] if n else []
    for k, p in enumerate(places):
        y = x.copy()
        y[p] = (np.nan, np.inf, -np.inf)[k % 3]
        assert core.all_finite(y) is bool(np.isfinite(y).all()) is False, (p, y[p])
        assert core.all_finite(y.reshape(-1, 1)) is False   # any shape
    assert core.all_finite(np.full(n, np.nan, np.float32)) is (n == 0)


@pytest.mark.parametrize("n", [0, 1, 4095, 4096, 4097, 70001, 1 << 18])
def test_any_negative_matches_numpy(n):
    """The alpha-beta / z+ rules' x >= 0 test: the same answer as (x < 0).any() for one negative
    value (the smallest subnormal, -max, or an ordinary one) at random places -- the ends, the
    4096-element block edges and the threads' split included -- while -0, NaN (either sign) and
    +inf do not count as negative."""
    from lrpfast.rules import has_negative
    rng = np.random.default_rng(n + 1)
    x = np.abs(rng.standard_normal(n)).astype(np.float32)
    edge = [v for v in (0, n - 1, 4095, 4096, n // 2, n // 2 - 1) if 0 <= v < n]
    specials = np.array([-0.0, np.nan, -np.nan, np.inf, 0.0, -0.0], np.float32)
    x[edge] = specials[:len(edge)]
    assert core.any_negative(x) is False and has_negative(x) is False
    fi = np.finfo(np.float32)
    places = edge + [int(p) for p in rng.integers(0, max(n, 1), 6)] if n else []
    for k, p in enumerate(places):
        y = x.copy()
        y[p] = (-fi.smallest_subnormal, -fi.max, -1.5)[k % 3]
        assert core.any_negative(y) is bool((y < 0).any()) is True, (p, y[p])
        assert core.any_negative(y.reshape(-1, 1)) is True   # any shape
        assert has_negative(y.astype(np.float64)) is True    # other dtypes: numpy's test
    assert core.any_negative(np.full(n, -np.inf, np.float32)) is (n > 0)


def test_relu_forward_rejects_bad_slope():
    with pytest.raises(ValueError, match="negative_slope"):
        core.relu_forward(np.ones(3, np.float32), float("nan"))


@pytest.mark.parametrize("beta", [0.75, 0.5, 1.3])
def test_lrn_power_within_a_few_ulp(beta):
    """y = x * scale^-beta: beta = 0.75 takes two square roots instead of pow (vectorised);
    either way y is within 4 float32 ulp of the float64 value for the scale it returns."""
    rng = np.random.default_rng(int(beta * 100))
    x = (rng.standard_normal((3, 10, 9, 7)) * 30).astype(np.float32)
    y, scale = core.lrn_forward(x, 5, 1e-3, beta, 1.0, "across")
    want = x.astype(np.float64) * scale.astype(np.float64) ** -beta
    ulp4 = 4 * 2.0 ** -23
    assert np.all(np.abs(y - want) <= ulp4 * np.abs(want) + 1e-30)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 4097, 70001])
def test_to_float16_matches_numpy_bitwise(n, simd):
    """The pipeline's float16 store conversion: bit for bit numpy's astype(np.float16) on every
    SIMD path (F16C lanes and the portable loop, the 8-lane tail included) for random float32
    bit patterns -- every exponent, subnormals and NaN payloads among them -- and for the hard
    cases: ties to even in the normal and subnormal ranges, the largest half (65504), the
    first value that rounds to inf (65520), the smallest half subnormal and half of it (a tie
    to zero), +-0 and +-inf. NaN stays NaN with its sign, and every path gives the same bits."""
    rng = seeded_rng("to_float16", n)
    bits = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32).copy()
    hard = np.array([0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, -65520.0, 2.0 ** -24,
                     2.0 ** -25, 3 * 2.0 ** -25, -(2.0 ** -25) * 1.0000001, 2.0 ** -14,
                     1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -11 + 2.0 ** -23,
                     6.0e-8, 3.0e-5, -1.0e-7, 1e-40, 3.4e38], np.float32)
    if n:
        x[rng.integers(0, n, len(hard))] = hard
        x[-min(n, len(hard)):] = hard[:min(n, len(hard))]   # the tail after the last 8 lanes
    with np.errstate(over="ignore", invalid="ignore"):
        ref = x.astype(np.float16)
    got = core.to_float16(x)
    assert got.dtype == np.float16 and got.shape == x.shape
    nan = np.isnan(ref)
    np.testing.assert_array_equal(got.view(np.uint16)[~nan], ref.view(np.uint16)[~nan])
    assert np.isnan(got[nan]).all()
    np.testing.assert_array_equal(np.signbit(got[nan]), np.signbit(x[nan]))
    before = core.get_simd()
    try:   # the portable loop gives the F16C bits, NaN payloads included
        core.set_simd("generic")
        np.testing.assert_array_equal(core.to_float16(x).view(np.uint16), got.view(np.uint16))
    finally:
        core.set_simd(before)
    shaped = core.to_float16(x.reshape(1, -1, 1))   # any shape
    assert shaped.shape == (1, n, 1)
