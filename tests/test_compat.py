"""Toolbox compatibility (caffe mode, docs/caffe_mode.md): RelPropOpts, formula codes by Caffe layer index,
the caffe-mode numerics (one switch at a time), backward_relevance(_multi), rawhm.

The float64 references below are written independently of the engine: convolutions loop over
output positions and build the explicit contributions z_ij = x_i w_ij of each receptive field
(padding as an explicit mask), pooling loops over Caffe's windows, LRN over channels.
"""
from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest

lrpfast = pytest.importorskip("lrpfast")
from lrpfast import compat
from lrpfast import rules as R
from lrpfast.compat import RelPropOpts

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "models")


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def make_net(text, weights=None):
    return lrpfast.Net.from_text(text, weights)


def conv_layer(name, bottom, n, k, pad=0, stride=1, group=1, top=None, bias=True):
    extra = (f" pad: {pad}" if pad else "") + (f" stride: {stride}" if stride != 1 else "") + \
        (f" group: {group}" if group != 1 else "") + ("" if bias else " bias_term: false")
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top or name}" '
            f'convolution_param {{ num_output: {n} kernel_size: {k}{extra} }} }}\n')


def ip_layer(name, bottom, n, top=None):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top or name}" '
            f'inner_product_param {{ num_output: {n} }} }}\n')


def relu_layer(name, blob):
    return f'layer {{ name: "{name}" type: "ReLU" bottom: "{blob}" top: "{blob}" }}\n'


def header(shape, input_layer=False, name="t"):
    dims = " ".join(f"dim: {d}" for d in shape)
    if input_layer:
        return (f'name: "{name}"\nlayer {{ name: "data" type: "Input" top: "data" '
                f'input_param {{ shape {{ {dims} }} }} }}\n')
    return f'name: "{name}"\ninput: "data"\ninput_shape {{ {dims} }}\n'


# ============================================================================ float64 reference
def pool_out(H, k, s, p):
    o = math.ceil((H + 2 * p - k) / s) + 1
    if p > 0 and (o - 1) * s >= H + p:
        o -= 1
    return o


def pool_windows(H, W, k, s, p):
    """Caffe's windows: (oh, ow, h0, h1, w0, w1, pool_size incl. padding)."""
    out = []
    for i in range(pool_out(H, k, s, p)):
        for j in range(pool_out(W, k, s, p)):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, H + p), min(ws + k, W + p)
            size = (he - hs) * (we - ws)
            out.append((i, j, max(hs, 0), min(he, H), max(ws, 0), min(we, W), size))
    return out


def conv_fwd(x, Wt, b, pad=0, stride=1, group=1):
    N, _C, H, Wd = x.shape
    O, Cg, kh, kw = Wt.shape
    Og = O // group
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = (H + 2 * pad - kh) // stride + 1, (Wd + 2 * pad - kw) // stride + 1
    y = np.zeros((N, O, Ho, Wo))
    for o in range(O):
        g = o // Og
        for i in range(Ho):
            for j in range(Wo):
                patch = xp[:, g * Cg:(g + 1) * Cg, i * stride:i * stride + kh, j * stride:j * stride + kw]
                y[:, o, i, j] = (patch * Wt[o]).sum(axis=(1, 2, 3)) + (b[o] if b is not None else 0)
    return y


def conv_rule(x, Wt, b, Rup, kind, pad=0, stride=1, group=1, eps=0.1, beta=1.0, bias_bug=True):
    """Toolbox rules on a convolution, position by position (the quirks of docs/caffe_mode.md all on)."""
    N, _C, H, Wd = x.shape
    O, Cg, kh, kw = Wt.shape
    Og = O // group
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    real = np.pad(np.ones((Cg, H, Wd)), ((0, 0), (pad, pad), (pad, pad)))
    out = np.zeros_like(xp)
    alpha = 1.0 + beta
    for n in range(N):
        for o in range(O):
            g = o // Og
            for i in range(Rup.shape[2]):
                for j in range(Rup.shape[3]):
                    sl = (slice(g * Cg, (g + 1) * Cg), slice(i * stride, i * stride + kh),
                          slice(j * stride, j * stride + kw))
                    patch = xp[n][sl]
                    mask = real[:, sl[1], sl[2]]
                    w = Wt[o]
                    z = patch * w
                    r = Rup[n, o, i, j]
                    if kind == "eps":
                        zj = z.sum() + (b[o] if b is not None else 0.0)
                        s = r if zj == 0 else r / (zj + eps * np.sign(zj))
                        c = z * s
                    elif kind == "ab":
                        bb = 0.0 if b is None else (b[o % Og] if bias_bug else b[o])
                        zp = z[z > 0].sum() + max(bb, 0.0)
                        zn = z[z < 0].sum() + min(bb, 0.0)
                        c = np.zeros_like(z)
                        if zp > 0:
                            c += alpha * np.where(z > 0, z, 0) / zp * r
                        if beta > 0 and zn < 0:
                            c -= beta * np.where(z < 0, z, 0) / zn * r
                    elif kind == "flat":
                        c = mask * r / (kh * kw)
                    elif kind == "wsq":
                        c = mask * w ** 2 / (w ** 2).sum() * r
                    elif kind in ("gradient", "deconvnet", "guided"):
                        c = mask * w * r
                    else:
                        raise ValueError(kind)
                    out[n][sl] += c
    return out[:, :, pad:pad + H, pad:pad + Wd]


def ip_rule(x, Wt, b, Rup, kind, eps=0.1, beta=1.0):
    xf = x.reshape(x.shape[0], -1)
    out = np.zeros_like(xf)
    alpha = 1.0 + beta
    for n in range(xf.shape[0]):
        for o in range(Wt.shape[0]):
            z = xf[n] * Wt[o]
            r = Rup[n, o]
            if kind == "eps":
                zj = z.sum() + b[o]
                out[n] += z * (r if zj == 0 else r / (zj + eps * np.sign(zj)))
            elif kind == "ab":
                zp, zn = z[z > 0].sum() + max(b[o], 0), z[z < 0].sum() + min(b[o], 0)
                if zp > 0:
                    out[n] += alpha * np.where(z > 0, z, 0) / zp * r
                if beta > 0 and zn < 0:
                    out[n] -= beta * np.where(z < 0, z, 0) / zn * r
            elif kind == "flat":
                out[n] += r / z.size
            elif kind == "wsq":
                out[n] += Wt[o] ** 2 / (Wt[o] ** 2).sum() * r
            else:
                out[n] += Wt[o] * r
    return out.reshape(x.shape)


def relu_rule(x_pre, Rup, kind):
    if kind == "gradient":
        return Rup * (x_pre > 0)
    if kind == "deconvnet":
        return np.maximum(Rup, 0)
    if kind == "guided":
        return np.maximum(Rup, 0) * (x_pre > 0)
    return Rup


def maxpool_fwd(x, k, s, p=0):
    N, C, H, W = x.shape
    Ho, Wo = pool_out(H, k, s, p), pool_out(W, k, s, p)
    y = np.zeros((N, C, Ho, Wo))
    arg = {}
    for n, c in itertools.product(range(N), range(C)):
        for (i, j, h0, h1, w0, w1, _) in pool_windows(H, W, k, s, p):
            win = x[n, c, h0:h1, w0:w1]
            a = int(np.argmax(win))            # first maximum, row-major
            y[n, c, i, j] = win.flat[a]
            arg[(n, c, i, j)] = (h0 + a // (w1 - w0), w0 + a % (w1 - w0))
    return y, arg


def maxpool_wta(x, arg, Rup):
    out = np.zeros_like(x)
    for (n, c, i, j), (h, w) in arg.items():
        out[n, c, h, w] += Rup[n, c, i, j]
    return out


def avgpool_fwd(x, k, s, p=0):
    N, C, H, W = x.shape
    y = np.zeros((N, C, pool_out(H, k, s, p), pool_out(W, k, s, p)))
    for (i, j, h0, h1, w0, w1, size) in pool_windows(H, W, k, s, p):
        y[:, :, i, j] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / size
    return y


def avgpool_rule(x, Rup, k, s, p, kind):
    """Toolbox rule (average pooling, docs/caffe_mode.md), or the adjoint for the true gradient."""
    out = np.zeros_like(x)
    H, W = x.shape[2:]
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for (i, j, h0, h1, w0, w1, size) in pool_windows(H, W, k, s, p):
            win = x[n, c, h0:h1, w0:w1]
            r = Rup[n, c, i, j]
            if kind == "gradient":
                out[n, c, h0:h1, w0:w1] += r / size
            elif abs(win.sum()) < 1e-6:
                out[n, c, h0:h1, w0:w1] += win
            else:
                out[n, c, h0:h1, w0:w1] += r * win / win.sum()
    return out


def lrn_scale(x, n, alpha, k):
    C = x.shape[1]
    s = np.zeros_like(x)
    for c in range(C):
        lo, hi = max(0, c - n // 2), min(C, c + n // 2 + 1)
        s[:, c] = k + alpha / n * (x[:, lo:hi] ** 2).sum(axis=1)
    return s


def lrn_fwd(x, n, alpha, beta, k):
    return x * lrn_scale(x, n, alpha, k) ** (-beta)


def lrn_type1_rule(x, Rup, n, alpha, beta, k):
    s = lrn_scale(x, n, alpha, k)
    C = x.shape[1]
    out = Rup * x * (k + alpha / n * x ** 2) ** (-beta)
    for c in range(C):
        for c2 in range(C):
            if c2 != c and abs(c2 - c) <= n // 2:
                out[:, c] -= 2 * alpha * beta / n * x[:, c] ** 2 * x[:, c2] * \
                    s[:, c2] ** (-beta - 1) * Rup[:, c2]
    return out


def lrn_grad(x, g, n, alpha, beta, k):
    s = lrn_scale(x, n, alpha, k)
    y = x * s ** (-beta)
    C = x.shape[1]
    out = g * s ** (-beta)
    for c in range(C):
        for c2 in range(C):
            if abs(c2 - c) <= n // 2:
                out[:, c] -= 2 * alpha * beta / n * x[:, c] * g[:, c2] * y[:, c2] / s[:, c2]
    return out


# ============================================================================ net A (all layer kinds)
LRN_P = {"n": 3, "alpha": 0.5, "beta": 0.75, "k": 1.5}
A_TEXT = header((2, 2, 6, 6), name="A") + \
    conv_layer("conv1", "data", 4, 3, pad=1, group=2) + relu_layer("relu1", "conv1") + \
    ('layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { '
     'local_size: 3 alpha: 0.5 beta: 0.75 k: 1.5 } }\n') + \
    ('layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param { '
     'pool: MAX kernel_size: 2 stride: 2 } }\n') + \
    conv_layer("conv2", "pool1", 4, 2, pad=1) + relu_layer("relu2", "conv2") + \
    ('layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { '
     'pool: AVE kernel_size: 3 stride: 2 pad: 1 } }\n') + \
    ip_layer("fc1", "pool2", 6) + relu_layer("relu3", "fc1") + ip_layer("fc2", "fc1", 3) + \
    'layer { name: "prob" type: "Softmax" bottom: "fc2" top: "prob" }\n'
A_INDEX = {"conv1": 0, "relu1": 1, "norm1": 2, "pool1": 3, "conv2": 4, "relu2": 5, "pool2": 6,
           "fc1": 7, "relu3": 8, "fc2": 9, "prob": 10}


def a_weights(rng):
    def w(shape, fan):
        return (rng.normal(0, 1, shape) / np.sqrt(fan)).astype(np.float32)
    return {"conv1": [w((4, 1, 3, 3), 9), w((4,), 10)],
            "conv2": [w((4, 4, 2, 2), 16), w((4,), 10)],
            "fc1": [w((6, 36), 36), w((6,), 10)],
            "fc2": [w((3, 6), 6), w((3,), 10)]}


def a_forward(x, Wd):
    f = {k: [np.asarray(v, np.float64) for v in vs] for k, vs in Wd.items()}
    a = {"data": np.asarray(x, np.float64)}
    a["conv1"] = conv_fwd(a["data"], *f["conv1"], pad=1, group=2)
    a["a1"] = np.maximum(a["conv1"], 0)
    a["norm1"] = lrn_fwd(a["a1"], **LRN_P)
    a["pool1"], a["arg1"] = maxpool_fwd(a["norm1"], 2, 2)
    a["conv2"] = conv_fwd(a["pool1"], *f["conv2"], pad=1)
    a["a2"] = np.maximum(a["conv2"], 0)
    a["pool2"] = avgpool_fwd(a["a2"], 3, 2, 1)
    a["fc1"] = a["pool2"].reshape(2, -1) @ f["fc1"][0].T + f["fc1"][1]
    a["a3"] = np.maximum(a["fc1"], 0)
    a["fc2"] = a["a3"] @ f["fc2"][0].T + f["fc2"][1]
    return a, f


def a_reference(x, Wd, classes, code, aux, eps, beta):
    """Toolbox (caffe mode) relevance at the input of net A, float64."""
    a, f = a_forward(x, Wd)
    conv_c, ip_c = compat.FORMULA_CODES[code]
    pick = lambda kind, idx: kind if "|" not in kind else kind.split("|")[0 if idx <= aux else 1]
    true_grad = code in (11, 99)
    seed = np.zeros_like(a["fc2"])
    for n, cs in enumerate(classes):
        for c in cs:
            seed[n, c] += a["fc2"][n, c]
    Rv = ip_rule(a["a3"], *f["fc2"], seed, pick(ip_c, 9), eps, beta)
    Rv = relu_rule(a["fc1"], Rv, pick(ip_c, 9))
    Rv = ip_rule(a["pool2"], *f["fc1"], Rv, pick(ip_c, 7), eps, beta)
    Rv = avgpool_rule(a["a2"], Rv, 3, 2, 1, "gradient" if true_grad else "lrp")
    Rv = relu_rule(a["conv2"], Rv, pick(conv_c, 4))
    Rv = conv_rule(a["pool1"], *f["conv2"], Rv, pick(conv_c, 4), pad=1, eps=eps, beta=beta)
    Rv = maxpool_wta(a["norm1"], a["arg1"], Rv)
    Rv = lrn_grad(a["a1"], Rv, **LRN_P) if true_grad else lrn_type1_rule(a["a1"], Rv, **LRN_P)
    Rv = relu_rule(a["conv1"], Rv, pick(conv_c, 0))
    Rv = conv_rule(a["data"], *f["conv1"], Rv, pick(conv_c, 0), pad=1, group=2, eps=eps, beta=beta)
    if code == 99:
        Rv = np.broadcast_to(np.sqrt((Rv ** 2).sum(axis=1, keepdims=True)), Rv.shape)
    return Rv


@pytest.fixture(scope="module")
def net_a():
    rng = np.random.default_rng(7)
    Wd = a_weights(rng)
    x = rng.normal(0, 1, (2, 2, 6, 6)).astype(np.float32)
    return make_net(A_TEXT, Wd), Wd, x


CODE_AUX = [(0, -1), (2, -1), (54, 7), (56, 7), (58, 4), (60, 4), (100, -1), (102, 7), (104, 4),
            (114, 4), (114, 0), (54, 0), (26, -1), (166, -1), (11, -1), (99, -1)]
CLASSES = [[1], [0, 2]]


@pytest.mark.parametrize("code,aux", CODE_AUX)
def test_formula_code_caffe_mode_matches_float64_reference(net_a, code, aux):
    net, Wd, x = net_a
    opts = RelPropOpts(relpropformulatype=code, epsstab=0.1, alphabeta_beta=1.0,
                       auxiliaryvariable_maxlayerindexforflatdistinconv=aux)
    net.forward(x)
    res = net.backward_relevance_multi(CLASSES, opts)
    ref = a_reference(x, Wd, CLASSES, code, aux, 0.1, 1.0)
    assert res.R.shape == x.shape and res.R.dtype == np.float32
    assert rel_err(res.R, ref) < 2e-4, (code, aux, rel_err(res.R, ref))
    # the same rules through the plain API
    R2 = net.relevance(x, CLASSES, rules=opts)
    assert rel_err(R2, ref) < 2e-4


def _expected_lrpfast_rules(code, aux, eps, beta):
    kinds = {"eps": R.Epsilon(eps), "ab": R.AlphaBeta(1 + beta, beta), "flat": R.Flat(),
             "wsq": R.WSquare(), "gradient": R.Gradient(), "deconvnet": R.Deconvnet(),
             "guided": R.GuidedBackprop()}
    conv_c, ip_c = compat.FORMULA_CODES[code]
    pick = lambda kind, idx: kind if "|" not in kind else kind.split("|")[0 if idx <= aux else 1]
    return {name: kinds[pick(conv_c if name.startswith("conv") else ip_c, A_INDEX[name])]
            for name in ("conv1", "conv2", "fc1", "fc2")}


@pytest.mark.parametrize("code,aux", CODE_AUX)
def test_formula_code_lrpfast_mode_is_lrpfast_rules_by_caffe_index(net_a, code, aux):
    net, _Wd, x = net_a
    opts = RelPropOpts(relpropformulatype=code, epsstab=0.1, alphabeta_beta=1.0, mode="lrpfast",
                       auxiliaryvariable_maxlayerindexforflatdistinconv=aux)
    expected = _expected_lrpfast_rules(code, aux, 0.1, 1.0)
    comp = lrpfast.composites.as_composite(opts)
    assert comp.assign(net.layers, net=net) == expected
    assert comp.assign(net.layers) == expected        # without the net: input: fields assumed
    assert comp.caffe is None
    plain = lrpfast.Composite(by_name=expected, eps=0.1 if code in compat._USES_EPS else 1e-6)
    Rp = net.relevance(x, CLASSES, rules=plain)
    if code == 99:
        Rp = np.broadcast_to(np.sqrt((Rp.astype(np.float64) ** 2).sum(1, keepdims=True)), Rp.shape)
    net.forward(x)
    res = net.backward_relevance_multi(CLASSES, opts)
    np.testing.assert_allclose(res.R, Rp, rtol=1e-5, atol=1e-6 * np.abs(Rp).max())


def test_describe_rules_shows_toolbox_rules(net_a):
    net, _, _ = net_a
    opts = RelPropOpts(relpropformulatype=102, auxiliaryvariable_maxlayerindexforflatdistinconv=4)
    text = net.describe_rules(opts)
    assert "toolbox_flat" in text and "toolbox_epsilon" in text
    table = compat.format_caffe_layers(net, opts)
    assert "toolbox_flat" in table.splitlines()[5]   # caffe index 4 = conv2


# ============================================================================ Caffe indices
B_BODY = conv_layer("conv1", "data", 4, 3, pad=1) + relu_layer("relu1", "conv1") + \
    conv_layer("conv2", "conv1", 4, 1) + conv_layer("conv3", "conv1", 4, 3, pad=1)
B_TAIL = ('layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool" pooling_param { '
          'pool: MAX kernel_size: 2 stride: 2 } }\n') + ip_layer("fc", "pool", 3) + \
    'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n'


def b_text(input_layer=False, data_twice=False):
    body = B_BODY
    bottoms = ["conv2", "conv3"]
    if data_twice:
        body += conv_layer("convd", "data", 4, 3, pad=1)
        bottoms.append("convd")
    elt = ('layer { name: "sum" type: "Eltwise" bottom: "' + '" bottom: "'.join(bottoms) +
           '" top: "sum" }\n')
    return header((1, 2, 5, 5), input_layer) + body + elt + B_TAIL


def b_weights(rng, data_twice=False):
    w = {"conv1": [rng.normal(0, .4, (4, 2, 3, 3)), rng.normal(0, .1, 4)],
         "conv2": [rng.normal(0, .5, (4, 4, 1, 1)), rng.normal(0, .1, 4)],
         "conv3": [rng.normal(0, .2, (4, 4, 3, 3)), rng.normal(0, .1, 4)],
         "fc": [rng.normal(0, .3, (3, 36)), rng.normal(0, .1, 3)]}
    if data_twice:
        w["convd"] = [rng.normal(0, .4, (4, 2, 3, 3)), rng.normal(0, .1, 4)]
    return {k: [np.asarray(a, np.float32) for a in v] for k, v in w.items()}


def table_of(net):
    return [(c.index, c.name if c.kind != "split" else "SPLIT:" + c.blob.split("#")[0], c.kind)
            for c in compat.caffe_layers(net)]


def test_caffe_indices_branching_net_with_implicit_split():
    net = make_net(b_text())
    names = [n for _, n, _ in table_of(net)]
    assert names == ["conv1", "relu1", "SPLIT:conv1", "conv2", "conv3", "sum", "pool", "fc", "prob"]
    split = compat.caffe_layers(net)[2]
    assert split.type == "Split" and split.blob == net.layer("conv2").bottoms[0]  # post-ReLU
    assert compat.caffe_layer_indices(net)["fc"] == 7


def test_caffe_indices_input_layer_and_input_read_twice():
    # Input layer: a layer (index 0); its blob is read twice -> a Split right after it
    net = make_net(b_text(input_layer=True, data_twice=True))
    names = [n for _, n, _ in table_of(net)]
    assert names == ["data", "SPLIT:data", "conv1", "relu1", "SPLIT:conv1", "conv2", "conv3",
                     "convd", "sum", "pool", "fc", "prob"]
    assert compat.caffe_layers(net)[0].kind == "input"
    # input: field -> not a layer; its Split comes first
    net = make_net(b_text(input_layer=False, data_twice=True))
    names = [n for _, n, _ in table_of(net)]
    assert names == ["SPLIT:data", "conv1", "relu1", "SPLIT:conv1", "conv2", "conv3", "convd",
                     "sum", "pool", "fc", "prob"]
    # the rule assignment follows these indices: code 54, aux 2 -> flat up to conv1 only
    opts = RelPropOpts(relpropformulatype=54, auxiliaryvariable_maxlayerindexforflatdistinconv=2,
                       mode="lrpfast")
    got = lrpfast.composites.as_composite(opts).assign(net.layers, net=net)
    assert isinstance(got["conv1"], R.Flat) and type(got["convd"]) is R.Epsilon


def test_caffe_indices_same_blob_twice_and_read_before_inplace():
    text = header((1, 1, 4, 4)) + conv_layer("conv1", "data", 2, 3) + \
        conv_layer("convy", "conv1", 2, 1) + relu_layer("relu1", "conv1") + \
        ('layer { name: "dbl" type: "Eltwise" bottom: "conv1" bottom: "conv1" top: "dbl" }\n'
         'layer { name: "add" type: "Eltwise" bottom: "dbl" bottom: "convy" top: "add" }\n') + \
        ip_layer("fc", "add", 2)
    net = make_net(text)
    names = [n for _, n, _ in table_of(net)]
    # conv1 (pre-ReLU) is read by convy and relu1 -> split after conv1; relu1's output is read
    # twice by dbl -> split after relu1
    assert names == ["conv1", "SPLIT:conv1", "convy", "relu1", "SPLIT:conv1", "dbl", "add", "fc"]
    t = compat.caffe_layers(net)
    assert t[1].blob == "conv1" and t[4].blob == net.layer("dbl").bottoms[0] != "conv1"


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED, "bvlc_reference_caffenet")),
                    reason="shared CaffeNet prototxt not available")
def test_caffe_indices_caffenet_match_the_toolbox_demo():
    # lrp_python_demo.py: "interesting values for caffenet are 0, 4, 8, 10, 12 | 15, 18, 21
    # (convolution layers | innerproduct layers)"
    net = lrpfast.Net(os.path.join(SHARED, "bvlc_reference_caffenet", "deploy.prototxt"))
    idx = compat.caffe_layer_indices(net)
    assert [idx[n] for n in ("conv1", "conv2", "conv3", "conv4", "conv5")] == [0, 4, 8, 10, 12]
    assert [idx[n] for n in ("fc6", "fc7", "fc8", "prob")] == [15, 18, 21, 22]


# ============================================================================ top / readout
@pytest.fixture(scope="module")
def net_b():
    rng = np.random.default_rng(3)
    net = make_net(b_text(), b_weights(rng))
    x = rng.normal(0, 1, (2, 2, 5, 5)).astype(np.float32)
    return net, x


def test_lastlayerindex_choices(net_b):
    net, x = net_b
    net.forward(x)
    r2 = net.backward_relevance(1, RelPropOpts(lastlayerindex=-2))
    r1 = net.backward_relevance(1, RelPropOpts(lastlayerindex=-1))
    r7 = net.backward_relevance(1, RelPropOpts(lastlayerindex=7))
    assert r2.top == r1.top == r7.top == "fc"
    np.testing.assert_array_equal(r2.R, r1.R)
    np.testing.assert_array_equal(r2.R, r7.R)
    r5 = net.backward_relevance(3, RelPropOpts(lastlayerindex=5))
    assert r5.top == "sum" and np.isfinite(r5.R).all()
    with pytest.raises(ValueError, match="Split"):
        net.backward_relevance(0, RelPropOpts(lastlayerindex=2))
    with pytest.raises(ValueError, match="out of range"):
        net.backward_relevance(0, RelPropOpts(lastlayerindex=40))
    with pytest.raises(ValueError, match="firstlayerindex"):
        net.backward_relevance(0, RelPropOpts(firstlayerindex=7))   # last -2 -> fc = 7
    with pytest.raises(ValueError, match="numclasses"):
        net.backward_relevance(0, RelPropOpts(numclasses=1000))
    assert net.backward_relevance(0, RelPropOpts(numclasses=3)).R.shape == x.shape


@pytest.mark.parametrize("code", [0, 11])
def test_firstlayerindex_readout_split_branches_and_inplace(net_b, code):
    net, x = net_b
    net.forward(x)
    o = {"relpropformulatype": code, "epsstab": 0.1}
    whole = net.backward_relevance([0, 2], RelPropOpts(firstlayerindex=2, **o))  # the Split
    b2 = net.backward_relevance([0, 2], RelPropOpts(firstlayerindex=3, **o))     # conv2's branch
    b3 = net.backward_relevance([0, 2], RelPropOpts(firstlayerindex=4, **o))     # conv3's branch
    assert whole.R.shape == b2.R.shape == (2, 4, 5, 5)
    assert rel_err(b2.R + b3.R, whole.R) < 1e-5
    assert rel_err(b2.R, whole.R) > 1e-3
    # relu1 (in place): its bottom is conv1 before the ReLU
    below = net.backward_relevance([0, 2], RelPropOpts(firstlayerindex=1, **o))
    assert below.readout == net.layer("relu1").bottoms[0] != whole.readout
    blobs, _ = net._run_forward(net._check_input(x))
    mask = blobs[net.layer("relu1").bottoms[0]] > 0
    expect = whole.R * mask if code == 11 else whole.R
    assert rel_err(below.R, expect) < 1e-6
    # firstlayerindex 0: conv1's bottom = the input
    r0 = net.backward_relevance([0, 2], RelPropOpts(**o))
    assert r0.R.shape == x.shape and r0.readout == "data"


# ============================================================================ API behaviour
def test_backward_relevance_is_idempotent_and_uses_the_last_forward(net_a):
    net, _Wd, x = net_a
    opts = RelPropOpts(relpropformulatype=58, alphabeta_beta=1.0,
                       auxiliaryvariable_maxlayerindexforflatdistinconv=4)
    net.forward(x)
    r1 = net.backward_relevance([1], opts)
    other = np.random.default_rng(1).normal(0, 1, x.shape).astype(np.float32)
    net.relevance(other, 0, rules=opts)              # no effect on the stored forward
    r2 = net.backward_relevance([1], opts)
    np.testing.assert_array_equal(r1.R, r2.R)
    np.testing.assert_array_equal(r1.rawhm, r2.rawhm)
    x_copy = x.copy()
    net.forward(x_copy)
    x_copy[:] = 0                                    # the stored input is a copy
    np.testing.assert_array_equal(net.backward_relevance([1], opts).R, r1.R)
    net.forward(other)
    assert rel_err(net.backward_relevance([1], opts).R, r1.R) > 1e-3


def test_backward_relevance_multi_equals_separate_calls(net_a):
    net, _Wd, x = net_a
    rng = np.random.default_rng(5)
    xs = rng.normal(0, 1, (3,) + x.shape[1:]).astype(np.float32)
    opts = RelPropOpts(relpropformulatype=114, alphabeta_beta=0.5, epsstab=0.01,
                       auxiliaryvariable_maxlayerindexforflatdistinconv=4)
    cls = [[0], [1, 2], 2]
    net.forward(xs)
    multi = net.backward_relevance_multi(cls, opts)
    assert multi.R.shape == xs.shape and multi.rawhm.shape == (3, 2, 36)
    for i, c in enumerate(cls):
        net.forward(xs[i:i + 1])
        single = net.backward_relevance(c, opts)
        np.testing.assert_allclose(multi.R[i], single.R[0], rtol=1e-5,
                                   atol=1e-6 * np.abs(single.R).max())
        np.testing.assert_array_equal(multi.rawhm[i], compat.to_rawhm(multi.R[i]))
    # one class list for all images = the same list per image
    net.forward(xs)
    np.testing.assert_allclose(net.backward_relevance([1, 2], opts).R,
                               net.backward_relevance_multi([[1, 2]] * 3, opts).R)


def test_backward_relevance_errors(net_a):
    _net, Wd, x = net_a
    fresh = make_net(A_TEXT, Wd)
    with pytest.raises(ValueError, match="forward"):
        fresh.backward_relevance(0, RelPropOpts())
    fresh.forward(x)
    with pytest.raises(ValueError, match="one class entry per image"):
        fresh.backward_relevance_multi([[0]], RelPropOpts())
    with pytest.raises(ValueError, match="out of range"):
        fresh.backward_relevance(5, RelPropOpts())
    with pytest.raises(TypeError):
        fresh.backward_relevance(0, "epsilon")


def test_rawhm_layout_round_trip():
    rng = np.random.default_rng(0)
    Rm = rng.normal(size=(3, 4, 5)).astype(np.float32)
    raw = compat.to_rawhm(Rm)
    C, H, W = Rm.shape
    assert raw.shape == (C, H * W)
    for ch, h, w in itertools.product(range(C), range(H), range(W)):
        assert raw[ch][h + w * H] == Rm[C - 1 - ch, h, w]
    np.testing.assert_array_equal(compat.from_rawhm(raw, H, W), Rm)
    np.testing.assert_array_equal(compat.from_rawhm(raw.tolist(), H, W), Rm)
    batch = rng.normal(size=(2, 3, 4, 5))
    np.testing.assert_array_equal(compat.from_rawhm(compat.to_rawhm(batch), 4, 5), batch)
    with pytest.raises(ValueError):
        compat.from_rawhm(raw, 5, 5)
    with pytest.raises(ValueError):
        compat.to_rawhm(Rm[0])


# ============================================================================ validation
@pytest.mark.parametrize("kw,match", [
    ({"relpropformulatype": 7}, "not a known formula code"),
    ({"relpropformulatype": 2, "alphabeta_beta": -0.5}, "beta"),
    ({"relpropformulatype": 54}, "auxiliaryvariable"),
    ({"relpropformulatype": 114, "auxiliaryvariable_maxlayerindexforflatdistinconv": -3}, "aux"),
    ({"epsstab": -1e-3}, "epsstab"),
    ({"epsstab": float("nan")}, "epsstab"),
    ({"lastlayerindex": 5, "firstlayerindex": 5}, "below"),
    ({"lastlayerindex": -3}, "lastlayerindex"),
    ({"firstlayerindex": -1}, "firstlayerindex"),
    ({"biastreatmenttype": 1}, "biastreatmenttype"),
    ({"lrn_backward_type": 2}, "lrn_backward_type"),
    ({"maxpoolingtoavgpoolinginbackwardpass": 2}, "maxpooling"),
    ({"numclasses": 0}, "numclasses"),
    ({"mode": "toolbox"}, "mode"),
    ({"grouped_bias_bug": "yes"}, "grouped_bias_bug"),
    ({"relpropformulatype": "zero"}, "integer"),
])
def test_validation_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        RelPropOpts(**kw)


def test_validation_at_use_after_mutation(net_a):
    net, _, x = net_a
    opts = RelPropOpts()                     # the toolbox style: fill in the fields afterwards
    opts.relpropformulatype = 56
    with pytest.raises(ValueError, match="auxiliaryvariable"):
        net.relevance(x, 0, rules=opts)
    opts.auxiliaryvariable_maxlayerindexforflatdistinconv = 0
    assert np.isfinite(net.relevance(x, 0, rules=opts)).all()
    comp = opts.to_composite()
    opts.alphabeta_beta = -1.0               # the composite took a snapshot
    assert comp.opts.alphabeta_beta == 0.1
    with pytest.raises(ValueError, match="beta"):
        opts.to_composite()


def test_defaults_and_switch_resolution():
    o = RelPropOpts()
    assert (o.relpropformulatype, o.lastlayerindex, o.firstlayerindex, o.lrn_backward_type,
            o.biastreatmenttype, o.maxpoolingtoavgpoolinginbackwardpass) == (0, -2, 0, 1, 0, 0)
    assert o.alpha == pytest.approx(1.1) and all(o.switches.values())
    o = RelPropOpts(mode="lrpfast", avgpool_toolbox=True)
    assert o.switches == {s: s == "avgpool_toolbox" for s in compat.SWITCHES}
    o = RelPropOpts(grouped_bias_bug=False)
    assert not o.switch("grouped_bias_bug") and o.switch("lrn_type1")
    assert lrpfast.RelPropOpts is RelPropOpts


# ============================================================================ switches, one at a time
def only(switch, **kw):
    """lrpfast mode with one caffe-mode switch on."""
    return RelPropOpts(mode="lrpfast", **{switch: True}, **kw)


def single_conv_net(shape, Wt, b, pad=0, group=1):
    O, _, k, _ = Wt.shape
    text = header(shape) + conv_layer("conv", "data", O, k, pad=pad, group=group,
                                      bias=b is not None)
    w = [np.asarray(Wt, np.float32)] + ([np.asarray(b, np.float32)] if b is not None else [])
    return make_net(text, {"conv": w})


def test_switch_eps_zero_passthrough():
    Wt = np.array([[[[1.0, 1.0], [0.0, 0.0]]]])
    x = np.array([[[[1.0, -1.0, 2.0], [3.0, 0.5, 0.0], [1.0, 1.0, 1.0]]]], np.float32)
    net = single_conv_net((1, 1, 3, 3), Wt, None)
    Rt = np.array([[[[2.0, 3.0], [5.0, 7.0]]]], np.float32)
    eps = 0.25
    # by hand: z = [[x00+x01, x01+x02], [x10+x11, x11+x12]] = [[0, 1], [3.5, 0.5]]
    # z00 = 0 passes R undivided: R(x00) += 1*2, R(x01) += -1*2
    exp = np.zeros((3, 3))
    exp[0, 0] += 1 * 2
    exp[0, 1] += -1 * 2
    exp[0, 1] += -1 * 3 / (1 + eps)
    exp[0, 2] += 2 * 3 / (1 + eps)
    exp[1, 0] += 3 * 5 / (3.5 + eps)
    exp[1, 1] += 0.5 * 5 / (3.5 + eps) + 0.5 * 7 / (0.5 + eps)
    exp[1, 2] += 0.0
    on = net.propagate(x, Rt, top="conv", rules=only("eps_zero_passthrough", epsstab=eps))
    np.testing.assert_allclose(on[0, 0], exp, rtol=1e-6)
    off = net.propagate(x, Rt, top="conv", rules=RelPropOpts(mode="lrpfast", epsstab=eps))
    exp_off = exp.copy()                     # lrpfast: z = 0 takes eps*(+1)
    exp_off[0, 0], exp_off[0, 1] = 1 * 2 / eps, -1 * 2 / eps - 1 * 3 / (1 + eps)
    np.testing.assert_allclose(off[0, 0], exp_off, rtol=1e-6)
    np.testing.assert_array_equal(off, net.propagate(x, Rt, top="conv", rules=R.Epsilon(eps)))


def test_switch_alphabeta_toolbox_guards():
    # InnerProduct 3 -> 2; output 0 has no positive contribution and no positive bias
    W = np.array([[-1.0, 2.0, 0.0], [1.0, 1.0, -2.0]], np.float32)
    b = np.array([-0.5, 0.25], np.float32)
    x = np.array([[2.0, -1.0, 1.0]], np.float32)
    net = make_net(header((1, 3)) + ip_layer("fc", "data", 2), {"fc": [W, b]})
    Rt = np.array([[3.0, 5.0]], np.float32)
    beta = 1.0
    # z_0 = [-2, -2, 0] + b -0.5: z+ = 0 -> no alpha part; z- = -4.5
    # z_1 = [2, -1, -2] + b 0.25: z+ = 2.25, z- = -3
    exp = np.zeros(3)
    exp += -beta * np.array([-2.0, -2.0, 0.0]) / -4.5 * 3
    exp += 2.0 * np.array([2.0, 0.0, 0.0]) / 2.25 * 5 - beta * np.array([0.0, -1.0, -2.0]) / -3 * 5
    on = net.propagate(x, Rt, top="fc", rules=only("alphabeta_toolbox_guards", relpropformulatype=2,
                                                   alphabeta_beta=beta))
    np.testing.assert_allclose(on[0], exp, rtol=1e-6)
    # lrpfast's alpha-beta gives the same numbers here (zero denominators contribute nothing)
    off = net.propagate(x, Rt, top="fc", rules=R.AlphaBeta(2, 1))
    np.testing.assert_allclose(off[0], exp, rtol=1e-6)
    rule = lrpfast.composites.as_composite(only("alphabeta_toolbox_guards", relpropformulatype=2)) \
        .assign(net.layers, net=net)["fc"]
    assert isinstance(rule, compat.ToolboxAlphaBeta) and rule.guards and not rule.grouped_bias_bug


def test_switch_grouped_bias_bug():
    # 2 groups, 1 input and 1 output channel each, 2x2 kernel on a 2x2 input (one position)
    Wt = np.array([[[[1.0, -1.0], [0.5, 0.0]]], [[[2.0, 1.0], [-1.0, 0.0]]]])
    b = np.array([0.5, -2.0])
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, -1.0], [2.0, 1.0]]]], np.float32)
    net = single_conv_net((1, 2, 2, 2), Wt, b, group=2)
    Rt = np.array([[[[3.0]], [[5.0]]]], np.float32)
    beta = 1.0

    def ab(z, bias, r):
        zp, zn = z[z > 0].sum() + max(bias, 0), z[z < 0].sum() + min(bias, 0)
        return 2 * np.where(z > 0, z, 0) / zp * r - beta * np.where(z < 0, z, 0) / zn * r

    z0, z1 = x[0, 0] * Wt[0, 0], x[0, 1] * Wt[1, 0]
    exp_bug = np.stack([ab(z0, 0.5, 3), ab(z1, 0.5, 5)])        # group 1 takes bias[0]
    exp_ok = np.stack([ab(z0, 0.5, 3), ab(z1, -2.0, 5)])
    opts = only("grouped_bias_bug", relpropformulatype=2, alphabeta_beta=beta)
    on = net.propagate(x, Rt, top="conv", rules=opts)
    np.testing.assert_allclose(on[0], exp_bug, rtol=1e-6)
    off = net.propagate(x, Rt, top="conv", rules=RelPropOpts(relpropformulatype=2, mode="lrpfast",
                                                             alphabeta_beta=beta))
    np.testing.assert_allclose(off[0], exp_ok, rtol=1e-6)
    assert not np.allclose(exp_bug[1], exp_ok[1])


def _flat_by_hand(Rt, Cin, k, pad, divisor):
    """R_i = Σ_j R_j / divisor(j) over the real taps of a stride-1 conv with one output."""
    Ho, Wo = Rt.shape
    H, W = Ho + k - 1 - 2 * pad, Wo + k - 1 - 2 * pad
    out = np.zeros((Cin, H, W))
    for i, j in itertools.product(range(Ho), range(Wo)):
        taps = [(h, w) for h in range(i - pad, i - pad + k) for w in range(j - pad, j - pad + k)
                if 0 <= h < H and 0 <= w < W]
        for h, w in taps:
            out[:, h, w] += Rt[i, j] / divisor(len(taps))
    return out


@pytest.mark.parametrize("switches", [(), ("flat_kernel_area",), ("drop_padded_taps",),
                                      ("flat_kernel_area", "drop_padded_taps")])
def test_switches_flat_kernel_area_and_drop_padded_taps(switches):
    Cin, k, pad = 2, 3, 1
    rng = np.random.default_rng(11)
    net = single_conv_net((1, Cin, 3, 3), rng.normal(size=(1, Cin, k, k)), None, pad=pad)
    x = rng.normal(size=(1, Cin, 3, 3)).astype(np.float32)
    Rt = np.arange(1.0, 10.0).reshape(1, 1, 3, 3).astype(np.float32)
    ka, dp = "flat_kernel_area" in switches, "drop_padded_taps" in switches
    # divisor: (kh*kw if padded taps dropped, else the real spatial taps) * (1 or Cin)
    div = lambda real: (k * k if dp else real) * (1 if ka else Cin)
    exp = _flat_by_hand(Rt[0, 0], Cin, k, pad, div)
    opts = RelPropOpts(mode="lrpfast", relpropformulatype=54,
                       auxiliaryvariable_maxlayerindexforflatdistinconv=0,
                       **{s: True for s in switches})
    got = net.propagate(x, Rt, top="conv", rules=opts)
    np.testing.assert_allclose(got[0], exp, rtol=1e-6)
    if not switches:
        np.testing.assert_array_equal(got, net.propagate(x, Rt, top="conv", rules=R.Flat()))
        assert got.sum() == pytest.approx(Rt.sum(), rel=1e-6)          # conservative
    if ka and dp:   # the toolbox: each R_j grows by Cin x (real taps / kh kw)
        real = np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]])
        assert got.sum() == pytest.approx((Rt[0, 0] * Cin * real / 9).sum(), rel=1e-6)


def test_switch_drop_padded_taps_wsquare():
    rng = np.random.default_rng(12)
    Wt = rng.normal(size=(1, 2, 3, 3))
    net = single_conv_net((1, 2, 3, 3), Wt, None, pad=1)
    x = rng.normal(size=(1, 2, 3, 3)).astype(np.float32)
    Rt = rng.uniform(1, 2, (1, 1, 3, 3)).astype(np.float32)
    w2 = Wt[0] ** 2
    exp = np.zeros((2, 5, 5))
    for i, j in itertools.product(range(3), range(3)):
        exp[:, i:i + 3, j:j + 3] += w2 / w2.sum() * Rt[0, 0, i, j]   # divisor: the full kernel
    exp = exp[:, 1:4, 1:4]
    opts = only("drop_padded_taps", relpropformulatype=56,
                auxiliaryvariable_maxlayerindexforflatdistinconv=0)
    np.testing.assert_allclose(net.propagate(x, Rt, top="conv", rules=opts)[0], exp, rtol=1e-6)
    off = RelPropOpts(mode="lrpfast", relpropformulatype=56,
                      auxiliaryvariable_maxlayerindexforflatdistinconv=0)
    got_off = net.propagate(x, Rt, top="conv", rules=off)
    np.testing.assert_array_equal(got_off, net.propagate(x, Rt, top="conv", rules=R.WSquare()))
    assert got_off.sum() == pytest.approx(Rt.sum(), rel=1e-5)


def pool_net(method, k, s, shape, pad=0):
    text = header(shape) + (f'layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" '
                            f'pooling_param {{ pool: {method} kernel_size: {k} stride: {s}'
                            + (f" pad: {pad}" if pad else "") + ' } }\n')
    return make_net(text, {})


def test_switch_avgpool_toolbox():
    net = pool_net("AVE", 2, 2, (1, 1, 2, 4))
    x = np.array([[[[1.0, -1.0, 1.0, 2.0], [2.0, -2.0, 3.0, 4.0]]]], np.float32)
    Rt = np.array([[[[5.0, 7.0]]]], np.float32)
    # window 0 sums to 0: it adds x_i itself; window 1: R x_i / 10
    exp = np.array([[1.0, -1.0, 0.7, 1.4], [2.0, -2.0, 2.1, 2.8]])
    on = net.propagate(x, Rt, top="pool", rules=only("avgpool_toolbox"))
    np.testing.assert_allclose(on[0, 0], exp, rtol=1e-6)
    # lrpfast: the z-rule with the composite's eps (code 0: epsstab) on the window average
    off = net.propagate(x, Rt, top="pool", rules=RelPropOpts(mode="lrpfast", epsstab=1e-6))
    assert not np.allclose(off[0, 0], exp)
    np.testing.assert_allclose(off[0, 0, :, 2:], exp[:, 2:], rtol=1e-5)
    # padded windows (divisor includes padding) agree with the explicit reference
    net = pool_net("AVE", 3, 2, (1, 2, 4, 5), pad=1)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 2, 4, 5)).astype(np.float32)
    Rt = rng.normal(size=(1, 2, 3, 3)).astype(np.float32)
    got = net.propagate(x, Rt, top="pool", rules=only("avgpool_toolbox"))
    np.testing.assert_allclose(got, avgpool_rule(x.astype(np.float64), Rt, 3, 2, 1, "lrp"),
                               rtol=1e-5, atol=1e-6)
    # max pooling treated as average (maxpoolingtoavgpoolinginbackwardpass = 1) uses it too
    net = pool_net("MAX", 2, 2, (1, 1, 2, 4))
    x = np.array([[[[1.0, -1.0, 1.0, 2.0], [2.0, -2.0, 3.0, 4.0]]]], np.float32)
    Rt = np.array([[[[5.0, 7.0]]]], np.float32)
    got = net.propagate(x, Rt, top="pool", rules=RelPropOpts(maxpoolingtoavgpoolinginbackwardpass=1))
    np.testing.assert_allclose(got[0, 0], exp, rtol=1e-6)
    wta = net.propagate(x, Rt, top="pool", rules=RelPropOpts())
    np.testing.assert_array_equal(wta[0, 0], [[0, 0, 0, 0], [5, 0, 0, 7]])


def lrn_net(shape, n=3, alpha=0.3, beta=0.75, k=2.0):
    text = header(shape) + (f'layer {{ name: "norm" type: "LRN" bottom: "data" top: "norm" '
                            f'lrn_param {{ local_size: {n} alpha: {alpha} beta: {beta} k: {k} }} }}\n')
    return make_net(text, {})


def test_switch_lrn_type1():
    net = lrn_net((1, 4, 1, 2))
    x = np.array([[[[1.0, -2.0]], [[0.5, 1.0]], [[2.0, 0.0]], [[-1.0, 3.0]]]], np.float32)
    Rt = np.array([[[[1.0, 2.0]], [[3.0, -1.0]], [[0.5, 1.0]], [[2.0, 2.0]]]], np.float32)
    n, a, b, k = 3, 0.3, 0.75, 2.0
    xd, Rd = x[0, :, 0, :].astype(np.float64), Rt[0, :, 0, :].astype(np.float64)   # (C, W)
    s = np.array([[k + a / n * sum(xd[c2, w] ** 2 for c2 in range(max(0, c - 1), min(4, c + 2)))
                   for w in range(2)] for c in range(4)])
    exp = np.zeros((4, 2))
    for c, w in itertools.product(range(4), range(2)):
        exp[c, w] = Rd[c, w] * xd[c, w] * (k + a / n * xd[c, w] ** 2) ** (-b)
        for c2 in (c - 1, c + 1):
            if 0 <= c2 < 4:
                exp[c, w] -= 2 * a * b / n * xd[c, w] ** 2 * xd[c2, w] * s[c2, w] ** (-b - 1) * Rd[c2, w]
    on = net.propagate(x, Rt, top="norm", rules=only("lrn_type1"))
    np.testing.assert_allclose(on[0, :, 0, :], exp, rtol=1e-5)
    # lrn_backward_type 0 / -1, or the switch off: identity
    for opts in (RelPropOpts(lrn_backward_type=0), RelPropOpts(lrn_backward_type=-1),
                 RelPropOpts(mode="lrpfast")):
        np.testing.assert_array_equal(net.propagate(x, Rt, top="norm", rules=opts), Rt)


def test_switch_lrn_true_gradient_code_11():
    net = lrn_net((1, 5, 2, 2), n=5, alpha=0.7, beta=0.6, k=1.2)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 5, 2, 2)).astype(np.float32)
    g = rng.normal(size=(1, 5, 2, 2)).astype(np.float32)
    P = {"n": 5, "alpha": 0.7, "beta": 0.6, "k": 1.2}
    # finite differences of <g, LRN(x)>
    x64 = x.astype(np.float64)
    fd = np.zeros_like(x64)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x64)
        e[idx] = 1e-6
        fd[idx] = ((g * lrn_fwd(x64 + e, **P)).sum() - (g * lrn_fwd(x64 - e, **P)).sum()) / 2e-6
    np.testing.assert_allclose(lrn_grad(x64, g.astype(np.float64), **P), fd, rtol=1e-6, atol=1e-8)
    on = net.propagate(x, g, top="norm", rules=only("lrn_true_gradient", relpropformulatype=11))
    np.testing.assert_allclose(on, fd, rtol=1e-5, atol=1e-6)
    off = net.propagate(x, g, top="norm", rules=RelPropOpts(mode="lrpfast", relpropformulatype=11))
    np.testing.assert_array_equal(off, g)     # lrpfast's gradient passes LRN as identity


def test_lrpfast_mode_rules_are_the_plain_lrpfast_rules():
    comp = RelPropOpts(mode="lrpfast", relpropformulatype=104, alphabeta_beta=1.0,
                       auxiliaryvariable_maxlayerindexforflatdistinconv=0).to_composite()
    assert type(comp.rule("eps")) is R.Epsilon and type(comp.rule("ab")) is R.AlphaBeta
    assert type(comp.rule("flat")) is R.Flat and type(comp.rule("wsq")) is R.WSquare
    assert comp.caffe is None and comp.maxpool == "wta"
    caffe = RelPropOpts(relpropformulatype=104, auxiliaryvariable_maxlayerindexforflatdistinconv=0)
    c = caffe.to_composite()
    assert isinstance(c.rule("eps"), compat.ToolboxEpsilon) and c.caffe is not None


# ============================================================================ speed paths (issue 19)
# A grouped convolution on inputs >= 0 (the alpha-beta rule's stacked path) whose biases differ
# between the groups, so the grouped-bias bug changes the numbers, then a ReLU and a classifier.
G_TEXT = header((3, 4, 5, 5), name="G") + conv_layer("conv", "data", 6, 3, pad=1, group=2) + \
    relu_layer("relu", "conv") + ip_layer("fc", "conv", 4)
# float32 products against the float64 reference, relative L2 over the map: the rules divide by
# sums of 27..150 terms that stay far from 0 with these positive inputs (measured ~1e-7)
FAST_PATH_TOL = 1e-5


def g_net(seed):
    rng = np.random.default_rng(seed)
    Wd = {"conv": [rng.normal(0, 0.5, (6, 2, 3, 3)), rng.normal(0, 0.5, 6)],
          "fc": [rng.normal(0, 0.3, (4, 150)), rng.normal(0, 0.3, 4)]}
    Wd = {k: [np.asarray(v, np.float32) for v in vs] for k, vs in Wd.items()}
    x = np.abs(rng.normal(0, 1, (3, 4, 5, 5))).astype(np.float32)
    return make_net(G_TEXT, Wd), Wd, x


@pytest.mark.parametrize("beta", [1.0, 0.0])
def test_caffe_alpha_beta_stacked_path_matches_float64_reference(beta):
    """Caffe mode's alpha-beta (guards and grouped-bias bug on) on inputs >= 0 takes lrpfast's
    stacked path: through compat (the kept forward, z+ computed by the rule) and through
    relevance (z+ from the forward pass, then shifted by the bug) it matches the reference."""
    net, Wd, x = g_net(11)
    f = {k: [np.asarray(v, np.float64) for v in vs] for k, vs in Wd.items()}
    conv = conv_fwd(x.astype(np.float64), *f["conv"], pad=1, group=2)
    a = np.maximum(conv, 0)
    fc = a.reshape(3, -1) @ f["fc"][0].T + f["fc"][1]
    classes = [[1], [0, 3], [2]]
    seed = np.zeros_like(fc)
    for n, cs in enumerate(classes):
        seed[n, cs] = fc[n, cs]
    Rv = ip_rule(a, *f["fc"], seed, "ab", beta=beta).reshape(conv.shape)
    ref = conv_rule(x.astype(np.float64), *f["conv"], Rv, "ab", pad=1, group=2, beta=beta)
    opts = RelPropOpts(relpropformulatype=2, alphabeta_beta=beta)
    net.forward(x)
    res = net.backward_relevance_multi(classes, opts)
    assert rel_err(res.R, ref) < FAST_PATH_TOL
    R2 = net.relevance(x, classes, rules=opts)
    assert rel_err(R2, ref) < FAST_PATH_TOL
    # the bug matters here: without it the numbers move far beyond the tolerance
    ok = conv_rule(x.astype(np.float64), *f["conv"], Rv, "ab", pad=1, group=2, beta=beta,
                   bias_bug=False)
    assert rel_err(ok, ref) > 100 * FAST_PATH_TOL


def test_alphabeta_signal_guards_are_the_toolbox_sign_tests():
    from lrpfast._loader import _core
    r = np.ones((1, 1, 4), np.float32)
    zp = np.array([[[2.0, 0.0, 1.0, 4.0]]], np.float32)
    z = np.array([[[1.0, -1.0, 1.0 + 2 ** -20, 4.0]]], np.float32)   # z- = -1, -1, +2^-20, 0
    plain = _core.alphabeta_signal(r, z, zp, 2.0, 1.0)
    guarded = _core.alphabeta_signal(r, z, zp, 2.0, 1.0, 1, True)
    np.testing.assert_array_equal(plain[0, 0], [1.0, 0.0, 2.0, 0.5])
    np.testing.assert_array_equal(guarded[0, 0], [1.0, 0.0, 2.0, 0.5])
    np.testing.assert_array_equal(plain[0, 1], [1.0, 1.0, -(2.0 ** 20), 0.0])
    # a z- of the wrong sign (rounding in z - z+) contributes nothing, as z- < 0 is required
    np.testing.assert_array_equal(guarded[0, 1], [1.0, 1.0, 0.0, 0.0])


CODES_REUSE = [(0, -1), (2, -1), (58, 4), (114, 4), (11, -1), (99, -1), (26, -1)]


@pytest.mark.parametrize("code,aux", CODES_REUSE)
def test_backward_relevance_reuses_the_forward_pass(net_a, code, aux, monkeypatch):
    """forward then backward_relevance computes the forward pass once; the kept activations
    are read only (a second call and a recomputed pass give the same bits)."""
    net, _Wd, x = net_a
    opts = RelPropOpts(relpropformulatype=code, epsstab=0.1, alphabeta_beta=1.0,
                       auxiliaryvariable_maxlayerindexforflatdistinconv=aux)
    calls = []
    real = net._run_forward
    monkeypatch.setattr(net, "_run_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    net.forward(x)
    assert len(calls) == 1
    blobs, states = net._local.last_forward[2:]
    before = {k: np.array(v) for k, v in blobs.items()}
    r1 = net.backward_relevance_multi(CLASSES, opts)
    r2 = net.backward_relevance_multi(CLASSES, opts)
    assert len(calls) == 1                     # no second forward pass
    np.testing.assert_array_equal(r1.R, r2.R)
    for k, v in blobs.items():
        np.testing.assert_array_equal(v, before[k])
    net._local.last_forward = None             # as if not kept: recomputed, same bits
    np.testing.assert_array_equal(net.backward_relevance_multi(CLASSES, opts).R, r1.R)
    assert len(calls) == 2


def test_forward_kept_only_for_one_chunk_and_released(net_a):
    net, _Wd, x = net_a
    opts = RelPropOpts(relpropformulatype=2, alphabeta_beta=1.0)
    net.forward(x)
    full = net.backward_relevance_multi(CLASSES, opts).R
    assert net._local.last_forward is not None
    limit = net.memory_limit
    try:
        net.memory_limit = net._bytes_per_sample()          # one image per chunk
        net.forward(x)
        assert net._local.last_forward is None              # not kept: recomputed per chunk
        assert rel_err(net.backward_relevance_multi(CLASSES, opts).R, full) < 1e-6
    finally:
        net.memory_limit = limit
    net.forward(x)
    other = np.random.default_rng(3).normal(0, 1, x.shape).astype(np.float32)
    net.relevance(other, 0, rules=opts)        # another input: the kept pass is dropped ...
    assert net._local.last_forward is None
    np.testing.assert_array_equal(net.backward_relevance_multi(CLASSES, opts).R, full)  # ... not x
    net.forward(x)
    assert any(len(op._w_cache) > 1 for op in (l.op for l in net.layers if hasattr(l, "op")))
    net.release()
    assert net._local.last_forward is None and net._local.last_input is None
    assert all(len(op._w_cache) == 1 for op in (l.op for l in net.layers if hasattr(l, "op")))
    with pytest.raises(ValueError, match="forward pass first"):
        net.backward_relevance_multi(CLASSES, opts)
    net.forward(x)
    np.testing.assert_array_equal(net.backward_relevance_multi(CLASSES, opts).R, full)
    assert isinstance(lrpfast.release_memory(), bool)
