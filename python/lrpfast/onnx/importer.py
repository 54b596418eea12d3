"""ONNX graph -> lrpfast NetDef + weights (the Caffe layer types of :mod:`lrpfast.layers`).

Every ONNX node becomes at most one lrpfast layer named after the node, whose top is the
node's output tensor, so relevance can be read out at any tensor by its ONNX name. Shapes are
per sample (the batch axis is free, as in every lrpfast net). Operators and the relevance
treatment each gets (the same in every composite; "rule" = the composite's rule for that layer):

=====================================  ==================  ===================================
ONNX operator                          lrpfast layer       relevance
=====================================  ==================  ===================================
Conv (pads, strides, dilations,        Convolution         rule (e.g. flat / z^B first, then
group, auto_pad; a zero Pad before                         alpha-beta or gamma, per composite)
it is folded into its pads)
ConvTranspose (pads, strides,          Deconvolution       the Convolution rule, on the
dilations, group, auto_pad,                                transposed convolution's own
output_shape; no output_padding)                           linear map
Gemm (alpha, beta, transB), MatMul     InnerProduct        rule (epsilon in the CMP composites)
(+ the Add of its bias)
BatchNormalization (inference),        Scale               folded into the Conv / Gemm before
Add/Sub/Mul/Div with a per-channel                         it (canonisation, as zennit's
or scalar constant                                         SequentialMergeBatchNorm); input
                                                           normalisation (right after the
                                                           input) passes relevance unchanged
                                                           (z^B bounds: see below); elsewhere
                                                           a diagonal linear layer under the
                                                           rule
Relu, LeakyRelu, PRelu, Clip (ReLU6)   ReLU, PReLU, Clip   passed unchanged (like ReLU)
HardSwish; x * HardSigmoid(x);         HardSwish           passed unchanged (like ReLU)
x * Clip(x + 3, 0, 6) / 6
Sigmoid, Tanh, HardSigmoid             Sigmoid, TanH,      passed unchanged
                                       HardSigmoid
Mul of a tensor by a broadcast one     Gate                all to the gated tensor, none to
(squeeze-and-excitation gate,                              the gate: the gate counts as a
x (C, H, W) * g (C, 1, 1))                                 constant weight (see layers.Gate)
Softmax                                Softmax             relevance starts below it
MaxPool, GlobalMaxPool                 Pooling max         winner-take-all (or as average)
AveragePool, GlobalAveragePool         Pooling ave         proportional z-rule, composite eps
LRN                                    LRN                 identity
Dropout, Identity                      Dropout             identity
Add / Sub / Sum of tensors (residual)  Eltwise SUM         proportional z-rule, composite eps
                                                           (as zennit's ResNet canonizer)
Mul of two tensors                     Eltwise PROD        gradient-like methods only
Concat                                 Concat              sliced back to each input
Flatten, Reshape, Squeeze, Unsqueeze   Flatten / Reshape   reshaped back
Transpose                              Permute             inverse permutation
Constant, Shape, Gather, Cast, ...     (none)              folded to constants at load time
=====================================  ==================  ===================================

Conventions: ONNX AveragePool with count_include_pad=0 and padding is refused (lrpfast's
average pooling counts padded cells, as Caffe and PyTorch's default do); asymmetric padding is
refused; Pooling uses ceil_mode as given (Caffe's CEIL / FLOOR rounding). An input with
dynamic dimensions after the batch axis needs ``Net.from_onnx(model, input_shape=...)``.

Constant input normalisation ((x - mean) / std by Sub / Div / Mul / Add nodes right after the
input) is kept as its own layers and passes relevance unchanged, so the map is that of the raw
input; it is not folded into the first convolution, because with zero padding that fold is not
exact at the borders (a padded zero of the normalised input is the raw value ``mean``, not 0)
and it would change the first layer's rule (w^2 and flat see the weights, which the fold
rescales by 1 / std). The first layer's rule therefore sees the normalised input, as zennit's
rules do when the normalisation is applied outside the model; the z^B rule's bounds are given
in the units of the net's input (e.g. 0 and 1 for pixels in [0, 1]) and mapped through the
normalisation to the bounds of the normalised input ((0 - mean) / std, (1 - mean) / std).
"""
from __future__ import annotations

import numpy as np

from ..caffe import LayerDef, NetDef
from ..caffe import schema as pb
from ..layers import LAYER_TYPES, LayerError

#: the batch size Shape reports while constant folding (the batch axis of every Reshape target
#: is then kept free, see _reshape)
_BATCH = 1


class OnnxImportError(ValueError):
    """An ONNX model lrpfast cannot represent; the message names the model, node and op."""


def convert(model, source: str):
    """(NetDef, weights) from an ``onnx.ModelProto``; see the module docstring."""
    return _Converter(model, source).run()


def mark_input_normalisation(net) -> None:
    """Scale layers that read the net input (a chain of them: constant normalisation such as
    (x - mean) / std) pass relevance unchanged: the relevance of a normalised pixel is that of
    the raw pixel. They then take no rule (describe_rules says 'input normalisation').

    A rule layer reading the normalised tensor gets ``input_affine`` = (a, c), per channel, the
    whole chain's map x -> a * x + c: a z^B (ZBox) rule on it takes its bounds in the units
    of the net's input (e.g. low=0, high=1 for pixels in [0, 1]) and maps them through (a, c),
    so that it sees the bounds of what it reads (lrpfast.composites.Composite.assign)."""
    affine = {name: (1.0, 0.0) for name in net.inputs}   # tensor -> its (a, c) from the input
    for layer in net.layers:
        src = affine.get(layer.bottoms[0]) if layer.bottoms else None
        if src is None:
            continue
        if layer.type == "Scale" and getattr(layer, "folded_into", None) is None:
            layer.input_normalisation = True
            layer.takes_rule = False
            a, c = (v.astype(np.float64) for v in layer.affine())
            affine[layer.tops[0]] = (a * src[0], a * src[1] + c)
        elif layer.takes_rule and layer.bottoms[0] not in net.inputs:
            C = layer.in_shapes[0][0]
            layer.input_affine = tuple(np.broadcast_to(v, (C,)).copy() for v in src)


class _Converter:
    def __init__(self, model, source):
        import onnx
        from onnx import numpy_helper

        self.onnx, self.nh = onnx, numpy_helper
        self.model, self.source = model, source
        self.graph = model.graph
        self.opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          0)
        self.const: dict[str, np.ndarray] = {}
        self.shape: dict[str, tuple] = {}       # tensor -> per-sample shape
        self.pads: dict[str, tuple] = {}        # Pad output -> (input, (pad_h, pad_w))
        self.layers: list[LayerDef] = []
        self.weights: dict[str, list] = {}
        self.names: set[str] = set()
        self.merged: set[int] = set()           # indices of nodes merged into an earlier layer
        self.outputs = {o.name for o in self.graph.output}

    # -------------------------------------------------------------- driver
    def run(self):
        for t in self.graph.initializer:
            self.const[t.name] = self.nh.to_array(t)
        inputs = []
        for vi in self.graph.input:
            if vi.name in self.const:
                continue
            dims = [d.dim_value if d.HasField("dim_value") else None
                    for d in vi.type.tensor_type.shape.dim]
            if len(dims) < 2 or any(d is None or d <= 0 for d in dims[1:]):
                shown = [d if d is not None and d > 0 else "?" for d in dims]
                raise OnnxImportError(
                    f"{self.source}: input '{vi.name}' needs a fixed shape after the batch axis, "
                    f"got {shown} ('?': dynamic); give it with Net.from_onnx(model, "
                    f"input_shape={tuple(shown[1:])} with each '?' replaced by its size)")
            inputs.append((vi.name, (1,) + tuple(dims[1:])))
            self.shape[vi.name] = tuple(dims[1:])
        if not inputs:
            raise OnnxImportError(f"{self.source}: the graph has no non-constant input")
        self.consumers: dict[str, list] = {}   # tensor -> [(node index, node)]
        for k, node in enumerate(self.graph.node):
            for i in node.input:
                self.consumers.setdefault(i, []).append((k, node))
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                # first, so that a peephole (hardswish_from_add) sees the constants of later nodes
                self.guarded(k, node, self.fold)
                self.merged.add(k)
        for k, node in enumerate(self.graph.node):
            if k not in self.merged:
                self.guarded(k, node, self.convert_node)
        for o in self.graph.output:
            if o.name in self.pads or (o.name in self.const and o.name not in self.shape):
                raise OnnxImportError(f"{self.source}: output '{o.name}' is a constant or a Pad")
        name = self.graph.name or "onnx"
        return NetDef(name=name, inputs=inputs, layers=self.layers), self.weights

    def guarded(self, k, node, convert):
        """convert(node) with any error naming the node, its op type and the opset."""
        self.node_name = node.name or f"{node.op_type}_{k}"
        try:
            convert(node)
        except (OnnxImportError, LayerError):
            raise
        except (ValueError, KeyError, IndexError, TypeError, StopIteration) as e:
            raise self.error(node, str(e) or type(e).__name__) from None

    def error(self, node, msg):
        return OnnxImportError(f"{self.source}: node '{self.node_name}' ({node.op_type}, opset "
                               f"{self.opset}): {msg}")

    # -------------------------------------------------------------- helpers
    def attrs(self, node) -> dict:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def is_const(self, name):
        return name == "" or name in self.const

    def cval(self, node, name, what):
        if name not in self.const:
            raise self.error(node, f"{what} ('{name}') must be a constant")
        return self.const[name]

    def src(self, node, name):
        """A non-constant input tensor (a Pad output may only feed a Conv)."""
        if name in self.pads:
            raise self.error(node, "reads the output of a Pad; lrpfast folds Pad only into the "
                             "Conv right after it")
        if name not in self.shape:
            raise self.error(node, f"input '{name}' is not produced by an earlier node")
        return name

    def only_reader(self, tensor, *op_types):
        """(index, node) of the one node that reads ``tensor`` when its op type is one of
        ``op_types`` and the tensor is no graph output (so a peephole may merge it); else None."""
        readers = self.consumers.get(tensor, [])
        if len({k for k, _ in readers}) != 1 or readers[0][1].op_type not in op_types \
                or tensor in self.outputs:
            return None
        return readers[0]

    def scalar(self, name):
        """The value of a one-element constant tensor, or None."""
        v = self.const.get(name)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    def emit(self, node, ltype, bottoms, tops=None, blobs=None, **params):
        """Append a layer of ``ltype`` with ``<field>_param`` values ``params``; returns it.
        Its output shape comes from the layer class itself (shape-only instantiation)."""
        name = self.node_name
        while name in self.names:
            name += "_"
        self.names.add(name)
        lp = pb.LayerParameter(name=name, type=ltype)
        for field, values in params.items():
            sub = getattr(lp, field)
            for key, v in values.items():
                if key == "shape":
                    sub.shape.dim.extend(v)
                elif isinstance(v, (list, tuple)):
                    getattr(sub, key).extend(v)
                else:
                    setattr(sub, key, v)
            sub.SetInParent()
        tops = list(tops or node.output[:1])
        ldef = LayerDef(name=name, type=ltype, bottoms=list(bottoms), tops=tops, param=lp)
        layer = LAYER_TYPES[ltype](len(self.layers), ldef, [self.shape[b] for b in bottoms], None)
        for t, s in zip(tops, layer.out_shapes):
            self.shape[t] = s
        self.layers.append(ldef)
        if blobs is not None:
            self.weights[name] = [np.ascontiguousarray(b, dtype=np.float32) for b in blobs]
        return ldef

    # -------------------------------------------------------------- dispatch
    def convert_node(self, node):
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise self.error(node, f"operator domain '{node.domain}' is not supported "
                             f"(supported: the default ONNX domain: {', '.join(SUPPORTED_OPS)})")
        real = [i for i in node.input if i]
        if op in _FOLD and all(i in self.const for i in real) and (real or op == "Constant"):
            self.fold(node)
            return
        if op == "Shape" and node.input[0] in self.shape:
            full = np.array((_BATCH,) + self.shape[node.input[0]], np.int64)
            a = self.attrs(node)
            self.const[node.output[0]] = full[a.get("start", 0):a.get("end", len(full))]
            return
        handler = getattr(self, "op_" + op, None)
        if handler is None:
            raise self.error(node, f"unsupported operator {op}; supported: "
                             f"{', '.join(SUPPORTED_OPS)}")
        handler(node, self.attrs(node))

    # -------------------------------------------------------------- constant folding
    def fold(self, node):
        a = self.attrs(node)
        ins = [self.const[i] if i else None for i in node.input]
        op = node.op_type
        if op == "Constant":
            if "value" in a:
                out = self.nh.to_array(a["value"])
            else:
                keys = [k for k in a if k.startswith("value_")]
                if not keys:
                    raise self.error(node, f"a Constant with {sorted(a)} (no dense value) is "
                                     f"not supported")
                out = np.asarray(a[keys[0]])
        elif op == "Identity" or op == "Dropout":
            out = ins[0]
        elif op == "Cast":
            out = ins[0].astype(self.onnx.helper.tensor_dtype_to_np_dtype(a["to"]))
        elif op == "Gather":
            out = np.take(ins[0], ins[1].astype(np.int64), axis=a.get("axis", 0))
        elif op == "Concat":
            out = np.concatenate([np.atleast_1d(x) for x in ins], axis=a["axis"])
        elif op in ("Unsqueeze", "Squeeze"):
            axes = a.get("axes") if "axes" in a else (ins[1].tolist() if len(ins) > 1 else None)
            x = ins[0]
            if op == "Squeeze":
                out = np.squeeze(x, axis=None if axes is None else tuple(axes))
            else:
                out = x.reshape(_unsqueeze_shape(x.shape, axes))
        elif op == "Reshape":
            shape = [d if d != 0 else ins[0].shape[i] for i, d in enumerate(ins[1].tolist())]
            out = ins[0].reshape(shape)
        elif op in ("Add", "Sub", "Mul", "Div"):
            f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}.get(op)
            if op == "Div":
                f = np.floor_divide if ins[0].dtype.kind in "iu" else np.divide
            out = f(ins[0], ins[1]).astype(np.result_type(ins[0], ins[1]))
        elif op == "Slice":
            starts, ends = ins[1].tolist(), ins[2].tolist()
            axes = ins[3].tolist() if len(ins) > 3 and ins[3] is not None else range(len(starts))
            steps = ins[4].tolist() if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
            sl = [slice(None)] * ins[0].ndim
            for s, e, ax, st in zip(starts, ends, axes, steps):
                sl[ax] = slice(s, e, st)
            out = ins[0][tuple(sl)]
        elif op == "ConstantOfShape":
            v = self.nh.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
            out = np.full(ins[0].astype(np.int64).tolist(), v.reshape(-1)[0], dtype=v.dtype)
        elif op == "Transpose":
            out = np.transpose(ins[0], a.get("perm"))
        else:   # pragma: no cover (every _FOLD entry is handled above)
            raise self.error(node, "cannot fold")
        self.const[node.output[0]] = np.asarray(out)

    # -------------------------------------------------------------- linear layers
    def op_Conv(self, node, a):
        x = node.input[0]
        extra = (0, 0)
        if x in self.pads:   # a zero Pad right before: its padding joins the convolution's
            x, extra = self.pads[x]
        x = self.src(node, x)
        w = self.cval(node, node.input[1], "the weight W")
        b = self.const.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if w.ndim != 4:
            raise self.error(node, f"only 2-D convolutions are supported (W has shape {w.shape})")
        kernel = a.get("kernel_shape", list(w.shape[2:]))
        stride = a.get("strides", [1, 1])
        dil = a.get("dilations", [1, 1])
        pads = self.pool_pads(node, a, self.shape[x], kernel, stride, dil)
        pads = [pads[0] + extra[0], pads[1] + extra[1]]
        if b is None and len(node.input) > 2 and node.input[2]:
            raise self.error(node, "the bias B must be a constant")
        self.emit(node, "Convolution", [x], blobs=[w] + ([b] if b is not None else []),
                  convolution_param=dict(num_output=int(w.shape[0]), bias_term=b is not None,
                                         pad=pads, kernel_size=list(kernel), stride=list(stride),
                                         dilation=list(dil), group=int(a.get("group", 1))))

    def op_ConvTranspose(self, node, a):
        x = self.src(node, node.input[0])
        w = self.cval(node, node.input[1], "the weight W")
        if w.ndim != 4:
            raise self.error(node, f"only 2-D transposed convolutions are supported (W has "
                             f"shape {w.shape})")
        b = None
        if len(node.input) > 2 and node.input[2]:
            b = self.cval(node, node.input[2], "the bias B")
        kernel = [int(k) for k in a.get("kernel_shape", list(w.shape[2:]))]
        stride = [int(v) for v in a.get("strides", [1, 1])]
        dil = [int(v) for v in a.get("dilations", [1, 1])]
        group = int(a.get("group", 1))
        if any(a.get("output_padding", [0, 0])):
            raise self.error(node, f"output_padding {list(a['output_padding'])} is not supported "
                             f"(lrpfast's Deconvolution, as Caffe's, crops both ends alike)")
        H = self.shape[x][1:]
        full = [(H[i] - 1) * stride[i] + (kernel[i] - 1) * dil[i] + 1 for i in range(2)]
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if "output_shape" in a:
            want = [int(v) for v in a["output_shape"]][-2:]
        elif auto in ("SAME_UPPER", "SAME_LOWER"):
            want = [H[i] * stride[i] for i in range(2)]
        else:
            want = None
        if want is not None:   # the total padding that gives this size, split evenly
            total = [full[i] - want[i] for i in range(2)]
            if any(t < 0 or t % 2 for t in total):
                raise self.error(node, f"output size {want} needs the padding {total} split "
                                 f"unevenly or negative; lrpfast pads symmetrically")
            pads = [t // 2 for t in total]
        elif auto == "VALID":
            pads = [0, 0]
        else:
            pads = self.pool_pads(node, a, self.shape[x], kernel, stride, dil)
        self.emit(node, "Deconvolution", [x], blobs=[w] + ([b] if b is not None else []),
                  convolution_param=dict(num_output=int(w.shape[1]) * group,
                                         bias_term=b is not None, pad=pads,
                                         kernel_size=kernel, stride=stride, dilation=dil,
                                         group=group))

    def pool_pads(self, node, a, shape, kernel, stride, dil=(1, 1)):
        """Symmetric (pad_h, pad_w) from pads / auto_pad; asymmetric padding is refused."""
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for n, k, s, d in zip(shape[1:], kernel, stride, dil):
                total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
                if total % 2:
                    raise self.error(node, f"auto_pad {auto} needs an odd total padding "
                                     f"({total}); lrpfast pads symmetrically")
                pads.append(total // 2)
            return pads
        if auto == "VALID":
            return [0, 0]
        p = list(a.get("pads", [0, 0, 0, 0]))
        if len(p) != 4:
            raise self.error(node, f"only 2-D pads are supported, got {p}")
        if p[0] != p[2] or p[1] != p[3]:
            raise self.error(node, f"asymmetric padding {p} is not supported")
        return [int(p[0]), int(p[1])]

    def op_Gemm(self, node, a):
        x = self.src(node, node.input[0])
        if a.get("transA", 0):
            raise self.error(node, "transA = 1 is not supported")
        w = self.cval(node, node.input[1], "B") * np.float64(a.get("alpha", 1.0))
        w = w if a.get("transB", 0) else w.T          # (out, in)
        bias = None
        if len(node.input) > 2 and node.input[2]:
            c = self.cval(node, node.input[2], "C") * np.float64(a.get("beta", 1.0))
            bias = np.broadcast_to(np.asarray(c).reshape(-1) if c.size > 1 else c.reshape(()),
                                   (w.shape[0],))
        self.inner_product(node, x, w, bias, node.output[0])

    def op_MatMul(self, node, a):
        x = self.src(node, node.input[0])
        w = self.cval(node, node.input[1], "the second operand")
        if w.ndim != 2:
            raise self.error(node, f"the constant operand must be 2-D, got shape {w.shape}")
        top, bias = node.output[0], None
        reader = self.only_reader(top, "Add")
        if reader is not None:
            k, add = reader
            other = [i for i in add.input if i != top]
            if len(other) == 1 and other[0] in self.const \
                    and self.const[other[0]].size == w.shape[1]:
                bias = self.const[other[0]].reshape(-1)
                top = add.output[0]
                self.merged.add(k)
        self.inner_product(node, x, w.T, bias, top)

    def inner_product(self, node, x, w, bias, top):
        s = self.shape[x]
        axis = 1 if w.shape[1] == int(np.prod(s)) else len(s)   # Gemm: flatten; MatMul: last axis
        if w.shape[1] != int(np.prod(s[axis - 1:])):
            raise self.error(node, f"weight shape {w.shape} does not fit the input {s}")
        self.emit(node, "InnerProduct", [x], tops=[top],
                  blobs=[w] + ([bias] if bias is not None else []),
                  inner_product_param=dict(num_output=int(w.shape[0]), bias_term=bias is not None,
                                           axis=axis))

    def op_BatchNormalization(self, node, a):
        x = self.src(node, node.input[0])
        if a.get("training_mode", 0):
            raise self.error(node, "training_mode = 1 is not supported (deploy nets only)")
        g, beta, mean, var = (self.cval(node, i, n).astype(np.float64) for i, n in
                              zip(node.input[1:5], ("scale", "B", "mean", "var")))
        scale = g / np.sqrt(var + float(a.get("epsilon", 1e-5)))
        self.affine(node, x, scale, beta - mean * scale)

    def affine(self, node, x, a, c):
        """A per-channel (axis 1) or scalar y = a*x + c as a Scale layer."""
        C = self.shape[x][0]
        a, c = (np.broadcast_to(np.asarray(v, np.float64).reshape(-1), (C,)) for v in (a, c))
        self.emit(node, "Scale", [x], blobs=[a, c], scale_param=dict(bias_term=True))

    def channel_vector(self, node, k, shape):
        """A constant broadcast against (N,) + shape -> its (C,) or scalar values, or an error
        when it varies along any other axis."""
        full = (1,) + tuple(shape)
        if k.ndim > len(full):
            raise self.error(node, f"constant of shape {k.shape} does not broadcast to {full}")
        kk = k.reshape((1,) * (len(full) - k.ndim) + k.shape)
        if k.size == 1:
            return k.reshape(())
        if any(d != 1 for i, d in enumerate(kk.shape) if i != 1) or kk.shape[1] != full[1]:
            raise self.error(node, f"only scalar or per-channel constants (shape ({full[1]}, 1, "
                             f"...)) are supported, got shape {k.shape} for an input {full}")
        return kk.reshape(-1)

    def arith(self, node, a):
        op = node.op_type
        x0, x1 = node.input[:2]
        c0, c1 = self.is_const(x0), self.is_const(x1)
        if not c0 and not c1:
            s0, s1 = self.shape[self.src(node, x0)], self.shape[self.src(node, x1)]
            if op == "Mul" and s0 != s1 and len(s0) == len(s1):   # x * gate, gate broadcast
                def fits(g, x):
                    return all(b in (a, 1) for a, b in zip(self.shape[x], self.shape[g]))
                if not fits(x1, x0) and not fits(x0, x1):
                    raise self.error(node, f"operands of shapes {s0} and {s1}: neither "
                                     f"broadcasts to the other (a gate must)")
                self.emit(node, "Gate", [x0, x1] if fits(x1, x0) else [x1, x0])
                return
            if s0 != s1:
                raise self.error(node, f"operands of shapes {s0} and {s1}: broadcasting between "
                                 f"two tensors is not supported")
            if op == "Div":
                raise self.error(node, "division of two tensors is not supported")
            p = {"Add": dict(operation=1), "Sub": dict(operation=1, coeff=[1.0, -1.0]),
                 "Mul": dict(operation=0)}[op]
            self.emit(node, "Eltwise", [x0, x1], eltwise_param=p)
            return
        x, k = (x1, self.const[x0]) if c0 else (x0, self.const[x1])
        x = self.src(node, x)
        if op == "Add" and k.size == 1 and float(k.reshape(-1)[0]) == 3.0 \
                and self.hardswish_from_add(node, x):
            return
        k = self.channel_vector(node, k.astype(np.float64), self.shape[x])
        if op == "Add":
            self.affine(node, x, 1.0, k)
        elif op == "Sub":
            self.affine(node, x, -1.0, k) if c0 else self.affine(node, x, 1.0, -k)
        elif op == "Mul":
            self.affine(node, x, k, 0.0)
        elif c1:
            self.affine(node, x, 1.0 / k, 0.0)
        else:
            raise self.error(node, "a constant divided by a tensor is not supported")

    op_Add = op_Sub = op_Mul = op_Div = arith

    def op_Sum(self, node, a):
        xs = [self.src(node, i) for i in node.input]
        if len({self.shape[x] for x in xs}) != 1:
            raise self.error(node, "broadcasting between tensors is not supported")
        if len(xs) == 1:
            self.emit(node, "Dropout", xs)
        else:
            self.emit(node, "Eltwise", xs, eltwise_param=dict(operation=1))

    # -------------------------------------------------------------- activations
    def op_Relu(self, node, a):
        self.emit(node, "ReLU", [self.src(node, node.input[0])])

    def op_LeakyRelu(self, node, a):
        self.emit(node, "ReLU", [self.src(node, node.input[0])],
                  relu_param=dict(negative_slope=float(a.get("alpha", 0.01))))

    def op_PRelu(self, node, a):
        x = self.src(node, node.input[0])
        k = self.channel_vector(node, self.cval(node, node.input[1], "the slope"), self.shape[x])
        shared = k.size == 1
        self.emit(node, "PReLU", [x], blobs=[k.reshape(-1)],
                  prelu_param=dict(channel_shared=shared))

    def clip_bounds(self, node, a):
        """(min, max) of a Clip node (None where unbounded): attributes before opset 11,
        constant inputs after."""
        lo, hi = a.get("min"), a.get("max")
        if len(node.input) > 1 and node.input[1]:
            lo = float(self.cval(node, node.input[1], "min"))
        if len(node.input) > 2 and node.input[2]:
            hi = float(self.cval(node, node.input[2], "max"))
        return lo, hi

    def op_Clip(self, node, a):
        x = self.src(node, node.input[0])
        lo, hi = self.clip_bounds(node, a)
        p = {}
        if lo is not None:
            p["min"] = float(lo)
        if hi is not None:
            p["max"] = float(hi)
        self.emit(node, "Clip", [x], clip_param=p)

    def op_HardSigmoid(self, node, a):
        x = self.src(node, node.input[0])
        alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
        mul = self.only_reader(node.output[0], "Mul")
        if mul is not None and np.float32(alpha) == np.float32(1 / 6) and beta == 0.5 \
                and sorted(mul[1].input) == sorted([x, node.output[0]]):
            # x * HardSigmoid(x): PyTorch's Hardswish before opset 14
            self.merged.add(mul[0])
            self.emit(node, "HardSwish", [x], tops=[mul[1].output[0]])
            return
        self.emit(node, "HardSigmoid", [x],
                  power_param=dict(power=1.0, scale=alpha, shift=beta))

    def op_HardSwish(self, node, a):
        self.emit(node, "HardSwish", [self.src(node, node.input[0])])

    def hardswish_from_add(self, node, x):
        """x + 3 -> Clip(0, 6) -> Mul by x -> Div by 6 (or Mul by 1/6), the HardSwish of
        PaddlePaddle's and tf2onnx's exports, becomes one HardSwish layer named after the Add
        whose top is the last node's output; False (nothing emitted) when the chain differs."""
        clip = self.only_reader(node.output[0], "Clip")
        if clip is None or any(i not in self.const for i in clip[1].input[1:] if i) \
                or self.clip_bounds(clip[1], self.attrs(clip[1])) != (0.0, 6.0):
            return False
        mul = self.only_reader(clip[1].output[0], "Mul")
        if mul is None or sorted(mul[1].input) != sorted([x, clip[1].output[0]]):
            return False
        last = self.only_reader(mul[1].output[0], "Div", "Mul")
        if last is None:
            return False
        k = [i for i in last[1].input if i != mul[1].output[0]]
        v = self.scalar(k[0]) if len(k) == 1 else None
        if v is None or np.float32(v if last[1].op_type == "Div" else 1 / v) != np.float32(6):
            return False
        self.merged.update((clip[0], mul[0], last[0]))
        self.emit(node, "HardSwish", [x], tops=[last[1].output[0]])
        return True

    def op_Sigmoid(self, node, a):
        self.emit(node, "Sigmoid", [self.src(node, node.input[0])])

    def op_Tanh(self, node, a):
        self.emit(node, "TanH", [self.src(node, node.input[0])])

    def op_Softmax(self, node, a):
        x = self.src(node, node.input[0])
        r = len(self.shape[x]) + 1
        axis = int(a.get("axis", -1 if self.opset >= 13 else 1))
        axis = axis + r if axis < 0 else axis
        if self.opset < 13 and any(d != 1 for d in self.shape[x][axis:]):
            raise self.error(node, f"Softmax before opset 13 with axis {axis} on a rank-{r} "
                             f"input flattens the trailing axes; not supported")
        self.emit(node, "Softmax", [x], softmax_param=dict(axis=axis))

    def op_LRN(self, node, a):
        self.emit(node, "LRN", [self.src(node, node.input[0])],
                  lrn_param=dict(local_size=int(a["size"]), alpha=float(a.get("alpha", 1e-4)),
                                 beta=float(a.get("beta", 0.75)), k=float(a.get("bias", 1.0))))

    def op_Identity(self, node, a):
        self.emit(node, "Dropout", [self.src(node, node.input[0])])

    op_Dropout = op_Identity

    # -------------------------------------------------------------- pooling
    def pool(self, node, a, method):
        x = self.src(node, node.input[0])
        if len(node.output) > 1 and node.output[1]:
            raise self.error(node, "the Indices output of MaxPool is not supported")
        kernel = list(a["kernel_shape"])
        if len(kernel) != 2:
            raise self.error(node, f"only 2-D pooling is supported, got kernel {kernel}")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise self.error(node, "dilated pooling is not supported")
        stride = list(a.get("strides", [1, 1]))
        ceil = bool(a.get("ceil_mode", 0))
        p = list(a.get("pads", [0, 0, 0, 0]))
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or len(p) != 4 \
                or (p[0] == p[2] and p[1] == p[3]):
            pads = self.pool_pads(node, a, self.shape[x], kernel, stride)
        else:   # extra padding at the end only (Caffe's ceil rounding, as converters write it)
            pads, ceil = self.end_padding(node, p, self.shape[x], kernel, stride, ceil)
        if method == 1 and any(pads) and not a.get("count_include_pad", 0):
            raise self.error(node, "AveragePool with padding and count_include_pad = 0 is not "
                             "supported (lrpfast counts the padded cells, as Caffe and "
                             "PyTorch's default count_include_pad=True do)")
        self.emit(node, "Pooling", [x], pooling_param=dict(
            pool=method, kernel_h=kernel[0], kernel_w=kernel[1], stride_h=stride[0],
            stride_w=stride[1], pad_h=pads[0], pad_w=pads[1], round_mode=0 if ceil else 1))

    def end_padding(self, node, p, shape, kernel, stride, ceil):
        """Pooling pads [top, left, bottom, right] with bottom/right >= top/left: the same
        windows as symmetric pads (top, left) where the output size matches under ceil or floor
        rounding (the extra end cells are never the only cells of a window, and pooling ignores
        them: max over the input, average over the input when the begin pads are 0)."""
        from .._loader import _core

        out = []
        for i in range(2):
            n, k, s = shape[1 + i], kernel[i], stride[i]
            span = n + p[i] + p[i + 2] - k
            want = (-(-span // s) if ceil else span // s) + 1
            out.append([_core.pool_out_size(n, k, s, p[i], c) == want for c in (True, False)])
        for c, col in ((True, 0), (False, 1)):
            if p[2] >= p[0] and p[3] >= p[1] and out[0][col] and out[1][col]:
                return [int(p[0]), int(p[1])], c
        raise self.error(node, f"asymmetric padding {p} is not supported")

    def op_MaxPool(self, node, a):
        self.pool(node, a, 0)

    def op_AveragePool(self, node, a):
        self.pool(node, a, 1)

    def op_GlobalAveragePool(self, node, a):
        self.emit(node, "Pooling", [self.src(node, node.input[0])],
                  pooling_param=dict(pool=1, global_pooling=True))

    def op_GlobalMaxPool(self, node, a):
        self.emit(node, "Pooling", [self.src(node, node.input[0])],
                  pooling_param=dict(pool=0, global_pooling=True))

    # -------------------------------------------------------------- shape operators
    def op_Concat(self, node, a):
        xs = [self.src(node, i) for i in node.input]
        r = len(self.shape[xs[0]]) + 1
        axis = int(a["axis"])
        self.emit(node, "Concat", xs, concat_param=dict(axis=axis + r if axis < 0 else axis))

    def op_Flatten(self, node, a):
        x = self.src(node, node.input[0])
        axis = int(a.get("axis", 1))
        if axis < 0:
            axis += len(self.shape[x]) + 1
        if axis != 1:   # Flatten always gives 2-D: any other axis merges the batch axis
            raise self.error(node, f"axis {a.get('axis', 1)} merges the batch axis; only "
                             f"axis 1 is supported")
        self.emit(node, "Flatten", [x], flatten_param=dict(axis=1, end_axis=-1))

    def reshape_to(self, node, x, shape):
        self.emit(node, "Reshape", [x], reshape_param=dict(shape=[0] + [int(d) for d in shape]))

    def op_Reshape(self, node, a):
        x = self.src(node, node.input[0])
        dims = [int(d) for d in self.cval(node, node.input[1], "the target shape").tolist()]
        if a.get("allowzero", 0) and 0 in dims:
            raise self.error(node, "allowzero = 1 with a zero dimension is not supported")
        if not dims or dims[0] not in (0, -1, _BATCH):
            raise self.error(node, f"target shape {dims} changes the batch axis")
        rest = [self.shape[x][i - 1] if d == 0 else d for i, d in enumerate(dims) if i > 0]
        if -1 in rest and dims[0] == -1:
            raise self.error(node, f"target shape {dims} leaves the batch axis undetermined")
        self.reshape_to(node, x, rest)

    def squeeze(self, node, a, unsqueeze):
        x = self.src(node, node.input[0])
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.cval(node, node.input[1], "axes").tolist()
        s = self.shape[x]
        r = len(s) + 1
        if unsqueeze:
            full = _unsqueeze_shape((1,) + s, axes)
            if full[0] != 1 or 0 in [ax % len(full) for ax in axes]:
                raise self.error(node, "unsqueezing the batch axis is not supported")
            new = full[1:]
        else:
            axes = [i for i in range(1, r) if s[i - 1] == 1] if axes is None \
                else [ax % r for ax in axes]
            if 0 in axes:
                raise self.error(node, "squeezing the batch axis is not supported")
            new = tuple(d for i, d in enumerate(s) if i + 1 not in axes)
        self.reshape_to(node, x, new)

    def op_Squeeze(self, node, a):
        self.squeeze(node, a, False)

    def op_Unsqueeze(self, node, a):
        self.squeeze(node, a, True)

    def op_Transpose(self, node, a):
        x = self.src(node, node.input[0])
        perm = a.get("perm", list(range(len(self.shape[x]), -1, -1)))
        self.emit(node, "Permute", [x], permute_param=dict(order=[int(p) for p in perm]))

    def op_Pad(self, node, a):
        x = self.src(node, node.input[0])
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = a.get("pads")
        if pads is None:
            pads = self.cval(node, node.input[1], "pads").tolist()
        value = a.get("value", 0.0)
        if len(node.input) > 2 and node.input[2]:
            value = float(self.cval(node, node.input[2], "constant_value").reshape(-1)[0])
        if len(node.input) > 3 and node.input[3]:
            raise self.error(node, "the axes input of Pad is not supported")
        r = len(pads) // 2
        lo, hi = pads[:r], pads[r:]
        readers = self.consumers.get(node.output[0], [])
        if (mode != "constant" or value != 0.0 or r != 4 or any(lo[:2]) or any(hi[:2])
                or lo[2:] != hi[2:] or min(pads) < 0
                or not readers or any(n.op_type != "Conv" or n.input[0] != node.output[0]
                                      for _, n in readers)):
            raise self.error(node, f"only a symmetric zero Pad of the spatial axes right before "
                             f"a Conv is supported (mode {mode}, value {value}, pads {pads})")
        self.pads[node.output[0]] = (x, (int(lo[2]), int(lo[3])))


def _unsqueeze_shape(shape, axes):
    r = len(shape) + len(axes)
    axes = sorted(ax % r for ax in axes)
    out, it = [], iter(shape)
    for i in range(r):
        out.append(1 if i in axes else next(it))
    return tuple(out)


_FOLD = ("Constant", "Identity", "Dropout", "Cast", "Gather", "Concat", "Unsqueeze", "Squeeze",
         "Reshape", "Add", "Sub", "Mul", "Div", "Slice", "ConstantOfShape", "Transpose")

#: operators of the default domain that lrpfast imports (with Shape, folded to a constant)
SUPPORTED_OPS = tuple(sorted({n[3:] for n in dir(_Converter) if n.startswith("op_")}
                             | set(_FOLD) | {"Shape"}))
