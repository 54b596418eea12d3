"""CPU tests of the index arithmetic the CUDA kernels use (src/cpp/kernels/geometry.hpp, exposed
as ``_core.geometry``). The CUDA twins compute through exactly these LRPFAST_HD functions, so most
of their logic is checked here on every machine, without a GPU:

* each helper against an independent numpy/brute-force reference;
* the *gather* formulations the CUDA kernels use (col2im and pooling backward: one thread per
  input element, via conv_out_coord / pool_out_range) emulated in numpy with the helpers and
  compared with the CPU engine's *scatter* kernels (``_core``).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lrpfast._loader import _core
from conftest import seeded_rng

geo = _core.geometry

# float32 sums in a different order (gather vs scatter): a few ulps of the magnitudes involved
SUM_ORDER_RTOL = 1e-5
SUM_ORDER_ATOL = 1e-5

CONV_CASES = [  # (in, kernel, stride, pad, dilation)
    (in_, k, s, p, d)
    for in_, k, s, p, d in itertools.product((1, 2, 5, 7, 13), (1, 2, 3, 5), (1, 2, 3, 4),
                                              (0, 1, 2), (1, 2))
    if in_ + 2 * p >= d * (k - 1) + 1
]


@pytest.mark.parametrize("in_,k,s,p,d", CONV_CASES)
def test_conv_index_helpers(in_, k, s, p, d):
    ext = d * (k - 1) + 1
    assert geo.dilated_extent(k, d) == ext
    out = (in_ + 2 * p - ext) // s + 1
    assert geo.conv_out_size(in_, k, s, p, d) == out
    for kk in range(k):
        coords = [o * s - p + kk * d for o in range(out)]
        assert [geo.conv_in_coord(o, kk, s, p, d) for o in range(out)] == coords
        valid = [o for o in range(out) if 0 <= coords[o] < in_]
        lo, hi = geo.conv_valid_out_range(in_, out, kk, s, p, d)
        assert list(range(lo, hi)) == valid
        for i in range(in_):  # the inverse used by the CUDA col2im gather
            expect = [o for o in range(out) if coords[o] == i]
            got = geo.conv_out_coord(i, kk, s, p, d, out)
            assert got == (expect[0] if expect else -1)


def test_conv_out_size_too_small_kernel():
    assert geo.conv_out_size(3, 5, 1, 0, 1) == 0


@pytest.mark.parametrize("kh,kw", [(1, 1), (3, 3), (2, 5)])
def test_im2col_row_taps(kh, kw):
    for r in range(4 * kh * kw):
        c, ki, kj = geo.im2col_row_taps(r, kh, kw)
        assert np.ravel_multi_index((c, ki, kj), (4, kh, kw)) == r


def _conv_geom_cases():
    return [  # (N, C, H, W, O, kh, kw, stride, pad, dilation, group)
        (2, 3, 7, 6, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1),
        (1, 4, 9, 8, 6, 3, 2, (2, 1), (1, 0), (1, 2), 2),
        (2, 6, 11, 11, 6, 5, 5, (4, 4), (2, 2), (1, 1), 3),
        (1, 4, 5, 5, 8, 1, 1, (1, 1), (0, 0), (1, 1), 4),
        (1, 2, 6, 7, 2, 3, 3, (3, 2), (0, 1), (2, 1), 1),
    ]


def _im2col_gather(x, kh, kw, s, p, d, Ho, Wo):
    """The CUDA im2col: col[n, r, oh*Wo+ow] via im2col_row_taps + conv_in_coord (numpy-vectorised
    over output positions)."""
    N, C, H, W = x.shape
    col = np.zeros((N, C * kh * kw, Ho * Wo), np.float64)
    oh, ow = np.meshgrid(np.arange(Ho), np.arange(Wo), indexing="ij")
    for r in range(C * kh * kw):
        c, ki, kj = geo.im2col_row_taps(r, kh, kw)
        ih = np.array([geo.conv_in_coord(int(o), ki, s[0], p[0], d[0]) for o in range(Ho)])[oh]
        iw = np.array([geo.conv_in_coord(int(o), kj, s[1], p[1], d[1]) for o in range(Wo)])[ow]
        ok = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        col[:, r, ok.ravel()] = x[:, c, ih[ok], iw[ok]]
    return col


def _col2im_gather(col, C, H, W, kh, kw, s, p, d, Ho, Wo):
    """The CUDA col2im: one 'thread' per input element summing its taps via conv_out_coord."""
    N = col.shape[0]
    dx = np.zeros((N, C, H, W), np.float64)
    for c, ih, iw in itertools.product(range(C), range(H), range(W)):
        acc = np.zeros(N)
        for ki in range(kh):
            oh = geo.conv_out_coord(ih, ki, s[0], p[0], d[0], Ho)
            if oh < 0:
                continue
            for kj in range(kw):
                ow = geo.conv_out_coord(iw, kj, s[1], p[1], d[1], Wo)
                if ow >= 0:
                    acc += col[:, (c * kh + ki) * kw + kj, oh * Wo + ow]
        dx[:, c, ih, iw] = acc
    return dx


@pytest.mark.parametrize("case", _conv_geom_cases())
def test_conv_gather_kernels_match_cpu_engine(case):
    """im2col + grouped GEMM at group_*_offset, and the col2im gather, as conv.cu does them,
    equal the CPU engine's conv_forward / conv_backward_data."""
    N, C, H, W, O, kh, kw, s, p, d, G = case
    rng = seeded_rng("cuda-geom-conv", case)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((O, C // G, kh, kw)).astype(np.float32)
    Ho = geo.conv_out_size(H, kh, s[0], p[0], d[0])
    Wo = geo.conv_out_size(W, kw, s[1], p[1], d[1])
    P, Og, Cg, Kg = Ho * Wo, O // G, C // G, (C // G) * kh * kw
    col = _im2col_gather(x.astype(np.float64), kh, kw, s, p, d, Ho, Wo)
    wf, y = w.astype(np.float64).ravel(), np.zeros((N, O * P))
    for gi in range(G):
        woff = geo.group_weight_offset(gi, Og, Kg)
        assert woff == gi * Og * Kg
        assert geo.group_in_offset(gi, Cg, H * W) == gi * Cg * H * W
        yoff = geo.group_out_offset(gi, Og, P)
        assert yoff == gi * Og * P
        Wg = wf[woff:woff + Og * Kg].reshape(Og, Kg)
        y[:, yoff:yoff + Og * P] = (Wg @ col[:, gi * Kg:(gi + 1) * Kg, :]).reshape(N, -1)
    ref = _core.conv_forward(x, w, None, s, p, d, G)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=SUM_ORDER_RTOL, atol=SUM_ORDER_ATOL)

    dy = rng.standard_normal(ref.shape).astype(np.float32)
    colb = np.zeros((N, C * kh * kw, P))
    for gi in range(G):
        Wg = wf[gi * Og * Kg:(gi + 1) * Og * Kg].reshape(Og, Kg)
        colb[:, gi * Kg:(gi + 1) * Kg] = Wg.T @ dy[:, gi * Og:(gi + 1) * Og].reshape(N, Og, P)
    dx = _col2im_gather(colb, C, H, W, kh, kw, s, p, d, Ho, Wo)
    ref_dx = _core.conv_backward_data(dy, w, (C, H, W), s, p, d, G)
    np.testing.assert_allclose(dx, ref_dx, rtol=SUM_ORDER_RTOL, atol=SUM_ORDER_ATOL)


# ---- pooling -------------------------------------------------------------------------------------

def _ref_pool_out(in_, k, s, p, ceil_mode=True):
    """Caffe pooling_layer.cpp, written out independently."""
    f = math.ceil if ceil_mode else math.floor
    out = int(f((in_ + 2 * p - k) / s)) + 1
    if ceil_mode and p > 0 and (out - 1) * s >= in_ + p:
        out -= 1
    return out


POOL_CASES = [(in_, k, s, p) for in_, k, s, p in
              itertools.product((1, 3, 6, 7, 13, 14), (1, 2, 3, 5), (1, 2, 3), (0, 1, 2))
              if p < k and in_ + 2 * p >= k]


@pytest.mark.parametrize("in_,k,s,p", POOL_CASES)
def test_pool_index_helpers(in_, k, s, p):
    for ceil_mode in (True, False):
        assert geo.pool_out_size(in_, k, s, p, ceil_mode) == _ref_pool_out(in_, k, s, p, ceil_mode)
    out = _ref_pool_out(in_, k, s, p)
    windows = []
    for o in range(out):
        start = o * s - p
        end = min(start + k, in_ + p)           # Caffe clips to the padded image for pool_size
        ref = (max(start, 0), min(end, in_), end - start)
        assert geo.pool_window(o, in_, k, s, p) == ref
        windows.append(ref)
    for i in range(in_):  # the inverse used by the CUDA pooling backward gather
        covering = [o for o, (a, b, _) in enumerate(windows) if a <= i < b]
        lo, hi = geo.pool_out_range(i, k, s, p, out)
        assert list(range(lo, hi)) == covering


def test_plane_index_and_lrn_pad():
    for h, w, W in [(0, 0, 1), (2, 3, 5), (7, 0, 8)]:
        assert geo.plane_index(h, w, W) == np.ravel_multi_index((h, w), (h + 1, W))
    assert [geo.lrn_pre_pad(n) for n in (1, 3, 5, 7)] == [0, 1, 2, 3]


POOL_KERNEL_CASES = [  # (N, C, H, W, kernel, stride, pad)
    (2, 3, 7, 7, 3, 2, 0), (1, 2, 13, 13, 3, 2, 1), (1, 2, 6, 9, 2, 2, 0), (2, 1, 5, 5, 5, 1, 2),
    (1, 2, 14, 14, 3, 3, 1),
]


@pytest.mark.parametrize("case", POOL_KERNEL_CASES)
def test_pool_gather_kernels_match_cpu_engine(case):
    """pool.cu's forward (pool_window, argmax = plane_index of the first maximum) and its
    backward gather (pool_out_range) emulated with the helpers == the CPU engine."""
    N, C, H, W, k, s, p = case
    rng = seeded_rng("cuda-geom-pool", case)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    x[..., 1, :] = x[..., 0, :]  # ties: the first maximum in row-major order must win
    Ho, Wo = geo.pool_out_size(H, k, s, p, True), geo.pool_out_size(W, k, s, p, True)
    ymax, am, yave = (np.zeros((N, C, Ho, Wo), np.float32) for _ in range(3))
    am = am.astype(np.int32)
    for oh, ow in itertools.product(range(Ho), range(Wo)):
        h0, h1, hs = geo.pool_window(oh, H, k, s, p)
        w0, w1, ws = geo.pool_window(ow, W, k, s, p)
        win = x[:, :, h0:h1, w0:w1].reshape(N, C, -1)
        j = win.argmax(-1)  # numpy: first maximum
        ymax[:, :, oh, ow] = win.max(-1)
        am[:, :, oh, ow] = [[geo.plane_index(h0 + int(t) // (w1 - w0), w0 + int(t) % (w1 - w0), W)
                             for t in row] for row in j]
        yave[:, :, oh, ow] = win.astype(np.float64).sum(-1) / (hs * ws)
    ref_y, ref_am = _core.pool_forward(x, "max", k, s, p, True)
    np.testing.assert_array_equal(ymax, ref_y)
    np.testing.assert_array_equal(am, ref_am)
    np.testing.assert_allclose(yave, _core.pool_forward(x, "ave", k, s, p, True)[0],
                               rtol=SUM_ORDER_RTOL, atol=SUM_ORDER_ATOL)

    dy = rng.standard_normal((N, C, Ho, Wo)).astype(np.float32)
    dmax, dave = np.zeros((N, C, H, W)), np.zeros((N, C, H, W))
    for h, w in itertools.product(range(H), range(W)):
        oh0, oh1 = geo.pool_out_range(h, k, s, p, Ho)
        ow0, ow1 = geo.pool_out_range(w, k, s, p, Wo)
        me = geo.plane_index(h, w, W)
        for oh, ow in itertools.product(range(oh0, oh1), range(ow0, ow1)):
            dmax[:, :, h, w] += np.where(am[:, :, oh, ow] == me, dy[:, :, oh, ow], 0)
            size = geo.pool_window(oh, H, k, s, p)[2] * geo.pool_window(ow, W, k, s, p)[2]
            dave[:, :, h, w] += dy[:, :, oh, ow] / size
    np.testing.assert_allclose(dmax, _core.pool_backward(dy, (C, H, W), "max", k, s, p, ref_am),
                               rtol=SUM_ORDER_RTOL, atol=SUM_ORDER_ATOL)
    np.testing.assert_allclose(dave, _core.pool_backward(dy, (C, H, W), "ave", k, s, p),
                               rtol=SUM_ORDER_RTOL, atol=SUM_ORDER_ATOL)
