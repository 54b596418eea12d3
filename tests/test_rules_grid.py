"""The rule × layer grid: the engine's float32 relevance against the float64 reference.

Every rule (z, ε ∈ {1e-3, 0.1}, α1β0, α2β1, α3β2, flat, w², z^B, gradient, deconvnet, guided
backprop) meets every layer case (convolution geometries, InnerProduct, max/average/global
pooling, LRN, Eltwise SUM, Concat, Split, BatchNorm+Scale folded and not), for batch 1 and 3.
Each case is a tiny net (tests/nets.py), fed to the engine as prototxt text + float32 weights,
and to the reference (tests/reference.py) as the same layer list; relevance is seeded at the
case's top layer with a random R_top and compared at the input.  Inputs, weights and R_top are
drawn fresh per test from a seed derived from the test's parameters.
"""
from __future__ import annotations

import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import nets
import reference as ref

lrpfast = pytest.importorskip("lrpfast")
R = pytest.importorskip("lrpfast.rules")
if not hasattr(lrpfast, "Net"):
    pytest.skip("lrpfast.Net is not available yet", allow_module_level=True)

# --------------------------------------------------------------------------------------------
# Tolerances (relative error ‖engine − reference‖ / ‖reference‖)
# --------------------------------------------------------------------------------------------
# Well-conditioned cases: float32 has a unit roundoff of 6e-8; a few layers of sums over at
# most a few hundred terms, each divided by a denominator that is bounded away from zero
# relative to the terms it sums (α/β split sums, flat/w² counts, z^B box terms, z with positive
# inputs and weights, ε = 0.1), stay below 1e-5 (measured over this grid: ≤ 1.4e-6); 1e-4
# leaves an order of magnitude of headroom without hiding any real rule difference (those
# are O(1e-2) and more).
REL_TOL = 1e-4
# ε = 1e-3 on mixed-sign contributions: where z_j is within a few ε of zero, the float32
# rounding of z_j (≈ 6e-8 · Σ_i |z_ij| ≈ 1e-6 here) is amplified by 1/(|z_j| + ε) ≤ 1e3, and
# those outputs carry the largest relevances, so a draw with a z_j near 0 can reach ~1e-3
# (measured over this grid: ≤ 5.1e-5).  Real rule differences are still O(1e-2) and more.
EPS_TOL = 1e-3

# --------------------------------------------------------------------------------------------
# Rules: id -> (engine rule, reference rule, data mode)
#   data mode: "signed" (N(0,1) inputs, mixed-sign weights), "positive" (inputs and weights > 0:
#   LRP-0 is only well-conditioned where z_j cannot approach 0), "box" (inputs inside the z^B
#   bounds).
# --------------------------------------------------------------------------------------------

RULES = {
    "z": (lambda: R.Zero(), ref.z_rule(), "positive"),
    "eps1e-3": (lambda: R.Epsilon(1e-3), ref.epsilon(1e-3), "signed"),
    "eps0.1": (lambda: R.Epsilon(0.1), ref.epsilon(0.1), "signed"),
    "a1b0": (lambda: R.AlphaBeta(1, 0), ref.alphabeta(1, 0), "signed"),
    "a2b1": (lambda: R.AlphaBeta(2, 1), ref.alphabeta(2, 1), "signed"),
    "a3b2": (lambda: R.AlphaBeta(3, 2), ref.alphabeta(3, 2), "signed"),
    "flat": (lambda: R.Flat(), ref.flat(), "signed"),
    "wsquare": (lambda: R.WSquare(), ref.wsquare(), "signed"),
    "zbox": (None, None, "box"),                    # built per case: bounds per input channel
    "gradient": (lambda: R.Gradient(), ref.gradient(), "signed"),
    "deconvnet": (lambda: R.Deconvnet(), ref.deconvnet(), "signed"),
    "guided": (lambda: R.GuidedBackprop(), ref.guided(), "signed"),
}

DEFAULT_AUX_EPS = 1e-6   # lrpfast's stabiliser of average pooling / Eltwise when the rule has no ε
ZBOX_OTHER_EPS = 0.1     # z^B cases: the layers not reading the input get ε = 0.1


def tolerance(rule_id):
    return EPS_TOL if rule_id == "eps1e-3" else REL_TOL


def seeded(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("|".join(map(str, key)).encode()))


# --------------------------------------------------------------------------------------------
# Layer cases: id -> function(C_in) returning (layers, input (C, H, W), top layer, options)
# --------------------------------------------------------------------------------------------

# (C, O, H, W, kernel, stride, pad, dilation, group, bias)
CONV_GEOMS = {
    "k3": (3, 4, 7, 9, 3, 1, 0, 1, 1, True),
    "k3-s2-p1-g2": (4, 6, 7, 9, 3, 2, 1, 1, 2, True),
    "k3-s3-p2-nobias": (3, 5, 11, 10, 3, 3, 2, 1, 1, False),
    "k3-p2-d2-g2": (4, 4, 9, 7, 3, 1, 2, 2, 2, True),
    "k5-s2-p2-d2-nobias": (2, 3, 11, 11, 5, 2, 2, 2, 1, False),
    "k3x2-s1x2-p2x1": (3, 4, 7, 9, (3, 2), (1, 2), (2, 1), 1, 1, True),
    "k1": (5, 3, 6, 7, 1, 1, 0, 1, 1, True),
    "k4-s3-p1-g2-nobias": (6, 4, 10, 11, 4, 3, 1, 1, 2, False),
    # >= 16 channels per group: 3x3 stride-1 kernels take the Winograd path (forward, z+ and the
    # transposed products), odd planes, pads 0..2, groups
    "k3-p1-winograd": (16, 17, 9, 7, 3, 1, 1, 1, 1, True),
    "k3-p0-g2-winograd-nobias": (32, 34, 6, 5, 3, 1, 0, 1, 2, False),
    "k3-p2-winograd": (18, 16, 3, 8, 3, 1, 2, 1, 1, True),
}


def _conv_case(g):
    C, O, H, W, k, s, p, d, grp, bias = g
    return ([nets.conv("conv", "data", O, kernel=k, stride=s, pad=p, dilation=d, group=grp,
                       bias=bias)], (C, H, W), "conv", {})


def _feature(name="c1", bottom="data", O=4, relu=True, inplace=True):
    """3x3 pad-1 convolution (+ ReLU, in place by default): a non-negative feature map.
    Not in place, the ReLU's top is named ``name + '_relu'``."""
    ls = [nets.conv(name, bottom, O, kernel=3, pad=1)]
    if relu:
        ls.append(nets.relu(name + "_relu", name, inplace=inplace))
    return ls


CASES = {f"conv-{k}": (lambda g=g: _conv_case(g)) for k, g in CONV_GEOMS.items()}
CASES.update({
    "ip": lambda: ([nets.ip("fc", "data", 7)], (3, 4, 5), "fc", {}),
    "ip-nobias": lambda: ([nets.ip("fc", "data", 5, bias=False)], (2, 5, 3), "fc", {}),
    "conv-relu-flatten-dropout-ip": lambda: (
        _feature(inplace=False) + [nets.flatten("flat", "c1_relu"), nets.dropout("drop", "flat"),
                                   nets.ip("fc", "flat", 6)], (3, 5, 6), "fc", {}),
    # a negative coefficient makes Σ c_k x_k cross zero: well-conditioned only for a large ε
    # (and for the gradient-type signals, which do not divide)
    "eltwise-sum-negcoeff": lambda: (
        _feature("a") + _feature("b") + [nets.eltwise("sum", ["a", "b"], "SUM", [1.0, -0.7])],
        (3, 5, 6), "sum", {"only_rules": ("eps0.1", "gradient", "deconvnet", "guided")}),
    "maxpool-k3s2": lambda: (_feature() + [nets.pool("pool", "c1", "MAX", 3, 2)],
                             (3, 7, 9), "pool", {}),
    "maxpool-k3s2p1": lambda: (_feature() + [nets.pool("pool", "c1", "MAX", 3, 2, 1)],
                               (3, 8, 7), "pool", {}),
    "maxpool-k2s2-as-average": lambda: (_feature() + [nets.pool("pool", "c1", "MAX", 2, 2)],
                                        (3, 7, 9), "pool", {"maxpool": "average"}),
    "maxpool-k3s2p1-as-average": lambda: (
        _feature() + [nets.pool("pool", "c1", "MAX", 3, 2, 1)], (3, 7, 8), "pool",
        {"maxpool": "average"}),
    "avepool-k3s2p1": lambda: (_feature() + [nets.pool("pool", "c1", "AVE", 3, 2, 1)],
                               (3, 7, 9), "pool", {}),
    "avepool-k2s2": lambda: (_feature() + [nets.pool("pool", "c1", "AVE", 2, 2)],
                             (3, 7, 9), "pool", {}),
    "avepool-k3s3p2": lambda: (_feature() + [nets.pool("pool", "c1", "AVE", 3, 3, 2)],
                               (2, 8, 10), "pool", {}),
    "globalave": lambda: (_feature() + [nets.pool("pool", "c1", "AVE", global_pooling=True)],
                          (3, 5, 7), "pool", {}),
    "globalmax": lambda: (_feature() + [nets.pool("pool", "c1", "MAX", global_pooling=True)],
                          (3, 5, 7), "pool", {}),
    "lrn": lambda: (_feature(O=6) + [nets.lrn("norm", "c1", local_size=3, alpha=0.5, beta=0.75,
                                              k=1.0)], (3, 6, 7), "norm", {}),
    "lrn-5": lambda: (_feature(O=5) + [nets.lrn("norm", "c1", local_size=5, alpha=1e-2,
                                                beta=0.75, k=2.0)], (2, 5, 6), "norm", {}),
    "eltwise-sum": lambda: (
        _feature("a") + _feature("b", O=4) + [nets.eltwise("sum", ["a", "b"], "SUM")],
        (3, 6, 7), "sum", {}),
    "eltwise-sum-coeff-residual": lambda: (       # a is read by b and by the sum: a Split
        _feature("a") + _feature("b", "a", O=4)
        + [nets.eltwise("sum", ["a", "b"], "SUM", coeff=[1.0, 0.5])], (3, 6, 7), "sum", {}),
    "concat": lambda: (
        [nets.conv("a", "data", 3, kernel=3, pad=1), nets.conv("b", "data", 2, kernel=1),
         nets.concat("cat", ["a", "b"])], (3, 6, 7), "cat", {}),
    "split-concat-pool": lambda: (                # the ReLU output is read twice
        _feature("a") + [nets.conv("b", "a", 2, kernel=1), nets.pool("p", "a", "MAX", 2, 2),
                         nets.pool("q", "b", "MAX", 2, 2), nets.concat("cat", ["p", "q"])],
        (3, 6, 8), "cat", {}),
    "bn-scale-folded": lambda: (
        [nets.conv("conv", "data", 4, kernel=3, pad=1), nets.batchnorm("bn", "conv"),
         nets.scale("sc", "conv", bias=True)], (3, 6, 7), "sc", {}),
    "bn-folded-nobias-conv": lambda: (
        [nets.conv("conv", "data", 4, kernel=3, stride=2, bias=False),
         nets.batchnorm("bn", "conv", inplace=False)], (3, 7, 8), "bn", {}),
    "scale-folded-ip": lambda: (
        [nets.ip("fc", "data", 5), nets.scale("sc", "fc", bias=True)], (2, 3, 4), "sc", {}),
    "bn-after-pool": lambda: (
        _feature() + [nets.pool("pool", "c1", "MAX", 2, 2), nets.batchnorm("bn", "pool")],
        (3, 6, 7), "bn", {}),
    "bn-scale-after-pool": lambda: (
        _feature() + [nets.pool("pool", "c1", "AVE", 2, 2), nets.batchnorm("bn", "pool"),
                      nets.scale("sc", "pool", bias=True)], (3, 6, 7), "sc", {}),
    "maxpool-k3x2-s2x1": lambda: (_feature() + [nets.pool("pool", "c1", "MAX", (3, 2), (2, 1))],
                                  (3, 7, 6), "pool", {}),
    "avepool-k3x2-s1x2-p1x1": lambda: (
        _feature() + [nets.pool("pool", "c1", "AVE", (3, 2), (1, 2), (1, 1))], (3, 6, 7),
        "pool", {}),
    # a residual block's end: the sum's only reader is an in-place ReLU (the CPU engine computes
    # the two in one pass and keeps no sum; the relevance recomputes it)
    "eltwise-sum-relu-ip": lambda: (
        _feature("a") + _feature("b", "a", O=4)
        + [nets.eltwise("sum", ["a", "b"], "SUM"), nets.relu("sum_relu", "sum"),
           nets.ip("fc", "sum", 5)], (3, 6, 7), "fc", {}),
    "eltwise-sum-coeff-relu-pool": lambda: (
        _feature("a") + _feature("b")
        + [nets.eltwise("sum", ["a", "b"], "SUM", coeff=[1.0, 0.5]),
           nets.relu("sum_relu", "sum", inplace=False),
           nets.pool("pool", "sum_relu", "AVE", 2, 2)], (2, 6, 7), "pool", {}),
    "eltwise-sum-3-coeff": lambda: (
        _feature("a") + _feature("b") + _feature("c", "b")
        + [nets.eltwise("sum", ["a", "b", "c"], "SUM", coeff=[1.0, 0.5, 2.0])], (2, 5, 6), "sum",
        {}),
    "concat-axis2": lambda: (
        [nets.conv("a", "data", 3, kernel=3, pad=1), nets.conv("b", "data", 3, kernel=(3, 1)),
         nets.concat("cat", ["a", "b"], axis=2)], (2, 6, 5), "cat", {}),
    "input-layer-conv-relu-ip": lambda: (
        _feature() + [nets.ip("fc", "c1", 4)], (3, 5, 5), "fc", {"input_layer": True}),
    "explicit-split": lambda: (
        _feature("a") + [ref.Layer("split", "Split", ["a"], ["a1", "a2"]),
                         nets.conv("b", "a1", 3, kernel=1), nets.pool("p", "a2", "AVE", 1, 1),
                         nets.concat("cat", ["b", "p"])], (3, 5, 6), "cat", {}),
    # deconvnet / guided backprop have no agreed meaning on a leaky ReLU: LRP rules (which
    # pass it) and the gradient (slope where x ≤ 0) only
    "leakyrelu-pool-ip": lambda: (
        [nets.conv("c1", "data", 4, kernel=3, pad=1), nets.relu("r1", "c1", negative_slope=0.1),
         nets.pool("pool", "c1", "MAX", 2, 2), nets.ip("fc", "pool", 5)], (3, 6, 7), "fc",
        {"skip_rules": ("deconvnet", "guided")}),
})

BATCHES = [1, 3]


# --------------------------------------------------------------------------------------------
# running one grid point
# --------------------------------------------------------------------------------------------

def _zbox_bounds(C):
    low = -1.0 - 0.25 * np.arange(C)
    high = 1.0 + 0.5 * np.arange(C)
    return low.astype(np.float32), high.astype(np.float32)


def _engine_and_ref_rules(rule_id, layers, C, opts):
    """(engine rules argument, reference {layer: Rule}, reference aux ε)."""
    maxpool = opts.get("maxpool", "wta")
    if rule_id == "zbox":
        low, high = _zbox_bounds(C)
        first = [l.name for l in layers
                 if "data" in l.bottoms and l.type in ("Convolution", "InnerProduct")]
        eng = lrpfast.Composite(default=R.Epsilon(ZBOX_OTHER_EPS),
                                by_name={n: R.ZBox(low, high) for n in first},
                                eps=ZBOX_OTHER_EPS, maxpool=maxpool)
        rr = ref.uniform_rules(layers, ref.epsilon(ZBOX_OTHER_EPS))
        rr.update({n: ref.zbox(low, high) for n in first})
        return eng, rr, ZBOX_OTHER_EPS
    make, rule, _ = RULES[rule_id]
    aux = rule.eps if rule.kind == "epsilon" else DEFAULT_AUX_EPS
    eng = make()
    if maxpool != "wta":
        eng = lrpfast.Composite(default=eng, eps=aux, maxpool=maxpool)
    return eng, ref.uniform_rules(layers, rule), aux


def run_case(rule_id, case_id, N):
    """Build the case, run both, return (engine result, reference result)."""
    layers, chw, top, opts = CASES[case_id]()
    mode = RULES[rule_id][2]
    rng = seeded(rule_id, case_id, N)
    shape = (N,) + chw
    tn = nets.build(layers, shape, rng, positive=(mode == "positive"),
                    input_layer=opts.get("input_layer", False))
    if mode == "box":
        x = nets.random_input(shape, rng, low=_zbox_bounds(chw[0])[0],
                              high=_zbox_bounds(chw[0])[1])
    else:
        x = nets.random_input(shape, rng, positive=(mode == "positive"))
    net = lrpfast.Net.from_text(tn.text, tn.weights)
    tn.ref.forward(x)
    top_blob = tn.ref.blob(layers[tn.ref.index[top]].tops[0])
    R_top = rng.normal(size=top_blob.shape).astype(np.float32)
    eng_rules, ref_rules, aux = _engine_and_ref_rules(rule_id, layers, chw[0], opts)
    got = net.propagate(x, R_top, top=top, rules=eng_rules)
    want = tn.ref.relevance(top, R_top, ref_rules, eps=aux, maxpool=opts.get("maxpool", "wta"))
    return got, want


def _applies(rule_id, case_id):
    opts = CASES[case_id]()[3]
    return (rule_id not in opts.get("skip_rules", ())
            and rule_id in opts.get("only_rules", (rule_id,)))


GRID = [pytest.param(r, c, n, id=f"{r}-{c}-n{n}") for r in RULES for c in CASES
        for n in BATCHES if _applies(r, c)]


@pytest.mark.parametrize("rule_id,case_id,N", GRID)
def test_grid(rule_id, case_id, N):
    got, want = run_case(rule_id, case_id, N)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.all(np.isfinite(got))
    err = ref.is_close_rel(got, want)
    assert err <= tolerance(rule_id), (
        f"{rule_id} on {case_id} (N={N}): relative error {err:.3g} > {tolerance(rule_id):g}; "
        f"|ref| = {np.linalg.norm(want):.4g}, |engine| = {np.linalg.norm(got):.4g}")


# --------------------------------------------------------------------------------------------
# forward pass of every case (the relevance comparison above rests on it)
# --------------------------------------------------------------------------------------------

FWD_TOL = 1e-5   # float32 forward of ≤ a few hundred-term sums vs float64: ~1e-7 typical


def check_forward(layers, shape, rng):
    """Every blob of the engine's forward pass against the float64 reference."""
    tn = nets.build(layers, shape, rng)
    x = nets.random_input(shape, rng)
    net = lrpfast.Net.from_text(tn.text, tn.weights)
    want = tn.ref.forward(x)
    blobs = sorted({t for l in layers for t in l.tops})
    got = net.forward(x, blobs=blobs)
    for b in blobs:
        assert ref.is_close_rel(got[b], want[b]) <= FWD_TOL, b


@pytest.mark.parametrize("case_id", list(CASES))
def test_forward(case_id):
    layers, chw, _top, _ = CASES[case_id]()
    check_forward(layers, (2,) + chw, seeded("forward", case_id))


FORWARD_ONLY = {
    "eltwise-prod": lambda: (_feature("a") + [nets.conv("b", "data", 4, kernel=1),
                                               nets.eltwise("e", ["a", "b"], "PROD")], (3, 5, 6)),
    "eltwise-max": lambda: (_feature("a") + [nets.conv("b", "data", 4, kernel=1),
                                              nets.eltwise("e", ["a", "b"], "MAX")], (3, 5, 6)),
    "whole-stack-softmax": lambda: (_stack_layers(), (3, 9, 9)),
}


@pytest.mark.parametrize("case_id", list(FORWARD_ONLY))
def test_forward_other_layers(case_id):
    layers, chw = FORWARD_ONLY[case_id]()
    check_forward(layers, (3,) + chw, seeded("forward-only", case_id))


def test_batchnorm_zero_scale_factor_forward():
    """Caffe divides the stored mean/var by blob[2]; a factor of 0 means statistics 0."""
    layers = [nets.conv("conv", "data", 3, kernel=1), nets.batchnorm("bn", "conv", eps=0.5)]
    rng = seeded("bn-factor0")
    tn = nets.build(layers, (2, 2, 3, 4), rng)
    tn.weights["bn"][2] = np.zeros(1, np.float32)
    tn = nets.build(layers, (2, 2, 3, 4), rng, weights=tn.weights)
    x = nets.random_input((2, 2, 3, 4), rng)
    net = lrpfast.Net.from_text(tn.text, tn.weights)
    want = tn.ref.forward(x)["conv"]
    assert ref.is_close_rel(net.forward(x), want) <= FWD_TOL
    assert ref.is_close_rel(want, ref.conv_forward(x, *tn.weights["conv"]) / np.sqrt(0.5)) < 1e-12


# --------------------------------------------------------------------------------------------
# edge cases of the rule definitions
# --------------------------------------------------------------------------------------------

def _ip_net(W, b=None):
    layers = [nets.ip("fc", "data", W.shape[0], bias=b is not None)]
    w = {"fc": [W.astype(np.float32)] + ([b.astype(np.float32)] if b is not None else [])}
    return lrpfast.Net.from_text(nets.prototxt(layers, (1, W.shape[1], 1, 1)), w)


def test_epsilon_sign_of_exact_zero_is_plus():
    # z_j = 1 − 1 = 0 exactly in float32: R_i = z_ij / (0 + ε·(+1)) R_j
    net = _ip_net(np.array([[1.0, 1.0]]))
    x = np.array([1.0, -1.0], np.float32).reshape(1, 2, 1, 1)
    got = net.propagate(x, np.array([[2.0]], np.float32), top="fc", rules=R.Epsilon(0.5))
    assert np.array_equal(got.reshape(-1), [4.0, -4.0])


@pytest.mark.parametrize("rule_id", ["z", "a1b0", "a2b1", "zbox"])
def test_zero_denominator_contributes_nothing(rule_id):
    """A bias-free convolution on an input with an all-zero block: outputs whose receptive
    field lies inside it have z_j = 0 (and z^B: l = h = 0 makes every term 0)."""
    rng = seeded("zeroden", rule_id)
    layers = [nets.conv("conv", "data", 3, kernel=3, pad=1, bias=False)]
    tn = nets.build(layers, (1, 2, 7, 7), rng)
    x = nets.random_input((1, 2, 7, 7), rng, positive=True)
    x[:, :, 1:6, 1:6] = 0
    net = lrpfast.Net.from_text(tn.text, tn.weights)
    tn.ref.forward(x)
    R_top = rng.normal(size=(1, 3, 7, 7)).astype(np.float32)
    if rule_id == "zbox":
        eng, rr = R.ZBox(0.0, 0.0), ref.zbox(0.0, 0.0)
    else:
        eng, rr = RULES[rule_id][0](), RULES[rule_id][1]
    got = net.propagate(x, R_top, top="conv", rules=eng)
    want = tn.ref.relevance("conv", R_top, ref.uniform_rules(layers, rr))
    assert np.all(np.isfinite(got))
    assert ref.is_close_rel(got, want) <= REL_TOL


@pytest.mark.parametrize("top", ["conv", "bn"])
def test_folding_only_below_the_top(top):
    """Relevance that starts at the convolution (or at the BatchNorm between it and the Scale)
    must use only the layers below that top: the BN/Scale above it cannot be folded in.
    Starting inside a folded chain may instead be refused with an error naming the layer —
    never a wrong number; with fold_batchnorm=False it must then work (BN as a diagonal
    layer)."""
    rng = seeded("foldtop", top)
    layers = [nets.conv("conv", "data", 4, kernel=3, pad=1), nets.batchnorm("bn", "conv"),
              nets.scale("sc", "conv", bias=True), nets.relu("relu", "conv"),
              nets.ip("fc", "conv", 3)]
    tn = nets.build(layers, (2, 3, 5, 6), rng)
    x = nets.random_input((2, 3, 5, 6), rng)
    net = lrpfast.Net.from_text(tn.text, tn.weights)
    tn.ref.forward(x)
    t_blob = tn.ref.values[tn.ref.io[tn.ref.index[top]][1][0]]
    R_top = rng.normal(size=t_blob.shape).astype(np.float32)
    rr = ref.uniform_rules(layers, ref.epsilon(0.1))
    try:
        got = net.propagate(x, R_top, top=top, rules=R.Epsilon(0.1))
    except ValueError as e:
        assert top != "conv" and f"'{top}'" in str(e), e
        net = lrpfast.Net.from_text(tn.text, tn.weights, fold_batchnorm=False)
        got = net.propagate(x, R_top, top=top, rules=R.Epsilon(0.1))
        want = tn.ref.relevance(top, R_top, rr, eps=0.1, fold=False)
    else:
        want = tn.ref.relevance(top, R_top, rr, eps=0.1)
    assert ref.is_close_rel(got, want) <= REL_TOL


@pytest.mark.parametrize("rule_id", ["eps0.1", "a2b1", "zbox", "gradient"])
def test_fold_batchnorm_false(rule_id):
    """Net(..., fold_batchnorm=False): BatchNorm and Scale after a convolution are diagonal
    linear layers with the active rule, like an unfoldable BatchNorm."""
    layers, chw, top, _ = CASES["bn-scale-folded"]()
    rng = seeded("nofold", rule_id)
    shape = (2,) + chw
    tn = nets.build(layers, shape, rng)
    lo, hi = _zbox_bounds(chw[0])
    x = nets.random_input(shape, rng, low=lo, high=hi)
    net = lrpfast.Net.from_text(tn.text, tn.weights, fold_batchnorm=False)
    tn.ref.forward(x)
    R_top = rng.normal(size=(2, 4) + chw[1:]).astype(np.float32)
    eng, rr, aux = _engine_and_ref_rules(rule_id, layers, chw[0], {})
    got = net.propagate(x, R_top, top=top, rules=eng)
    want = tn.ref.relevance(top, R_top, rr, eps=aux, fold=False)
    assert ref.is_close_rel(got, want) <= REL_TOL
    folded = tn.ref.relevance(top, R_top, rr, eps=aux, fold=True)
    if rule_id != "gradient":   # the option must matter (the gradient is the same either way)
        assert ref.is_close_rel(folded, want) > 1e-2


# --------------------------------------------------------------------------------------------
# composites and whole nets
# --------------------------------------------------------------------------------------------

def _stack_layers():
    return [nets.conv("conv1", "data", 4, kernel=3, pad=1), nets.relu("relu1", "conv1"),
            nets.pool("pool1", "conv1", "MAX", 3, 2, 1),
            nets.conv("conv2", "pool1", 6, kernel=3, pad=1, group=2), nets.relu("relu2", "conv2"),
            nets.lrn("norm2", "conv2", local_size=3, alpha=0.1),
            nets.pool("pool2", "norm2", "AVE", 2, 2),
            nets.ip("fc1", "pool2", 8), nets.relu("relu3", "fc1"), nets.dropout("drop", "fc1"),
            nets.ip("fc2", "fc1", 5), nets.softmax("prob", "fc2")]


A1, A2 = ref.alphabeta(1, 0), ref.alphabeta(2, 1)
COMPOSITES = {
    # name: (conv rule, dense ε, number of first layers with flat, aux ε)
    "cmp_alpha1": (A1, 1e-6, 0, 1e-6),
    "cmp_alpha2": (A2, 1e-6, 0, 1e-6),
    "cmp_alpha1_flat": (A1, 1e-6, 1, 1e-6),
    "cmp_alpha2_flat": (A2, 1e-6, 1, 1e-6),
    "epsilon_plus_flat": (A1, 1e-6, 1, 1e-6),
    "epsilon_alpha2_beta1_flat": (A2, 1e-6, 1, 1e-6),
    "preset_a": (A1, 0.1, 0, 0.1),
    "preset_b": (A2, 0.1, 0, 0.1),
    "preset_a_flat": (A1, 0.1, 1, 0.1),
    "preset_b_flat": (A2, 0.1, 1, 0.1),
}


def _composite_ref_rules(layers, conv_rule, dense_eps, nflat):
    rules = {}
    linear = [l for l in layers if l.type in ("Convolution", "InnerProduct")]
    for i, l in enumerate(linear):
        if i < nflat:
            rules[l.name] = ref.flat()
        elif l.type == "Convolution":
            rules[l.name] = conv_rule
        else:
            rules[l.name] = ref.epsilon(dense_eps)
    return rules


@pytest.mark.parametrize("N", BATCHES, ids=lambda n: f"n{n}")
@pytest.mark.parametrize("name", list(COMPOSITES))
def test_named_composite_whole_net(name, N):
    """relevance(x, classes) with a named composite: seed = the logit of the class at the
    highest InnerProduct, propagated through conv/pool/LRN/IP with the composite's rules.
    Dense ε = 1e-6 is well-conditioned here: the seed is the logit itself, so R_j / z_j = 1
    at the top, and fc1's outputs are positive after the ReLU (weights of fc2 mixed)."""
    conv_rule, dense_eps, nflat, aux = COMPOSITES[name]
    layers = _stack_layers()
    rng = seeded("composite", name, N)
    shape = (N, 3, 9, 9)
    tn = nets.build(layers, shape, rng)
    x = nets.random_input(shape, rng)
    net = lrpfast.Net.from_text(tn.text, tn.weights)
    classes = [int(c) for c in rng.integers(0, 5, N)]
    got = net.relevance(x, classes, rules=name)
    logits = tn.ref.forward(x)["fc2"]
    R_top = np.zeros_like(logits)
    R_top[np.arange(N), classes] = logits[np.arange(N), classes]
    want = tn.ref.relevance("fc2", R_top, _composite_ref_rules(layers, conv_rule, dense_eps, nflat),
                            eps=aux)
    err = ref.is_close_rel(got, want)
    assert err <= REL_TOL, f"{name}: relative error {err:.3g}"


def test_composite_by_type_by_name_first_and_readout():
    """A hand-made Composite (by_type, by_name, first=(2, …), maxpool='average') and relevance
    read out at an intermediate blob."""
    layers = _stack_layers()
    rng = seeded("composite-custom")
    shape = (2, 3, 9, 9)
    tn = nets.build(layers, shape, rng)
    x = nets.random_input(shape, rng)
    net = lrpfast.Net.from_text(tn.text, tn.weights)
    comp = lrpfast.Composite(default=R.Epsilon(0.01),
                             by_type={"Convolution": R.AlphaBeta(3, 2)},
                             by_name={"fc1": R.WSquare()}, first=(1, R.Flat()), eps=0.05,
                             maxpool="average")
    rr = {"conv1": ref.flat(), "conv2": ref.alphabeta(3, 2), "fc1": ref.wsquare(),
          "fc2": ref.epsilon(0.01)}
    y = tn.ref.forward(x)["fc2"]
    R_top = rng.normal(size=y.shape).astype(np.float32)
    for readout in ["data", "pool1", "conv2"]:
        # "conv2" names the blob after the in-place ReLU (its last version), in both
        got = net.propagate(x, R_top, top="fc2", rules=comp,
                            readout=None if readout == "data" else readout)
        want = tn.ref.relevance("fc2", R_top, rr, eps=0.05, maxpool="average", readout=readout)
        assert got.shape == want.shape
        assert ref.is_close_rel(got, want) <= REL_TOL, readout


# --------------------------------------------------------------------------------------------
# bigger shapes (slow): the same rules on a larger, deeper net
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("rule_id", ["eps0.1", "a2b1", "flat", "wsquare", "zbox", "gradient",
                                     "guided"])
def test_grid_larger_net(rule_id):
    layers = [nets.conv("conv1", "data", 8, kernel=5, stride=2, pad=2), nets.relu("r1", "conv1"),
              nets.pool("pool1", "conv1", "MAX", 3, 2, 1),
              nets.lrn("norm1", "pool1", local_size=5, alpha=1e-3),
              nets.conv("conv2", "norm1", 12, kernel=3, pad=1, group=2), nets.relu("r2", "conv2"),
              nets.conv("conv3", "conv2", 12, kernel=3, pad=2, dilation=2),
              nets.batchnorm("bn3", "conv3"), nets.scale("sc3", "conv3", bias=True),
              nets.relu("r3", "conv3"), nets.eltwise("res", ["conv2", "conv3"], "SUM"),
              nets.pool("pool2", "res", "AVE", 3, 2, 1), nets.ip("fc", "pool2", 10)]
    C, H, W = 3, 33, 31
    rng = seeded("larger", rule_id)
    shape = (2, C, H, W)
    mode = RULES[rule_id][2]
    tn = nets.build(layers, shape, rng)
    if mode == "box":
        lo, hi = _zbox_bounds(C)
        x = nets.random_input(shape, rng, low=lo, high=hi)
    else:
        x = nets.random_input(shape, rng)
    net = lrpfast.Net.from_text(tn.text, tn.weights)
    y = tn.ref.forward(x)["fc"]
    R_top = rng.normal(size=y.shape).astype(np.float32)
    eng, rr, aux = _engine_and_ref_rules(rule_id, layers, C, {})
    got = net.propagate(x, R_top, top="fc", rules=eng)
    want = tn.ref.relevance("fc", R_top, rr, eps=aux)
    assert ref.is_close_rel(got, want) <= tolerance(rule_id)
