"""Small helpers to build test nets: a list of ``reference.Layer`` records, the Caffe prototxt
text the engine reads for the same list, and random float32 weights in Caffe blob order.

    layers = [conv("conv1", "data", 4, kernel=3, pad=1), relu("relu1", "conv1"), ...]
    tn = build(layers, (N, C, H, W), rng)          # tn.text, tn.weights, tn.ref (a RefNet)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import reference as ref
from reference import Layer

# --------------------------------------------------------------------------------------------
# layer constructors (Caffe defaults where a value is left out)
# --------------------------------------------------------------------------------------------


def conv(name, bottom, num_output, kernel=3, stride=1, pad=0, dilation=1, group=1, bias=True,
         top=None):
    return Layer(name, "Convolution", [bottom], [top or name],
                 {"num_output": num_output, "kernel": kernel, "stride": stride, "pad": pad,
                  "dilation": dilation, "group": group, "bias_term": bias})


def ip(name, bottom, num_output, bias=True, top=None):
    return Layer(name, "InnerProduct", [bottom], [top or name],
                 {"num_output": num_output, "bias_term": bias})


def pool(name, bottom, method="MAX", kernel=2, stride=2, pad=0, global_pooling=False, top=None):
    p = {"pool": method, "global_pooling": global_pooling}
    if not global_pooling:
        p.update(kernel=kernel, stride=stride, pad=pad)
    return Layer(name, "Pooling", [bottom], [top or name], p)


def relu(name, bottom, inplace=True, negative_slope=0.0):
    return Layer(name, "ReLU", [bottom], [bottom if inplace else name],
                 {"negative_slope": negative_slope})


def lrn(name, bottom, local_size=5, alpha=1e-2, beta=0.75, k=1.0, top=None):
    return Layer(name, "LRN", [bottom], [top or name],
                 {"local_size": local_size, "alpha": alpha, "beta": beta, "k": k})


def eltwise(name, bottoms, operation="SUM", coeff=None, top=None):
    p = {"operation": operation}
    if coeff is not None:
        p["coeff"] = list(coeff)
    return Layer(name, "Eltwise", list(bottoms), [top or name], p)


def concat(name, bottoms, axis=1, top=None):
    return Layer(name, "Concat", list(bottoms), [top or name], {"axis": axis})


def batchnorm(name, bottom, inplace=True, eps=1e-5):
    return Layer(name, "BatchNorm", [bottom], [bottom if inplace else name], {"eps": eps})


def scale(name, bottom, bias=True, inplace=True):
    return Layer(name, "Scale", [bottom], [bottom if inplace else name], {"bias_term": bias})


def dropout(name, bottom, ratio=0.5, inplace=True):
    return Layer(name, "Dropout", [bottom], [bottom if inplace else name],
                 {"dropout_ratio": ratio})


def flatten(name, bottom, top=None):
    return Layer(name, "Flatten", [bottom], [top or name], {})


def softmax(name, bottom, top=None):
    return Layer(name, "Softmax", [bottom], [top or name], {})


# --------------------------------------------------------------------------------------------
# prototxt text
# --------------------------------------------------------------------------------------------

def _hw(prefix, v, repeated_name):
    """Caffe's kernel/stride/pad fields: one repeated value if square, else _h/_w."""
    if isinstance(v, (tuple, list)) and v[0] != v[1]:
        return f"{prefix}_h: {int(v[0])} {prefix}_w: {int(v[1])}"
    v = v[0] if isinstance(v, (tuple, list)) else v
    return f"{repeated_name}: {int(v)}"


def _f(v: float) -> str:
    return repr(float(v))


def layer_text(l: Layer) -> str:
    p = l.params
    lines = [f'layer {{\n  name: "{l.name}"\n  type: "{l.type}"']
    lines += [f'  bottom: "{b}"' for b in l.bottoms]
    lines += [f'  top: "{t}"' for t in l.tops]
    if l.type == "Convolution":
        body = [f"num_output: {p['num_output']}",
                f"bias_term: {'true' if p.get('bias_term', True) else 'false'}",
                _hw("kernel", p["kernel"], "kernel_size")]
        if p.get("stride", 1) not in (1, (1, 1)):
            body.append(_hw("stride", p["stride"], "stride"))
        if p.get("pad", 0) not in (0, (0, 0)):
            body.append(_hw("pad", p["pad"], "pad"))
        if p.get("dilation", 1) != 1:
            body.append(f"dilation: {int(p['dilation'])}")
        if p.get("group", 1) != 1:
            body.append(f"group: {int(p['group'])}")
        lines.append("  convolution_param { " + " ".join(body) + " }")
    elif l.type == "InnerProduct":
        lines.append(f"  inner_product_param {{ num_output: {p['num_output']} bias_term: "
                     f"{'true' if p.get('bias_term', True) else 'false'} }}")
    elif l.type == "Pooling":
        body = [f"pool: {p.get('pool', 'MAX')}"]
        if p.get("global_pooling"):
            body.append("global_pooling: true")
        else:
            body.append(_hw("kernel", p["kernel"], "kernel_size"))
            body.append(_hw("stride", p.get("stride", 1), "stride"))
            if p.get("pad", 0) not in (0, (0, 0)):
                body.append(_hw("pad", p["pad"], "pad"))
        lines.append("  pooling_param { " + " ".join(body) + " }")
    elif l.type == "ReLU":
        if p.get("negative_slope", 0.0):
            lines.append(f"  relu_param {{ negative_slope: {_f(p['negative_slope'])} }}")
    elif l.type == "LRN":
        lines.append(f"  lrn_param {{ local_size: {p['local_size']} alpha: {_f(p['alpha'])} "
                     f"beta: {_f(p['beta'])} k: {_f(p['k'])} norm_region: ACROSS_CHANNELS }}")
    elif l.type == "Eltwise":
        body = [f"operation: {p.get('operation', 'SUM')}"]
        body += [f"coeff: {_f(c)}" for c in p.get("coeff", [])]
        lines.append("  eltwise_param { " + " ".join(body) + " }")
    elif l.type == "Concat":
        lines.append(f"  concat_param {{ axis: {p.get('axis', 1)} }}")
    elif l.type == "BatchNorm":
        eps = _f(p.get("eps", 1e-5))
        lines.append(f"  batch_norm_param {{ use_global_stats: true eps: {eps} }}")
    elif l.type == "Scale":
        lines.append(f"  scale_param {{ bias_term: {'true' if p.get('bias_term') else 'false'} }}")
    elif l.type == "Dropout":
        lines.append(f"  dropout_param {{ dropout_ratio: {_f(p.get('dropout_ratio', 0.5))} }}")
    lines.append("}")
    return "\n".join(lines)


def prototxt(layers: Sequence[Layer], input_shape: Sequence[int], input_name: str = "data",
             name: str = "testnet", input_layer: bool = False) -> str:
    """Caffe NetParameter text.  input_layer=False: `input:` + `input_shape`; True: an Input
    layer."""
    dims = " ".join(f"dim: {int(d)}" for d in input_shape)
    if input_layer:
        head = (f'name: "{name}"\nlayer {{\n  name: "{input_name}"\n  type: "Input"\n'
                f'  top: "{input_name}"\n  input_param {{ shape {{ {dims} }} }}\n}}')
    else:
        head = f'name: "{name}"\ninput: "{input_name}"\ninput_shape {{ {dims} }}'
    return head + "\n" + "\n".join(layer_text(l) for l in layers) + "\n"


# --------------------------------------------------------------------------------------------
# random weights
# --------------------------------------------------------------------------------------------

def _layer_weights(l: Layer, in_shapes, rng, positive: bool) -> list[np.ndarray]:
    """Random float32 blobs in Caffe order.  positive=True draws weights/biases > 0 (and
    BatchNorm/Scale that keep the sign), so that LRP-0 denominators stay away from zero."""
    p = l.params
    f32 = np.float32
    if l.type == "Convolution":
        C = in_shapes[0][1]
        k = ref._pair(p["kernel"], 1)
        shape = (p["num_output"], C // p.get("group", 1), k[0], k[1])
        fan_in = int(np.prod(shape[1:]))
        if positive:
            W = rng.uniform(0.05, 1.0, shape) * (2.0 / fan_in)
            b = rng.uniform(0.0, 0.1, shape[0])
        else:
            W = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
            b = rng.normal(0.0, 0.1, shape[0])
        return [W.astype(f32)] + ([b.astype(f32)] if p.get("bias_term", True) else [])
    if l.type == "InnerProduct":
        K = int(np.prod(in_shapes[0][1:]))
        shape = (p["num_output"], K)
        if positive:
            W = rng.uniform(0.05, 1.0, shape) * (2.0 / K)
            b = rng.uniform(0.0, 0.1, shape[0])
        else:
            W = rng.normal(0.0, 1.0 / np.sqrt(K), shape)
            b = rng.normal(0.0, 0.1, shape[0])
        return [W.astype(f32)] + ([b.astype(f32)] if p.get("bias_term", True) else [])
    if l.type == "BatchNorm":
        C = in_shapes[0][1]
        factor = 2.0                          # stored statistics are multiplied by the factor
        mean = -rng.uniform(0.0, 0.5, C) if positive else rng.normal(0.0, 0.5, C)
        var = rng.uniform(0.5, 2.0, C)
        return [(mean * factor).astype(f32), (var * factor).astype(f32),
                np.array([factor], f32)]
    if l.type == "Scale":
        C = in_shapes[0][1]
        gamma = rng.uniform(0.5, 1.5, C) if positive else rng.normal(0.0, 1.0, C)
        beta = rng.uniform(0.0, 0.2, C) if positive else rng.normal(0.0, 0.2, C)
        return [gamma.astype(f32)] + ([beta.astype(f32)] if p.get("bias_term") else [])
    return []


def random_weights(layers: Sequence[Layer], input_shape, rng, positive=False,
                   input_name="data") -> dict[str, list[np.ndarray]]:
    """Weights for every layer that has blobs; shapes found by a float64 forward of zeros."""
    blobs = {input_name: np.zeros(input_shape)}
    weights = {}
    for l in layers:
        xs = [blobs[b] for b in l.bottoms]
        w = _layer_weights(l, [x.shape for x in xs], rng, positive)
        if w:
            weights[l.name] = w
        for t, v in zip(l.tops, ref.forward_layer(l, xs, w)):
            blobs[t] = v
    return weights


@dataclass
class TestNet:
    layers: list[Layer]
    input_shape: tuple[int, ...]
    text: str
    weights: dict[str, list[np.ndarray]]
    ref: ref.RefNet

    __test__ = False   # not a pytest class


def build(layers: Sequence[Layer], input_shape, rng, positive=False, input_layer=False,
          weights=None, prototxt_shape=None) -> TestNet:
    """prototxt text + random weights + the float64 reference net for one layer list.
    prototxt_shape: the input shape written into the text (default: input_shape)."""
    layers = list(layers)
    if weights is None:
        weights = random_weights(layers, input_shape, rng, positive)
    text = prototxt(layers, prototxt_shape or input_shape, input_layer=input_layer)
    return TestNet(layers, tuple(input_shape), text, weights,
                   ref.RefNet(["data"], layers, weights))


def random_input(shape, rng, positive=False, low=None, high=None) -> np.ndarray:
    """float32 input: N(0,1), or U(0,1) if positive, or U(low_c, high_c) per channel."""
    if low is not None:
        C = shape[1]
        lo = np.broadcast_to(np.asarray(low, np.float64).reshape(-1), (C,)) if np.ndim(low) \
            else np.full(C, float(low))
        hi = np.broadcast_to(np.asarray(high, np.float64).reshape(-1), (C,)) if np.ndim(high) \
            else np.full(C, float(high))
        u = rng.uniform(0.0, 1.0, shape)
        cs = (1, C) + (1,) * (len(shape) - 2)
        return (lo.reshape(cs) + u * (hi - lo).reshape(cs)).astype(np.float32)
    if positive:
        return rng.uniform(0.0, 1.0, shape).astype(np.float32)
    return rng.normal(0.0, 1.0, shape).astype(np.float32)
