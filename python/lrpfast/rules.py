"""LRP rules, each written once over the linear-operator primitives of :mod:`lrpfast.ops`.

A *linear layer* (Convolution, InnerProduct, an unfolded BatchNorm/Scale, average pooling) is
seen as z_ij = x_i w_ij, z_j = sum_i z_ij + b_j. Every rule below only needs the operator's
forward product ``op.fwd(x, kind, bias)`` and its transposed product ``op.bwd(s, kind)`` for the
weight variants ``kind`` in {"w", "pos", "neg", "sq", "ones"} (W, W+, W-, W**2, all-ones), so
one implementation serves every layer type and every backend.

Shapes: ``x`` is the layer input (N, ...), ``R`` the upper relevance shaped like the layer
output (N, ...); each rule returns the lower relevance shaped like ``x`` (float32).

References: Bach et al. 2015 (LRP, z/eps/alpha-beta), Montavon et al. 2017 (w^2, z^B),
Lapuschkin et al. 2019 (flat), Montavon et al. 2019 (gamma), Kohlbrenner et al. 2020 (composites).
"""
from __future__ import annotations

import numpy as np

from ._loader import _core

__all__ = [
    "Rule", "Zero", "Epsilon", "AlphaBeta", "Flat", "WSquare", "ZBox", "Gamma",
    "Gradient", "Deconvnet", "GuidedBackprop", "stabilized_divide", "safe_divide",
]


def kernels(a):
    """The kernel module for an array: ``_core`` for host arrays, the device twin (same names
    and arguments) for arrays that carry one (``lrpfast.cuda.DeviceArray``)."""
    return _core if isinstance(a, np.ndarray) else getattr(a, "_lrpfast_kernels", _core)


def has_negative(x) -> bool:
    """``bool((x < 0).any())`` for any array: one native pass without the temporary bool array
    for the engine's own float32 arrays (the alpha-beta and z+ rules' x >= 0 test)."""
    if isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous:
        return bool(_core.any_negative(x))
    return bool((x < 0).any())


def stabilized_divide(r: np.ndarray, z: np.ndarray, eps: float) -> np.ndarray:
    """r / (z + eps*sign(z)) with sign(0) = +1; an exactly-zero denominator gives 0."""
    return kernels(r).stabilized_divide(r, z, float(eps), True)


def safe_divide(r: np.ndarray, z: np.ndarray) -> np.ndarray:
    """r / z where z != 0, else 0 (the 'zero denominator contributes nothing' convention)."""
    return kernels(r).stabilized_divide(r, z, 0.0, True)


_F32_MAX = float(np.finfo(np.float32).max)


def _finite_param(rule: str, name: str, value, nonneg: bool = True) -> float:
    """A rule parameter as a float: finite (in float32, the engine's precision) and, with
    ``nonneg``, >= 0; else ValueError naming the rule and the parameter."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{rule}: {name} must be a number, got {value!r}") from None
    if not abs(v) <= _F32_MAX or (nonneg and v < 0):   # NaN fails the first test
        raise ValueError(f"{rule}: {name} must be a finite number{' >= 0' * nonneg}, "
                         f"got {value!r}")
    return v


class Rule:
    """Base class. ``linear`` maps upper to lower relevance through a linear operator;
    ``relu`` says how the rule passes a ReLU (LRP rules pass relevance unchanged)."""

    name = "rule"
    #: True for the gradient-like signals (gradient, deconvnet, guided backprop): pooling and
    #: Eltwise then use their adjoints instead of the LRP proportional rules.
    gradient_like = False

    def linear(self, op, x: np.ndarray, R: np.ndarray, z: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def relu(self, R: np.ndarray, x: np.ndarray) -> np.ndarray:
        return R

    def __repr__(self) -> str:
        return self.name

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


class Epsilon(Rule):
    """LRP-eps: R_i = sum_j z_ij / (z_j + eps*sign(z_j)) R_j, sign(0)=+1, bias kept in z_j
    (Bach et al. 2015). ``z`` may pass the stored layer output to save a product."""

    def __init__(self, eps: float = 1e-6):
        self.eps = _finite_param("Epsilon", "eps", eps)
        self.name = f"epsilon({self.eps:g})"

    def linear(self, op, x, R, z=None):
        if z is None:
            z = op.fwd(x, "w", "b")
        return op.bwd_signal(R, "w", z=z, eps=self.eps, times=x)   # x * W^T (R / z_eps)


class Zero(Epsilon):
    """LRP-0 (z rule): Epsilon with eps = 0; a zero denominator contributes 0."""

    def __init__(self):
        super().__init__(0.0)
        self.name = "z"


class AlphaBeta(Rule):
    """LRP-alpha-beta (Bach et al. 2015): contributions split by the sign of x_i*w_ij,
    R_i = sum_j (alpha z+_ij / z+_j - beta z-_ij / z-_j) R_j with z+-_j including b+-_j;
    a zero denominator contributes 0. Requires alpha - beta = 1, alpha, beta >= 0."""

    def __init__(self, alpha: float = 1.0, beta: float = 0.0):
        alpha = _finite_param("AlphaBeta", "alpha", alpha, nonneg=False)
        beta = _finite_param("AlphaBeta", "beta", beta, nonneg=False)
        if alpha < 0 or beta < 0 or not np.isclose(alpha - beta, 1.0, rtol=0, atol=1e-9):
            raise ValueError(f"AlphaBeta: need alpha - beta = 1 and alpha, beta >= 0; "
                             f"got alpha={alpha:g}, beta={beta:g}")
        self.alpha, self.beta = alpha, beta
        self.name = f"alpha{alpha:g}beta{beta:g}"

    def linear(self, op, x, R, z=None, zp=None):
        """zp: z+ already computed for this x, given only where x >= 0 (the forward pass computes
        it with z, or Net.relevance_multi once for all class selections, having checked the
        sign)."""
        has_neg = zp is None and has_negative(x)
        if not has_neg and z is not None and op.stacked_pm:
            # x >= 0 (e.g. after a ReLU): z+ = x W+ + b+ is one forward product, and
            # z- = z - z+ (b = b+ + b-) comes from the stored layer output z; both halves then
            # go through ONE transposed product with the stacked weights [W+; W-]
            if zp is None:
                zp = op.fwd(x, "pos", "pos")
            if self.beta == 0.0:   # then alpha = 1: x * W+^T (R / z+)
                return op.bwd_signal(R, "pos", z=zp, eps=0.0, times=x)
            return op.bwd_signal(op.pm_signal(R, z, zp, self.alpha, self.beta), "pm", times=x)
        xp = np.maximum(x, 0)
        xn = np.minimum(x, 0) if has_neg else None

        def part(w_same, w_other, bias):
            # z^+ (w_same="pos") or z^- (w_same="neg"): x+ with W^s plus x- with the other sign
            zz = op.fwd(xp, w_same, bias)
            if has_neg:
                zz += op.fwd(xn, w_other, None)
            s = safe_divide(R, zz)
            out = xp * op.bwd(s, w_same)
            if has_neg:
                out += xn * op.bwd(s, w_other)
            return out

        Rin = part("pos", "neg", "pos")
        if self.alpha != 1.0:
            Rin *= np.float32(self.alpha)
        if self.beta != 0.0:
            Rin -= np.float32(self.beta) * part("neg", "pos", "neg")
        return Rin


class Flat(Rule):
    """Flat (Lapuschkin et al. 2019): R_i = sum_j R_j / n_j, n_j = number of non-padded inputs
    in j's receptive field, so relevance is conserved."""

    name = "flat"

    def linear(self, op, x, R, z=None):
        return op.bwd_flat(R, x.shape)   # sum_j R_j / n_j over j's non-padded inputs


class WSquare(Rule):
    """w^2 (Montavon et al. 2017): R_i = sum_j w_ij^2 / sum_i' w_i'j^2 R_j over the
    non-padded inputs (conservative), independent of x."""

    name = "wsquare"

    def linear(self, op, x, R, z=None):
        n = op.fwd_count(x.shape, "sq")
        return op.bwd(safe_divide(R, n), "sq")


class ZBox(Rule):
    """z^B (Montavon et al. 2017) for the input layer: contributions x_i w_ij - l_i w+_ij - h_i w-_ij
    with l/h the lowest/highest admissible input values (scalars or per channel, shape (C,)).
    The bounds are parameters, so results never depend on other images in a batch."""

    def __init__(self, low, high):
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)
        if self.low.ndim > 1 or self.high.ndim > 1:
            raise ValueError("ZBox: low/high must be scalars or 1-D per-channel arrays")
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high))):
            raise ValueError(f"ZBox: low/high must be finite (in float32), got low={low!r}, "
                             f"high={high!r}")
        if np.any(self.low > self.high):
            raise ValueError("ZBox: low must be <= high")
        self.name = f"zbox(low={np.round(self.low, 4).tolist()}, high={np.round(self.high, 4).tolist()})"

    def through_affine(self, a, c) -> "ZBox":
        """The same box after the per-channel map x -> a * x + c (a, c: (C,)), e.g. an ONNX
        net's constant input normalisation (x - mean) / std: bounds a * low + c and
        a * high + c, swapped where a < 0."""
        a, c = np.asarray(a, np.float64), np.asarray(c, np.float64)
        lo, hi = a * self.low.astype(np.float64) + c, a * self.high.astype(np.float64) + c
        return ZBox(np.minimum(lo, hi), np.maximum(lo, hi))

    def _bound(self, v, x):
        if v.ndim == 0:
            return np.full_like(x, v)
        if x.ndim < 2 or x.shape[1] != v.shape[0]:
            raise ValueError(f"ZBox: {v.shape[0]} per-channel bounds do not fit an input of shape "
                             f"{x.shape[1:]}")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if not isinstance(x, np.ndarray):   # a device array: the (C,) bounds, uploaded once
            return np.zeros_like(x) + v.reshape(shape)
        return np.broadcast_to(v.reshape(shape), x.shape).astype(np.float32, copy=True)

    def linear(self, op, x, R, z=None):
        lo, hi = self._bound(self.low, x), self._bound(self.high, x)
        zz = op.fwd(x, "w", None) - op.fwd(lo, "pos", None) - op.fwd(hi, "neg", None)
        s = safe_divide(R, zz)
        return x * op.bwd(s, "w") - lo * op.bwd(s, "pos") - hi * op.bwd(s, "neg")


class Gamma(Rule):
    """LRP-gamma (Montavon et al. 2019): weights w + gamma*w+ (bias b + gamma*b+), eps-stabilised."""

    def __init__(self, gamma: float = 0.25, eps: float = 1e-6):
        if gamma < 0:
            raise ValueError(f"Gamma: gamma must be >= 0, got {gamma}")
        self.gamma = _finite_param("Gamma", "gamma", gamma)
        self.eps = _finite_param("Gamma", "eps", eps)
        self.name = f"gamma({self.gamma:g})"

    def linear(self, op, x, R, z=None):
        g = np.float32(self.gamma)
        zz = op.fwd(x, "w", "b") + g * op.fwd(x, "pos", "pos")
        s = stabilized_divide(R, zz, self.eps)
        return x * (op.bwd(s, "w") + g * op.bwd(s, "pos"))


class Gradient(Rule):
    """Gradient x the seed (toolbox code 11): linear layers pass W^T R, ReLU masks by x > 0."""

    name = "gradient"
    gradient_like = True

    def linear(self, op, x, R, z=None):
        return op.bwd(R, "w")

    def relu(self, R, x):
        return R * (x > 0)


class Deconvnet(Gradient):
    """Deconvnet (Zeiler & Fergus 2014; toolbox code 26): W^T R, ReLU passes max(R, 0)."""

    name = "deconvnet"

    def relu(self, R, x):
        return np.maximum(R, 0)


class GuidedBackprop(Gradient):
    """Guided backprop (Springenberg et al. 2015; toolbox code 166): ReLU passes max(R,0)*[x>0]."""

    name = "guided_backprop"

    def relu(self, R, x):
        return np.maximum(R, 0) * (x > 0)
