"""The rule conventions of the LRP Toolbox's python ``lrp()`` ("toolbox mode").

In the toolbox every module has its own rule, chosen by ``lrp_var`` and ``param``
(``module.set_lrp_parameters(lrp_var, param)``, or one setting for all modules in
``nn.lrp(R, lrp_var, param)``). With z_ij = x_i w_ij, z_j = sum_i z_ij + b_j
(Bach et al. 2015, Eq. 56-60):

==============  ==========================================  =========================================
lrp_var         Linear / Convolution (no padding)            SumPool (z_ij = x_i, window sums)
==============  ==========================================  =========================================
simple / None   R_i = sum_j z_ij / (z_j + 1e-16 sign z_j) R_j  the same with 1e-12 on the window sum
epsilon, e      the same with e; sign(0) = +1                the same on the window sum
alphabeta, a    a z+_ij / z+_j - (a - 1) z-_ij / z-_j, with  the same without bias; beta = a - 1
                b+ in z+_j and b- in z-_j; 0 / 0 gives 0
flat            R_i = sum_j R_j / (inputs of j)              R_j spread evenly over the window
ww / w^2        R_i = sum_j w_ij^2 / sum_i' w_i'j^2 R_j       falls back to flat
==============  ==========================================  =========================================

MaxPool: simple, epsilon and alphabeta send R_j to the window's maximum, split equally between
tied maxima; flat and ww spread it evenly over the window. Rect, Tanh, Flatten and SoftMax pass
relevance unchanged. ``alphabeta`` takes any alpha (the toolbox's beta = 1 - alpha weights
the negative part, i.e. beta = alpha - 1 subtracted).

How this differs from lrpfast's own rules (so it is a mode, :class:`ToolboxRules`): lrpfast's
rules are per layer *type* and pooling is not a rule layer (average pooling takes the z-rule
with the composite's eps on the *average*, max pooling gives everything to the first maximum,
alpha-beta needs alpha >= 1); here every module, pooling included, follows its own lrp_var,
and the SumPool epsilon applies to the window *sum*. Zero denominators: where the toolbox
divides 0 by a 1e-16 stabiliser (alphabeta) lrpfast gives the same 0. Pooling with padding
(Caffe nets) is refused in this mode.

Checked against the toolbox's own python code (version 1.3.1, float64): every variant agrees
within 3e-6 relative per map, except SumPool alphabeta with alpha not 0 or 1, where the
toolbox's default (fast) SumPool routine multiplies the negative part by R twice; lrpfast
follows the formula above, which the toolbox's reference routine (``_alphabeta_lrp_slow``)
computes.
"""
from __future__ import annotations

import numpy as np

from ..composites import Composite
from ..rules import AlphaBeta, Epsilon, Flat, WSquare, safe_divide, stabilized_divide

__all__ = ["VARIANTS", "PyAlphaBeta", "ToolboxRules", "parse_variant"]

#: the toolbox's lrp_var names, after normalisation
VARIANTS = ("simple", "epsilon", "alphabeta", "flat", "ww")
_ALIASES = {None: "simple", "none": "simple", "simple": "simple", "epsilon": "epsilon",
            "alphabeta": "alphabeta", "alpha": "alphabeta", "flat": "flat", "ww": "ww",
            "w^2": "ww"}
SIMPLE_EPS = 1e-16        # Linear / Convolution "simple"
SUMPOOL_SIMPLE_EPS = 1e-12


def parse_variant(lrp_var=None, param=None) -> tuple:
    """(lrp_var, param) as the toolbox takes them -> (normalised name, float param or None)."""
    key = lrp_var.lower() if isinstance(lrp_var, str) else lrp_var
    if key not in _ALIASES:
        raise ValueError(f"unknown lrp_var {lrp_var!r} (the toolbox's: None/'simple', "
                         f"'epsilon', 'alphabeta'/'alpha', 'flat', 'ww'/'w^2')")
    name = _ALIASES[key]
    if name in ("epsilon", "alphabeta"):
        if param is None:
            raise ValueError(f"lrp_var {lrp_var!r} needs param ("
                             f"{'epsilon' if name == 'epsilon' else 'alpha'})")
        p = float(param)
        if not np.isfinite(p) or p < 0:
            raise ValueError(f"lrp_var {lrp_var!r}: param must be a finite number >= 0, "
                             f"got {param!r}")
        return name, p
    return name, None


class PyAlphaBeta(AlphaBeta):
    """The toolbox's alphabeta(alpha): alpha * z+ share - (alpha - 1) * z- share, for any
    alpha >= 0 (lrpfast's AlphaBeta asks alpha >= 1); the computation is AlphaBeta's."""

    def __init__(self, alpha: float):
        self.alpha, self.beta = float(alpha), float(alpha) - 1.0
        self.name = f"toolbox alphabeta({self.alpha:g})"


def linear_rule(variant: tuple):
    """The lrpfast rule of a toolbox variant on a Linear / Convolution layer."""
    name, p = variant
    if name == "simple":
        return Epsilon(SIMPLE_EPS)
    if name == "epsilon":
        return Epsilon(p)
    if name == "alphabeta":
        return PyAlphaBeta(p)
    return Flat() if name == "flat" else WSquare()


def _describe(variant: tuple) -> str:
    name, p = variant
    return f"toolbox {name}" + (f"({p:g})" if p is not None else "")


class ToolboxRules(Composite):
    """Toolbox mode: ``rules=`` for the toolbox python ``lrp()`` conventions (module docstring).

    Args:
        lrp_var, param: the setting for every layer (``nn.lrp(R, lrp_var, param)``); None and
            None: each layer's preset from ``per_layer``, else "simple" (as the toolbox).
        per_layer: {layer: (lrp_var, param)} (``set_lrp_parameters`` on single modules);
            a layer is its lrpfast name or, for nets read from a toolbox model, its module
            index (int). Used only when lrp_var and param are both None, as in the toolbox.
    """

    def __init__(self, lrp_var=None, param=None, per_layer=None):
        self.everywhere = None if lrp_var is None and param is None else \
            parse_variant(lrp_var, param)
        self.per_layer = {k: parse_variant(*v) for k, v in dict(per_layer or {}).items()}
        super().__init__(default=None, name="toolbox")
        self.caffe = _PoolingHooks(self)   # the per-layer pooling rules (Net's layer hooks)

    def variant(self, layer) -> tuple:
        """(name, param) for one layer of a net."""
        if self.everywhere is not None:
            return self.everywhere
        for key in (layer.name, getattr(layer, "toolbox_index", None)):
            if key is not None and key in self.per_layer:
                return self.per_layer[key]
        return "simple", None

    def assign(self, layers, net=None) -> dict:
        known = {layer.name for layer in layers}
        known |= {layer.toolbox_index for layer in layers if hasattr(layer, "toolbox_index")}
        unknown = [k for k in self.per_layer if k not in known]
        if unknown:
            raise ValueError(f"toolbox rules: no layer {unknown[0]!r} in the net (give a layer "
                             f"name, or a module index for nets read from a toolbox model)")
        return {layer.name: linear_rule(self.variant(layer)) for layer in layers
                if layer.takes_rule}

    def describe_layer(self, layer) -> str | None:
        """Net.describe_rules: the treatment of a pooling layer in this mode."""
        if layer.type != "Pooling":
            return None
        name, _ = self.variant(layer)
        if layer.method == "max":
            spread = name in ("flat", "ww")
            return f"{_describe(self.variant(layer))}: " + \
                ("spread evenly" if spread else "to the maxima (ties split)")
        return f"{_describe(self.variant(layer))} (window sum)"

    def __repr__(self) -> str:
        if self.everywhere is not None:
            return f"ToolboxRules({_describe(self.everywhere)} everywhere)"
        per = ", ".join(f"{k!r}: {_describe(v)}" for k, v in self.per_layer.items())
        return f"ToolboxRules(default toolbox simple{'; ' + per if per else ''})"


# ================================================================================ pooling
def _windows(layer, x_shape, out_shape):
    """(row slice, column slice) of x for each window offset (a, b) of an unpadded pooling."""
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    Ho, Wo = out_shape[2:]
    for a in range(kh):
        for b in range(kw):
            yield (slice(a, a + sh * (Ho - 1) + 1, sh), slice(b, b + sw * (Wo - 1) + 1, sw))


class _PoolingHooks:
    """The toolbox's SumPool / MaxPool relevance per layer variant (RelevanceContext.caffe)."""

    def __init__(self, rules: ToolboxRules):
        self.rules = rules

    def pooling(self, layer, x, y, state, R, ctx):
        if not isinstance(x, np.ndarray):
            raise NotImplementedError("toolbox mode runs on the CPU engine only")
        if layer.pad != (0, 0):
            raise ValueError(f"toolbox rules: pooling layer '{layer.name}' has padding, which "
                             f"the toolbox's pooling does not have")
        (kh, kw), (sh, sw) = layer.kernel, layer.stride
        if R.shape[2:] != ((x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1):
            raise ValueError(f"toolbox rules: pooling layer '{layer.name}' has a partial "
                             f"window (Caffe's ceil rule), which the toolbox's pooling does "
                             f"not have")
        name, p = self.rules.variant(layer)
        wins = list(_windows(layer, x.shape, R.shape))
        Rx = np.zeros_like(x)
        if name in ("flat", "ww"):   # evenly over the window (ww: uniform weights -> flat)
            share = R / np.float32(len(wins))
            for rs, cs in wins:
                Rx[:, :, rs, cs] += share
            return Rx
        if layer.method == "max":   # to the maxima of each window, ties split equally
            hits = [x[:, :, rs, cs] == y for rs, cs in wins]
            share = R / sum(h.astype(np.float32) for h in hits)
            for (rs, cs), h in zip(wins, hits):
                Rx[:, :, rs, cs] += np.where(h, share, np.float32(0))
            return Rx
        if name == "alphabeta":     # SumPool: positive and negative parts of the window
            xp, xn = np.maximum(x, 0), np.minimum(x, 0)
            sp = safe_divide(R, sum(xp[:, :, rs, cs] for rs, cs in wins))
            sn = safe_divide(R, sum(xn[:, :, rs, cs] for rs, cs in wins))
            a, b = np.float32(p), np.float32(p - 1.0)
            for rs, cs in wins:
                Rx[:, :, rs, cs] += a * xp[:, :, rs, cs] * sp - b * xn[:, :, rs, cs] * sn
            return Rx
        eps = SUMPOOL_SIMPLE_EPS if name == "simple" else p
        s = stabilized_divide(R, sum(x[:, :, rs, cs] for rs, cs in wins), eps)
        for rs, cs in wins:
            Rx[:, :, rs, cs] += x[:, :, rs, cs] * s
        return Rx

    def lrn(self, layer, x, y, state, R, ctx):
        return None   # not a toolbox layer: lrpfast's treatment (identity)

    def __repr__(self):
        return "toolbox pooling rules"
