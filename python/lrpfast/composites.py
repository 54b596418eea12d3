"""Composites: which rule each layer gets.

A :class:`Composite` maps the rule-taking layers of a net (Convolution, InnerProduct and
BatchNorm/Scale layers that could not be folded) to rules, by layer name, by position (the first
n Convolution/InnerProduct layers from the input) and by layer type, in that priority order.
Named strategies follow Kohlbrenner et al. 2020 ("LRP_CMP": eps on dense layers, alpha-beta on
convolutions, optionally flat on the first layers), zennit's composites of the same names and
iNNvestigate's LRPSequentialPreset* (eps = 0.1 on dense layers).
"""
from __future__ import annotations

from . import rules as R

DEFAULT_EPS = 1e-6
#: The composite that the API (``Net.relevance``), the ``heatmaps`` command and the demo use
#: by default: LRP_CMP of Kohlbrenner et al. 2020 with alpha2-beta1 on convolutions, eps on
#: dense layers and flat on the first linear layer (zennit: EpsilonAlpha2Beta1Flat).
DEFAULT_RULES = "cmp_alpha2_flat"
LINEAR_TYPES = ("Convolution", "InnerProduct")


class Composite:
    """Rule assignment for a net.

    Args:
        default: rule for rule-taking layers that no other entry matches.
        by_type: {"Convolution": rule, "InnerProduct": rule, "BatchNorm": rule, ...}.
        by_name: {layer_name: rule}; wins over everything else.
        first: (n, rule): the first n Convolution/InnerProduct layers (net order) get ``rule``.
        eps: stabiliser of average pooling and Eltwise SUM.
        maxpool: "wta" (winner-take-all) or "average" (max pooling treated as average pooling).
        name: shown in listings.
    """

    def __init__(self, default: R.Rule | None = None, by_type=None, by_name=None, first=None,
                 eps: float = DEFAULT_EPS, maxpool: str = "wta", name: str = "custom"):
        self.default = default
        self.by_type = dict(by_type or {})
        self.by_name = dict(by_name or {})
        if first is not None:
            n, rule = first
            if int(n) < 0:
                raise ValueError(f"Composite: first=(n, rule) needs n >= 0, got {n}")
            first = (int(n), rule)
        self.first = first
        if maxpool not in ("wta", "average"):
            raise ValueError(f"Composite: maxpool must be 'wta' or 'average', got {maxpool!r}")
        if not eps >= 0:
            raise ValueError(f"Composite: eps must be >= 0, got {eps!r}")
        self.eps, self.maxpool, self.name = float(eps), maxpool, name
        for rule in [default, *self.by_type.values(), *self.by_name.values(),
                     *([first[1]] if first else [])]:
            if rule is not None and not isinstance(rule, R.Rule):
                raise TypeError(f"Composite: {rule!r} is not an lrpfast rule")

    def assign(self, layers, net=None) -> dict:
        """{layer name: rule} for every rule-taking layer in ``layers`` (net order). ``net``
        (the Net the layers belong to) is for subclasses that need more than the layer list,
        e.g. the toolbox options' Caffe layer numbering (lrpfast.compat)."""
        names = {layer.name for layer in layers}
        unknown = set(self.by_name) - names
        if unknown:
            raise ValueError(f"Composite {self.name}: no layers named {sorted(unknown)} in the net")
        def kind(layer):   # Deconvolution takes the Convolution rule unless named itself
            return getattr(layer, "rule_type", layer.type)

        linear_order = [layer.name for layer in layers if kind(layer) in LINEAR_TYPES]
        firsts = set(linear_order[: self.first[0]]) if self.first else set()
        out = {}
        for layer in layers:
            if not layer.takes_rule:
                continue
            rule = self.by_name.get(layer.name)
            if rule is None and layer.name in firsts:
                rule = self.first[1]
            if rule is None:
                rule = self.by_type.get(layer.type, self.by_type.get(kind(layer), self.default))
            if rule is None and getattr(layer, "folded_into", None) is not None:
                continue   # folded into its Convolution/InnerProduct: passes relevance on
            if rule is None:
                raise ValueError(f"Composite {self.name}: no rule for layer '{layer.name}' "
                                 f"({layer.type}); give a default or a by_type entry")
            affine = getattr(layer, "input_affine", None)   # see lrpfast.onnx.importer
            if affine is not None and isinstance(rule, R.ZBox):
                rule = rule.through_affine(*affine)   # bounds are given for the net's input
            out[layer.name] = rule
        return out

    def __repr__(self) -> str:
        parts = [f"default={self.default!r}"] if self.default else []
        parts += [f"{k}={v!r}" for k, v in self.by_type.items()]
        if self.first:
            parts.append(f"first {self.first[0]}={self.first[1]!r}")
        parts += [f"'{k}'={v!r}" for k, v in self.by_name.items()]
        return f"Composite {self.name}({', '.join(parts)}; eps={self.eps:g}, maxpool={self.maxpool})"


def _cmp(conv_rule, dense_eps, flat_layers, name, eps):
    first = (flat_layers, R.Flat()) if flat_layers else None
    dense = R.Epsilon(dense_eps)
    return Composite(default=dense, by_type={"Convolution": conv_rule, "InnerProduct": dense},
                     first=first, eps=eps, name=name)


def _uniform(rule, name, eps=DEFAULT_EPS):
    return Composite(default=rule, eps=eps, name=name)


def composite(name: str, *, eps: float | None = None, flat_layers: int | None = None,
              low=None, high=None, gamma: float = 0.25) -> Composite:
    """A named composite, with its parameters.

    ``eps``: the dense-layer epsilon (and the pooling/Eltwise stabiliser); default 1e-6
    (0.1 for the iNNvestigate presets). ``flat_layers``: how many of the first linear layers get
    flat in the ``*_flat`` composites (default 1; Kohlbrenner et al. 2020, Fig. 1 e-g).
    ``low``/``high``: input bounds for the z^B rule of ``epsilon_gamma_box`` (required there).
    """
    key = name.lower().replace("-", "_")
    preset = key.startswith("preset_")
    e = float(eps) if eps is not None else (0.1 if preset else DEFAULT_EPS)
    nflat = 1 if flat_layers is None else int(flat_layers)
    a1, a2 = R.AlphaBeta(1, 0), R.AlphaBeta(2, 1)
    if key in ("cmp_alpha1", "cmp_alpha2", "preset_a", "preset_b"):
        if flat_layers:
            raise ValueError(f"composite {name}: flat_layers needs a *_flat composite")
        return _cmp(a1 if key in ("cmp_alpha1", "preset_a") else a2, e, 0, key, e)
    if key in ("cmp_alpha1_flat", "cmp_alpha2_flat", "preset_a_flat", "preset_b_flat",
               "epsilon_plus_flat", "epsilon_alpha2_beta1_flat"):
        conv = a1 if key in ("cmp_alpha1_flat", "preset_a_flat", "epsilon_plus_flat") else a2
        return _cmp(conv, e, nflat, key, e)
    if key == "epsilon_gamma_box":
        if low is None or high is None:
            raise ValueError("composite epsilon_gamma_box needs the input bounds: "
                             "lrpfast.composite('epsilon_gamma_box', low=..., high=...)")
        c = _cmp(R.Gamma(gamma), e, 0, key, e)
        c.first = (1, R.ZBox(low, high))
        return c
    uniform = {"z": R.Zero(), "epsilon": R.Epsilon(e), "alpha1beta0": a1, "alpha2beta1": a2,
               "flat": R.Flat(), "wsquare": R.WSquare(), "gradient": R.Gradient(),
               "deconvnet": R.Deconvnet(), "guided_backprop": R.GuidedBackprop()}
    if key in uniform:
        return _uniform(uniform[key], key, e)
    raise ValueError(f"unknown composite {name!r}; known: {', '.join(COMPOSITE_NAMES)}")


COMPOSITE_NAMES = (
    "cmp_alpha1", "cmp_alpha2", "cmp_alpha1_flat", "cmp_alpha2_flat", "epsilon_plus_flat",
    "epsilon_alpha2_beta1_flat", "epsilon_gamma_box", "preset_a", "preset_b", "preset_a_flat",
    "preset_b_flat", "z", "epsilon", "alpha1beta0", "alpha2beta1", "flat", "wsquare",
    "gradient", "deconvnet", "guided_backprop")


def as_composite(rules) -> Composite:
    """Accepts a composite name, a Rule (applied everywhere), a Composite or a RelPropOpts."""
    if isinstance(rules, Composite):
        return rules
    if callable(getattr(rules, "to_composite", None)):   # lrpfast.RelPropOpts (caffe mode)
        return rules.to_composite()
    if isinstance(rules, str):
        return composite(rules)
    if type(rules) is R.Epsilon:  # its eps also stabilises pooling/Eltwise; z keeps 1e-6
        return _uniform(rules, rules.name, rules.eps)
    if isinstance(rules, R.Rule):
        return _uniform(rules, rules.name)
    raise TypeError(f"rules must be a composite name, an lrpfast rule, a Composite or a "
                    f"RelPropOpts, got {type(rules).__name__}")
