"""Conservation diagnostics: where does relevance stop summing to the explained score?

LRP's rules are built to conserve relevance layer by layer: the relevance that reaches any cut
through the graph (the blobs still waiting to pass their relevance down) sums to the score that
was explained, up to what biases and stabilisers absorb (Bach et al. 2015; Montavon et al.
2019). :func:`conservation` (also :meth:`lrpfast.Net.conservation`) runs one relevance pass and
reports that sum after every layer, against the score, and names the first layer where it
departs by more than a tolerance. Relevance that blows up (``|sum| > blowup * |score|``) gives
one :class:`ConservationWarning` naming the layer (the scale is the larger of the score and the
RMS of the top layer's outputs, :func:`blowup_scale`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np

__all__ = ["conservation", "ConservationReport", "ConservationWarning", "BLOWUP", "blowup_scale"]

#: ``|sum R| > BLOWUP * scale`` at some layer counts as a blow-up (warning); see
#: :func:`blowup_scale`.
BLOWUP = 10.0


def blowup_scale(seed, top_out, n: int) -> np.ndarray:
    """The per-image scale that a blow-up is measured against, (n,) float64: the larger of
    ``|score|`` (the sum of the seed) and the RMS of the top layer's outputs. The RMS keeps a
    near-zero score (where the share a bias absorbs is a large ratio) from counting as a
    blow-up."""
    score = np.abs(np.asarray(seed, np.float64).reshape(n, -1).sum(axis=1))
    rms = np.sqrt(np.mean(np.square(np.asarray(top_out, np.float64).reshape(n, -1)), axis=1))
    return np.maximum(score, rms)


class ConservationWarning(UserWarning):
    """Relevance grew far beyond the explained score somewhere in the net."""


@dataclass
class ConservationReport:
    """The result of :func:`conservation` for a batch of N images.

    Attributes
    ----------
    score : float64 (N,)
        The explained score of each image (the seed: the selected logit(s) summed).
    layers : list of (layer name, layer type, rule or treatment)
        The layers the relevance passes, from the top down.
    totals : float64 (L, N)
        ``totals[l, i]``: the sum of image i's relevance over the cut below ``layers[l]``
        (every blob that holds relevance not yet passed further down). The last row is the
        relevance at the input.
    rtol : float
        The tolerance of :attr:`first_departure`.
    blowup, scale : float, (N,) float64
        :attr:`blowup_layer` is where ``|sum| > blowup * scale`` (:func:`blowup_scale`).
    """

    score: np.ndarray
    layers: List[tuple]
    totals: np.ndarray
    rtol: float
    blowup: float = BLOWUP
    scale: Optional[np.ndarray] = None
    notes: List[str] = field(default_factory=list)

    def ratio(self) -> np.ndarray:
        """``totals / score`` (L, N); NaN where the score is 0."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.score != 0, self.totals / self.score, np.nan)

    def _first(self, bad: np.ndarray) -> Optional[str]:
        rows = np.flatnonzero(bad.any(axis=1))
        return self.layers[rows[0]][0] if rows.size else None

    @property
    def first_departure(self) -> Optional[str]:
        """The first layer (from the top) after which some image's sum differs from its score
        by more than ``rtol * |score|``; None if the relevance is conserved throughout."""
        dev = np.abs(self.totals - self.score) > self.rtol * np.abs(self.score)
        return self._first(dev)

    @property
    def blowup_layer(self) -> Optional[str]:
        """The first layer after which ``|sum| > blowup * scale`` (:func:`blowup_scale`; the
        score's magnitude when no scale is set); None if there is none."""
        scale = np.abs(self.score) if self.scale is None else self.scale
        return self._first(np.abs(self.totals) > self.blowup * scale)

    @property
    def input_total(self) -> np.ndarray:
        """The sum of the relevance at the input, (N,)."""
        return self.totals[-1]

    def rows(self, image: int = 0) -> List[tuple]:
        """(layer, type, rule, total, total / score) for one image."""
        r = self.ratio()
        return [(n, t, w, float(self.totals[k, image]), float(r[k, image]))
                for k, (n, t, w) in enumerate(self.layers)]

    def __str__(self) -> str:
        nw = max([5] + [len(n) for n, _, _ in self.layers])
        tw = max([4] + [len(t) for _, t, _ in self.layers])
        head = (f"score {self.score[0]:.6g} (image 0 of {self.score.size}); first departure "
                f"beyond {self.rtol:g}: {self.first_departure or 'none'}; blow-up: "
                f"{self.blowup_layer or 'none'}")
        out = [head, f"{'layer':<{nw}} {'type':<{tw}} {'sum R':>12} {'/ score':>9}  rule"]
        for n, t, w, tot, rat in self.rows(0):
            out.append(f"{n:<{nw}} {t:<{tw}} {tot:>12.6g} {rat:>9.4f}  {w}")
        return "\n".join(out + self.notes)

    def _repr_html_(self) -> str:
        import html
        head = html.escape(str(self).splitlines()[0])
        cells = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{html.escape(t)}</td><td>{tot:.6g}</td>"
            f"<td>{rat:.4f}</td><td>{html.escape(str(w))}</td></tr>"
            for n, t, w, tot, rat in self.rows(0))
        return (f"<p>{head}</p><table><tr><th>layer</th><th>type</th><th>sum R</th>"
                f"<th>/ score</th><th>rule</th></tr>{cells}</table>")


def _user_stacklevel() -> int:
    """The ``stacklevel`` that attributes a warning issued by this module's caller to the first
    frame outside the lrpfast package (the user's call)."""
    import os
    import sys
    pkg = os.path.dirname(os.path.abspath(__file__))
    f: Any = sys._getframe(1)
    level = 1
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(pkg):
        f, level = f.f_back, level + 1
    return level


def conservation(net, x, classes: Any = -1, rules: Any = None, *, top: Any = None,
                 rtol: float = 0.05, blowup: float = BLOWUP,
                 warn: bool = True) -> ConservationReport:
    """Relevance sums layer by layer against the explained score (see the module docstring).

    Parameters
    ----------
    net : lrpfast.Net (CPU)
    x, classes, rules, top : as :meth:`lrpfast.Net.relevance` (rules default:
        :data:`lrpfast.DEFAULT_RULES`).
    rtol : float
        Relative tolerance of :attr:`ConservationReport.first_departure`.
    blowup : float
        ``|sum| > blowup * scale`` (:func:`blowup_scale`) warns (once, naming the first such
        layer) when ``warn``.

    Returns
    -------
    :class:`ConservationReport`.
    """
    from .composites import DEFAULT_RULES, as_composite
    from .net import _treatment

    if net.device != "cpu":
        raise ValueError("conservation() runs on the CPU engine; load the net with device='cpu'")
    net._require_weights()
    xin = net._check_input(x)
    comp = as_composite(DEFAULT_RULES if rules is None else rules)
    top_layer = net.top_layer(top)
    plan = net._plan(top_layer, comp, [net._ssa(next(iter(net.inputs)))])
    assigned = comp.assign(net.layers, net=net)
    blobs, states = net._run_forward(xin, stop=top_layer.index)
    n = next(iter(xin.values())).shape[0]
    R0 = net._seed(blobs[top_layer.tops[0]], classes, n)

    def total(a) -> np.ndarray:
        return np.asarray(a, np.float64).reshape(n, -1).sum(axis=1)

    score = total(R0)
    pending = {top_layer.tops[0]: score}
    layers: List[tuple] = []
    totals: List[np.ndarray] = []
    current: List[Any] = [None]

    def close(layer):
        for t in layer.tops:
            pending.pop(t, None)
        rule = assigned.get(layer.name)
        what = repr(rule) if rule is not None and getattr(layer, "folded_into", None) is None \
            else _treatment(layer, comp)
        layers.append((layer.name, layer.type, what))
        totals.append(sum(pending.values(), np.zeros(n)))

    def sink(bt, layer, rin):
        if current[0] is not layer:
            if current[0] is not None:
                close(current[0])
            current[0] = layer
        pending[bt] = pending.get(bt, 0.0) + total(rin)

    net._backward(plan, top_layer, blobs, states, R0, sink)
    if current[0] is not None:
        close(current[0])
    rep = ConservationReport(score=score, layers=layers,
                             totals=np.array(totals).reshape(len(layers), n), rtol=float(rtol),
                             blowup=float(blowup),
                             scale=blowup_scale(R0, blobs[top_layer.tops[0]], n))
    zero = np.flatnonzero(score == 0)
    if zero.size:
        rep.notes.append(f"images {zero.tolist()} have a score of 0: nothing to explain (their "
                         f"ratios are NaN)")
    if warn and rep.blowup_layer is not None:
        warnings.warn(f"relevance blows up at layer '{rep.blowup_layer}': its sum exceeds "
                      f"{blowup:g}x the explained score (or the RMS of the top outputs) under "
                      f"{comp.name}; net.conservation(...) shows every layer",
                      ConservationWarning, stacklevel=_user_stacklevel())
    return rep
