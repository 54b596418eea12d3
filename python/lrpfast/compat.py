"""Toolbox compatibility ("caffe mode"): the LRP Toolbox Caffe plugin's options, rule codes,
layer indices, numbers and result layout (docs/caffe_mode.md, also installed as lrpfast/docs/caffe_mode.md).

    opts = lrpfast.RelPropOpts(relpropformulatype=54, epsstab=0.1,
                               auxiliaryvariable_maxlayerindexforflatdistinconv=4)
    net.forward(x)                                   # as pycaffe's net.forward()
    res = net.backward_relevance([282], opts)        # the toolbox's Backward_Relevance
    res.R        # float32 (N, C, H, W), the net's input layout (BGR)
    res.rawhm    # (N, C, H*W): rawhm[n][ch][h + w*H], channels reversed (RGB)
    R = net.relevance(x, 282, rules=opts)            # same rules through the plain API

* :class:`RelPropOpts` carries the toolbox's fields with its defaults, plus ``mode`` and one
  switch per numerical quirk of the original plugin (all on in ``mode="caffe"``, all off in
  ``mode="lrpfast"``, each overridable). Bad values raise ``ValueError`` where the toolbox
  aborted.
* Formula codes select a rule per Convolution / InnerProduct layer by its **Caffe layer
  index**: Caffe counts every layer (ReLU, pooling, LRN, Dropout, ``Input`` layers, and the
  ``Split`` layers it inserts after the producer of every blob read more than once; ``input:``
  fields are not layers). :func:`caffe_layers` rebuilds that numbering from a :class:`Net`.
* ``net.backward_relevance`` / ``backward_relevance_multi`` reproduce
  ``Net::Backward_Relevance(_multi)``: start at ``lastlayerindex``, seed with the class logits
  (summed over a list of classes), read out at ``firstlayerindex``. They re-use the input of the
  last ``net.forward`` and never modify activations, so a second call gives the same numbers
  (the original re-ran forward passes inside the relevance pass and corrupted its stored
  activations, so a second call gave different numbers).

Differences between the modes (caffe mode = the original plugin's numbers):

===========================  ================================  ================================
switch                       lrpfast mode                      caffe mode
===========================  ================================  ================================
eps_zero_passthrough         ε rule: z_j = 0 takes ε·(+1),     z_j = 0: R_j passes undivided
                             i.e. R_j / ε                      (x_i w_ij R_j); else ε·sign(z_j)
alphabeta_toolbox_guards     αβ: a zero z⁺_j / z⁻_j gives      αβ: z⁺_j must be > 0 (z⁻_j < 0),
                             nothing (same numbers)            else nothing; β = 0 skips z⁻
grouped_bias_bug             grouped conv αβ: each channel     group g > 0 takes bias[o] of
                             uses its own bias                 group 0's channel o (the bug)
flat_kernel_area             flat: R_j / n_j, n_j = inputs     flat on conv: R_j / (kh·kw):
                             of j (conservative)               relevance grows by Cin/group
drop_padded_taps             flat / w²: divisor over the       flat / w² on conv: divisor over
                             non-padded taps (conservative)    the whole kernel; padded share lost
avgpool_toolbox              average pooling: z-rule with      R·x_i / Σ_window x, no ε; a window
                             the composite's ε                 with |Σ x| < 1e-6 adds x_i instead
lrn_type1                    LRN: identity                     lrn_backward_type 1: first-order
                                                               rule (not conservative)
lrn_true_gradient            codes 11/99: LRN passes the       codes 11/99: Caffe's LRN backward
                             gradient as identity              (the true derivative)
(none)                       max pooling winner-take-all;      the same; averaging follows
                             maxpooling...pass = 1: average    avgpool_toolbox
(always)                     idempotent                        idempotent (the original was not)
(always)                     relevance(): (N, C, H, W)         backward_relevance*: also rawhm
===========================  ================================  ================================

Also: ``alphabeta_beta`` = β with α = 1 + β; ``biastreatmenttype`` must be 0 (1 made the
toolbox's conv αβ abort); flat and w² on InnerProduct layers are the conservative lrpfast rules
(the toolbox had them disabled); unfolded BatchNorm/Scale layers (unknown to the toolbox) take
the Convolution column; code 99 is the L2 norm over the readout's channel axis of the code-11
gradient, copied to every channel; in deconvnet / guided backprop (26 / 166) pooling and LRN
follow the LRP treatments above as in the toolbox, while codes 11 / 99 use Caffe's gradient.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import caffe
from . import rules as _rules
from .composites import DEFAULT_EPS, Composite
from .ops import ConvOp, InnerProductOp
from .rules import Rule, has_negative, safe_divide

__all__ = [
    "FORMULA_CODES",
    "SWITCHES",
    "CaffeLayer",
    "RelPropOpts",
    "ToolboxAlphaBeta",
    "ToolboxComposite",
    "ToolboxEpsilon",
    "ToolboxFlat",
    "ToolboxResult",
    "ToolboxWSquare",
    "backward_relevance",
    "backward_relevance_multi",
    "caffe_layer_indices",
    "caffe_layers",
    "format_caffe_layers",
    "from_rawhm",
    "to_rawhm",
]

#: formula code -> (Convolution rule, InnerProduct rule); "x|y" = x if index <= aux else y
FORMULA_CODES: dict[int, tuple[str, str]] = {
    0: ("eps", "eps"),
    2: ("ab", "ab"),
    54: ("flat|eps", "flat|eps"),
    56: ("wsq|eps", "wsq|eps"),
    58: ("flat|ab", "flat|ab"),
    60: ("wsq|ab", "wsq|ab"),
    100: ("ab", "eps"),
    102: ("flat|ab", "flat|eps"),
    104: ("wsq|ab", "wsq|eps"),
    114: ("ab|eps", "ab|eps"),
    26: ("deconvnet", "deconvnet"),
    166: ("guided", "guided"),
    11: ("gradient", "gradient"),
    99: ("gradient", "gradient"),
}
_NEEDS_AUX = tuple(c for c, (a, b) in FORMULA_CODES.items() if "|" in a or "|" in b)
_USES_EPS = tuple(c for c, (a, b) in FORMULA_CODES.items() if "eps" in a + b)
_TRUE_GRADIENT = (11, 99)

#: the caffe-mode switches, see the module docstring's table
SWITCHES = ("eps_zero_passthrough", "alphabeta_toolbox_guards", "grouped_bias_bug",
            "flat_kernel_area", "drop_padded_taps", "avgpool_toolbox", "lrn_type1",
            "lrn_true_gradient")


# =============================================================================== options
@dataclass
class RelPropOpts:
    """The toolbox's ``relpropopts`` as a dataclass; pass it as ``rules=`` anywhere or
    to ``net.backward_relevance*``.

    Toolbox fields (defaults: its ``relpropopts`` constructor for ``epsstab``/``alphabeta_beta``,
    its heatmap tool / python demo for the rest; ``relpropformulatype`` -1 (unset) becomes 0):

    * ``relpropformulatype``: formula code, see ``FORMULA_CODES`` (tabled in docs/caffe_mode.md).
    * ``epsstab``: ε of the ε rule (>= 0). ``alphabeta_beta``: β >= 0, α = 1 + β.
    * ``lastlayerindex``: Caffe index of the layer where relevance starts; -2 = highest
      InnerProduct, -1 = the layer right below the lowest Softmax.
    * ``firstlayerindex``: Caffe index of the layer whose bottom blob is read out (0 = input).
    * ``numclasses``: outputs per image at the top layer (None: taken from the net; a
      different value raises).
    * ``auxiliaryvariable_maxlayerindexforflatdistinconv`` (``aux``): highest Caffe layer index
      (inclusive) of the first rule of the composite codes 54-60, 102, 104, 114.
    * ``lrn_backward_type``: -1/0 identity, 1 the toolbox tool's first-order rule (caffe mode).
    * ``maxpoolingtoavgpoolinginbackwardpass``: 1 treats max pooling as average pooling.
    * ``biastreatmenttype``: 0 (bias in the αβ denominators); 1 is not supported.

    ``mode``: "caffe" (the original plugin's numbers) or "lrpfast" (lrpfast's rules with the
    toolbox's codes and indices). Each switch in ``SWITCHES`` is None (follow ``mode``) or a
    bool that overrides it. Fields may be changed after construction (as with the toolbox's
    object); everything is checked again when the options are used.
    """

    relpropformulatype: int = 0
    epsstab: float = 1.0
    alphabeta_beta: float = 0.1
    lastlayerindex: int = -2
    firstlayerindex: int = 0
    numclasses: int | None = None
    auxiliaryvariable_maxlayerindexforflatdistinconv: int = -1
    lrn_backward_type: int = 1
    maxpoolingtoavgpoolinginbackwardpass: int = 0
    biastreatmenttype: int = 0
    mode: str = "caffe"
    eps_zero_passthrough: bool | None = None
    alphabeta_toolbox_guards: bool | None = None
    grouped_bias_bug: bool | None = None
    flat_kernel_area: bool | None = None
    drop_padded_taps: bool | None = None
    avgpool_toolbox: bool | None = None
    lrn_type1: bool | None = None
    lrn_true_gradient: bool | None = None

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ checks
    @property
    def aux(self) -> int:
        """Short name of ``auxiliaryvariable_maxlayerindexforflatdistinconv``."""
        return self.auxiliaryvariable_maxlayerindexforflatdistinconv

    @property
    def alpha(self) -> float:
        return 1.0 + float(self.alphabeta_beta)

    @property
    def beta(self) -> float:
        return float(self.alphabeta_beta)

    def switch(self, name: str) -> bool:
        """The effective value of a caffe-mode switch (its field, else ``mode == "caffe"``)."""
        if name not in SWITCHES:
            raise ValueError(f"unknown switch {name!r}; switches: {', '.join(SWITCHES)}")
        value = getattr(self, name)
        return self.mode == "caffe" if value is None else bool(value)

    @property
    def switches(self) -> dict[str, bool]:
        return {s: self.switch(s) for s in SWITCHES}

    def validate(self) -> RelPropOpts:
        """Check every field (ValueError naming the field and what is allowed); returns self."""
        def integer(name, value):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                if isinstance(value, float) and value.is_integer():
                    return int(value)
                raise ValueError(f"RelPropOpts.{name} must be an integer, got {value!r}")
            return int(value)

        def number(name, value):
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"RelPropOpts.{name} must be a number, got {value!r}") from None
            if not math.isfinite(v):
                raise ValueError(f"RelPropOpts.{name} must be finite, got {value!r}")
            return v

        if self.mode not in ("caffe", "lrpfast"):
            raise ValueError(f"RelPropOpts.mode must be 'caffe' or 'lrpfast', got {self.mode!r}")
        code = integer("relpropformulatype", self.relpropformulatype)
        if code not in FORMULA_CODES:
            raise ValueError(f"RelPropOpts.relpropformulatype {code} is not a known formula "
                             f"code; known: {sorted(FORMULA_CODES)} (see lrpfast.compat)")
        self.relpropformulatype = code
        self.epsstab = number("epsstab", self.epsstab)
        if self.epsstab < 0:
            raise ValueError(f"RelPropOpts.epsstab must be >= 0, got {self.epsstab:g}")
        self.alphabeta_beta = number("alphabeta_beta", self.alphabeta_beta)
        if self.alphabeta_beta < 0:
            raise ValueError(f"RelPropOpts.alphabeta_beta (beta) must be >= 0 (alpha = 1 + beta), "
                             f"got {self.alphabeta_beta:g}")
        aux = integer("auxiliaryvariable_maxlayerindexforflatdistinconv",
                      self.auxiliaryvariable_maxlayerindexforflatdistinconv)
        self.auxiliaryvariable_maxlayerindexforflatdistinconv = aux
        if code in _NEEDS_AUX and aux < 0:
            c, i = FORMULA_CODES[code]
            raise ValueError(
                f"RelPropOpts: formula code {code} ({_describe_kind(c)} on Convolution, "
                f"{_describe_kind(i)} on InnerProduct) needs "
                f"auxiliaryvariable_maxlayerindexforflatdistinconv >= 0: the highest Caffe layer "
                f"index that gets the first rule; got {aux}")
        last = integer("lastlayerindex", self.lastlayerindex)
        if last < -2:
            raise ValueError(f"RelPropOpts.lastlayerindex must be a Caffe layer index >= 0, -1 "
                             f"(below the lowest Softmax) or -2 (highest InnerProduct), got {last}")
        self.lastlayerindex = last
        first = integer("firstlayerindex", self.firstlayerindex)
        if first < 0:
            raise ValueError(f"RelPropOpts.firstlayerindex must be >= 0, got {first}")
        if last >= 0 and first >= last:
            raise ValueError(f"RelPropOpts: firstlayerindex ({first}) must be below "
                             f"lastlayerindex ({last})")
        self.firstlayerindex = first
        if self.numclasses is not None:
            n = integer("numclasses", self.numclasses)
            if n <= 0:
                raise ValueError(f"RelPropOpts.numclasses must be > 0 (or None), got {n}")
            self.numclasses = n
        lrn = integer("lrn_backward_type", self.lrn_backward_type)
        if lrn not in (-1, 0, 1):
            raise ValueError(f"RelPropOpts.lrn_backward_type must be -1 or 0 (identity) or 1 "
                             f"(first-order rule), got {lrn}")
        self.lrn_backward_type = lrn
        mp = self.maxpoolingtoavgpoolinginbackwardpass
        mp = int(mp) if isinstance(mp, (bool, np.bool_)) else integer(
            "maxpoolingtoavgpoolinginbackwardpass", mp)
        if mp not in (0, 1):
            raise ValueError(f"RelPropOpts.maxpoolingtoavgpoolinginbackwardpass must be 0 or 1, "
                             f"got {mp}")
        self.maxpoolingtoavgpoolinginbackwardpass = mp
        bt = integer("biastreatmenttype", self.biastreatmenttype)
        if bt != 0:
            raise ValueError(f"RelPropOpts.biastreatmenttype {bt} is not supported: only 0 (bias "
                             f"split into the alpha-beta denominators); the toolbox's convolution "
                             f"alpha-beta aborted on other values too")
        self.biastreatmenttype = bt
        for s in SWITCHES:
            v = getattr(self, s)
            if v is not None and not isinstance(v, (bool, np.bool_)):
                raise ValueError(f"RelPropOpts.{s} must be True, False or None (follow mode), "
                                 f"got {v!r}")
        return self

    # ------------------------------------------------------------------ use
    def to_composite(self, *, postprocess: bool = True) -> ToolboxComposite:
        """The Composite these options stand for (``lrpfast.as_composite(opts)`` calls this)."""
        return ToolboxComposite(self, postprocess=postprocess)

    def rule_kinds(self, caffe_index: int | None) -> tuple[str, str]:
        """(Convolution rule, InnerProduct rule) names for a layer at ``caffe_index``."""
        self.validate()
        return tuple(_pick(k, caffe_index, self.aux)
                     for k in FORMULA_CODES[self.relpropformulatype])


def _describe_kind(kind: str) -> str:
    names = {"eps": "epsilon", "ab": "alpha-beta", "flat": "flat", "wsq": "w^2"}
    if "|" in kind:
        a, b = kind.split("|")
        return f"{names[a]} up to aux, else {names[b]}"
    return names.get(kind, kind)


def _pick(kind: str, index: int | None, aux: int) -> str:
    if "|" not in kind:
        return kind
    a, b = kind.split("|")
    return a if index is not None and index <= aux else b


# =============================================================================== caffe-mode rules
def _bias_shape(op, ndim: int) -> tuple:
    if isinstance(op, InnerProductOp):
        return (1,) * (ndim - 1) + (-1,)
    return (1, -1) + (1,) * (ndim - 2)


class ToolboxEpsilon(_rules.Epsilon):
    """ε rule as the toolbox computes it: s_j = R_j / (z_j + ε·sign(z_j)) where
    z_j != 0 and s_j = R_j (undivided) where z_j == 0 exactly; R_i = x_i Σ_j w_ij s_j."""

    def __init__(self, eps: float):
        super().__init__(eps)
        self.name = f"toolbox_epsilon({self.eps:g})"

    def linear(self, op, x, R, z=None):
        if z is None:
            z = op.fwd(x, "w", "b")
        if isinstance(z, np.ndarray) and not (z == 0).any():
            # where no z_j is exactly 0 the formula is lrpfast's (fused, same float32 steps)
            return super().linear(op, x, R, z)
        R = np.asarray(R, np.float32)
        z = np.asarray(z, np.float32)
        e = np.float32(self.eps)
        den = np.where(z > 0, z + e, np.where(z < 0, z - e, np.float32(1)))
        s = np.where(z == 0, R, R / den).astype(np.float32)
        return x * op.bwd(s, "w")


class ToolboxAlphaBeta(_rules.AlphaBeta):
    """αβ as the toolbox computes it: contributions split by the sign of
    x_i·w_ij, z⁺_j = Σ z⁺_ij + b⁺_j, z⁻_j = Σ z⁻_ij + b⁻_j, no ε.

    ``guards``: a z⁺_j that is not > 0 (z⁻_j not < 0) contributes nothing, and β = 0 skips the
    negative part (off: lrpfast's "a zero denominator contributes nothing").
    ``grouped_bias_bug``: in a grouped convolution every group g > 0 takes the biases of
    group 0's channels (bias[o], o = channel index inside the group).

    Cost: lrpfast's αβ (:class:`lrpfast.rules.AlphaBeta`, z⁺ from the forward pass where it can
    be, one stacked transposed product). The guards are sign tests inside the same signal
    kernel; the bias bug, where it changes a layer's biases, shifts z and z⁺ per channel."""

    def __init__(self, alpha: float, beta: float, guards: bool = True,
                 grouped_bias_bug: bool = True):
        alpha, beta = float(alpha), float(beta)
        if alpha < 0 or beta < 0 or not np.isclose(alpha - beta, 1.0, rtol=0, atol=1e-9):
            raise ValueError(f"ToolboxAlphaBeta: need alpha - beta = 1 and alpha, beta >= 0; "
                             f"got alpha={alpha:g}, beta={beta:g}")
        super().__init__(alpha, beta)
        self.guards, self.grouped_bias_bug = bool(guards), bool(grouped_bias_bug)
        flags = [f for f, on in (("guards", guards), ("grouped_bias_bug", grouped_bias_bug)) if on]
        self.name = f"toolbox_alpha{alpha:g}beta{beta:g}" + (f"[{','.join(flags)}]" if flags else "")

    def _bias(self, op):
        b = op.b
        if b is None:
            return None
        if self.grouped_bias_bug and isinstance(op, ConvOp) and op.group > 1:
            per = b.shape[0] // op.group
            b = np.tile(b[:per], op.group)
        return b

    def linear(self, op, x, R, z=None, zp=None):
        b = self._bias(op)
        bugged = b is not None and not np.array_equal(b, op.b)   # the bug changes this layer
        fast = (isinstance(x, np.ndarray) and z is not None and op.stacked_pm
                and (zp is not None or not has_negative(x)))
        if fast:
            # x >= 0: lrpfast's stacked path; z- = z - z+ inside the signal kernel
            if bugged:   # z+ = x W+ + b+[tiled], z = x W + b[tiled]: shifted per channel
                shape = _bias_shape(op, z.ndim)
                bp = np.maximum(b, 0).reshape(shape)
                zp = op.fwd(x, "pos", None) + bp if zp is None else \
                    np.maximum(zp + (bp - op.bias("pos").reshape(shape)), np.float32(0))
                z = z + (b - op.b).reshape(shape)
            elif zp is None:
                zp = op.fwd(x, "pos", "pos")
            if self.beta == 0.0:   # alpha = 1; the toolbox skips z-; z+ >= 0, so "> 0" is "!= 0"
                return op.bwd_signal(R, "pos", z=zp, eps=0.0, times=x)
            return op.bwd_signal(op.pm_signal(R, z, zp, self.alpha, self.beta, self.guards),
                                 "pm", times=x)
        R = np.asarray(R, np.float32)
        xp = np.maximum(x, 0)
        xn = np.minimum(x, 0)

        def part(w_same, w_other, bias, positive):
            zz = op.fwd(xp, w_same, None) + op.fwd(xn, w_other, None)
            if bias is not None:
                zz = zz + bias.reshape(_bias_shape(op, zz.ndim)).astype(np.float32)
            if self.guards:
                ok = zz > 0 if positive else zz < 0
                s = np.where(ok, R / np.where(ok, zz, np.float32(1)), np.float32(0))
                s = s.astype(np.float32)
            else:
                s = safe_divide(R, np.ascontiguousarray(zz, dtype=np.float32))
            return xp * op.bwd(s, w_same) + xn * op.bwd(s, w_other)

        out = part("pos", "neg", None if b is None else np.maximum(b, 0), True)
        if self.alpha != 1.0:
            out = out * np.float32(self.alpha)
        if self.beta != 0.0:     # the toolbox skips z- entirely for beta = 0
            out = out - np.float32(self.beta) * part(
                "neg", "pos", None if b is None else np.minimum(b, 0), False)
        return out.astype(np.float32, copy=False)


class ToolboxFlat(Rule):
    """Flat on convolutions as the toolbox computes it: R_i = Σ_j R_j / d_j over the
    taps i of j's receptive field that are not padding (padded taps' share is dropped).

    d_j = (kh·kw if ``drop_padded_taps`` else the number of non-padded spatial taps of j) ×
    (1 if ``kernel_area`` else Cin/group). Both on: the toolbox (kh·kw; total relevance × Cin/g
    in the interior); both off: lrpfast's conservative flat. Other layers: lrpfast's flat."""

    def __init__(self, kernel_area: bool = True, drop_padded_taps: bool = True):
        self.kernel_area, self.drop_padded_taps = bool(kernel_area), bool(drop_padded_taps)
        flags = [f for f, on in (("kernel_area", kernel_area), ("drop_padded_taps",
                                                                drop_padded_taps)) if on]
        self.name = "toolbox_flat" + (f"[{','.join(flags)}]" if flags else "")

    def linear(self, op, x, R, z=None):
        if not isinstance(op, ConvOp):
            return _rules.Flat().linear(op, x, R, z)
        cin_g, kh, kw = op.w.shape[1], op.w.shape[2], op.w.shape[3]
        if self.drop_padded_taps:
            d = np.float32(kh * kw * (1 if self.kernel_area else cin_g))
            return op.bwd((np.asarray(R, np.float32) / d).astype(np.float32), "ones")
        n = op.fwd_count(x.shape, "ones")           # non-padded taps incl. the channel factor
        if self.kernel_area:
            n = n / np.float32(cin_g)
        return op.bwd(safe_divide(np.asarray(R, np.float32), np.ascontiguousarray(n, np.float32)),
                      "ones")


class ToolboxWSquare(Rule):
    """w² on convolutions as the toolbox computes it: R_i = Σ_j w_ij² / Σ_kernel w² ·
    R_j with the divisor over the whole kernel (``drop_padded_taps``), so the share of padded
    taps is lost; off: lrpfast's w² (divisor over the non-padded taps). Other layers: w²."""

    def __init__(self, drop_padded_taps: bool = True):
        self.drop_padded_taps = bool(drop_padded_taps)
        self.name = "toolbox_wsquare" + ("[drop_padded_taps]" if drop_padded_taps else "")

    def linear(self, op, x, R, z=None):
        if not isinstance(op, ConvOp) or not self.drop_padded_taps:
            return _rules.WSquare().linear(op, x, R, z)
        w2 = op.weights("sq").reshape(op.w.shape[0], -1).sum(axis=1, dtype=np.float64)
        den = np.ascontiguousarray(np.broadcast_to(
            w2.astype(np.float32).reshape(1, -1, 1, 1), R.shape), dtype=np.float32)
        return op.bwd(safe_divide(np.asarray(R, np.float32), den), "sq")


# =============================================================================== layer hooks
def _pool_sizes(layer, Ho: int, Wo: int) -> np.ndarray:
    """Caffe's average-pooling divisor per output position (padding counted, window clipped
    at H + pad)."""
    H, W = layer.in_shapes[0][1], layer.in_shapes[0][2]
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.pad
    hs = np.arange(Ho) * sh - ph
    ws = np.arange(Wo) * sw - pw
    sz_h = np.minimum(hs + kh, H + ph) - hs
    sz_w = np.minimum(ws + kw, W + pw) - ws
    return (sz_h[:, None] * sz_w[None, :]).astype(np.float32)


def toolbox_avgpool(layer, x: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Average pooling as the toolbox computes it: R_i = Σ_j R_j x_i / S_j, S_j = Σ_{window j} x (no ε); a window with
    |S_j| < 1e-6 adds x_i itself to each of its inputs instead."""
    op = layer.avg_op
    z = op.fwd(x)                                   # Caffe average = S_j / P_j
    P = _pool_sizes(layer, z.shape[2], z.shape[3])[None, None]
    S = z.astype(np.float64) * P
    small = np.abs(S) < 1e-6
    t = np.where(small, P, np.asarray(R, np.float64) / np.where(small, 1.0, z))
    # bwd distributes t_j / P_j to each real tap: R_j / S_j, or 1 for the small windows
    return (x * op.bwd(np.ascontiguousarray(t, dtype=np.float32), "w")).astype(np.float32)


def _channel_window_sum(a: np.ndarray, half: int) -> np.ndarray:
    """Σ_{c': |c'-c| <= half} a[:, c'] for every c (zero outside the channel range)."""
    C = a.shape[1]
    pad = np.zeros((a.shape[0], half + 1) + a.shape[2:], a.dtype)
    cs = np.cumsum(np.concatenate([pad, a, pad[:, :half]], axis=1), axis=1)
    return cs[:, 2 * half + 1:2 * half + 1 + C] - cs[:, :C]


def lrn_type1(layer, x: np.ndarray, scale: np.ndarray, R: np.ndarray) -> np.ndarray:
    """The toolbox's LRN rule for ``lrn_backward_type = 1`` (across channels, per pixel):
    R_in(c) = R(c) x_c (k + α/n x_c²)^(-β)
              - (2αβ/n) x_c² Σ_{c'≠c, |c'-c| <= n/2} x_c' s_c'^(-β-1) R(c')."""
    if layer.region != "across":
        raise ValueError(f"layer '{layer.name}' (LRN): lrn_backward_type 1 is defined for "
                         f"ACROSS_CHANNELS LRN only; use lrn_backward_type 0 or mode='lrpfast'")
    n, a, b, k = layer.size, layer.alpha, layer.beta, layer.k
    x64, s64, R64 = (np.asarray(v, np.float64) for v in (x, scale, R))
    first = R64 * x64 * (k + a / n * x64 * x64) ** (-b)
    t = x64 * s64 ** (-b - 1.0) * R64
    neigh = _channel_window_sum(t, n // 2) - t
    return (first - (2.0 * a * b / n) * x64 * x64 * neigh).astype(np.float32)


def lrn_gradient(layer, x: np.ndarray, y: np.ndarray, scale: np.ndarray,
                 g: np.ndarray) -> np.ndarray:
    """Caffe's LRN backward (across channels): dx_c = g_c s_c^(-β)
    - (2αβ/n) x_c Σ_{|c'-c| <= n/2} g_c' y_c' / s_c'."""
    if layer.region != "across":
        return None
    n, a, b = layer.size, layer.alpha, layer.beta
    x64, y64, s64, g64 = (np.asarray(v, np.float64) for v in (x, y, scale, g))
    acc = _channel_window_sum(g64 * y64 / s64, n // 2)
    return (g64 * s64 ** (-b) - (2.0 * a * b / n) * x64 * acc).astype(np.float32)


class ToolboxLayerHooks:
    """What ``RelevanceContext.caffe`` carries: the caffe-mode treatment of pooling and LRN.
    ``pooling``/``lrn`` return the bottom relevance, or None for the lrpfast treatment."""

    def __init__(self, avgpool: bool, lrn_type1: bool, lrn_gradient: bool, true_gradient: bool):
        self.avgpool, self.lrn_type1 = bool(avgpool), bool(lrn_type1)
        self.lrn_gradient, self.true_gradient = bool(lrn_gradient), bool(true_gradient)

    def active(self) -> bool:
        if self.true_gradient:
            return self.lrn_gradient
        return self.avgpool or self.lrn_type1

    def pooling(self, layer, x, y, state, R, ctx):
        if self.true_gradient or not self.avgpool:
            return None
        if layer.method == "ave" or ctx.maxpool == "average":
            return toolbox_avgpool(layer, x, R)
        return None

    def lrn(self, layer, x, y, state, R, ctx):
        if self.true_gradient:
            return lrn_gradient(layer, x, y, state["scale"], R) if self.lrn_gradient else None
        if self.lrn_type1:
            return lrn_type1(layer, x, state["scale"], R)
        return None

    def __repr__(self):
        on = [n for n in ("avgpool", "lrn_type1", "lrn_gradient") if getattr(self, n)]
        return f"toolbox layers[{','.join(on)}]"


# =============================================================================== Caffe indices
@dataclass(frozen=True)
class CaffeLayer:
    """One layer of the net as Caffe numbers it. ``kind``: "layer" (an lrpfast layer, in
    ``layer``), "input" (an Input layer), "split" (inserted by Caffe after the producer of a
    blob read more than once) or "skipped" (dropped by ``skip_unsupported``). ``blob``: for a
    split or Input layer, the (SSA) blob it splits / produces."""

    index: int
    name: str
    type: str
    kind: str
    blob: str | None = None
    layer: Any = field(default=None, repr=False, compare=False)


def _test_phase(lp) -> bool:
    """Caffe's FilterNet for the deploy state (phase TEST, level 0, no stages)."""
    def met(rule):
        if rule.HasField("phase") and rule.phase != 1:
            return False
        if rule.HasField("min_level") and 0 < rule.min_level:
            return False
        if rule.HasField("max_level") and 0 > rule.max_level:
            return False
        return len(rule.stage) == 0
    if len(lp.include):
        return any(met(r) for r in lp.include)
    return not any(met(r) for r in lp.exclude)


def _raw_layer_params(net):
    """The net's LayerParameters as written (Input layers included), or None if unknown."""
    src = getattr(net, "_prototxt_source", None)
    try:
        if isinstance(src, (str, os.PathLike)):
            msg = caffe.read_prototxt(src)
        elif src is not None and hasattr(src, "layer") and hasattr(src, "layers"):
            msg = src
        else:
            return None
        return list(msg.layer) if len(msg.layer) else [caffe.upgrade_v1_layer(v) for v in msg.layers]
    except (OSError, ValueError):   # the file changed or vanished since the net was built
        return None


def _entries(net):
    """[(name, type, kind, bottoms, tops, lrpfast layer)] in Caffe's order, and the names of
    the inputs given by ``input:`` fields."""
    by_name = {layer.name: layer for layer in net.layers}
    skipped = {s.rsplit(" (", 1)[0]: s.rsplit(" (", 1)[-1].rstrip(")") for s in net.skipped}
    params = _raw_layer_params(net)
    entries = []
    if params is not None:
        seen = set()
        for lp in params:
            if not _test_phase(lp) or lp.name in seen:
                continue
            if lp.name in by_name:
                layer = by_name[lp.name]
                entries.append((lp.name, layer.type, "layer", list(lp.bottom), list(lp.top), layer))
            elif lp.type == "Input" and len(lp.top) and all(t in net.inputs for t in lp.top):
                entries.append((lp.name, "Input", "input", [], list(lp.top), None))
            elif lp.name in skipped:
                entries.append((lp.name, lp.type, "skipped", list(lp.bottom), list(lp.top), None))
            else:
                continue
            seen.add(lp.name)
        if sum(1 for e in entries if e[2] == "layer") != len(net.layers):
            entries = []   # the source does not match the net: fall back below
    if not entries:
        entries = [(l.name, l.type, "layer", list(l.bottoms_user), list(l.tops_user), l)
                   for l in net.layers]
    layer_tops = {t for e in entries if e[2] == "input" for t in e[4]}
    field_inputs = [name for name in net.inputs if name not in layer_tops]
    return entries, field_inputs


def caffe_layers(net) -> list[CaffeLayer]:
    """The net's layers numbered as Caffe numbers them: every layer of the prototxt that is part
    of the deploy net (Input layers too; ``input:`` fields are not layers), with the Split
    layers Caffe's ``InsertSplits`` adds right after the producer of every blob that is read by
    more than one bottom (splits of ``input:`` blobs come first, in input order)."""
    cached = getattr(net, "_caffe_layers_cache", None)
    if cached is not None:
        return cached
    entries, field_inputs = _entries(net)
    last_top: dict[str, tuple[int, int]] = {name: (-1, k) for k, name in enumerate(field_inputs)}
    uses: dict[tuple[int, int], int] = {}
    for i, (name, _t, _k, bottoms, tops, _l) in enumerate(entries):
        for b in bottoms:
            if b in last_top:
                uses[last_top[b]] = uses.get(last_top[b], 0) + 1
        for j, t in enumerate(tops):
            last_top[t] = (i, j)
    out: list[CaffeLayer] = []

    def split(producer: str, blob_user: str, j: int, ssa: str | None):
        out.append(CaffeLayer(len(out), f"{blob_user}_{producer}_{j}_split", "Split", "split",
                              ssa))

    for k, name in enumerate(field_inputs):
        if uses.get((-1, k), 0) > 1:
            split("input", name, k, name)
    for i, (name, typ, kind, _b, tops, layer) in enumerate(entries):
        blob = tops[0] if kind == "input" and len(tops) == 1 else None
        out.append(CaffeLayer(len(out), name, typ, kind, blob, layer))
        for j, t in enumerate(tops):
            if uses.get((i, j), 0) > 1:
                ssa = layer.tops[j] if layer is not None and j < len(layer.tops) else (
                    t if kind == "input" else None)
                split(name, t, j, ssa)
    try:
        net._caffe_layers_cache = out
    except AttributeError:
        pass
    return out


def caffe_layer_indices(net) -> dict[str, int]:
    """{lrpfast layer name: Caffe layer index}."""
    return {cl.name: cl.index for cl in caffe_layers(net) if cl.kind == "layer"}


def _indices_from_layers(layers) -> dict[str, int]:
    """Caffe indices from a bare layer list (inputs assumed to be ``input:`` fields)."""
    class _Bare:
        pass
    bare = _Bare()
    bare.layers = list(layers)
    produced = {t for l in bare.layers for t in l.tops}
    bare.inputs = {b: None for l in bare.layers for b in l.bottoms if b not in produced}
    bare.skipped = []
    return caffe_layer_indices(bare)


def format_caffe_layers(net, opts: RelPropOpts | None = None) -> str:
    """A table of the Caffe layer indices (what ``aux``, ``lastlayerindex`` and
    ``firstlayerindex`` refer to), with the rule each layer gets under ``opts``."""
    assigned = opts.to_composite().assign(net.layers, net=net) if opts is not None else {}
    lines = [f"{'caffe':>5}  {'layer':<28} {'type':<13} {'rule' if opts is not None else ''}"]
    for cl in caffe_layers(net):
        what = repr(assigned[cl.name]) if cl.name in assigned else ""
        if cl.kind == "split":
            what = f"(implicit Split of {cl.blob})"
        elif cl.kind == "skipped":
            what = "(skipped)"
        lines.append(f"{cl.index:>5}  {cl.name:<28} {cl.type:<13} {what}".rstrip())
    return "\n".join(lines)


# =============================================================================== composite
class ToolboxComposite(Composite):
    """The rule assignment of a :class:`RelPropOpts`: Convolution (and unfolded BatchNorm /
    Scale) layers get the code's C rule, InnerProduct layers its I rule, chosen by the layer's
    Caffe index; caffe-mode switches pick the toolbox variants of the rules and of pooling /
    LRN (``self.caffe``, read by the layers through ``RelevanceContext.caffe``)."""

    def __init__(self, opts: RelPropOpts, *, postprocess: bool = True):
        opts = dataclasses.replace(opts).validate()   # a snapshot: later edits do not leak in
        code = opts.relpropformulatype
        eps = opts.epsstab if code in _USES_EPS else DEFAULT_EPS
        maxpool = "average" if opts.maxpoolingtoavgpoolinginbackwardpass else "wta"
        super().__init__(default=None, eps=eps, maxpool=maxpool, name=f"relpropformulatype {code}")
        self.opts = opts
        sw = opts.switches
        hooks = ToolboxLayerHooks(
            avgpool=sw["avgpool_toolbox"],
            lrn_type1=sw["lrn_type1"] and opts.lrn_backward_type == 1,
            lrn_gradient=sw["lrn_true_gradient"],
            true_gradient=code in _TRUE_GRADIENT)
        self.caffe = hooks if hooks.active() else None
        self._postprocess = postprocess and code == 99
        self._cache: dict[str, Rule] = {}

    def rule(self, kind: str) -> Rule:
        """The rule object for a kind name ("eps", "ab", "flat", "wsq", "gradient", ...)."""
        if kind in self._cache:
            return self._cache[kind]
        o, sw = self.opts, self.opts.switches
        if kind == "eps":
            r = ToolboxEpsilon(o.epsstab) if sw["eps_zero_passthrough"] else _rules.Epsilon(o.epsstab)
        elif kind == "ab":
            if sw["alphabeta_toolbox_guards"] or sw["grouped_bias_bug"]:
                r = ToolboxAlphaBeta(o.alpha, o.beta, sw["alphabeta_toolbox_guards"],
                                     sw["grouped_bias_bug"])
            else:
                r = _rules.AlphaBeta(o.alpha, o.beta)
        elif kind == "flat":
            if sw["flat_kernel_area"] or sw["drop_padded_taps"]:
                r = ToolboxFlat(sw["flat_kernel_area"], sw["drop_padded_taps"])
            else:
                r = _rules.Flat()
        elif kind == "wsq":
            r = ToolboxWSquare(True) if sw["drop_padded_taps"] else _rules.WSquare()
        elif kind == "gradient":
            r = _rules.Gradient()
        elif kind == "deconvnet":
            r = _rules.Deconvnet()
        elif kind == "guided":
            r = _rules.GuidedBackprop()
        else:
            raise ValueError(f"unknown rule kind {kind!r}")
        self._cache[kind] = r
        return r

    def assign(self, layers, net=None) -> dict:
        """{layer name: rule} for the rule-taking layers; ``net`` supplies the Caffe numbering
        (Input layers, skipped layers); without it the inputs count as ``input:`` fields."""
        index = caffe_layer_indices(net) if net is not None else _indices_from_layers(layers)
        out = {}
        for layer in layers:
            if not layer.takes_rule:
                continue
            conv_kind, ip_kind = self.opts.rule_kinds(index.get(layer.name))
            out[layer.name] = self.rule(ip_kind if layer.type == "InnerProduct" else conv_kind)
        return out

    def postprocess(self, R: np.ndarray, batch_axes: int = 2) -> np.ndarray:
        """Applied by the net to each readout (K, N, ...): code 99 (sensitivity) takes the L2
        norm of the gradient over the readout's channel axis, copied to every channel."""
        return _sensitivity(R, batch_axes) if self._postprocess else R

    def __repr__(self) -> str:
        o = self.opts
        c, i = FORMULA_CODES[o.relpropformulatype]
        on = [s for s, v in o.switches.items() if v]
        return (f"RelPropOpts composite (code {o.relpropformulatype}: Convolution "
                f"{_describe_kind(c)}, InnerProduct {_describe_kind(i)}; eps={o.epsstab:g}, "
                f"beta={o.beta:g}, aux={o.aux}, mode={o.mode}"
                + (f", switches: {', '.join(on)}" if on else "") + ")")


def _sensitivity(R: np.ndarray, batch_axes: int) -> np.ndarray:
    """sqrt(Σ_c R²) over the first per-sample axis, broadcast back to every channel."""
    R = np.asarray(R)
    if R.ndim <= batch_axes + 1:         # no channel axis: the magnitude
        return np.abs(R).astype(np.float32)
    ax = batch_axes
    norm = np.sqrt(np.sum(np.asarray(R, np.float64) ** 2, axis=ax, keepdims=True))
    return np.ascontiguousarray(np.broadcast_to(norm, R.shape), dtype=np.float32)


# =============================================================================== rawhm layout
def to_rawhm(R) -> np.ndarray:
    """The toolbox's ``rawhm`` layout of a heatmap: ``rawhm[ch][h + w*H] = R[C-1-ch, h, w]``
    (channels reversed, BGR -> RGB; column-major inside a channel). ``R``: (C, H, W) ->
    (C, H*W), or (N, C, H, W) -> (N, C, H*W)."""
    R = np.asarray(R)
    if R.ndim not in (3, 4):
        raise ValueError(f"to_rawhm expects (C, H, W) or (N, C, H, W), got shape {R.shape}")
    H, W = R.shape[-2], R.shape[-1]
    t = np.swapaxes(R[..., ::-1, :, :], -1, -2)          # (..., C, W, H) -> index w*H + h
    return np.ascontiguousarray(t).reshape(R.shape[:-2] + (H * W,))


def from_rawhm(rawhm, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`to_rawhm`: (C, H*W) or (N, C, H*W) (or nested lists) -> (C, H, W) /
    (N, C, H, W) in the net's channel order."""
    a = np.asarray(rawhm)
    H, W = int(height), int(width)
    if a.ndim not in (2, 3) or a.shape[-1] != H * W:
        raise ValueError(f"from_rawhm expects (C, {H * W}) or (N, C, {H * W}) for H={H}, W={W}, "
                         f"got shape {a.shape}")
    t = a.reshape(a.shape[:-1] + (W, H))
    return np.ascontiguousarray(np.swapaxes(t, -1, -2)[..., ::-1, :, :])


# =============================================================================== backward_relevance
@dataclass
class ToolboxResult:
    """``net.backward_relevance*`` result: ``R`` float32 (N, ...) at the readout blob in the
    net's layout; ``rawhm`` the toolbox layout (N, C, H*W) (None unless the readout is
    (C, H, W)); ``top``: the layer relevance started at; ``readout``: the blob read out.
    Unpacks as ``R, rawhm = result``."""

    R: np.ndarray
    rawhm: np.ndarray | None
    top: str
    readout: str

    def __iter__(self):
        return iter((self.R, self.rawhm))


def _as_opts(opts) -> RelPropOpts:
    if opts is None:
        return RelPropOpts()
    if isinstance(opts, RelPropOpts):
        return dataclasses.replace(opts).validate()
    if isinstance(opts, dict):
        return RelPropOpts(**opts)
    raise TypeError(f"opts must be a lrpfast.RelPropOpts (or a dict of its fields), "
                    f"got {type(opts).__name__}")


def _resolve_top(net, opts: RelPropOpts, table: list[CaffeLayer]):
    """(lrpfast top layer, its Caffe index) for ``opts.lastlayerindex``."""
    last = opts.lastlayerindex
    by_index = {cl.index: cl for cl in table}
    producer = {t: l for l in net.layers for t in l.tops}
    if last == -2:
        ips = [cl for cl in table if cl.kind == "layer" and cl.type == "InnerProduct"]
        if not ips:
            raise ValueError(f"{net.source}: lastlayerindex -2 needs an InnerProduct layer; the "
                             f"net has none (give a Caffe layer index)")
        return ips[-1].layer, ips[-1].index
    if last == -1:
        soft = [cl for cl in table if cl.type == "Softmax"]
        if not soft:
            raise ValueError(f"{net.source}: lastlayerindex -1 needs a Softmax layer; the net "
                             f"has none")
        target = soft[0].index - 1
        cl = by_index.get(target)
        if cl is None:
            raise ValueError(f"{net.source}: lastlayerindex -1: nothing below Softmax "
                             f"'{soft[0].name}'")
        if cl.kind == "split" and cl.blob in producer:
            return producer[cl.blob], target
        if cl.kind != "layer":
            raise ValueError(f"{net.source}: lastlayerindex -1 gives Caffe layer {target} "
                             f"'{cl.name}' ({cl.type}), where relevance cannot start")
        return cl.layer, target
    if last >= len(table):
        raise ValueError(f"{net.source}: lastlayerindex {last} is out of range: the net has "
                         f"Caffe layers 0..{len(table) - 1} (lrpfast.compat.format_caffe_layers "
                         f"lists them)")
    cl = by_index[last]
    if cl.kind == "split":
        src = producer.get(cl.blob)
        hint = f" (its producer '{src.name}' is Caffe layer " \
               f"{caffe_layer_indices(net)[src.name]})" if src is not None else ""
        raise ValueError(f"{net.source}: lastlayerindex {last} is the Split layer Caffe inserts "
                         f"for blob '{cl.blob}'; start at the layer producing it{hint}")
    if cl.kind != "layer":
        raise ValueError(f"{net.source}: lastlayerindex {last} is '{cl.name}' ({cl.type}), where "
                         f"relevance cannot start")
    return cl.layer, last


def _resolve_readout(net, opts: RelPropOpts, table: list[CaffeLayer], last_index: int):
    """(blob to read out, layer whose own contribution to it is wanted or None)."""
    first = opts.firstlayerindex
    if first >= last_index:
        raise ValueError(f"{net.source}: firstlayerindex ({first}) must be below the top layer's "
                         f"Caffe index ({last_index})")
    cl = {c.index: c for c in table}[first]
    if cl.kind in ("split", "input"):
        if cl.blob is None:
            raise ValueError(f"{net.source}: firstlayerindex {first} ('{cl.name}') has no single "
                             f"blob to read out")
        return cl.blob, None
    if cl.kind != "layer":
        raise ValueError(f"{net.source}: firstlayerindex {first} is the skipped layer "
                         f"'{cl.name}' ({cl.type})")
    layer = cl.layer
    blob = layer.bottoms[0]
    readers = sum(b == blob for l in net.layers for b in l.bottoms)
    # Caffe reads the layer's own bottom: a Split branch when the blob has several readers
    return blob, (layer if readers > 1 and len(layer.tops) == 1 else None)


def _class_entries(classinds, what: str) -> list:
    """One toolbox class list (or int) -> the per-image entry ``Net._seed`` understands."""
    if isinstance(classinds, (int, np.integer)):
        return int(classinds)
    try:
        c = [int(k) for k in classinds]
    except TypeError:
        raise TypeError(f"{what}: expected a class index or a list of class indices, got "
                        f"{classinds!r}") from None
    if not c:
        raise ValueError(f"{what}: empty list of classes")
    return c


def _last_input(net):
    x = getattr(net._local, "last_input", None)   # this thread's last forward()
    if x is None:
        raise ValueError("backward_relevance needs a forward pass first: call net.forward(x) "
                         "(the toolbox's net.forward()), then net.backward_relevance(...)")
    return x


def _exact_pass(net, x, per_image: list, comp, top, blob: str, only_from=None) -> np.ndarray:
    """Relevance at the SSA blob ``blob`` (Net.relevance resolves a bare name to its last
    version), optionally only the share that layer ``only_from`` passes to it (Caffe's bottom
    of that layer is then one branch of a Split). Same steps as Net._propagate_impl."""
    xin = net._check_input(x)
    plan = net._plan(top, comp, [blob])
    n = next(iter(xin.values())).shape[0]
    out = np.zeros((n,) + tuple(net.shapes[blob]), np.float32)
    chunks = net._chunks(n)
    kept = net._kept_forward(xin, chunks, top.tops)   # the activations of the last forward()
    for a, b in chunks:
        blobs, states = kept or net._run_forward({k: v[a:b] for k, v in xin.items()},
                                                 stop=top.index)

        def sink(bt, layer, rin, a=a, b=b):
            if bt == blob and (only_from is None or layer is only_from):
                out[a:b] += rin
        R0 = net._seed(blobs[top.tops[0]], per_image[a:b], b - a)
        net._backward(plan, top, blobs, states, R0, sink, stop_after=only_from)
    return out


def _run(net, per_image: list, opts) -> ToolboxResult:
    opts = _as_opts(opts)
    x = _last_input(net)
    n = next(iter(x.values())).shape[0]
    if len(per_image) != n:
        raise ValueError(f"backward_relevance_multi: need one class entry per image of the last "
                         f"forward batch ({n}), got {len(per_image)}")
    table = caffe_layers(net)
    top, last_index = _resolve_top(net, opts, table)
    blob, branch_layer = _resolve_readout(net, opts, table, last_index)
    m = int(np.prod(net.shapes[top.tops[0]]))
    if opts.numclasses is not None and opts.numclasses != m:
        raise ValueError(f"RelPropOpts.numclasses is {opts.numclasses} but layer '{top.name}' "
                         f"(the top) has {m} outputs per image")
    ambiguous = net.blob_versions.get(blob, blob) != blob   # an earlier version of a blob name
    if branch_layer is None and not ambiguous:
        R = net.relevance(x, per_image, rules=opts.to_composite(), top=top.name, readout=blob)
    else:
        R = _exact_pass(net, x, per_image, opts.to_composite(postprocess=False), top, blob,
                        branch_layer)
        if opts.relpropformulatype == 99:
            R = _sensitivity(R, batch_axes=1)
    R = np.asarray(R, dtype=np.float32)
    rawhm = to_rawhm(R) if R.ndim == 4 else None
    return ToolboxResult(R, rawhm, top.name, blob)


def backward_relevance(net, classinds, opts=None) -> ToolboxResult:
    """The toolbox's ``Net::Backward_Relevance(classinds, rawhm, ro)`` after ``net.forward(x)``:
    relevance of ``classinds`` (a class index or a list of them, their logits summed) for every
    image of the last forward batch, under ``opts`` (a :class:`RelPropOpts`; default
    ``RelPropOpts()``). Returns a :class:`ToolboxResult` (``R``, ``rawhm``)."""
    x = _last_input(net)
    n = next(iter(x.values())).shape[0]
    entry = _class_entries(classinds, "classinds")
    return _run(net, [entry] * n, opts)


def backward_relevance_multi(net, classinds, opts=None) -> ToolboxResult:
    """The toolbox's ``Net::Backward_Relevance_multi``: ``classinds[i]`` (a class index or a
    list of them, summed) for image i of the last forward batch; one pass for the batch."""
    if isinstance(classinds, (int, np.integer)):
        raise TypeError("backward_relevance_multi: classinds needs one entry per image "
                        "(a list), e.g. [[282], [7, 9]]")
    entries = [_class_entries(c, f"classinds[{i}]") for i, c in enumerate(classinds)]
    return _run(net, entries, opts)
