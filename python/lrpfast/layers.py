"""Layer types of the engine: shape inference, weight checks, forward and relevance.

Every layer works on per-sample shapes (no batch axis) at build time and on batched float32
arrays (N, ...) at run time. ``forward(xs) -> (ys, state)``; ``relevance(xs, ys, state, Rs, ctx)``
maps the relevance of each top (None where none arrived) to the relevance of each bottom
(LRP rules on linear layers, winner-take-all max pooling, proportional average
pooling and Eltwise SUM, identity for LRN/Dropout/Normalize, slicing for Concat, sums for Split).
"""
from __future__ import annotations

import numpy as np

from . import ops
from ._loader import _core
from .rules import Epsilon, has_negative
from .rules import kernels as _kernels  # _core, or its device twin for device arrays


class LayerError(ValueError):
    """A problem with one layer of a net (its message names the layer)."""


class RelevanceContext:
    """What a layer needs to know in the relevance pass: its rule (linear layers), the
    stabiliser for average pooling / Eltwise SUM, the max-pooling treatment, and ``caffe``:
    None, or the toolbox treatment of pooling / LRN (``compat.ToolboxLayerHooks``, caffe mode)."""

    def __init__(self, rule, eps: float, maxpool: str, caffe=None):
        self.rule, self.eps, self.maxpool = rule, eps, maxpool
        self.gradient_like = bool(getattr(rule, "gradient_like", False))
        self.caffe = caffe


def _pair(values, h=None, w=None, default=None, what="value"):
    """Caffe's repeated kernel/stride/pad/dilation field plus its _h/_w overrides -> (h, w)."""
    vals = list(values)
    if h is not None or w is not None:
        if h is None or w is None:
            raise ValueError(f"{what}_h and {what}_w must be given together")
        return int(h), int(w)
    if len(vals) == 0:
        if default is None:
            raise ValueError(f"{what} is required")
        return default, default
    if len(vals) == 1:
        return int(vals[0]), int(vals[0])
    if len(vals) == 2:
        return int(vals[0]), int(vals[1])
    raise ValueError(f"{what}: 2-D layers take 1 or 2 values, got {len(vals)}")


_F32_MAX = float(np.finfo(np.float32).max)


def _param(value, what: str, low: float | None = None, strict: bool = False) -> float:
    """A layer's numeric parameter as a float, refused at load (ValueError naming it) unless
    finite in float32 and, with ``low``, >= low (> low with ``strict``): a degenerate value
    (NaN coefficient, negative LRN k, zero Normalize eps...) would turn a finite input into a
    non-finite output."""
    v = float(value)
    if not abs(v) <= _F32_MAX:   # NaN fails too
        raise ValueError(f"{what} must be a finite number, got {v!r}")
    if low is not None and (v < low or (strict and v == low)):
        raise ValueError(f"{what} must be {'>' if strict else '>='} {low:g}, got {v!r}")
    return v


def _shapes_summary(blobs, limit: int = 6) -> str:
    """The shapes of a blob list, at most ``limit`` of them and a count of the rest (errors
    stay short whatever a file holds)."""
    shapes = [tuple(np.shape(b)) for b in blobs[:limit]]
    more = f" and {len(blobs) - limit} more" if len(blobs) > limit else ""
    return f"{', '.join(map(str, shapes))}{more}"


def _opt(msg, field):
    """protobuf optional scalar field: its value if set, else None."""
    return getattr(msg, field) if msg.HasField(field) else None


class Layer:
    type = "?"
    n_bottoms = (1, 1)      # allowed range of bottom count
    #: layers with a learnable rule (Convolution, InnerProduct, unfolded BatchNorm/Scale)
    takes_rule = False

    def __init__(self, index: int, ldef, in_shapes: list[tuple], blobs: list[np.ndarray] | None):
        self.index, self.name, self.param = index, ldef.name, ldef.param
        self.bottoms_user, self.tops_user = list(ldef.bottoms), list(ldef.tops)
        self.bottoms: list[str] = []
        self.tops: list[str] = []
        lo, hi = self.n_bottoms
        if not lo <= len(in_shapes) <= hi:
            raise self.error(f"takes {lo}..{hi} bottoms, got {len(in_shapes)}")
        if len(ldef.tops) == 0:
            raise self.error("has no top blob")
        self.in_shapes = [tuple(int(d) for d in s) for s in in_shapes]
        try:
            self.out_shapes = [tuple(int(d) for d in s) for s in self.setup(self.in_shapes)]
            self.load_weights(blobs)
        except LayerError:
            raise
        except (ValueError, TypeError) as e:
            raise self.error(str(e)) from None
        for s in self.out_shapes:
            if any(d <= 0 for d in s):
                raise self.error(f"output shape {s} is empty (input shapes {self.in_shapes})")

    def error(self, msg: str) -> LayerError:
        return LayerError(f"layer {self.index} '{self.name}' ({self.type}): {msg}")

    def setup(self, in_shapes):
        return [in_shapes[0]]

    def expected_weights(self) -> list[tuple]:
        return []

    def load_weights(self, blobs):
        exp = self.expected_weights()
        self.blobs = []
        if not exp:
            if blobs:   # as Caffe's CopyTrainedLayersFrom: the blob counts must agree
                raise self.error(f"takes no weight blobs, got {len(blobs)} with shapes "
                                 f"{_shapes_summary(blobs)}")
            return
        if blobs is None:
            self.blobs = None  # a net without weights: forward will refuse
            return
        if len(blobs) != len(exp):
            raise self.error(f"expected {len(exp)} weight blobs with shapes {exp}, "
                             f"got {len(blobs)} with shapes {_shapes_summary(blobs)}")
        for k, (b, e) in enumerate(zip(blobs, exp)):
            b = np.asarray(b, dtype=np.float32)
            if tuple(b.shape) != tuple(e):
                # legacy 4-D blobs (1, 1, O, K) etc.: accept when only leading 1s differ
                squeezed = tuple(b.shape)
                while len(squeezed) > len(e) and squeezed[0] == 1:
                    squeezed = squeezed[1:]
                if squeezed != tuple(e):
                    raise self.error(f"weight blob {k} has shape {tuple(b.shape)}, "
                                     f"expected {tuple(e)} from the prototxt")
                b = b.reshape(e)
            if not np.all(np.isfinite(b)):
                raise self.error(f"weight blob {k} contains NaN or infinity")
            b = np.ascontiguousarray(b)
            b.flags.writeable = False   # the Net's own (Net copies arrays it is given)
            self.blobs.append(b)

    def require_weights(self):
        if self.blobs is None:
            raise self.error("the net was built without weights; pass a caffemodel")

    def forward(self, xs):
        raise NotImplementedError

    def relevance(self, xs, ys, state, Rs, ctx):
        raise NotImplementedError

    def check_relevance(self, ctx):
        """Raise before any work when this layer cannot pass relevance under ``ctx``."""

    def describe(self) -> str:
        return ""


class _PassThrough(Layer):
    """Layers whose relevance passes unchanged, reshaped to the bottom's shape."""

    def relevance(self, xs, ys, state, Rs, ctx):
        return [Rs[0].reshape(xs[0].shape)]


# ----------------------------------------------------------------------------- linear layers
class _RuleLayer(Layer):
    takes_rule = True
    rel_op: ops.LinearOp = None   # operator used by the relevance pass (folded when BN/Scale follow)
    z_top: str | None = None      # SSA blob holding z = rel_op.fwd(x) (the chain end when folded)

    def relevance(self, xs, ys, state, Rs, ctx):
        op = state.get("op", self.rel_op)   # Net._relevance_op: the unfolded one at the top
        if ctx.gradient_like:
            return [op.bwd(Rs[0], "w")]
        z = state.get("z", ys[0])
        if "zp" in state:   # z+ from the forward pass or shared by relevance_multi (x >= 0)
            return [ctx.rule.linear(op, xs[0], Rs[0], z=z, zp=state["zp"])]
        return [ctx.rule.linear(op, xs[0], Rs[0], z=z)]

    def forward_zplus(self, xs, op=None):
        """``forward`` through ``op`` (default: the layer's own; Net passes ``rel_op`` where it
        computes a folded BatchNorm/Scale chain in one product), plus z+ = x W+ + b+ as the
        state's "zp" where one pass computes both (the operator ``pairs_zplus`` and x >= 0):
        the alpha-beta rule then takes z+ from the state instead of a second pass over x (Net
        decides which layers ask). The sign scan runs only where the pair would be computed;
        elsewhere the rule does it."""
        self.require_weights()
        op, x = op or self.op, xs[0]
        if not op.pairs_zplus(x) or has_negative(x):
            return [op.fwd(x, "w", "b")], {}
        z, zp = op.fwd_zplus(x)
        return [z], {"zp": zp}

    def fold(self, a: np.ndarray, c: np.ndarray):
        """Fold a following per-output-channel affine map y -> a*y + c into the relevance op."""
        op = self.rel_op
        shape = (-1,) + (1,) * (op.w.ndim - 1)
        w = op.w * a.reshape(shape)
        b = (op.b if op.b is not None else np.zeros_like(a)) * a + c
        self.rel_op = self._make_op(w, b)


class Convolution(_RuleLayer):
    type = "Convolution"

    def setup(self, in_shapes):
        s = self._read_params(in_shapes[0])
        Ho = _core.conv_out_size(s[1], self.kernel[0], self.stride[0], self.pad[0], self.dilation[0])
        Wo = _core.conv_out_size(s[2], self.kernel[1], self.stride[1], self.pad[1], self.dilation[1])
        return [(self.num_output, Ho, Wo)]

    def _read_params(self, s):
        """convolution_param, checked against the per-sample input shape s; returns s."""
        p = self.param.convolution_param
        if len(s) != 3:
            raise ValueError(f"needs a (C, H, W) input, got per-sample shape {s}")
        if p.HasField("axis") and p.axis != 1:
            raise ValueError("only axis = 1 is supported")
        self.kernel = _pair(p.kernel_size, _opt(p, "kernel_h"), _opt(p, "kernel_w"), what="kernel")
        self.stride = _pair(p.stride, _opt(p, "stride_h"), _opt(p, "stride_w"), 1, "stride")
        self.pad = _pair(p.pad, _opt(p, "pad_h"), _opt(p, "pad_w"), 0, "pad")
        self.dilation = _pair(p.dilation, default=1, what="dilation")
        self.group = int(p.group)
        self.num_output = int(p.num_output)
        self.bias_term = bool(p.bias_term)
        C = s[0]
        if self.num_output <= 0:
            raise ValueError("num_output must be > 0")
        if min(self.kernel + self.stride + self.dilation) < 1 or min(self.pad) < 0 or self.group < 1:
            raise ValueError(f"bad kernel {self.kernel} / stride {self.stride} / pad {self.pad} / "
                             f"dilation {self.dilation} / group {self.group}")
        if C % self.group or self.num_output % self.group:
            raise ValueError(f"group {self.group} must divide input channels {C} and "
                             f"num_output {self.num_output}")
        return s

    def expected_weights(self):
        w = (self.num_output, self.in_shapes[0][0] // self.group) + self.kernel
        return [w, (self.num_output,)] if self.bias_term else [w]

    def load_weights(self, blobs):
        super().load_weights(blobs)
        if self.blobs:
            self.rel_op = self.op = self._make_op(self.blobs[0], self.blobs[1] if self.bias_term else None)

    def _make_op(self, w, b):
        return ops.ConvOp(w, b, self.in_shapes[0], self.stride, self.pad, self.dilation, self.group)

    def forward(self, xs):
        self.require_weights()
        return [self.op.fwd(xs[0], "w", "b")], {}

    def describe(self):
        return (f"k{self.kernel} s{self.stride} p{self.pad} d{self.dilation} g{self.group} "
                f"-> {self.num_output}")


class Deconvolution(Convolution):
    """Caffe's Deconvolution (ONNX ConvTranspose): the transposed convolution, output size
    (H - 1) * stride - 2 * pad + dilation * (kernel - 1) + 1; weights (C, num_output / group,
    kh, kw). Rules treat it as the linear map it is (ops.TransposedConvOp); the composites give
    it the Convolution rule."""

    type = "Deconvolution"
    rule_type = "Convolution"

    def setup(self, in_shapes):
        s = self._read_params(in_shapes[0])
        out = [(s[1 + i] - 1) * self.stride[i] - 2 * self.pad[i]
               + self.dilation[i] * (self.kernel[i] - 1) + 1 for i in range(2)]
        return [(self.num_output, out[0], out[1])]

    def expected_weights(self):
        w = (self.in_shapes[0][0], self.num_output // self.group) + self.kernel
        return [w, (self.num_output,)] if self.bias_term else [w]

    def _make_op(self, w, b):
        return ops.TransposedConvOp(w, b, self.in_shapes[0], self.out_shapes[0], self.stride,
                                    self.pad, self.dilation, self.group)

    def fold(self, a, c):
        """A following per-output-channel map y -> a*y + c: output channel o of group g is
        w[g's inputs, o - g * O/group]."""
        op, g = self.rel_op, self.group
        C, Og = op.w.shape[:2]
        w = (op.w.reshape((g, C // g, Og) + op.w.shape[2:])
             * a.reshape(g, 1, Og, 1, 1)).reshape(op.w.shape)
        b = (op.b if op.b is not None else np.zeros_like(a)) * a + c
        self.rel_op = self._make_op(w, b)


class InnerProduct(_RuleLayer):
    type = "InnerProduct"

    def setup(self, in_shapes):
        p = self.param.inner_product_param
        s = in_shapes[0]
        self.axis = int(p.axis)
        if self.axis < 0:
            self.axis += len(s) + 1
        if not 1 <= self.axis <= len(s):
            raise ValueError(f"axis {p.axis} is out of range for an input of rank {len(s) + 1}")
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise ValueError("num_output must be > 0")
        self.bias_term = bool(p.bias_term)
        self.transpose = bool(p.transpose)
        self.K = int(np.prod(s[self.axis - 1:]))
        return [tuple(s[:self.axis - 1]) + (self.num_output,)]

    def expected_weights(self):
        w = (self.K, self.num_output) if self.transpose else (self.num_output, self.K)
        return [w, (self.num_output,)] if self.bias_term else [w]

    def load_weights(self, blobs):
        super().load_weights(blobs)
        if self.blobs:
            w = self.blobs[0].T if self.transpose else self.blobs[0]
            self.rel_op = self.op = self._make_op(w, self.blobs[1] if self.bias_term else None)

    def _make_op(self, w, b):
        return ops.InnerProductOp(w, b, self.in_shapes[0], lead=self.axis - 1)

    def forward(self, xs):
        self.require_weights()
        return [self.op.fwd(xs[0], "w", "b")], {}

    def describe(self):
        return f"{self.K} -> {self.num_output}"


class _Affine(_RuleLayer):
    """BatchNorm / Scale: a per-channel affine map y = a*x + c along axis 1. When it follows a
    Convolution/InnerProduct it is folded into it for the relevance pass (canonisation) and passes
    relevance on; otherwise it is a diagonal linear layer under the active rule."""

    folded_into: str | None = None
    #: constant input normalisation of an ONNX net (lrpfast.onnx): relevance passes unchanged
    input_normalisation = False

    def setup(self, in_shapes):
        if len(in_shapes[0]) < 1:
            raise ValueError("needs a channel axis")
        self.channels = in_shapes[0][0]
        return [in_shapes[0]]

    def load_weights(self, blobs):
        super().load_weights(blobs)
        if self.blobs:
            a, c = self.affine()
            if not (np.all(np.abs(a) <= _F32_MAX) and np.all(np.abs(c) <= _F32_MAX)):
                raise ValueError("its per-channel scale or shift is not finite in float32")
            self.a, self.c = a.astype(np.float32), c.astype(np.float32)
            self.rel_op = self.op = ops.DiagOp(self.a, self.c, self.in_shapes[0])

    def forward(self, xs):
        self.require_weights()
        return [self.op.fwd(xs[0], "w", "b")], {}

    def relevance(self, xs, ys, state, Rs, ctx):
        if self.folded_into is not None or self.input_normalisation:
            return [Rs[0]]
        return super().relevance(xs, ys, state, Rs, ctx)

    def describe(self):
        if self.input_normalisation:
            return "input normalisation"
        return f"folded into '{self.folded_into}'" if self.folded_into else "per-channel affine"


class BatchNorm(_Affine):
    type = "BatchNorm"

    def expected_weights(self):
        return [(self.channels,), (self.channels,), (1,)]

    def affine(self):
        p = self.param.batch_norm_param
        if p.HasField("use_global_stats") and not p.use_global_stats:
            raise ValueError("use_global_stats: false (batch statistics) is not supported; "
                             "lrpfast runs deploy nets")
        mean, var, factor = (b.astype(np.float64) for b in self.blobs)
        eps = _param(p.eps, "eps", 0.0)
        if factor[0] < 0:
            raise ValueError(f"the moving-average factor (blob 2) must be >= 0, got {factor[0]:g}")
        f = 0.0 if factor[0] == 0 else 1.0 / factor[0]
        v = var * f + eps
        if np.any(var < 0) or not np.all(v > 0):
            k = int(np.flatnonzero((var < 0) | ~(v > 0))[0])
            raise ValueError(f"channel {k}: variance {var[k] * f:g} + eps {eps:g} must be > 0 "
                             "(a negative or zero variance gives a non-finite output)")
        a = 1.0 / np.sqrt(v)
        return a, -mean * f * a


class Scale(_Affine):
    type = "Scale"

    def setup(self, in_shapes):
        p = self.param.scale_param
        if p.axis != 1 or p.num_axes != 1:
            raise ValueError(f"only per-channel Scale (axis 1, num_axes 1) is supported, "
                             f"got axis {p.axis}, num_axes {p.num_axes}")
        self.bias_term = bool(p.bias_term)
        return super().setup(in_shapes)

    def expected_weights(self):
        return [(self.channels,), (self.channels,)] if self.bias_term else [(self.channels,)]

    def affine(self):
        a = self.blobs[0].astype(np.float64)
        c = self.blobs[1].astype(np.float64) if self.bias_term else np.zeros_like(a)
        return a, c


# ----------------------------------------------------------------------------- pooling
class Pooling(Layer):
    type = "Pooling"

    def setup(self, in_shapes):
        p = self.param.pooling_param
        s = in_shapes[0]
        if len(s) != 3:
            raise ValueError(f"needs a (C, H, W) input, got per-sample shape {s}")
        methods = {0: "max", 1: "ave"}
        if p.pool not in methods:
            raise ValueError("only MAX and AVE pooling are supported (not STOCHASTIC)")
        self.method = methods[p.pool]
        if p.global_pooling:
            self.kernel, self.stride, self.pad = (s[1], s[2]), (1, 1), (0, 0)
        else:
            self.kernel = _pair([p.kernel_size] if p.HasField("kernel_size") else [],
                                _opt(p, "kernel_h"), _opt(p, "kernel_w"), what="kernel")
            self.stride = _pair([p.stride] if p.HasField("stride") else [],
                                _opt(p, "stride_h"), _opt(p, "stride_w"), 1, "stride")
            self.pad = _pair([p.pad] if p.HasField("pad") else [],
                             _opt(p, "pad_h"), _opt(p, "pad_w"), 0, "pad")
        if min(self.kernel + self.stride) < 1 or min(self.pad) < 0:
            raise ValueError(f"bad kernel {self.kernel} / stride {self.stride} / pad {self.pad}")
        if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
            raise ValueError(f"pad {self.pad} must be smaller than the kernel {self.kernel}")
        self.ceil_mode = not (hasattr(p, "round_mode") and p.round_mode == 1)
        Ho = _core.pool_out_size(s[1], self.kernel[0], self.stride[0], self.pad[0], self.ceil_mode)
        Wo = _core.pool_out_size(s[2], self.kernel[1], self.stride[1], self.pad[1], self.ceil_mode)
        self.avg_op = ops.AvgPoolOp(s, self.kernel, self.stride, self.pad, self.ceil_mode)
        return [(s[0], Ho, Wo)]

    def forward(self, xs):
        y, argmax = _kernels(xs[0]).pool_forward(xs[0], self.method, self.kernel, self.stride, self.pad,
                                       self.ceil_mode)
        return [y], {"argmax": argmax}

    def relevance(self, xs, ys, state, Rs, ctx):
        x, R = xs[0], Rs[0]
        if ctx.caffe is not None:   # caffe mode: the toolbox's average-pooling rule
            out = ctx.caffe.pooling(self, x, ys[0], state, R, ctx)
            if out is not None:
                return [out]
        if self.method == "max" and (ctx.gradient_like or ctx.maxpool == "wta"):
            # winner-take-all: all relevance (or gradient) to the first maximum of each window
            return [_kernels(R).pool_backward(R, x.shape, "max", self.kernel, self.stride, self.pad,
                                        state["argmax"])]
        if ctx.gradient_like:
            return [self.avg_op.bwd(R, "w")]
        # average pooling (or max pooling treated as average): z-rule with the eps stabiliser
        z = ys[0] if self.method == "ave" else None
        return [Epsilon(ctx.eps).linear(self.avg_op, x, R, z=z)]

    def describe(self):
        return f"{self.method} k{self.kernel} s{self.stride} p{self.pad}"


# ----------------------------------------------------------------------------- element-wise
class ReLU(Layer):
    type = "ReLU"

    def setup(self, in_shapes):
        self.slope = _param(self.param.relu_param.negative_slope, "negative_slope")
        return [in_shapes[0]]

    def forward(self, xs):
        return [_kernels(xs[0]).relu_forward(xs[0], self.slope)], {}

    def relevance(self, xs, ys, state, Rs, ctx):
        # x None: a residual sum computed together with this ReLU (Net._sum_relu, slope 0) was
        # not kept; the output gates alike (y > 0 exactly where x > 0)
        R, x = Rs[0], (xs[0] if xs[0] is not None else ys[0])
        if ctx.gradient_like and self.slope != 0.0:
            R = R * np.where(x > 0, np.float32(1), np.float32(self.slope))
            x = np.ones_like(x)  # the slope already applied; let the rule's own gate see x > 0
        return [ctx.rule.relu(R, x)]


class _Pointwise(Layer):
    """An element-wise activation y = f(x) computed with numpy on the host (float32). LRP rules
    pass relevance through unchanged (as through ReLU; the LRP Toolbox does the same for TanH);
    the gradient-like rules multiply it by f'(x)."""

    def forward(self, xs):
        x = xs[0]
        if not isinstance(x, np.ndarray):
            raise NotImplementedError(f"layer '{self.name}' ({self.type}) is not supported on "
                                      f"CUDA yet; load the net with device='cpu'")
        with np.errstate(over="ignore"):
            return [self.f(x).astype(np.float32, copy=False)], {}

    def relevance(self, xs, ys, state, Rs, ctx):
        if ctx.gradient_like:
            return [(Rs[0] * self.derivative(xs[0], ys[0])).astype(np.float32, copy=False)]
        return [Rs[0]]


class TanH(_Pointwise):
    """Caffe's TanH: y = tanh(x)."""

    type = "TanH"

    @staticmethod
    def f(x):
        return np.tanh(x)

    @staticmethod
    def derivative(x, y):
        return 1 - y * y


class Sigmoid(_Pointwise):
    """Caffe's Sigmoid: y = 1 / (1 + exp(-x))."""

    type = "Sigmoid"

    @staticmethod
    def f(x):
        return 1 / (1 + np.exp(-x))

    @staticmethod
    def derivative(x, y):
        return y * (1 - y)


class Power(_Pointwise):
    """Caffe's Power: y = (shift + scale * x) ** power (a toolbox SumPool is AVE pooling then a
    Power layer with scale sqrt(kernel area))."""

    type = "Power"

    def setup(self, in_shapes):
        p = self.param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)
        if not all(np.isfinite([self.power, self.scale, self.shift])):
            raise ValueError("power, scale and shift must be finite")
        return [in_shapes[0]]

    def f(self, x):
        y = np.float32(self.shift) + np.float32(self.scale) * x
        return y if self.power == 1.0 else y ** np.float32(self.power)

    def derivative(self, x, y):
        if self.power == 1.0:
            return np.float32(self.scale)
        base = np.float32(self.shift) + np.float32(self.scale) * x
        return np.float32(self.power * self.scale) * base ** np.float32(self.power - 1)

    def describe(self):
        return f"({self.shift:g} + {self.scale:g} x) ^ {self.power:g}"


class _Rectifier(_Pointwise):
    """A ReLU-like activation (Clip, PReLU): LRP rules pass relevance unchanged; the gradient-like
    rules multiply it by f'(x) and then apply their own ReLU treatment (deconvnet and guided
    backprop keep the positive part), as ReLU with a slope does."""

    def relevance(self, xs, ys, state, Rs, ctx):
        R, x = Rs[0], xs[0]
        if ctx.gradient_like:   # f'(x), then the rule's own gate on an all-ones x
            R = (R * self.derivative(x, ys[0])).astype(np.float32, copy=False)
            x = np.ones_like(x)
        return [ctx.rule.relu(R, x)]


class Clip(_Rectifier):
    """y = min(max(x, min), max) (Caffe's Clip; ONNX Clip, e.g. ReLU6)."""

    type = "Clip"

    def setup(self, in_shapes):
        p = self.param.clip_param
        self.lo = float(p.min) if p.HasField("min") else -np.inf
        self.hi = float(p.max) if p.HasField("max") else np.inf
        if not self.lo <= self.hi:
            raise ValueError(f"min {self.lo:g} > max {self.hi:g}")
        return [in_shapes[0]]

    def f(self, x):
        return np.clip(x, np.float32(self.lo), np.float32(self.hi))

    def derivative(self, x, y):
        return ((x > self.lo) & (x < self.hi)).astype(np.float32)

    def describe(self):
        return f"[{self.lo:g}, {self.hi:g}]"


class PReLU(_Rectifier):
    """y = x for x > 0, a_c * x else, with a learned slope per channel (axis 1) or one shared
    slope (Caffe's PReLU; ONNX PRelu)."""

    type = "PReLU"

    def setup(self, in_shapes):
        if len(in_shapes[0]) < 1:
            raise ValueError("needs a channel axis")
        self.shared = bool(self.param.prelu_param.channel_shared)
        return [in_shapes[0]]

    def expected_weights(self):
        return [(1,)] if self.shared else [(self.in_shapes[0][0],)]

    def _slope(self, x):
        return self.blobs[0].reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, xs):
        self.require_weights()
        return super().forward(xs)

    def f(self, x):
        return np.where(x > 0, x, x * self._slope(x))

    def derivative(self, x, y):
        return np.where(x > 0, np.float32(1), self._slope(x))


class HardSigmoid(Power):
    """y = min(max(shift + scale * x, 0), 1): ONNX HardSigmoid (alpha = scale, beta = shift;
    PyTorch's Hardsigmoid is scale 1/6, shift 1/2). Its parameters are those of a Power layer
    with power 1. LRP rules pass relevance unchanged (as through Sigmoid); the gradient-like
    rules multiply it by f'(x) = scale inside (0, 1), else 0."""

    type = "HardSigmoid"

    def setup(self, in_shapes):
        out = super().setup(in_shapes)
        if self.power != 1.0:
            raise ValueError(f"power must be 1, got {self.power:g}")
        return out

    def f(self, x):
        return np.clip(super().f(x), np.float32(0), np.float32(1))

    def derivative(self, x, y):
        z = np.float32(self.shift) + np.float32(self.scale) * x
        return np.float32(self.scale) * ((z > 0) & (z < 1)).astype(np.float32)

    def describe(self):
        return f"clip({self.shift:g} + {self.scale:g} x, 0, 1)"


class HardSwish(_Rectifier):
    """y = x * min(max(x / 6 + 1/2, 0), 1) (ONNX HardSwish, PyTorch's Hardswish, MobileNetV3):
    ReLU-like (0 below -3, x above 3), so treated like Clip / PReLU: LRP rules pass relevance
    unchanged; the gradient-like rules multiply it by f'(x) (0 below -3, 1 above 3, x/3 + 1/2
    between) and then apply their own ReLU treatment."""

    type = "HardSwish"

    def f(self, x):
        return x * np.clip(x * np.float32(1 / 6) + np.float32(0.5), np.float32(0), np.float32(1))

    def derivative(self, x, y):
        return np.where(x <= -3, np.float32(0),
                        np.where(x >= 3, np.float32(1), x * np.float32(1 / 3) + np.float32(0.5)))


class Gate(Layer):
    """y = x * g, the second bottom broadcast over the first (each axis of g equal to x's or 1):
    a multiplicative gate such as squeeze-and-excitation's x (C, H, W) * g (C, 1, 1) (ONNX Mul
    of two tensors with broadcasting).

    Relevance: LRP rules treat the gate as a constant weight of the gated input, so all relevance
    goes to x unchanged and none to g (R_x = R, R_g = 0; the "signal-take-all" treatment of
    multiplicative gates in LRP for LSTMs, Arras et al. 2017). For a fixed g, y = g * x is a
    diagonal linear map without bias, whose z-rule returns R itself; g only says how strongly
    x passes, and the evidence is what passes. Conservation therefore holds through the gate.
    Gradient-like rules take the exact gradient: R_x = R * g, R_g = sum over the broadcast axes
    of R * x."""

    type = "Gate"
    n_bottoms = (2, 2)

    def setup(self, in_shapes):
        x, g = in_shapes
        if len(g) != len(x) or any(b not in (a, 1) for a, b in zip(x, g)):
            raise ValueError(f"the gate's shape {g} does not broadcast to the input's {x}")
        self.axes = tuple(i + 1 for i, (a, b) in enumerate(zip(x, g)) if a != b)
        return [x]

    def forward(self, xs):
        x, g = xs
        if not isinstance(x, np.ndarray):
            raise NotImplementedError(f"layer '{self.name}' ({self.type}) is not supported on "
                                      f"CUDA yet; load the net with device='cpu'")
        return [(x * g).astype(np.float32, copy=False)], {}

    def relevance(self, xs, ys, state, Rs, ctx):
        R = Rs[0]
        if not ctx.gradient_like:
            return [R, None]
        x, g = xs
        return [(R * g).astype(np.float32, copy=False),
                (R * x).sum(axis=self.axes, keepdims=True, dtype=np.float64).astype(np.float32)]

    def describe(self):
        return "x * gate"


class Dropout(_PassThrough):
    type = "Dropout"

    def forward(self, xs):
        return [xs[0]], {}


class LRN(_PassThrough):
    """Local response normalisation; relevance passes as identity (lrpfast mode)."""

    type = "LRN"

    def setup(self, in_shapes):
        p = self.param.lrn_param
        if len(in_shapes[0]) != 3:
            raise ValueError(f"needs a (C, H, W) input, got {in_shapes[0]}")
        self.size = int(p.local_size)
        # scale = k + alpha/n * sum(x^2) must stay > 0 for any input: k > 0, alpha >= 0
        self.alpha, self.beta = _param(p.alpha, "alpha", 0.0), _param(p.beta, "beta")
        self.k = _param(p.k, "k", 0.0, strict=True)
        if self.size < 1 or self.size % 2 == 0:
            raise ValueError(f"local_size must be odd and >= 1, got {self.size}")
        self.region = "within" if p.norm_region == 1 else "across"
        return [in_shapes[0]]

    def forward(self, xs):
        y, scale = _kernels(xs[0]).lrn_forward(xs[0], self.size, self.alpha, self.beta, self.k, self.region)
        return [y], {"scale": scale}

    def relevance(self, xs, ys, state, Rs, ctx):
        if ctx.caffe is not None:   # caffe mode: the toolbox's LRN rules (compat.lrn_type1)
            out = ctx.caffe.lrn(self, xs[0], ys[0], state, Rs[0], ctx)
            if out is not None:
                return [out]
        return super().relevance(xs, ys, state, Rs, ctx)


class Normalize(_PassThrough):
    """SSD's L2 Normalize (per pixel across channels, or over the whole sample) times a learned
    scale; relevance passes as identity like LRN."""

    type = "Normalize"

    def setup(self, in_shapes):
        p = self.param.norm_param
        self.across_spatial = bool(p.across_spatial)
        self.channel_shared = bool(p.channel_shared)
        self.eps = _param(p.eps, "eps", 0.0, strict=True)   # eps 0: 0/0 on a zero input
        if len(in_shapes[0]) != 3:
            raise ValueError(f"needs a (C, H, W) input, got {in_shapes[0]}")
        return [in_shapes[0]]

    def expected_weights(self):
        return [(1,)] if self.channel_shared else [(self.in_shapes[0][0],)]

    def forward(self, xs):
        self.require_weights()
        x = xs[0]
        if not isinstance(x, np.ndarray):   # a device array: the float32 twin
            return [_kernels(x).normalize_forward(x, self.across_spatial, self.eps,
                                                  self.blobs[0])], {}
        x64 = x.astype(np.float64)
        if self.across_spatial:
            norm = np.sqrt((x64 * x64).sum(axis=(1, 2, 3), keepdims=True) + self.eps)
        else:
            norm = np.sqrt((x64 * x64).sum(axis=1, keepdims=True) + self.eps)
        scale = self.blobs[0].reshape(1, -1, 1, 1) if not self.channel_shared else self.blobs[0][0]
        return [(x64 / norm * scale).astype(np.float32)], {}


class Softmax(Layer):
    type = "Softmax"

    def setup(self, in_shapes):
        ax = int(self.param.softmax_param.axis)
        self.axis = ax + len(in_shapes[0]) + 1 if ax < 0 else ax
        if not 1 <= self.axis <= len(in_shapes[0]):
            raise ValueError(f"axis {ax} out of range")
        return [in_shapes[0]]

    def forward(self, xs):
        x = xs[0]
        e = np.exp(x - x.max(axis=self.axis, keepdims=True))
        return [(e / e.sum(axis=self.axis, keepdims=True)).astype(np.float32)], {}

    def check_relevance(self, ctx):
        raise self.error("relevance cannot pass a Softmax; start below it (top=lrpfast.LOGITS, "
                         "old spelling top=-1, picks the layer right below the lowest Softmax)")


class Eltwise(Layer):
    type = "Eltwise"
    n_bottoms = (2, 1 << 20)

    def setup(self, in_shapes):
        p = self.param.eltwise_param
        self.op_name = {0: "prod", 1: "sum", 2: "max"}.get(p.operation)
        if self.op_name is None:
            raise ValueError(f"unknown operation {p.operation}")
        if any(s != in_shapes[0] for s in in_shapes):
            raise ValueError(f"all bottoms must have the same shape, got {in_shapes}")
        coeffs = list(p.coeff)
        if coeffs and (len(coeffs) != len(in_shapes) or self.op_name != "sum"):
            raise ValueError("coeff needs one value per bottom and operation SUM")
        self.coeffs = [_param(c, "coeff") for c in coeffs] or [1.0] * len(in_shapes)
        return [in_shapes[0]]

    def forward(self, xs):
        # one kernel (CPU or CUDA twin): in input order, float32, as the numpy loop would
        y, _ = _kernels(xs[0]).eltwise_forward(
            list(xs), self.op_name, self.coeffs if self.op_name == "sum" else None)
        return [y], {}

    def forward_relu(self, xs):
        """The SUM's ReLU (slope 0) from the same pass, the sum not kept (CPU engine): a
        residual block's sum and ReLU at the cost of one pass. The relevance then recomputes
        the sum with the same bits (y None)."""
        return _core.eltwise_forward(list(xs), "sum", self.coeffs, relu=True)[0]

    def check_relevance(self, ctx):
        if self.op_name == "prod" and not ctx.gradient_like:
            raise self.error("LRP rules are not defined for Eltwise PROD (only the gradient-like "
                             "methods pass it)")

    def relevance(self, xs, ys, state, Rs, ctx):
        R, y = Rs[0], ys[0]
        if self.op_name == "sum":
            if ctx.gradient_like:
                return [R * np.float32(c) for c in self.coeffs]
            # proportional to each operand's contribution (z rule, eps-stabilised), one pass;
            # y None (the forward fused the ReLU, CPU only): the kernel recomputes the sum
            k = _kernels(R)
            if k is not _core:
                return list(k.eltwise_sum_relevance(list(xs), R, y, self.coeffs, float(ctx.eps)))
            outs, finite = _core.eltwise_sum_relevance(list(xs), R, y, self.coeffs,
                                                       float(ctx.eps), check_finite=True)
            if finite:   # tested in the same pass: the net's check need not read them again
                ops.note_finite(*outs)
            return list(outs)
        if self.op_name == "max":
            out, taken = [], None
            for x in xs:  # the first operand holding the maximum wins
                win = (x == y) if taken is None else (x == y) & ~taken
                taken = win if taken is None else taken | win
                out.append(np.where(win, R, np.float32(0)))
            return out
        out = []
        for k in range(len(xs)):
            g = R.copy()
            for j, x in enumerate(xs):
                if j != k:
                    g *= x
            out.append(g)
        return out

    def describe(self):
        return self.op_name + (f" coeff={self.coeffs}" if self.op_name == "sum" else "")


# ----------------------------------------------------------------------------- shape layers
class Concat(Layer):
    type = "Concat"
    n_bottoms = (1, 1 << 20)

    def setup(self, in_shapes):
        p = self.param.concat_param
        ax = int(p.concat_dim) if p.HasField("concat_dim") else int(p.axis)
        nd = len(in_shapes[0])
        self.axis = ax + nd + 1 if ax < 0 else ax
        if not 1 <= self.axis <= nd:
            raise ValueError(f"axis {ax} out of range (the batch axis cannot be concatenated)")
        for s in in_shapes:
            if len(s) != nd or any(a != b for i, (a, b) in enumerate(zip(s, in_shapes[0]))
                                   if i != self.axis - 1):
                raise ValueError(f"bottom shapes {in_shapes} differ outside axis {self.axis}")
        out = list(in_shapes[0])
        out[self.axis - 1] = sum(s[self.axis - 1] for s in in_shapes)
        self.sections = np.cumsum([s[self.axis - 1] for s in in_shapes])[:-1].tolist()
        return [tuple(out)]

    def forward(self, xs):
        return [np.concatenate(xs, axis=self.axis)], {}

    def relevance(self, xs, ys, state, Rs, ctx):
        return [_contiguous(r) for r in np.split(Rs[0], self.sections, axis=self.axis)]


class Split(Layer):
    type = "Split"

    def setup(self, in_shapes):
        return [in_shapes[0]] * len(self.tops_user)

    def forward(self, xs):
        return [xs[0]] * len(self.tops_user), {}

    def relevance(self, xs, ys, state, Rs, ctx):
        total = None
        for r in Rs:
            if r is not None:
                total = r.copy() if total is None else total + r
        return [total]


class Flatten(_PassThrough):
    type = "Flatten"

    def setup(self, in_shapes):
        p = self.param.flatten_param
        s = in_shapes[0]
        nd = len(s) + 1
        a = int(p.axis) + (nd if p.axis < 0 else 0)
        e = int(p.end_axis) + (nd if p.end_axis < 0 else 0)
        if not 1 <= a <= e < nd:
            raise ValueError(f"axis {p.axis} / end_axis {p.end_axis} out of range for rank {nd}")
        full = (1,) + tuple(s)
        return [tuple(full[1:a]) + (int(np.prod(full[a:e + 1])),) + tuple(full[e + 1:])]

    def forward(self, xs):
        return [xs[0].reshape((xs[0].shape[0],) + self.out_shapes[0])], {}


class Reshape(Flatten):
    type = "Reshape"

    def setup(self, in_shapes):
        p = self.param.reshape_param
        full = (-1,) + tuple(in_shapes[0])   # -1 marks the batch axis
        nd = len(full)
        axis = int(p.axis) + (nd + 1 if p.axis < 0 else 0)
        num = int(p.num_axes)
        end = nd if num == -1 else axis + num
        if not 0 <= axis <= end <= nd:
            raise ValueError(f"axis {p.axis} / num_axes {p.num_axes} out of range for rank {nd}")
        dims = list(p.shape.dim)
        new = []
        for i, d in enumerate(dims):
            if d == 0:
                if axis + i >= nd:
                    raise ValueError(f"dim {i} = 0 copies an axis the input does not have")
                new.append(full[axis + i])
            else:
                new.append(int(d))
        shape = list(full[:axis]) + new + list(full[end:])
        if shape[0] != -1:
            raise ValueError("Reshape must keep the batch axis (use 0 as its first dim)")
        rest = list(shape[1:])
        total = int(np.prod(in_shapes[0]))
        if rest.count(-1) == 1:
            known = int(np.prod([d for d in rest if d != -1]))
            if known == 0 or total % known:
                raise ValueError(f"cannot reshape {in_shapes[0]} into {shape}")
            rest[rest.index(-1)] = total // known
        elif rest.count(-1) > 1:
            raise ValueError("at most one -1 dimension is allowed")
        if int(np.prod(rest)) != total or any(d < 1 for d in rest):
            raise ValueError(f"cannot reshape {in_shapes[0]} into {shape}")
        return [tuple(rest)]


class Permute(Layer):
    type = "Permute"

    def setup(self, in_shapes):
        nd = len(in_shapes[0]) + 1
        order = [int(o) for o in self.param.permute_param.order]
        if len(set(order)) != len(order) or any(not 0 <= o < nd for o in order):
            raise ValueError(f"order {order} is not a permutation of the axes 0..{nd - 1}")
        order += [a for a in range(nd) if a not in order]
        if order[0] != 0:
            raise ValueError("Permute must keep the batch axis first")
        self.order = order
        self.inverse = np.argsort(order).tolist()
        full = (0,) + tuple(in_shapes[0])
        return [tuple(full[a] for a in order[1:])]

    def forward(self, xs):
        return [_contiguous(xs[0].transpose(self.order))], {}

    def relevance(self, xs, ys, state, Rs, ctx):
        return [_contiguous(Rs[0].transpose(self.inverse))]


def _contiguous(a):
    """np.ascontiguousarray for host arrays; device arrays are always contiguous."""
    return np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a


LAYER_TYPES = {cls.type: cls for cls in (
    Convolution, InnerProduct, Pooling, ReLU, LRN, Dropout, Softmax, Concat, Split, Flatten,
    Reshape, Eltwise, BatchNorm, Scale, Permute, Normalize, TanH, Sigmoid, Power, Clip,
    PReLU, HardSigmoid, HardSwish, Gate, Deconvolution)}


def supported_types() -> list[str]:
    return sorted(LAYER_TYPES)
