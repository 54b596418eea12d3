"""Float64 numpy reference for lrpfast: Caffe forward passes and LRP relevance rules.

Written for clarity, not speed, and independent of the engine:

* no im2col / col2im and no shared code with ``lrpfast``: a convolution is computed by looping
  over its output positions, cutting the receptive field out of an ``np.pad``-ed input, and
  building the explicit contribution tensor ``z_ij = x_i * w_ij`` of that position;
* every rule is written once, in matrix form, for one "local" linear layer
  (``linear_rule``): inputs ``a`` (N, K), weights ``W`` (J, K), bias ``b`` (J,), upper relevance
  ``R`` (N, J), and a mask of the inputs that are real (not padding).  A convolution applies it
  at every output position and group and scatters the result back; an InnerProduct applies it
  once to the flattened input; an unfolded BatchNorm / Scale applies it per element (J = K = 1).

Semantics follow lrpfast mode's rule definitions (README, docs/).  Everything is float64; callers pass the same
float32 weights/inputs they give the engine, so both see exactly the same numbers.

The whole-net part (``RefNet``) takes a list of ``Layer`` records (see ``tests/nets.py``, which
builds the same list and the prototxt text the engine reads), runs the forward pass, seeds
relevance at a layer's top blob and propagates it back layer by layer with a rule per layer.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------

LRP_KINDS = ("z", "epsilon", "alphabeta", "flat", "wsquare", "zbox")
SIGNAL_KINDS = ("gradient", "deconvnet", "guided")


@dataclass(frozen=True)
class Rule:
    """A rule for linear layers.  ``kind`` is one of LRP_KINDS or SIGNAL_KINDS."""

    kind: str
    eps: float = 0.0
    alpha: float = 1.0
    beta: float = 0.0
    low: object = None   # zbox: scalar or per-channel sequence
    high: object = None

    def __post_init__(self):
        if self.kind not in LRP_KINDS + SIGNAL_KINDS:
            raise ValueError(f"unknown rule kind {self.kind!r}")

    def __repr__(self):
        k = self.kind
        if k == "epsilon":
            return f"eps{self.eps:g}"
        if k == "alphabeta":
            return f"a{self.alpha:g}b{self.beta:g}"
        return k


def z_rule() -> Rule:
    return Rule("z")


def epsilon(eps: float) -> Rule:
    return Rule("epsilon", eps=eps)


def alphabeta(alpha: float, beta: float) -> Rule:
    return Rule("alphabeta", alpha=alpha, beta=beta)


def flat() -> Rule:
    return Rule("flat")


def wsquare() -> Rule:
    return Rule("wsquare")


def zbox(low, high) -> Rule:
    return Rule("zbox", low=low, high=high)


def gradient() -> Rule:
    return Rule("gradient")


def deconvnet() -> Rule:
    return Rule("deconvnet")


def guided() -> Rule:
    return Rule("guided")


def sign0(z: np.ndarray) -> np.ndarray:
    """sign with sign(0) = +1 (the ε-rule's convention)."""
    return np.where(z >= 0, 1.0, -1.0)


def safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, and 0 where den == 0 exactly (a zero denominator contributes nothing)."""
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    out = np.zeros(num.shape)
    nz = den != 0
    out[nz] = num[nz] / den[nz]
    return out


def linear_rule(a, W, b, R, rule: Rule, mask=None, low=None, high=None) -> np.ndarray:
    """Relevance of the inputs of one local linear map y_j = Σ_i W[j, i] a_i + b_j.

    a: (N, K) inputs (0 at padded positions), W: (J, K), b: (J,) or None, R: (N, J) upper
    relevance, mask: (K,) True for real (non-padded) inputs, low/high: (K,) z^B bounds.
    Returns R_i, (N, K).  The explicit contribution tensor z_ij = a_i W_ji has shape (N, J, K).
    """
    a = np.asarray(a, np.float64)
    W = np.asarray(W, np.float64)
    R = np.asarray(R, np.float64)
    N, K = a.shape
    J = W.shape[0]
    assert W.shape == (J, K) and R.shape == (N, J), (a.shape, W.shape, R.shape)
    b = np.zeros(J) if b is None else np.asarray(b, np.float64).reshape(J)
    mask = np.ones(K, bool) if mask is None else np.asarray(mask, bool).reshape(K)
    k = rule.kind

    if k in SIGNAL_KINDS:                   # gradient / deconvnet / guided: W^T R for linear maps
        return (R @ W) * mask

    zij = a[:, None, :] * W[None, :, :]     # (N, J, K)
    if k in ("z", "epsilon"):
        zj = zij.sum(-1) + b                # bias stays in the denominator (its share absorbed)
        if k == "z":
            s = safe_div(R, zj)
        else:
            s = safe_div(R, zj + rule.eps * sign0(zj))
        return np.einsum("njk,nj->nk", zij, s)
    if k == "alphabeta":
        zp = np.maximum(zij, 0.0)           # split by the sign of the product a_i * w_ij
        zn = np.minimum(zij, 0.0)
        zpj = zp.sum(-1) + np.maximum(b, 0.0)
        znj = zn.sum(-1) + np.minimum(b, 0.0)
        return (rule.alpha * np.einsum("njk,nj->nk", zp, safe_div(R, zpj))
                - rule.beta * np.einsum("njk,nj->nk", zn, safe_div(R, znj)))
    if k == "flat":
        n = mask.sum()                      # non-padded inputs of j, all channels of its group
        if n == 0:                          # receptive field entirely in the padding
            return np.zeros((N, K))
        return (R.sum(1) / n)[:, None] * mask[None, :]
    if k == "wsquare":
        w2 = W ** 2 * mask[None, :]         # (J, K); independent of a
        return (safe_div(R, w2.sum(1)[None, :])) @ w2
    if k == "zbox":
        low = np.broadcast_to(np.asarray(rule.low if low is None else low, np.float64), (K,))
        high = np.broadcast_to(np.asarray(rule.high if high is None else high, np.float64), (K,))
        Wp = np.maximum(W, 0.0)
        Wn = np.minimum(W, 0.0)
        t = (zij - (low * Wp)[None] - (high * Wn)[None]) * mask[None, None, :]
        return np.einsum("njk,nj->nk", t, safe_div(R, t.sum(-1)))
    raise AssertionError(k)


# --------------------------------------------------------------------------------------------
# Convolution / InnerProduct
# --------------------------------------------------------------------------------------------

def _pair(v, default):
    if v is None:
        return (default, default)
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1])) if len(v) == 2 else (int(v[0]), int(v[0]))
    return (int(v), int(v))


def conv_out_size(H, k, s, p, d):
    return (H + 2 * p - (d * (k - 1) + 1)) // s + 1


def _conv_positions(x_shape, W_shape, stride, pad, dilation, group):
    """Yield (g, oy, ox, chans, rows, cols, out_chans) for every group and output position.

    rows/cols are indices into the padded input."""
    _N, C, H, Wd = x_shape
    O, Cg, kh, kw = W_shape
    sh, sw = stride
    ph, pw = pad
    dh, dw = dilation
    assert C == Cg * group and O % group == 0, (x_shape, W_shape, group)
    OH = conv_out_size(H, kh, sh, ph, dh)
    OW = conv_out_size(Wd, kw, sw, pw, dw)
    Og = O // group
    for g in range(group):
        chans = np.arange(g * Cg, (g + 1) * Cg)
        outs = np.arange(g * Og, (g + 1) * Og)
        for oy in range(OH):
            for ox in range(OW):
                rows = oy * sh + dh * np.arange(kh)
                cols = ox * sw + dw * np.arange(kw)
                yield g, oy, ox, chans, rows, cols, outs


def conv_forward(x, W, b=None, stride=1, pad=0, dilation=1, group=1):
    """Caffe convolution (cross-correlation). x (N,C,H,W), W (O, C/group, kh, kw), b (O,)."""
    x = np.asarray(x, np.float64)
    W = np.asarray(W, np.float64)
    stride, pad, dilation = _pair(stride, 1), _pair(pad, 0), _pair(dilation, 1)
    N, _C, H, Wd = x.shape
    O, _Cg, kh, kw = W.shape
    OH = conv_out_size(H, kh, stride[0], pad[0], dilation[0])
    OW = conv_out_size(Wd, kw, stride[1], pad[1], dilation[1])
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    y = np.zeros((N, O, OH, OW))
    for g, oy, ox, chans, rows, cols, outs in _conv_positions(x.shape, W.shape, stride, pad,
                                                              dilation, group):
        patch = xp[np.ix_(np.arange(N), chans, rows, cols)].reshape(N, -1)
        y[:, outs, oy, ox] = patch @ W[outs].reshape(len(outs), -1).T
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def _channel_bounds(v, C):
    """Scalar or per-channel bound -> (C,) float64."""
    return np.broadcast_to(np.asarray(v, np.float64).reshape(-1), (C,)) if np.ndim(v) else \
        np.full(C, float(v))


def conv_relevance(x, W, b, R, rule: Rule, stride=1, pad=0, dilation=1, group=1):
    """Relevance at the input of a convolution, (N,C,H,W), for upper relevance R (N,O,OH,OW).

    Per output position and group: the receptive field (Cg, kh, kw) of the padded input and its
    mask of real pixels go to ``linear_rule``; the result is added back into a padded relevance
    map, whose padding is then cut off (padded taps receive nothing that survives)."""
    x = np.asarray(x, np.float64)
    W = np.asarray(W, np.float64)
    R = np.asarray(R, np.float64)
    stride, pad, dilation = _pair(stride, 1), _pair(pad, 0), _pair(dilation, 1)
    N, C, H, Wd = x.shape
    _O, Cg, kh, kw = W.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    real = np.pad(np.ones((H, Wd), bool), ((pad[0], pad[0]), (pad[1], pad[1])))
    Rp = np.zeros_like(xp)
    low = high = None
    if rule.kind == "zbox":
        low, high = _channel_bounds(rule.low, C), _channel_bounds(rule.high, C)
    bb = None if b is None else np.asarray(b, np.float64)
    for g, oy, ox, chans, rows, cols, outs in _conv_positions(x.shape, W.shape, stride, pad,
                                                              dilation, group):
        idx = np.ix_(np.arange(N), chans, rows, cols)
        a = xp[idx].reshape(N, -1)
        m = np.broadcast_to(real[np.ix_(rows, cols)][None], (Cg, kh, kw)).reshape(-1)
        lo = hi = None
        if low is not None:
            lo = np.broadcast_to(low[chans][:, None, None], (Cg, kh, kw)).reshape(-1)
            hi = np.broadcast_to(high[chans][:, None, None], (Cg, kh, kw)).reshape(-1)
        r = linear_rule(a, W[outs].reshape(len(outs), -1), None if bb is None else bb[outs],
                        R[:, outs, oy, ox], rule, mask=m, low=lo, high=hi)
        Rp[idx] += r.reshape(N, Cg, kh, kw)   # indices inside one receptive field are distinct
    return Rp[:, :, pad[0]:pad[0] + H, pad[1]:pad[1] + Wd]


def ip_forward(x, W, b=None):
    """Caffe InnerProduct with axis=1: flatten everything after N. W (O, K)."""
    x = np.asarray(x, np.float64)
    y = x.reshape(x.shape[0], -1) @ np.asarray(W, np.float64).T
    if b is not None:
        y = y + np.asarray(b, np.float64)[None, :]
    return y


def ip_relevance(x, W, b, R, rule: Rule):
    x = np.asarray(x, np.float64)
    N = x.shape[0]
    lo = hi = None
    if rule.kind == "zbox":
        C = x.shape[1]
        rest = x.shape[2:]
        lo = np.broadcast_to(_channel_bounds(rule.low, C).reshape((C,) + (1,) * len(rest)),
                             x.shape[1:]).reshape(-1)
        hi = np.broadcast_to(_channel_bounds(rule.high, C).reshape((C,) + (1,) * len(rest)),
                             x.shape[1:]).reshape(-1)
    r = linear_rule(x.reshape(N, -1), W, b, R, rule, low=lo, high=hi)
    return r.reshape(x.shape)


# --------------------------------------------------------------------------------------------
# Pooling (Caffe geometry)
# --------------------------------------------------------------------------------------------

def pool_out_size(H, k, s, p):
    """Caffe's ceil rule (the padding fix-up is in pool_geometry)."""
    out = -(-(H + 2 * p - k) // s) + 1
    return out


def pool_geometry(H, Wd, kernel, stride, pad, global_pooling=False):
    if global_pooling:
        return (H, Wd), (1, 1), (0, 0), (1, 1)
    kh, kw = kernel
    sh, sw = stride
    ph, pw = pad
    OH = pool_out_size(H, kh, sh, ph)
    OW = pool_out_size(Wd, kw, sw, pw)
    if ph or pw:   # Caffe: the last pooling must start strictly inside the image (+ pad)
        if (OH - 1) * sh >= H + ph:
            OH -= 1
        if (OW - 1) * sw >= Wd + pw:
            OW -= 1
    return (kh, kw), (sh, sw), (ph, pw), (OH, OW)


def pool_windows(H, Wd, kernel, stride, pad, global_pooling=False):
    """Yield (oy, ox, h0, h1, w0, w1, pool_size): the window clipped to the image and Caffe's
    AVE divisor (window clipped to the padded image, size taken before clipping to the image)."""
    (kh, kw), (sh, sw), (ph, pw), (OH, OW) = pool_geometry(H, Wd, kernel, stride, pad,
                                                           global_pooling)
    for oy in range(OH):
        for ox in range(OW):
            hs, ws = oy * sh - ph, ox * sw - pw
            he, we = min(hs + kh, H + ph), min(ws + kw, Wd + pw)
            size = (he - hs) * (we - ws)
            yield oy, ox, max(hs, 0), min(he, H), max(ws, 0), min(we, Wd), size


def _pool_args(p):
    return (_pair(p.get("kernel"), 1), _pair(p.get("stride"), 1), _pair(p.get("pad"), 0),
            bool(p.get("global_pooling", False)))


def pool_forward(x, method, kernel=1, stride=1, pad=0, global_pooling=False):
    """Caffe Pooling, method 'MAX' or 'AVE'.  Returns y (and for MAX the flat argmax index per
    output inside its clipped window, first maximum in row-major order)."""
    x = np.asarray(x, np.float64)
    N, C, H, Wd = x.shape
    kernel, stride, pad = _pair(kernel, 1), _pair(stride, 1), _pair(pad, 0)
    _, _, _, (OH, OW) = pool_geometry(H, Wd, kernel, stride, pad, global_pooling)
    y = np.zeros((N, C, OH, OW))
    for oy, ox, h0, h1, w0, w1, size in pool_windows(H, Wd, kernel, stride, pad, global_pooling):
        win = x[:, :, h0:h1, w0:w1].reshape(N, C, -1)
        if method == "MAX":
            y[:, :, oy, ox] = win.max(-1)
        elif method == "AVE":
            y[:, :, oy, ox] = win.sum(-1) / size
        else:
            raise NotImplementedError(method)
    return y


def pool_relevance(x, R, method, rule_kind, kernel=1, stride=1, pad=0, global_pooling=False,
                   eps=1e-6, maxpool="wta"):
    """Relevance at the input of a pooling layer.

    LRP rules: MAX -> winner-take-all to the first maximum (row-major) of the clipped window, or
    with maxpool='average' the AVE treatment; AVE -> ε-rule with weights 1/pool_size
    (z_ij = x_i/size, z_j = Σ_i z_ij, R_i = Σ_j z_ij/(z_j + ε·sign(z_j)) R_j).
    Gradient-type signals: MAX routes to the first maximum, AVE spreads R_j/pool_size."""
    x = np.asarray(x, np.float64)
    R = np.asarray(R, np.float64)
    N, C, H, Wd = x.shape
    kernel, stride, pad = _pair(kernel, 1), _pair(stride, 1), _pair(pad, 0)
    Rin = np.zeros_like(x)
    n_idx, c_idx = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    as_average = method == "AVE" or (maxpool == "average" and rule_kind in LRP_KINDS)
    for oy, ox, h0, h1, w0, w1, size in pool_windows(H, Wd, kernel, stride, pad, global_pooling):
        win = x[:, :, h0:h1, w0:w1]
        r = R[:, :, oy, ox]
        if method == "MAX" and not as_average:
            flat_win = win.reshape(N, C, -1)
            k = np.argmax(flat_win, axis=-1)       # first occurrence of the maximum
            ww = w1 - w0
            np.add.at(Rin, (n_idx, c_idx, h0 + k // ww, w0 + k % ww), r)
        elif rule_kind in SIGNAL_KINDS:
            Rin[:, :, h0:h1, w0:w1] += (r / size)[:, :, None, None]
        else:
            zij = win / size
            zj = zij.sum((2, 3))
            Rin[:, :, h0:h1, w0:w1] += zij * (r / (zj + eps * sign0(zj)))[:, :, None, None]
    return Rin


# --------------------------------------------------------------------------------------------
# Element-wise / normalisation layers
# --------------------------------------------------------------------------------------------

def relu_forward(x, negative_slope=0.0):
    x = np.asarray(x, np.float64)
    return np.where(x > 0, x, x * negative_slope)


def relu_relevance(x, R, rule_kind, negative_slope=0.0):
    R = np.asarray(R, np.float64)
    if rule_kind in LRP_KINDS:
        return R.copy()                          # LRP: ReLU passes relevance on
    if rule_kind == "gradient":
        return R * np.where(np.asarray(x) > 0, 1.0, negative_slope)
    if rule_kind == "deconvnet":
        return np.maximum(R, 0.0)
    if rule_kind == "guided":
        return np.maximum(R, 0.0) * (np.asarray(x) > 0)
    raise AssertionError(rule_kind)


def lrn_scale(x, local_size, alpha, k):
    """ACROSS_CHANNELS: scale_c = k + α/n Σ_{c' in window of c, clipped} x_c'^2."""
    x = np.asarray(x, np.float64)
    C = x.shape[1]
    pre = (local_size - 1) // 2
    s = np.empty_like(x)
    for c in range(C):
        lo, hi = max(0, c - pre), min(C, c - pre + local_size)
        s[:, c] = k + alpha / local_size * (x[:, lo:hi] ** 2).sum(1)
    return s


def lrn_forward(x, local_size=5, alpha=1.0, beta=0.75, k=1.0):
    x = np.asarray(x, np.float64)
    return x * lrn_scale(x, local_size, alpha, k) ** (-beta)


def lrn_gradient(x, R, local_size=5, alpha=1.0, beta=0.75, k=1.0):
    """True vector-Jacobian product of the LRN forward (for gradient-type signals)."""
    x = np.asarray(x, np.float64)
    R = np.asarray(R, np.float64)
    C = x.shape[1]
    pre = (local_size - 1) // 2
    s = lrn_scale(x, local_size, alpha, k)
    out = R * s ** (-beta)
    coef = R * x * s ** (-beta - 1)              # for output channel c
    for c in range(C):
        lo, hi = max(0, c - pre), min(C, c - pre + local_size)
        # y_c depends on x_c' for c' in [lo, hi): d y_c / d x_c' = -2αβ/n x_c x_c' s_c^(-β-1)
        out[:, lo:hi] -= 2 * alpha * beta / local_size * x[:, lo:hi] * coef[:, c:c + 1]
    return out


def softmax_forward(x, axis=1):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def eltwise_forward(xs, operation="SUM", coeff=None):
    xs = [np.asarray(v, np.float64) for v in xs]
    if operation == "SUM":
        c = [1.0] * len(xs) if not coeff else list(coeff)
        return sum(ci * v for ci, v in zip(c, xs))
    if operation == "PROD":
        out = xs[0].copy()
        for v in xs[1:]:
            out = out * v
        return out
    if operation == "MAX":
        return np.maximum.reduce(xs)
    raise NotImplementedError(operation)


def eltwise_sum_relevance(xs, R, coeff, rule_kind, eps):
    """LRP: R_k = c_k x_k / (Σ c_k x_k + ε·sign) · R.  Gradient-type: c_k · R."""
    xs = [np.asarray(v, np.float64) for v in xs]
    R = np.asarray(R, np.float64)
    c = [1.0] * len(xs) if not coeff else list(coeff)
    if rule_kind in SIGNAL_KINDS:
        return [ci * R for ci in c]
    s = sum(ci * v for ci, v in zip(c, xs))
    q = R / (s + eps * sign0(s))
    return [ci * v * q for ci, v in zip(c, xs)]


def batchnorm_affine(mean, var, factor, eps=1e-5):
    """Caffe BatchNorm (use_global_stats) as y = a x + c per channel: the stored mean/var are
    divided by the scale-factor blob (0 -> 0)."""
    f = float(np.asarray(factor, np.float64).reshape(-1)[0])
    sf = 0.0 if f == 0 else 1.0 / f
    m = np.asarray(mean, np.float64) * sf
    v = np.asarray(var, np.float64) * sf
    a = 1.0 / np.sqrt(v + eps)
    return a, -m * a


def scale_affine(gamma, beta=None):
    gamma = np.asarray(gamma, np.float64)
    return gamma, (np.zeros_like(gamma) if beta is None else np.asarray(beta, np.float64))


def affine_forward(x, a, c):
    x = np.asarray(x, np.float64)
    shp = (1, -1) + (1,) * (x.ndim - 2)
    return x * a.reshape(shp) + c.reshape(shp)


def diagonal_relevance(x, a, c, R, rule: Rule):
    """A per-channel affine layer y = a_c x + c_c seen as a linear layer with a diagonal weight
    matrix: each output has exactly one input (J = K = 1) and bias c_c."""
    x = np.asarray(x, np.float64)
    R = np.asarray(R, np.float64)
    out = np.zeros_like(x)
    C = x.shape[1]
    lo = hi = None
    if rule.kind == "zbox":
        lo, hi = _channel_bounds(rule.low, C), _channel_bounds(rule.high, C)
    for ch in range(C):
        xc = x[:, ch].reshape(-1, 1)
        r = linear_rule(xc, np.array([[a[ch]]]), np.array([c[ch]]), R[:, ch].reshape(-1, 1), rule,
                        low=None if lo is None else lo[ch:ch + 1],
                        high=None if hi is None else hi[ch:ch + 1])
        out[:, ch] = r.reshape(x[:, ch].shape)
    return out


# --------------------------------------------------------------------------------------------
# Whole net
# --------------------------------------------------------------------------------------------

@dataclass
class Layer:
    """One Caffe layer: the plain structure tests/nets.py turns into prototxt text.

    params by type (all optional, Caffe defaults):
      Convolution: num_output, kernel (int | (kh, kw)), stride, pad, dilation, group, bias_term
      InnerProduct: num_output, bias_term
      Pooling: pool ('MAX' | 'AVE'), kernel, stride, pad, global_pooling
      ReLU: negative_slope;  LRN: local_size, alpha, beta, k
      Eltwise: operation ('SUM' | 'PROD' | 'MAX'), coeff;  Concat: axis
      BatchNorm: eps;  Scale: bias_term;  Dropout: ratio
    """

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    params: dict = field(default_factory=dict)


LINEAR_TYPES = ("Convolution", "InnerProduct")


def forward_layer(layer: Layer, xs: Sequence[np.ndarray], blobs: Sequence[np.ndarray]):
    """Forward of one layer in float64; returns a list of top arrays."""
    t, p = layer.type, layer.params
    if t == "Convolution":
        b = blobs[1] if p.get("bias_term", True) else None
        return [conv_forward(xs[0], blobs[0], b, p.get("stride", 1), p.get("pad", 0),
                             p.get("dilation", 1), p.get("group", 1))]
    if t == "InnerProduct":
        return [ip_forward(xs[0], blobs[0], blobs[1] if p.get("bias_term", True) else None)]
    if t == "Pooling":
        kernel, stride, pad, gp = _pool_args(p)
        return [pool_forward(xs[0], p.get("pool", "MAX"), kernel, stride, pad, gp)]
    if t == "ReLU":
        return [relu_forward(xs[0], p.get("negative_slope", 0.0))]
    if t == "LRN":
        return [lrn_forward(xs[0], p.get("local_size", 5), p.get("alpha", 1.0),
                            p.get("beta", 0.75), p.get("k", 1.0))]
    if t == "Softmax":
        return [softmax_forward(xs[0], 1)]
    if t == "Concat":
        return [np.concatenate([np.asarray(v, np.float64) for v in xs], axis=p.get("axis", 1))]
    if t == "Eltwise":
        return [eltwise_forward(xs, p.get("operation", "SUM"), p.get("coeff"))]
    if t == "BatchNorm":
        a, c = batchnorm_affine(*blobs[:3], eps=p.get("eps", 1e-5))
        return [affine_forward(xs[0], a, c)]
    if t == "Scale":
        a, c = scale_affine(blobs[0], blobs[1] if p.get("bias_term", False) else None)
        return [affine_forward(xs[0], a, c)]
    if t == "Flatten":
        x = np.asarray(xs[0], np.float64)
        return [x.reshape(x.shape[0], -1)]
    if t in ("Dropout", "Split"):
        return [np.asarray(xs[0], np.float64).copy() for _ in layer.tops]
    raise NotImplementedError(f"reference has no forward for {t}")


def layer_affine(layer: Layer, blobs):
    """(a, c) of a BatchNorm or Scale layer."""
    if layer.type == "BatchNorm":
        return batchnorm_affine(*blobs[:3], eps=layer.params.get("eps", 1e-5))
    return scale_affine(blobs[0], blobs[1] if layer.params.get("bias_term", False) else None)


class RefNet:
    """Float64 reference net: forward, then relevance from a layer's top down to a blob.

    ``rules`` maps layer name -> Rule for every linear layer on the path (Convolution,
    InnerProduct, and BatchNorm / Scale layers that are not folded into a convolution).
    ``eps`` stabilises average pooling and Eltwise SUM; ``maxpool`` is 'wta' or 'average'.
    ``fold``: BatchNorm/Scale layers that solely read a Convolution/InnerProduct output are
    folded into it (canonisation); others are diagonal linear layers under their own rule.
    ``merge_affine``: an unfolded BatchNorm directly followed by a Scale is one diagonal
    linear layer (True) or two, each with its rule (False, the default: every Caffe layer is a
    layer).
    """

    def __init__(self, input_names: Sequence[str], layers: Sequence[Layer],
                 weights: dict[str, Sequence[np.ndarray]]):
        self.input_names = list(input_names)
        self.layers = list(layers)
        self.weights = {k: [np.asarray(b, np.float64) for b in v] for k, v in weights.items()}
        self.index = {l.name: i for i, l in enumerate(self.layers)}

    # -- forward ------------------------------------------------------------------------------
    def forward(self, inputs):
        """inputs: one array (the first input blob) or a dict name -> array.  Keeps every
        blob version (in-place layers create a new version of the same name)."""
        if not isinstance(inputs, dict):
            inputs = {self.input_names[0]: inputs}
        self.values: list[np.ndarray] = []
        self.version_name: list[str] = []
        cur: dict[str, int] = {}
        for name in self.input_names:
            cur[name] = self._new_version(name, np.asarray(inputs[name], np.float64))
        self.input_versions = dict(cur)
        self.io = []
        for layer in self.layers:
            bv = [cur[b] for b in layer.bottoms]
            tops = forward_layer(layer, [self.values[v] for v in bv],
                                 self.weights.get(layer.name, []))
            tv = []
            for name, val in zip(layer.tops, tops):
                cur[name] = self._new_version(name, val)
                tv.append(cur[name])
            self.io.append((bv, tv))
        self.current = cur
        return {name: self.values[v] for name, v in cur.items()}

    def _new_version(self, name, val):
        self.values.append(val)
        self.version_name.append(name)
        return len(self.values) - 1

    def blob(self, name):
        return self.values[self.current[name]]

    # -- canonisation ---------------------------------------------------------------------------
    def _consumers(self, version, upto):
        return [i for i in range(upto + 1) if version in self.io[i][0]]

    def fold_plan(self, top_index):
        """Convolution / InnerProduct -> BatchNorm and/or Scale chains (each output read only by
        the next layer of the chain, all at or below top_index): {linear layer index: (W', b')}
        with W' = W·a[o], b' = b·a + c for the chain's combined per-channel map a·y + c, and
        the set of folded BN/Scale indices (they pass relevance on)."""
        folded, passthrough = {}, set()
        for i, layer in enumerate(self.layers[:top_index + 1]):
            if layer.type not in LINEAR_TYPES:
                continue
            w = self.weights[layer.name]
            a = np.ones(w[0].shape[0])
            c = np.zeros(w[0].shape[0])
            chain, cur = [], i
            while True:
                cons = self._consumers(self.io[cur][1][0], top_index)
                if len(cons) != 1 or self.layers[cons[0]].type not in ("BatchNorm", "Scale"):
                    break
                cur = cons[0]
                a2, c2 = layer_affine(self.layers[cur], self.weights[self.layers[cur].name])
                a, c = a2 * a, a2 * c + c2
                chain.append(cur)
            if not chain:
                continue
            shp = (-1,) + (1,) * (w[0].ndim - 1)
            W = w[0] * a.reshape(shp)
            b = (w[1] * a if layer.params.get("bias_term", True) else 0.0) + c
            folded[i] = (W, b)
            passthrough.update(chain)
        return folded, passthrough

    # -- relevance ------------------------------------------------------------------------------
    def relevance(self, top: str, R_top, rules: dict[str, Rule], eps: float = 1e-6,
                  maxpool: str = "wta", readout: str | None = None, fold: bool = True,
                  merge_affine: bool = False, lrn: str = "identity"):
        """Propagate R_top (shape of layer ``top``'s first top blob) down to blob ``readout``
        (default: the first input).  Call forward() first.

        lrn: what LRN does under gradient-type signals, 'identity' or 'gradient' (LRP rules:
        always identity)."""
        t_idx = self.index[top]
        kinds = {r.kind for r in rules.values()}
        sig = kinds & set(SIGNAL_KINDS)
        if sig:
            assert len(sig) == 1 and kinds == sig, f"mixed signal/LRP rules {kinds}"
            mode = sig.pop()
        else:
            mode = "lrp"
        folded, passthrough = self.fold_plan(t_idx) if fold else ({}, set())
        Rv: dict[int, np.ndarray] = {self.io[t_idx][1][0]: np.asarray(R_top, np.float64).copy()}

        merged_scale = {}   # BatchNorm index -> following Scale index, treated as one layer
        if merge_affine:
            for i, layer in enumerate(self.layers[:t_idx + 1]):
                if layer.type == "BatchNorm" and i not in passthrough:
                    cons = self._consumers(self.io[i][1][0], t_idx)
                    if len(cons) == 1 and self.layers[cons[0]].type == "Scale":
                        merged_scale[i] = cons[0]
        merged_into = {v: k for k, v in merged_scale.items()}

        def rule_for(name):
            if mode != "lrp":
                return Rule(mode)
            return rules[name]

        for i in range(t_idx, -1, -1):
            layer = self.layers[i]
            bv, tv = self.io[i]
            if not any(v in Rv for v in tv):
                continue
            Rt = [Rv.get(v) for v in tv]     # kept: any blob can be read out afterwards
            Rt = [np.zeros_like(self.values[v]) if r is None else r for r, v in zip(Rt, tv)]
            xs = [self.values[v] for v in bv]
            t, p = layer.type, layer.params
            w = self.weights.get(layer.name, [])
            kind = mode if mode != "lrp" else None
            if i in passthrough or t in ("ReLU", "Dropout", "Flatten", "LRN") and mode == "lrp":
                if t == "Flatten":
                    out = [Rt[0].reshape(xs[0].shape)]
                else:
                    out = [Rt[0]]
            elif t == "Convolution":
                W, b = folded.get(i, (w[0], w[1] if p.get("bias_term", True) else None))
                out = [conv_relevance(xs[0], W, b, Rt[0], rule_for(layer.name),
                                      p.get("stride", 1), p.get("pad", 0), p.get("dilation", 1),
                                      p.get("group", 1))]
            elif t == "InnerProduct":
                W, b = folded.get(i, (w[0], w[1] if p.get("bias_term", True) else None))
                out = [ip_relevance(xs[0], W, b, Rt[0], rule_for(layer.name))]
            elif t == "Pooling":
                kernel, stride, pad, gp = _pool_args(p)
                out = [pool_relevance(xs[0], Rt[0], p.get("pool", "MAX"), kind or "z", kernel,
                                      stride, pad, gp, eps=eps, maxpool=maxpool)]
            elif t == "ReLU":
                out = [relu_relevance(xs[0], Rt[0], kind, p.get("negative_slope", 0.0))]
            elif t in ("Dropout", "Flatten"):
                out = [Rt[0].reshape(xs[0].shape)]
            elif t == "LRN":
                if lrn == "gradient":
                    out = [lrn_gradient(xs[0], Rt[0], p.get("local_size", 5), p.get("alpha", 1.0),
                                        p.get("beta", 0.75), p.get("k", 1.0))]
                else:
                    out = [Rt[0]]
            elif t == "Split":
                out = [sum(Rt)]
            elif t == "Concat":
                axis = p.get("axis", 1)
                cuts = np.cumsum([x.shape[axis] for x in xs])[:-1]
                out = np.split(Rt[0], cuts, axis=axis)
            elif t == "Eltwise":
                if p.get("operation", "SUM") != "SUM":
                    raise NotImplementedError("Eltwise relevance only for SUM")
                out = eltwise_sum_relevance(xs, Rt[0], p.get("coeff"), kind or "z", eps)
            elif t in ("BatchNorm", "Scale"):
                if i in merged_into:          # Scale merged into the BatchNorm below it
                    out = [Rt[0]]
                else:
                    a, c = layer_affine(layer, w)
                    if i in merged_scale:
                        k = merged_scale[i]
                        g, bt = layer_affine(self.layers[k], self.weights[self.layers[k].name])
                        a, c = g * a, g * c + bt
                    out = [diagonal_relevance(xs[0], a, c, Rt[0], rule_for(layer.name))
                           if mode == "lrp" else
                           Rt[0] * a.reshape((1, -1) + (1,) * (xs[0].ndim - 2))]
            else:
                raise NotImplementedError(f"reference has no relevance for {t} ({layer.name})")
            for v, r in zip(bv, out):
                Rv[v] = Rv[v] + r if v in Rv else r

        if readout is None:
            readout = self.input_names[0]
        if readout in self.input_versions and readout in self.input_names:
            v = self.input_versions[readout]
        else:
            v = max(i for i, n in enumerate(self.version_name) if n == readout)
        return Rv.get(v, np.zeros_like(self.values[v]))


def uniform_rules(layers: Sequence[Layer], rule: Rule) -> dict[str, Rule]:
    """The same rule for every layer that takes one."""
    return {l.name: rule for l in layers
            if l.type in ("Convolution", "InnerProduct", "BatchNorm", "Scale")}


def is_close_rel(a, b):
    """‖a − b‖ / ‖b‖ (with 0/0 = 0)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    nb = np.linalg.norm(b)
    na = np.linalg.norm(a - b)
    if nb == 0:
        return 0.0 if na == 0 else math.inf
    return na / nb
