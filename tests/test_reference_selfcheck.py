"""Checks of the float64 reference (tests/reference.py) itself, independent of the engine:
conservation properties that really hold, identities between rules, gradients against finite
differences, and forward passes against second brute-force implementations and hand values."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import nets
import reference as ref

# float64 throughout: conservation / identities hold to rounding of a few hundred terms.
F64_TOL = 1e-10
# central finite differences with h = 1e-5 on O(1) functions: truncation ~h^2, rounding ~1e-16/h.
FD_TOL = 1e-6


def rel(a, b):
    return ref.is_close_rel(a, b)


def seeded(name: str) -> np.random.Generator:
    """A generator whose seed is derived from the test's name (stable across runs)."""
    return np.random.default_rng(int.from_bytes(name.encode(), "little") % (2 ** 32))


CONV_GEOMS = [
    # (C, O, H, W, kernel, stride, pad, dilation, group)
    (3, 4, 7, 9, 3, 1, 0, 1, 1),
    (4, 6, 7, 9, 3, 2, 1, 1, 2),
    (2, 3, 8, 7, (3, 2), 3, (2, 1), 1, 1),
    (4, 4, 9, 9, 3, 1, 2, 2, 2),
    (3, 2, 5, 6, 1, 1, 0, 1, 1),
]
GEOM_IDS = ["k3", "k3s2p1g2", "k3x2s3p2", "k3p2d2g2", "k1"]


def _conv_case(geom, rng, positive=False, bias=False):
    C, O, H, W, k, s, p, d, g = geom
    kh, kw = ref._pair(k, 1)
    x = rng.uniform(0, 1, (2, C, H, W)) if positive else rng.normal(size=(2, C, H, W))
    Wt = rng.normal(size=(O, C // g, kh, kw))
    b = rng.normal(size=O) if bias else None
    y = ref.conv_forward(x, Wt, b, s, p, d, g)
    R = rng.normal(size=y.shape)
    return x, Wt, b, y, R, {"stride": s, "pad": p, "dilation": d, "group": g}


# --------------------------------------------------------------------------------------------
# forward references vs brute force
# --------------------------------------------------------------------------------------------

def brute_conv(x, W, b, stride, pad, dilation, group):
    """Seven nested loops straight from the definition (no padding array, no slicing)."""
    N, _C, H, Wd = x.shape
    O, Cg, kh, kw = W.shape
    sh, sw = ref._pair(stride, 1)
    ph, pw = ref._pair(pad, 0)
    dh, dw = ref._pair(dilation, 1)
    OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    OW = (Wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((N, O, OH, OW))
    Og = O // group
    for n in range(N):
        for o in range(O):
            g = o // Og
            for oy in range(OH):
                for ox in range(OW):
                    acc = 0.0 if b is None else b[o]
                    for c in range(Cg):
                        for ky in range(kh):
                            for kx in range(kw):
                                iy = oy * sh - ph + ky * dh
                                ix = ox * sw - pw + kx * dw
                                if 0 <= iy < H and 0 <= ix < Wd:
                                    acc += x[n, g * Cg + c, iy, ix] * W[o, c, ky, kx]
                    y[n, o, oy, ox] = acc
    return y


@pytest.mark.parametrize("geom", CONV_GEOMS, ids=GEOM_IDS)
def test_conv_forward_brute_force(geom):
    x, Wt, _, _y, _, kw = _conv_case(geom, seeded(f"convfwd{geom}"), bias=False)
    b = seeded("b").normal(size=Wt.shape[0])
    assert rel(ref.conv_forward(x, Wt, b, **kw), brute_conv(x, Wt, b, **kw)) < F64_TOL


def brute_pool(x, method, k, s, p):
    """Caffe pooling_layer.cpp transcribed with scalar loops."""
    N, C, H, W = x.shape
    OH = int(np.ceil((H + 2 * p - k) / s)) + 1
    OW = int(np.ceil((W + 2 * p - k) / s)) + 1
    if p:
        if (OH - 1) * s >= H + p:
            OH -= 1
        if (OW - 1) * s >= W + p:
            OW -= 1
    y = np.zeros((N, C, OH, OW))
    for n in range(N):
        for c in range(C):
            for ph in range(OH):
                for pw in range(OW):
                    hstart, wstart = ph * s - p, pw * s - p
                    if method == "MAX":
                        hend, wend = min(hstart + k, H), min(wstart + k, W)
                        hstart, wstart = max(hstart, 0), max(wstart, 0)
                        best = -np.inf
                        for h in range(hstart, hend):
                            for w in range(wstart, wend):
                                best = max(best, x[n, c, h, w])
                        y[n, c, ph, pw] = best
                    else:
                        hend, wend = min(hstart + k, H + p), min(wstart + k, W + p)
                        size = (hend - hstart) * (wend - wstart)
                        hstart, wstart = max(hstart, 0), max(wstart, 0)
                        hend, wend = min(hend, H), min(wend, W)
                        acc = 0.0
                        for h in range(hstart, hend):
                            for w in range(wstart, wend):
                                acc += x[n, c, h, w]
                        y[n, c, ph, pw] = acc / size
    return y


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("H,W,k,s,p", [(7, 9, 3, 2, 0), (6, 6, 3, 2, 0), (5, 7, 3, 2, 1),
                                       (4, 5, 2, 2, 1), (3, 3, 2, 2, 1), (8, 5, 3, 3, 2)])
def test_pool_forward_brute_force(method, H, W, k, s, p):
    x = seeded(f"pool{method}{H}{W}{k}{s}{p}").normal(size=(2, 3, H, W))
    got = ref.pool_forward(x, method, k, s, p)
    assert got.shape == brute_pool(x, method, k, s, p).shape
    assert rel(got, brute_pool(x, method, k, s, p)) < F64_TOL


def test_pool_caffe_ceil_shapes():
    # well-known Caffe shapes: AlexNet pool1 55->27, pool5 13->6; GoogLeNet pool1 112->56
    for H, k, s, p, out in [(55, 3, 2, 0, 27), (13, 3, 2, 0, 6), (112, 3, 2, 0, 56),
                            (6, 3, 2, 0, 3),        # ceil, where floor would give 2
                            (3, 2, 2, 1, 2),        # padding fix-up drops the last window
                            (4, 2, 2, 1, 3)]:
        assert ref.pool_geometry(H, H, (k, k), (s, s), (p, p))[3] == (out, out), (H, k, s, p)


def test_ave_pool_divisor_hand_values():
    # H = W = 4, k = 2, s = 2, pad 1: windows [-1,1), [1,3), [3,5); divisor always 2*2 = 4,
    # counted over the padded image, while the corner windows hold 1 real pixel.
    y = ref.pool_forward(np.ones((1, 1, 4, 4)), "AVE", 2, 2, 1)
    expect = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 4.0
    assert np.array_equal(y[0, 0], expect)
    # H = W = 3, k = 3, s = 2, pad 1: windows [-1,2), [1,4): 4 real pixels each, divisor 9
    y = ref.pool_forward(np.ones((1, 1, 3, 3)), "AVE", 3, 2, 1)
    assert np.allclose(y[0, 0], 4.0 / 9.0)
    # MAX clips to the image: all-negative input never sees a padded zero
    y = ref.pool_forward(-np.ones((1, 1, 3, 3)), "MAX", 3, 2, 1)
    assert np.all(y == -1)


def test_global_pool_forward():
    x = seeded("gp").normal(size=(2, 3, 5, 7))
    assert np.allclose(ref.pool_forward(x, "AVE", global_pooling=True)[..., 0, 0],
                       x.mean((2, 3)), atol=1e-14)
    assert np.array_equal(ref.pool_forward(x, "MAX", global_pooling=True)[..., 0, 0],
                          x.max((2, 3)))


def brute_lrn(x, n, alpha, beta, k):
    N, C, H, W = x.shape
    y = np.zeros_like(x)
    for b in range(N):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    acc = 0.0
                    for cc in range(c - n // 2, c + n // 2 + 1):   # odd n: symmetric window
                        if 0 <= cc < C:
                            acc += x[b, cc, h, w] ** 2
                    y[b, c, h, w] = x[b, c, h, w] / (k + alpha / n * acc) ** beta
    return y


@pytest.mark.parametrize("n,alpha,beta,k", [(5, 1e-4, 0.75, 1.0), (3, 0.5, 0.75, 2.0),
                                            (1, 1.0, 0.5, 1.0), (7, 2.0, 1.0, 0.5)])
def test_lrn_forward_brute_force(n, alpha, beta, k):
    x = seeded(f"lrn{n}{alpha}").normal(size=(2, 6, 3, 4))
    assert rel(ref.lrn_forward(x, n, alpha, beta, k), brute_lrn(x, n, alpha, beta, k)) < F64_TOL


def test_batchnorm_scale_forward():
    rng = seeded("bn")
    x = rng.normal(size=(2, 3, 4, 5))
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    a, c = ref.batchnorm_affine(mean * 4, var * 4, [4.0], eps=1e-3)
    expect = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-3)
    assert rel(ref.affine_forward(x, a, c), expect) < F64_TOL
    a0, c0 = ref.batchnorm_affine(mean, var, [0.0], eps=1e-3)   # factor 0 -> statistics 0
    assert np.allclose(a0, 1 / np.sqrt(1e-3)) and np.all(c0 == 0)


def test_fold_conv_bn_scale_forward():
    rng = seeded("fold")
    layers = [nets.conv("c", "data", 4, kernel=3, pad=1), nets.batchnorm("bn", "c"),
              nets.scale("sc", "c", bias=True)]
    tn = nets.build(layers, (2, 3, 5, 6), rng)
    x = rng.normal(size=(2, 3, 5, 6))
    out = tn.ref.forward(x)["c"]
    (W, b), = tn.ref.fold_plan(2)[0].values()
    assert rel(ref.conv_forward(x, W, b, 1, 1), out) < F64_TOL


# --------------------------------------------------------------------------------------------
# relevance: conservation and identities
# --------------------------------------------------------------------------------------------

def test_dense_rules_conserve():
    rng = seeded("dense")
    a = rng.normal(size=(3, 20))
    ap = rng.uniform(0, 1, (3, 20))
    W = rng.normal(size=(7, 20))
    R = rng.normal(size=(3, 7))
    tot = R.sum(1)
    cases = [(a, ref.z_rule()), (a, ref.epsilon(1e-12)), (ap, ref.alphabeta(1, 0)),
             (ap, ref.alphabeta(2, 1)), (ap, ref.alphabeta(3, 2)), (a, ref.flat()),
             (a, ref.wsquare()), (a, ref.zbox(-3.0, 3.0))]
    for x, rule in cases:
        if rule.kind == "zbox":
            x = np.clip(x, -3, 3)
        r = ref.linear_rule(x, W, None, R, rule)
        assert np.allclose(r.sum(1), tot, rtol=1e-9, atol=1e-9), rule


@pytest.mark.parametrize("geom", CONV_GEOMS, ids=GEOM_IDS)
@pytest.mark.parametrize("rule", [ref.z_rule(), ref.alphabeta(1, 0), ref.alphabeta(2, 1),
                                  ref.flat(), ref.wsquare(), ref.zbox(0.0, 1.0)], ids=repr)
def test_conv_rules_conserve(geom, rule):
    """Bias-free convolutions with positive inputs: every denominator is non-zero, so z, αβ
    (α − β = 1), z^B conserve; flat and w² conserve by construction — also where receptive
    fields hang over the padding.  αβ needs a positive and a negative contribution in every
    receptive field, even one reduced to a single pixel by the padding: channel 0 of every
    filter gets positive, channel 1 negative weights."""
    x, Wt, _, _, R, kw = _conv_case(geom, seeded(f"cons{geom}{rule}"), positive=True)
    Wt[:, 0] = np.abs(Wt[:, 0])
    Wt[:, 1] = -np.abs(Wt[:, 1])
    r = ref.conv_relevance(x, Wt, None, R, rule, **kw)
    assert r.shape == x.shape
    assert np.allclose(r.sum((1, 2, 3)), R.sum((1, 2, 3)), rtol=1e-9, atol=1e-9)


def test_alpha1beta0_equals_z_on_positive_contributions():
    """x ≥ 0, W ≥ 0, b ≥ 0: every z_ij ≥ 0, so z⁺ = z and α1β0 = LRP-0."""
    rng = seeded("a1b0")
    x, W, b = rng.uniform(0, 1, (2, 12)), rng.uniform(0, 1, (5, 12)), rng.uniform(0, 1, 5)
    R = rng.normal(size=(2, 5))
    assert rel(ref.linear_rule(x, W, b, R, ref.alphabeta(1, 0)),
               ref.linear_rule(x, W, b, R, ref.z_rule())) < F64_TOL
    geom = CONV_GEOMS[1]
    x, Wt, _, _, R, kw = _conv_case(geom, rng, positive=True)
    Wt = np.abs(Wt)
    assert rel(ref.conv_relevance(x, Wt, np.ones(Wt.shape[0]), R, ref.alphabeta(1, 0), **kw),
               ref.conv_relevance(x, Wt, np.ones(Wt.shape[0]), R, ref.z_rule(), **kw)) < F64_TOL


def test_zbox_with_zero_bounds_is_z_without_bias():
    x, Wt, _, _, R, kw = _conv_case(CONV_GEOMS[3], seeded("zb0"))
    assert rel(ref.conv_relevance(x, Wt, None, R, ref.zbox(0.0, 0.0), **kw),
               ref.conv_relevance(x, Wt, None, R, ref.z_rule(), **kw)) < F64_TOL


def test_epsilon_tends_to_z_and_bias_absorbs():
    rng = seeded("eps")
    x, W, b = rng.normal(size=(2, 9)), rng.normal(size=(4, 9)), rng.normal(size=4)
    R = rng.normal(size=(2, 4))
    assert rel(ref.linear_rule(x, W, b, R, ref.epsilon(1e-13)),
               ref.linear_rule(x, W, b, R, ref.z_rule())) < 1e-9
    # with bias, LRP-0 gives Σ_i R_i = Σ_j R_j (z_j − b_j) / z_j: the bias share is absorbed
    zj = x @ W.T + b
    r = ref.linear_rule(x, W, b, R, ref.z_rule())
    assert np.allclose(r.sum(1), (R * (zj - b) / zj).sum(1), rtol=1e-10)


def test_epsilon_sign_of_zero_is_plus():
    x = np.array([[1.0, -1.0]])
    W = np.array([[1.0, 1.0]])               # z_j = 0 exactly
    r = ref.linear_rule(x, W, None, np.array([[2.0]]), ref.epsilon(0.5))
    assert np.array_equal(r, np.array([[4.0, -4.0]]))   # divided by 0 + 0.5·(+1)


def test_zero_denominators_contribute_nothing():
    x = np.zeros((1, 4))
    W = np.ones((2, 4))
    R = np.ones((1, 2))
    for rule in [ref.z_rule(), ref.alphabeta(2, 1), ref.zbox(0.0, 0.0)]:
        r = ref.linear_rule(x, W, None, R, rule)
        assert np.all(np.isfinite(r)) and np.all(r == 0), rule
    assert np.all(ref.linear_rule(x, np.zeros((2, 4)), None, R, ref.wsquare()) == 0)


def test_wsquare_flat_independent_of_x_and_flat_is_equal_weight_wsquare():
    x, Wt, _, _, R, kw = _conv_case(CONV_GEOMS[1], seeded("w2"))
    a = ref.conv_relevance(x, Wt, None, R, ref.wsquare(), **kw)
    b = ref.conv_relevance(-3 * x + 1, Wt, np.ones(Wt.shape[0]), R, ref.wsquare(), **kw)
    assert np.array_equal(a, b)
    assert rel(ref.conv_relevance(x, np.ones_like(Wt), None, R, ref.wsquare(), **kw),
               ref.conv_relevance(x, Wt, None, R, ref.flat(), **kw)) < F64_TOL


def test_flat_counts_only_real_pixels():
    # 1 channel, 3x3 kernel, pad 1 on a 2x2 image: every receptive field holds the 4 pixels
    r = ref.conv_relevance(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3)), None,
                           np.ones((1, 1, 2, 2)), ref.flat(), pad=1)
    assert np.allclose(r, 1.0)                # 4 outputs × 1/4 each


@pytest.mark.parametrize("rule", [ref.z_rule(), ref.epsilon(0.1), ref.alphabeta(2, 1),
                                  ref.flat(), ref.wsquare(), ref.zbox(-2.0, 2.0),
                                  ref.gradient()], ids=repr)
def test_conv_covering_whole_input_equals_inner_product(rule):
    """A convolution whose kernel covers the whole (unpadded) input is an InnerProduct."""
    rng = seeded(f"convip{rule}")
    x = np.clip(rng.normal(size=(2, 3, 4, 5)), -2, 2)
    Wt = rng.normal(size=(6, 3, 4, 5))
    b = rng.normal(size=6)
    R = rng.normal(size=(2, 6))
    rc = ref.conv_relevance(x, Wt, b, R[:, :, None, None], rule)
    ri = ref.ip_relevance(x, Wt.reshape(6, -1), b, R, rule)
    assert rel(rc, ri) < F64_TOL


def test_group_conv_is_two_convs():
    rng = seeded("grp")
    x, Wt, b, _, R, kw = _conv_case(CONV_GEOMS[1], rng, bias=True)
    kw2 = dict(kw, group=1)
    for rule in [ref.epsilon(0.01), ref.alphabeta(2, 1), ref.flat(), ref.zbox(-1, 1)]:
        full = ref.conv_relevance(x, Wt, b, R, rule, **kw)
        a = ref.conv_relevance(x[:, :2], Wt[:3], b[:3], R[:, :3], rule, **kw2)
        c = ref.conv_relevance(x[:, 2:], Wt[3:], b[3:], R[:, 3:], rule, **kw2)
        assert rel(full, np.concatenate([a, c], 1)) < F64_TOL, rule


def test_pooling_relevance():
    rng = seeded("poolrel")
    x = rng.uniform(0.1, 1, (2, 3, 5, 7))
    y = ref.pool_forward(x, "MAX", 3, 2, 1)
    R = rng.normal(size=y.shape)
    r = ref.pool_relevance(x, R, "MAX", "z", 3, 2, 1)
    assert np.allclose(r.sum((1, 2, 3)), R.sum((1, 2, 3)))
    # winner take all to the first maximum in row-major order
    r = ref.pool_relevance(np.ones((1, 1, 2, 2)), np.ones((1, 1, 1, 1)), "MAX", "z", 2, 2)
    assert np.array_equal(r[0, 0], [[1, 0], [0, 0]])
    # average: conserved as ε -> 0 (all windows have positive sums)
    for method, mp in [("AVE", "wta"), ("MAX", "average")]:
        r = ref.pool_relevance(x, R, method, "epsilon", 3, 2, 1, eps=1e-14, maxpool=mp)
        assert np.allclose(r.sum((1, 2, 3)), R.sum((1, 2, 3)), rtol=1e-10)
        # proportional to the inputs inside a single window
        r1 = ref.pool_relevance(x[:, :, :3, :3], np.ones((2, 3, 1, 1)), method, "z", 3, 3,
                                eps=0.0, maxpool=mp)
        assert rel(r1, x[:, :, :3, :3] / x[:, :, :3, :3].sum((2, 3), keepdims=True)) < F64_TOL


def test_eltwise_sum_relevance_conserves():
    rng = seeded("elt")
    xs = [rng.uniform(0.1, 1, (2, 3, 4)), rng.uniform(0.1, 1, (2, 3, 4))]
    R = rng.normal(size=(2, 3, 4))
    rs = ref.eltwise_sum_relevance(xs, R, [1.0, 0.5], "z", 1e-14)
    assert rel(rs[0] + rs[1], R) < F64_TOL
    assert rel(rs[1], R * 0.5 * xs[1] / (xs[0] + 0.5 * xs[1])) < F64_TOL


# --------------------------------------------------------------------------------------------
# gradient references vs finite differences
# --------------------------------------------------------------------------------------------

def fd_grad(f, x, h=1e-5):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        g[i] = (f(xp) - f(xm)) / (2 * h)
    return g


GRAD_NETS = {
    "conv-relu-maxpool-conv-avepool-ip": lambda: [
        nets.conv("c1", "data", 4, kernel=3, stride=1, pad=1), nets.relu("r1", "c1"),
        nets.pool("p1", "c1", "MAX", 3, 2, 1),
        nets.conv("c2", "p1", 3, kernel=2, dilation=1, group=1, pad=1),
        nets.pool("p2", "c2", "AVE", 2, 2, 1), nets.ip("fc", "p2", 5)],
    "grouped-dilated-lrn-bn": lambda: [
        nets.conv("c1", "data", 4, kernel=3, pad=2, dilation=2, group=2),
        nets.lrn("n1", "c1", local_size=3, alpha=0.5, beta=0.75, k=1.0),
        nets.pool("p1", "n1", "MAX", 2, 2), nets.batchnorm("bn", "p1"), nets.scale("sc", "p1"),
        nets.relu("r", "p1", negative_slope=0.1), nets.ip("fc", "p1", 3)],
    "split-eltwise-concat": lambda: [
        nets.conv("a", "data", 3, kernel=3, pad=1), nets.conv("b", "data", 3, kernel=1),
        nets.eltwise("e", ["a", "b"], "SUM", [1.0, -0.5]), nets.concat("cat", ["e", "a"]),
        nets.pool("g", "cat", "AVE", global_pooling=True), nets.ip("fc", "g", 2)],
}


@pytest.mark.parametrize("name", list(GRAD_NETS))
def test_gradient_reference_vs_finite_differences(name):
    rng = seeded(f"grad{name}")
    shape = (1, 2, 5, 6)
    tn = nets.build(GRAD_NETS[name](), shape, rng)
    x = rng.normal(size=shape)
    k = 1

    def f(v):
        return tn.ref.forward(v)["fc"][0, k]

    tn.ref.forward(x)
    R_top = np.zeros((1, tn.ref.blob("fc").shape[1]))
    R_top[0, k] = 1.0
    g = tn.ref.relevance("fc", R_top, ref.uniform_rules(tn.layers, ref.gradient()), lrn="gradient",
                         fold=False)
    assert rel(g, fd_grad(f, x)) < FD_TOL
    # a BatchNorm+Scale pair merged into one diagonal layer or kept apart: same gradient
    tn.ref.forward(x)              # fd_grad left the activations of a perturbed input behind
    g2 = tn.ref.relevance("fc", R_top, ref.uniform_rules(tn.layers, ref.gradient()), lrn="gradient",
                          merge_affine=True)
    assert rel(g, g2) < F64_TOL


def test_lrn_gradient_vs_finite_differences():
    rng = seeded("lrngrad")
    x = rng.normal(size=(2, 6, 2, 3))
    R = rng.normal(size=x.shape)
    g = ref.lrn_gradient(x, R, 5, 0.7, 0.75, 1.5)
    fd = fd_grad(lambda v: (ref.lrn_forward(v, 5, 0.7, 0.75, 1.5) * R).sum(), x)
    assert rel(g, fd) < FD_TOL


def test_deconvnet_and_guided_relu():
    x = np.array([[-1.0, 2.0, 0.0, 3.0]])
    R = np.array([[1.0, -1.0, 2.0, 4.0]])
    assert np.array_equal(ref.relu_relevance(x, R, "deconvnet"), [[1, 0, 2, 4]])
    assert np.array_equal(ref.relu_relevance(x, R, "guided"), [[0, 0, 0, 4]])
    assert np.array_equal(ref.relu_relevance(x, R, "gradient"), [[0, -1, 0, 4]])
    assert np.array_equal(ref.relu_relevance(x, R, "epsilon"), R)


# --------------------------------------------------------------------------------------------
# whole-net reference
# --------------------------------------------------------------------------------------------

def test_refnet_folding_equals_explicit_folded_conv():
    rng = seeded("foldrel")
    layers = [nets.conv("c", "data", 4, kernel=3, pad=1, bias=False), nets.batchnorm("bn", "c"),
              nets.scale("sc", "c", bias=True)]
    tn = nets.build(layers, (2, 3, 5, 6), rng)
    x = rng.normal(size=(2, 3, 5, 6))
    y = tn.ref.forward(x)["c"]
    R = rng.normal(size=y.shape)
    rule = ref.alphabeta(2, 1)
    got = tn.ref.relevance("sc", R, ref.uniform_rules(layers, rule))
    (W, b), = tn.ref.fold_plan(2)[0].values()
    assert rel(got, ref.conv_relevance(x, W, b, R, rule, pad=1)) < F64_TOL


STACK_CASES = [(rule, pool2) for rule in [ref.epsilon(1e-12), ref.alphabeta(2, 1), ref.flat(),
                                           ref.wsquare()]
               for pool2 in ["MAX", "AVE"]
               # flat / w² send relevance to dead ReLU units, which an average pooling over an
               # all-zero window cannot pass on: they conserve through max pooling only
               if not (rule.kind in ("flat", "wsquare") and pool2 == "AVE")]


@pytest.mark.parametrize("rule,pool2", STACK_CASES, ids=[f"{r!r}-{p}" for r, p in STACK_CASES])
def test_refnet_conserves_through_stack(rule, pool2):
    """conv-relu-maxpool-conv-relu-pool-ip without bias, ε -> 0: the total is kept."""
    rng = seeded(f"stack{rule}{pool2}")
    layers = [nets.conv("c1", "data", 4, kernel=3, pad=1, bias=False), nets.relu("r1", "c1"),
              nets.pool("p1", "c1", "MAX", 3, 2, 1),
              nets.conv("c2", "p1", 5, kernel=3, pad=1, bias=False), nets.relu("r2", "c2"),
              nets.pool("p2", "c2", pool2, 2, 2), nets.ip("fc", "p2", 3, bias=False)]
    tn = nets.build(layers, (2, 3, 8, 8), rng)      # mixed-sign weights (αβ needs z⁻ ≠ 0)
    x = rng.uniform(0, 1, (2, 3, 8, 8))
    y = tn.ref.forward(x)["fc"]
    r = tn.ref.relevance("fc", y, ref.uniform_rules(layers, rule), eps=1e-12)
    assert np.allclose(r.sum((1, 2, 3)), y.sum(1), rtol=1e-9)
