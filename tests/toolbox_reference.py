"""Float64 reference of the LRP Toolbox's python implementation (its forward pass and its
``lrp()`` rules), written for these tests from the formulas (Bach et al. 2015, Eq. 56-60, and
the toolbox manual), independent of lrpfast: NHWC arrays, explicit loops over the output
positions, the contribution tensor z_ij = x_i w_ij of each position built in full.

A model is a list of ``(kind, params, W, B)`` records in the toolbox's own shapes (Linear W
(m, n); Convolution W (hf, wf, df, nf)); ``to_text`` writes it in the toolbox's plain-text
format (current or legacy layout) for lrpfast to read.
"""
from __future__ import annotations

import numpy as np


# ------------------------------------------------------------------------------ text files
def to_text(model, legacy: bool = False) -> str:
    """The toolbox plain-text file of ``model`` (current layout, or the legacy one: Linear W
    as m lines of n values)."""
    def vals(a):
        return " ".join(repr(float(v)) for v in np.ravel(a))

    lines = []
    for kind, params, W, B in model:
        lines.append(" ".join([kind, *map(str, params)]))
        if kind in ("Linear", "Convolution"):
            if legacy:
                lines += [vals(row) for row in W]
            else:
                lines.append(vals(W))
            lines.append(vals(B))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ forward
def _windows(H, W, kh, kw, sh, sw):
    for i in range((H - kh) // sh + 1):
        for j in range((W - kw) // sw + 1):
            yield i, j, slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)


def forward(model, X):
    """All activations [X, after layer 0, after layer 1, ...] (float64, NHWC / (N, D))."""
    acts = [np.asarray(X, np.float64)]
    for kind, p, W, B in model:
        x = acts[-1]
        if kind == "Linear":
            y = x @ W + B
        elif kind == "Convolution":
            hf, wf, _, nf, sh, sw = p
            N, H, Wd, _ = x.shape
            y = np.zeros((N, (H - hf) // sh + 1, (Wd - wf) // sw + 1, nf))
            for i, j, rs, cs in _windows(H, Wd, hf, wf, sh, sw):
                y[:, i, j, :] = np.einsum("nabd,abdf->nf", x[:, rs, cs, :], W) + B
        elif kind in ("SumPool", "MaxPool"):
            kh, kw, sh, sw = p
            N, H, Wd, D = x.shape
            y = np.zeros((N, (H - kh) // sh + 1, (Wd - kw) // sw + 1, D))
            for i, j, rs, cs in _windows(H, Wd, kh, kw, sh, sw):
                win = x[:, rs, cs, :]
                y[:, i, j, :] = win.sum(axis=(1, 2)) / np.sqrt(kh * kw) if kind == "SumPool" \
                    else win.max(axis=(1, 2))
        elif kind == "Rect":
            y = np.maximum(x, 0)
        elif kind == "Tanh":
            y = np.tanh(x)
        elif kind == "SoftMax":
            e = np.exp(x - x.max(axis=1, keepdims=True))
            y = e / e.sum(axis=1, keepdims=True)
        elif kind == "Flatten":
            y = x.reshape(x.shape[0], -1)
        else:
            raise ValueError(kind)
        acts.append(y)
    return acts


# ------------------------------------------------------------------------------ lrp
def _sign(z):
    return np.where(z >= 0, 1.0, -1.0)


def _div0(a, b):
    """a / b with 0 where b == 0 (the toolbox's 1e-16 cushion of alphabeta gives the same 0)."""
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b != 0)


def _local(Z, B, R, var, p, w_sq=None):
    """One position of a Linear/Convolution layer: Z (N, I, J) contributions, B (J,), R (N, J)
    -> (N, I). w_sq: (I, J) squared weights (ww)."""
    name = var
    I = Z.shape[1]
    if name in ("simple", "epsilon"):
        zs = Z.sum(axis=1) + B
        e = 1e-16 if name == "simple" else p
        zs = zs + e * _sign(zs)
        return (Z * (R / zs)[:, None, :]).sum(axis=2)
    if name == "alphabeta":
        Zp, Zn = Z * (Z > 0), Z * (Z < 0)
        zp = Zp.sum(axis=1) + B * (B > 0)
        zn = Zn.sum(axis=1) + B * (B < 0)
        return p * (Zp * _div0(R, zp)[:, None, :]).sum(axis=2) \
            - (p - 1) * (Zn * _div0(R, zn)[:, None, :]).sum(axis=2)
    if name == "flat":
        return np.repeat(R.sum(axis=1, keepdims=True) / I, I, axis=1)
    if name == "ww":
        share = w_sq / w_sq.sum(axis=0, keepdims=True)
        return R @ share.T
    raise ValueError(name)


def _pool_lrp(kind, p, x, y, R, var, eps):
    kh, kw, sh, sw = p
    _, H, Wd, _ = x.shape
    Rx = np.zeros_like(x)
    for i, j, rs, cs in _windows(H, Wd, kh, kw, sh, sw):
        win = x[:, rs, cs, :]
        r = R[:, i:i + 1, j:j + 1, :]
        if var in ("flat", "ww"):
            Rx[:, rs, cs, :] += np.ones_like(win) / (kh * kw) * r
        elif kind == "MaxPool":
            hit = (win == y[:, i:i + 1, j:j + 1, :]).astype(np.float64)
            Rx[:, rs, cs, :] += hit / hit.sum(axis=(1, 2), keepdims=True) * r
        elif var == "alphabeta":
            wp, wn = win * (win > 0), win * (win < 0)
            Rx[:, rs, cs, :] += eps * wp * _div0(r, wp.sum(axis=(1, 2), keepdims=True)) \
                - (eps - 1) * wn * _div0(r, wn.sum(axis=(1, 2), keepdims=True))
        else:
            zs = win.sum(axis=(1, 2), keepdims=True)
            e = 1e-12 if var == "simple" else eps
            Rx[:, rs, cs, :] += win / (zs + e * _sign(zs)) * r
    return Rx


def lrp(model, X, R, variants):
    """Relevance at the input for R at the model's output; variants[k] = (lrp_var, param) of
    module k ("simple", "epsilon", "alphabeta", "flat", "ww")."""
    acts = forward(model, X)
    R = np.asarray(R, np.float64)
    for k in reversed(range(len(model))):
        kind, p, W, B = model[k]
        var, par = variants[k]
        x, y = acts[k], acts[k + 1]
        if kind == "Linear":
            Z = x[:, :, None] * W[None]
            R = _local(Z, B, R, var, par, W * W)
        elif kind == "Convolution":
            hf, wf, df, nf, sh, sw = p
            N, H, Wd, _ = x.shape
            Rx = np.zeros_like(x)
            Wf = W.reshape(-1, nf)
            for i, j, rs, cs in _windows(H, Wd, hf, wf, sh, sw):
                Z = x[:, rs, cs, :].reshape(N, -1)[:, :, None] * Wf[None]
                Rx[:, rs, cs, :] += _local(Z, B, R[:, i, j, :], var, par,
                                           Wf * Wf).reshape(N, hf, wf, df)
            R = Rx
        elif kind in ("SumPool", "MaxPool"):
            R = _pool_lrp(kind, p, x, y, R, var, par)
        elif kind == "Flatten":
            R = R.reshape(x.shape)
        # Rect, Tanh, SoftMax: relevance passes unchanged
    return R
