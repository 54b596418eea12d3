"""The LRP Toolbox's plain-text model format: reader (current and legacy layout), writer, and
the conversion to and from lrpfast's Caffe layers.

Current layout (the toolbox's python and Matlab implementations; one layer after the other,
every value a decimal number separated by white space)::

    Linear m n                          W: m*n values (C order, W[i, j] = input i -> output j)
    <W on one line>                     B: n values
    <B on one line>
    Convolution hf wf df nf s0 s1       W: hf*wf*df*nf values (C order of (hf, wf, df, nf)),
    <W on one line>                     B: nf values; strides s0 (vertical), s1 (horizontal)
    <B on one line>
    SumPool hp wp s0 s1                 window hp x wp, strides s0, s1
    MaxPool hp wp s0 s1
    Rect | Tanh | SoftMax | Flatten

The model ends at the first empty line (or the end of the file). Legacy layout (older
toolbox files; read when the current one does not parse, as the toolbox does): only
``Linear m n`` (then m lines of n values, the rows of W, then one line of B), ``Rect``,
``Tanh`` and ``SoftMax``.

Semantics (toolbox python implementation): CNNs work on NHWC arrays (N, H, W, D), MLPs on
(N, D). ``Linear``: Y = X W + B. ``Convolution``: no padding, output size
(H - hf) // s0 + 1. ``SumPool``: the window's sum times 1 / sqrt(hp * wp) (0.5 for 2x2);
``MaxPool``: the window's maximum; both without padding and with the floor rule.
``Flatten``: (N, H, W, D) -> (N, H*W*D) in C order (H, W, D). ``SoftMax`` over the features of
(N, D). ``Rect``: max(0, x). ``Tanh``: tanh(x).

In lrpfast a toolbox model becomes a Caffe net (NCHW): ``Linear`` an InnerProduct (weights
W.T), ``Convolution`` a Convolution (weights W transposed to (nf, df, hf, wf)), ``SumPool``
an AVE Pooling followed by a Power layer with scale sqrt(hp * wp), ``MaxPool`` a MAX Pooling,
``Rect`` a ReLU, ``Tanh`` a TanH, ``SoftMax`` a Softmax, ``Flatten`` a Flatten whose (C, H, W)
order is mapped to the toolbox's (H, W, D) order by permuting the rows of the next Linear's
weights (a Permute layer to (H, W, C) where no Linear follows). Caffe layer names are the
lower-case toolbox type and the module index: ``convolution0``, ``rect1``, ``sumpool2``, ...
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..caffe.errors import CaffeFormatError, check_regular_file

__all__ = [
    "LAYER_NAMES",
    "ToolboxFormatError",
    "ToolboxLayer",
    "ToolboxModel",
    "format_model",
    "from_net",
    "parse_model",
    "read_model",
    "to_caffe",
    "write_model",
]

#: the toolbox's layer type names, as they open a line of a plain-text model
LAYER_NAMES = ("Linear", "Convolution", "SumPool", "MaxPool", "Rect", "Tanh", "SoftMax",
               "Flatten")
_PARAMS = {"Linear": 2, "Convolution": 6, "SumPool": 4, "MaxPool": 4}
_POINTWISE = ("Rect", "Tanh", "SoftMax")   # keep the element order (SoftMax: equivariant)


class ToolboxFormatError(ValueError):
    """A malformed toolbox model file, or a net that the toolbox format cannot express; the
    message names the file and line (or the layer)."""


@dataclass
class ToolboxLayer:
    """One module of a toolbox model: ``kind`` (one of LAYER_NAMES), ``params`` (the integers
    of its header line after the name), W and B (float64, Linear: (m, n) and (n,);
    Convolution: (hf, wf, df, nf) and (nf,); else None)."""

    kind: str
    params: tuple = ()
    W: np.ndarray | None = None
    B: np.ndarray | None = None

    def header(self) -> str:
        return " ".join([self.kind, *map(str, self.params)])


@dataclass
class ToolboxModel:
    """A toolbox model: its layers in order, ``source`` (the file) and ``layout``
    ("current" or "legacy", the layout it was read from)."""

    layers: list = field(default_factory=list)
    source: str = "<model>"
    layout: str = "current"


# ================================================================================ reading
def _numbers(line: str, where: str, count: int | None) -> np.ndarray:
    try:
        vals = np.array([float(t) for t in line.split()], dtype=np.float64)
    except ValueError:
        bad = next(t for t in line.split() if not _is_number(t))
        raise ToolboxFormatError(f"{where}: {bad[:40]!r} is not a number") from None
    if count is not None and vals.size != count:
        raise _CountError(f"{where}: expected {count} values, got {vals.size}")
    if not np.all(np.isfinite(vals)):
        raise ToolboxFormatError(f"{where}: contains NaN or infinity")
    return vals


def _is_number(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


class _CountError(ToolboxFormatError):
    """A value count that does not fit the header (the legacy layout may still parse)."""


def _header(words: list, where: str) -> tuple:
    kind = words[0]
    n = _PARAMS.get(kind, 0)
    if len(words) != n + 1:
        raise ToolboxFormatError(f"{where}: '{kind}' takes {n} integer parameters, got "
                                 f"{len(words) - 1}")
    try:
        params = tuple(int(w) for w in words[1:])
    except ValueError:
        raise ToolboxFormatError(f"{where}: '{kind}' parameters must be integers, got "
                                 f"{' '.join(words[1:])!r}") from None
    if any(p < 1 for p in params):
        raise ToolboxFormatError(f"{where}: '{kind}' parameters must be >= 1, got {params}")
    return params


def _line(lines, i, source, what):
    if i >= len(lines) or not lines[i].strip():
        raise _CountError(f"{source}:{i + 1}: missing the line of {what}")
    return lines[i]


def _parse(lines: list, source: str, one) -> list:
    """The layers of a model's lines, up to the first empty line; ``one(lines, i, where,
    words)`` reads the layer starting at line i -> (ToolboxLayer, index of the next line)."""
    out, i = [], 0
    while i < len(lines) and lines[i].strip():
        layer, i = one(lines, i, f"{source}:{i + 1}", lines[i].split(), source)
        out.append(layer)
    return out


def _current_layer(lines, i, where, words, source):
    kind = words[0]
    if kind not in LAYER_NAMES:
        raise ToolboxFormatError(f"{where}: unknown layer type {kind!r} (known: "
                                 f"{', '.join(LAYER_NAMES)})")
    params = _header(words, where)
    if kind not in ("Linear", "Convolution"):
        return ToolboxLayer(kind, params), i + 1
    shape = params[:2] if kind == "Linear" else params[:4]
    W = _numbers(_line(lines, i + 1, source, "W"), f"{source}:{i + 2}",
                 math.prod(shape)).reshape(shape)
    B = _numbers(_line(lines, i + 2, source, "B"), f"{source}:{i + 3}", shape[-1])
    return ToolboxLayer(kind, params, W, B), i + 3


def _legacy_layer(lines, i, where, words, source):
    kind = words[0]
    if kind in ("Rect", "Tanh", "SoftMax") and len(words) == 1:
        return ToolboxLayer(kind), i + 1
    if kind != "Linear":
        raise ToolboxFormatError(f"{where}: layer {kind!r} is not part of the legacy layout "
                                 f"(Linear, Rect, Tanh, SoftMax)")
    m, n = _header(words, where)
    rows = [_numbers(_line(lines, i + 1 + r, source, f"row {r} of W"), f"{source}:{i + 2 + r}", n)
            for r in range(m)]
    B = _numbers(_line(lines, i + 1 + m, source, "B"), f"{source}:{i + 2 + m}", n)
    return ToolboxLayer("Linear", (m, n), np.stack(rows), B), i + m + 2


def parse_model(text: str, source: str = "<text>") -> ToolboxModel:
    """A toolbox plain-text model from its text: the current layout, else (when a layer's
    values do not fit its header) the legacy layout. ToolboxFormatError names the line."""
    lines = text.split("\n")
    try:
        layers, layout = _parse(lines, source, _current_layer), "current"
    except _CountError as current:
        try:
            layers, layout = _parse(lines, source, _legacy_layer), "legacy"
        except ToolboxFormatError as legacy:
            raise ToolboxFormatError(f"{current} (and as the legacy layout: {legacy})") from None
    if not layers:
        raise ToolboxFormatError(f"{source}: no layers (the model must start on line 1)")
    return ToolboxModel(layers, source, layout)


def read_model(path) -> ToolboxModel:
    """Read a toolbox plain-text model file (``model_io.read(path)`` for ``.txt`` files)."""
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() in (".nn", ".pickle", ".pickled"):
        raise ToolboxFormatError(
            f"{path}: pickled toolbox models are not read (unpickling runs code from the "
            f"file); write the model as plain text with the toolbox's model_io.write(model, "
            f"'model.txt') and load that")
    try:
        check_regular_file(path)   # a FIFO would block open() forever
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError, CaffeFormatError) as e:
        raise ToolboxFormatError(f"cannot read toolbox model {path}: {e}") from None
    return parse_model(text, path)


def looks_like_model(path) -> bool:
    """True when the file's first word is a toolbox layer name (a plain-text model)."""
    try:
        check_regular_file(path)   # not a regular file: not a model (the caller's reader says why)
        with open(os.fspath(path), encoding="utf-8", errors="replace") as f:
            words = f.read(256).split(None, 1)
    except (OSError, CaffeFormatError):
        return False
    return bool(words) and words[0] in LAYER_NAMES


# ================================================================================ writing
def _values(a) -> str:
    # repr of the float64 value: exact for float32 weights, read back bit-identically
    return " ".join(repr(float(v)) for v in np.asarray(a, dtype=np.float64).ravel())


def format_model(model) -> str:
    """The current-layout text of a ToolboxModel (or of a list of ToolboxLayer)."""
    layers = model.layers if isinstance(model, ToolboxModel) else model
    out = []
    for layer in layers:
        out.append(layer.header())
        if layer.kind in ("Linear", "Convolution"):
            out += [_values(layer.W), _values(layer.B)]
    return "\n".join(out) + "\n"


def write_model(model, path) -> str:
    """Write a toolbox plain-text model (current layout). ``model``: a ToolboxModel, or an
    lrpfast Net of toolbox-expressible layers (see ``from_net``). Returns the path."""
    from ..net import Net

    if isinstance(model, Net):
        model = from_net(model)
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(format_model(model))
    return path


# ================================================================================ to Caffe
def _pool_out(n: int, k: int, s: int) -> int:
    return (n - k) // s + 1


def infer_input_shape(model: ToolboxModel) -> tuple:
    """The toolbox-layout input shape of a model: (m,) for one that starts with Linear; for a
    CNN (H, W, D) with the smallest square H = W whose windows all tile exactly and that fits
    the first Linear after Flatten or, without a Linear, ends at a 1 x 1 map (e.g. the
    toolbox's LeNet-5: 32 x 32 x 1). ToolboxFormatError when none is found: pass input_shape."""
    first = model.layers[0]
    if first.kind == "Linear":
        return (first.params[0],)
    if first.kind != "Convolution":
        raise ToolboxFormatError(f"{model.source}: cannot infer the input size of a model that "
                                 f"starts with {first.kind}; pass input_shape=(H, W, D)")
    has_linear = any(l.kind == "Linear" for l in model.layers)
    D = first.params[2]
    for H in range(1, 4097):
        try:
            shapes = _shapes(model, (H, H, D), exact=True)
        except ToolboxFormatError:
            continue
        spatial = [s for s in shapes if len(s) == 3]
        if has_linear or (spatial and spatial[-1][:2] == (1, 1)):
            return (H, H, D)
    raise ToolboxFormatError(f"{model.source}: no square input size fits the layers; pass "
                             f"input_shape=(H, W, D)")


def _shapes(model: ToolboxModel, shape: tuple, exact: bool = False) -> list:
    """The toolbox-layout shape after each layer (ToolboxFormatError naming the layer when a
    layer does not fit; ``exact``: also when a window does not tile its input exactly)."""
    out = []
    s = tuple(shape)
    for i, layer in enumerate(model.layers):
        where = f"{model.source}: layer {i} ({layer.header()})"
        p = layer.params
        if layer.kind == "Linear":
            if len(s) != 1 or s[0] != p[0]:
                raise ToolboxFormatError(f"{where}: needs a flat input of {p[0]} values, got "
                                         f"shape {s}" + (" (add Flatten)" if len(s) != 1 else ""))
            s = (p[1],)
        elif layer.kind in ("Convolution", "SumPool", "MaxPool"):
            kh, kw = p[:2]
            sh, sw = p[-2:]
            if len(s) != 3:
                raise ToolboxFormatError(f"{where}: needs an (H, W, D) input, got shape {s}")
            if layer.kind == "Convolution" and s[2] != p[2]:
                raise ToolboxFormatError(f"{where}: filter depth {p[2]} does not match the "
                                         f"input depth {s[2]}")
            if s[0] < kh or s[1] < kw:
                raise ToolboxFormatError(f"{where}: window {kh}x{kw} is larger than the input "
                                         f"{s[0]}x{s[1]}")
            if exact and ((s[0] - kh) % sh or (s[1] - kw) % sw):
                raise ToolboxFormatError(f"{where}: windows do not tile the input")
            d = p[3] if layer.kind == "Convolution" else s[2]
            s = (_pool_out(s[0], kh, sh), _pool_out(s[1], kw, sw), d)
        elif layer.kind == "Flatten":
            s = (math.prod(s),)
        elif layer.kind == "SoftMax" and len(s) != 1:
            raise ToolboxFormatError(f"{where}: SoftMax needs a flat (N, D) input, got {s}")
        out.append(s)
    return out


def _next_linear(layers, i):
    """Index of the Linear that reads the output of layer i through point-wise layers only."""
    for j in range(i + 1, len(layers)):
        if layers[j].kind == "Linear":
            return j
        if layers[j].kind not in _POINTWISE:
            return None
    return None


def to_caffe(model: ToolboxModel, input_shape=None, name: str | None = None):
    """A toolbox model as a Caffe net: ``(prototxt_text, weights, info)``.

    ``input_shape``: the toolbox-layout input shape, (D,) or (H, W, D) (default:
    ``infer_input_shape``). ``weights``: {layer name: [float32 arrays]} in Caffe's layout.
    ``info``: {"input_shape": the toolbox shape, "modules": [Caffe layer name per toolbox
    module index]}."""
    shape = tuple(int(d) for d in (input_shape or infer_input_shape(model)))
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ToolboxFormatError(f"{model.source}: input_shape must be (D,) or (H, W, D) with "
                                 f"positive sizes, got {shape}")
    shapes = _shapes(model, shape)
    caffe_in = shape if len(shape) == 1 else (shape[2], shape[0], shape[1])
    name = name or os.path.splitext(os.path.basename(model.source))[0] or "toolbox"
    text = [f'name: "{name}"', 'input: "data"',
            "input_shape { " + " ".join(f"dim: {d}" for d in (1, *caffe_in)) + " }"]
    weights, modules = {}, []
    bottom = "data"
    hwd_rows = {}   # Linear index -> (H, W, D) of the Flatten whose output it reads

    def add(lname, ltype, params=""):
        nonlocal bottom
        text.append(f'layer {{ name: "{lname}" type: "{ltype}" bottom: "{bottom}" '
                    f'top: "{lname}" {params}}}')
        bottom = lname

    for i, layer in enumerate(model.layers):
        lname = f"{layer.kind.lower()}{i}"
        modules.append(lname)
        p = layer.params
        in_shape = shape if i == 0 else shapes[i - 1]
        if layer.kind == "Linear":
            W = layer.W
            if i in hwd_rows:   # rows in the toolbox's (H, W, D) order -> Caffe's (D, H, W)
                H, Wd, D = hwd_rows[i]
                W = W.reshape(H, Wd, D, -1).transpose(2, 0, 1, 3).reshape(W.shape)
            add(lname, "InnerProduct", f"inner_product_param {{ num_output: {p[1]} }} ")
            weights[lname] = [np.ascontiguousarray(W.T, np.float32), layer.B.astype(np.float32)]
        elif layer.kind == "Convolution":
            add(lname, "Convolution",
                f"convolution_param {{ num_output: {p[3]} kernel_h: {p[0]} kernel_w: {p[1]} "
                f"stride_h: {p[4]} stride_w: {p[5]} }} ")
            weights[lname] = [np.ascontiguousarray(layer.W.transpose(3, 2, 0, 1), np.float32),
                              layer.B.astype(np.float32)]
        elif layer.kind in ("SumPool", "MaxPool"):
            kh, kw, sh, sw = p
            floor = (in_shape[0] - kh) % sh or (in_shape[1] - kw) % sw
            add(lname, "Pooling",
                f"pooling_param {{ pool: {'AVE' if layer.kind == 'SumPool' else 'MAX'} "
                f"kernel_h: {kh} kernel_w: {kw} stride_h: {sh} stride_w: {sw}"
                f"{' round_mode: FLOOR' if floor else ''} }} ")
            if layer.kind == "SumPool":   # average * sqrt(k) = sum / sqrt(k)
                add(lname + "_scale", "Power",
                    f"power_param {{ scale: {math.sqrt(kh * kw)!r} }} ")
        elif layer.kind == "Flatten":
            if len(in_shape) == 3 and in_shape[:2] != (1, 1):
                j = _next_linear(model.layers, i)
                if j is not None:
                    hwd_rows[j] = in_shape
                else:   # no Linear to absorb the order: permute to (H, W, C) first
                    add(lname + "_hwc", "Permute",
                        "permute_param { order: 0 order: 2 order: 3 order: 1 } ")
            add(lname, "Flatten")
        else:
            add(lname, {"Rect": "ReLU", "Tanh": "TanH", "SoftMax": "Softmax"}[layer.kind])
    return "\n".join(text) + "\n", weights, {"input_shape": shape, "modules": modules}


# ================================================================================ from a Net
def _fail(layer, why: str):
    raise ToolboxFormatError(f"layer {layer.index} '{layer.name}' ({layer.type}): {why}; the "
                             f"toolbox text format cannot express it")


def from_net(net) -> ToolboxModel:
    """The toolbox model of an lrpfast Net made of toolbox layers: Convolution (no padding,
    dilation or groups), InnerProduct, MAX Pooling and AVE Pooling + Power(scale sqrt(k))
    (SumPool) without padding or ceil-rule windows, ReLU, TanH, Softmax, Flatten (and
    Permute to (H, W, C) before it), Dropout (dropped), in one chain from the input.
    An InnerProduct on a (C, H, W) blob gets a Flatten before it, and its weight rows are
    reordered to the toolbox's (H, W, D) order. ToolboxFormatError names the first layer
    that does not fit."""
    if len(net.inputs) != 1:
        raise ToolboxFormatError(f"{net.source}: the toolbox format has one input, the net has "
                                 f"{list(net.inputs)}")
    alias = {}          # a Dropout's top -> the blob it copies (Dropout is dropped)
    for L in net.layers:
        if L.type == "Dropout":
            alias[L.tops[0]] = alias.get(L.bottoms[0], L.bottoms[0])
    layers = [L for L in net.layers if L.type != "Dropout"]
    out: list = []
    chw = None          # (C, H, W) whose flattening (Caffe order) the next Linear reads
    bottom = next(iter(net.inputs))
    i = 0
    while i < len(layers):
        L = layers[i]
        if len(L.bottoms) != 1 or alias.get(L.bottoms[0], L.bottoms[0]) != bottom:
            _fail(L, "the net is not a single chain of layers")
        bottom = L.tops[0]
        t = L.type
        if t == "Convolution":
            if L.pad != (0, 0) or L.dilation != (1, 1) or L.group != 1:
                _fail(L, "padding, dilation or groups")
            w = L.blobs[0]
            b = L.blobs[1] if L.bias_term else np.zeros(w.shape[0], np.float32)
            kh, kw = L.kernel
            out.append(ToolboxLayer("Convolution", (kh, kw, w.shape[1], w.shape[0], *L.stride),
                                    w.transpose(2, 3, 1, 0).astype(np.float64),
                                    b.astype(np.float64)))
            chw = None
        elif t == "InnerProduct":
            if L.axis != 1:
                _fail(L, f"axis {L.axis}")
            w = L.op.w   # (O, K)
            src = L.in_shapes[0] if len(L.in_shapes[0]) == 3 else chw
            if len(L.in_shapes[0]) == 3:
                out.append(ToolboxLayer("Flatten"))
            if src is not None:
                C, H, W = src
                w = w.reshape(-1, C, H, W).transpose(0, 2, 3, 1).reshape(w.shape)
            b = L.blobs[1] if L.bias_term else np.zeros(w.shape[0], np.float32)
            out.append(ToolboxLayer("Linear", (w.shape[1], w.shape[0]),
                                    w.T.astype(np.float64), b.astype(np.float64)))
            chw = None
        elif t == "Pooling":
            H, W = L.in_shapes[0][1:]
            (kh, kw), (sh, sw) = L.kernel, L.stride
            if L.pad != (0, 0):
                _fail(L, "padding")
            if L.out_shapes[0][1:] != (_pool_out(H, kh, sh), _pool_out(W, kw, sw)):
                _fail(L, "Caffe's ceil rule adds a partial window")
            if L.method == "ave":
                nxt = layers[i + 1] if i + 1 < len(layers) else None
                p = nxt.param.power_param if nxt is not None and nxt.type == "Power" else None
                if p is None or p.power != 1 or p.shift != 0 or \
                        not np.isclose(p.scale, math.sqrt(kh * kw), rtol=1e-6):
                    _fail(L, "average pooling (the toolbox's SumPool is AVE pooling followed "
                             "by a Power layer with scale sqrt(kernel area))")
                i += 1
                bottom = nxt.tops[0]
            out.append(ToolboxLayer("SumPool" if L.method == "ave" else "MaxPool",
                                    (kh, kw, sh, sw)))
            chw = None
        elif t == "ReLU" and L.slope == 0.0 or t in ("TanH", "Softmax"):
            if t == "Softmax" and len(L.in_shapes[0]) != 1:
                _fail(L, "a Softmax over a non-flat blob")
            out.append(ToolboxLayer({"ReLU": "Rect", "TanH": "Tanh", "Softmax": "SoftMax"}[t]))
        elif t == "Permute" and L.order == [0, 2, 3, 1] and i + 1 < len(layers) \
                and layers[i + 1].type == "Flatten":
            out.append(ToolboxLayer("Flatten"))
            bottom = layers[i + 1].tops[0]
            i += 1
            chw = None
        elif t in ("Flatten", "Reshape") and len(L.out_shapes[0]) == 1:
            out.append(ToolboxLayer("Flatten"))
            s = L.in_shapes[0]
            chw = s if len(s) == 3 and s[1:] != (1, 1) else None
        else:
            _fail(L, "no toolbox layer")
        if chw is not None and out[-1].kind not in ("Flatten", *_POINTWISE):
            chw = None
        i += 1
    if chw is not None:
        raise ToolboxFormatError(f"{net.source}: a Flatten of a (C, H, W) blob that no "
                                 f"InnerProduct reads orders its values (C, H, W); the "
                                 f"toolbox's order is (H, W, D)")
    return ToolboxModel(out, net.source)
