"""ONNX import (lrpfast.onnx): forward agreement with onnxruntime at every tensor both expose,
the operator set, the Net API on an ONNX net, and clear errors.

Needs onnx and onnxruntime (the models built in PyTorch also need torch); skipped cleanly
without them, run in CI by .ci/steps/50-onnx.sh.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lrpfast  # noqa: E402
from lrpfast.onnx.importer import SUPPORTED_OPS, OnnxImportError  # noqa: E402

pytestmark = pytest.mark.onnx

#: forward agreement with onnxruntime, max |a - b| / max |b| per tensor: both compute in float32
#: with different summation orders (BLAS vs MLAS, BatchNorm folded or not); the issue's bound
FWD_RTOL = 1e-4
LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def _session(model):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # no fusions
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _with_all_outputs(model, names):
    """A copy of ``model`` whose graph also outputs the tensors ``names``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    return m


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def check_forward(model, x, net=None):
    """lrpfast's forward equals onnxruntime's at the outputs and every intermediate tensor that
    is an lrpfast blob (the tensors of folded constants / Pads exist only in ONNX)."""
    net = net or lrpfast.Net.from_onnx(model)
    inner = [t for layer in net.layers for t in layer.tops]
    sess = _session(_with_all_outputs(model, inner))
    names = [o.name for o in sess.get_outputs()]
    ref = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x})))
    got = net.forward(x, blobs=inner)
    # a Softmax amplifies its input's rounding by the input's magnitude: where FWD_RTOL of the
    # largest logit is not small against 1 (the model zoo's constant-weight graphs have logits
    # ~1e10), its output is checked against a float64 softmax of lrpfast's own logits instead
    ill = {}
    for layer in net.layers:
        logits = got.get(layer.bottoms[0]) if layer.bottoms else None
        if layer.type == "Softmax" and logits is not None and int(np.prod(logits.shape[2:])) == 1 \
                and FWD_RTOL * float(np.abs(logits).max()) > 1e-3:
            z = logits.astype(np.float64).reshape(logits.shape[0], -1)   # (N, classes)
            e = np.exp(z - z.max(axis=1, keepdims=True))
            ill[layer.tops[0]] = (e / e.sum(axis=1, keepdims=True)).reshape(got[layer.tops[0]].shape)
    worst = max(((_rel(got[t], ill.get(t, ref[t])), t) for t in inner), default=(0.0, None))
    assert worst[0] <= FWD_RTOL, f"tensor {worst[1]}: relative error {worst[0]:.3g}"
    return net, len(inner)


# --------------------------------------------------------------------------- PyTorch models
@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn", "resnet18",
                                  pytest.param("resnet50", marks=pytest.mark.slow),
                                  "mobilenet_v2", "mobilenet_v3", "squeezenet", "densenet",
                                  "alexnet"])
def test_torch_models_forward_match_onnxruntime(name):
    torch = pytest.importorskip("torch")
    import onnx_models

    model, size = onnx_models.build(name)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, size, size),
                                                                  dtype=np.float32))
    proto = onnx.load_from_string(lrpfast.onnx.export_torch(model, x))
    net, n = check_forward(proto, x.numpy())
    assert n >= 10
    with torch.no_grad():   # and PyTorch itself, at the output
        assert _rel(net.forward(x.numpy()), model(x).numpy()) <= FWD_RTOL


def test_from_torch_and_readout_by_tensor_name():
    torch = pytest.importorskip("torch")
    import onnx_models

    model, size = onnx_models.build("resnet18")
    x = np.random.default_rng(2).standard_normal((3, 3, size, size), dtype=np.float32)
    net = lrpfast.Net.from_torch(model, torch.from_numpy(x[:1]))
    # an intermediate tensor by its ONNX name: the output of the first residual sum + ReLU
    relu = [layer for layer in net.layers if layer.type == "ReLU"][2].tops[0]
    out = net.relevance(x, [0, 1, 2], "epsilon_plus_flat", readout=[relu, "input"])
    assert out[relu].shape == (3,) + net.shapes[relu]
    assert out["input"].shape == x.shape
    rm = net.relevance_multi(x, [0, 1], "epsilon_plus_flat")
    np.testing.assert_allclose(rm[1][1], out["input"][1], rtol=1e-5, atol=1e-7)
    assert "alpha1beta0" in net.describe_rules("epsilon_plus_flat")


# --------------------------------------------------------------------------- the operator set
def _const(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def _zoo_model():
    """One graph with the operators a PyTorch / tf2onnx export of a classifier uses: input
    normalisation (Sub / Div by per-channel constants), a zero Pad before a Conv, Conv with
    BatchNormalization, LeakyRelu, PRelu, Clip, MaxPool (ceil), AveragePool, a depthwise Conv
    with auto_pad, residual Add, Sigmoid, Tanh, LRN, Transpose back and forth, Concat, the
    Shape -> Gather -> Unsqueeze -> Concat -> Reshape chain, MatMul + Add, Gemm, Squeeze /
    Unsqueeze, Identity, Dropout and Softmax."""
    rng = np.random.default_rng(5)

    def r(*s, scale=0.3):
        return (rng.standard_normal(s) * scale).astype(np.float32)

    inits = [
        _const("mean", r(1, 3, 1, 1)), _const("std", (rng.random((1, 3, 1, 1)) + 0.5).astype(np.float32)),
        _const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
        _const("W1", r(8, 3, 3, 3)), _const("B1", r(8)),
        _const("bn_s", (rng.random(8) + 0.5).astype(np.float32)), _const("bn_b", r(8)),
        _const("bn_m", r(8)), _const("bn_v", (rng.random(8) + 0.5).astype(np.float32)),
        _const("slope", (rng.random((8, 1, 1)) * 0.3).astype(np.float32)),
        _const("W2", r(8, 1, 3, 3)), _const("lo", np.array(0, np.float32)),
        _const("hi", np.array(6, np.float32)), _const("W3", r(4, 8, 1, 1)),
        _const("idx0", np.array(0, np.int64)), _const("minus1", np.array([-1], np.int64)),
        _const("axes0", np.array([0], np.int64)), _const("Wm", r(12 * 3 * 3, 16, scale=0.1)),
        _const("bm", r(16)), _const("Wg", r(10, 16)), _const("bg", r(10)),
        _const("axes2", np.array([2], np.int64)), _const("two", np.array(2.0, np.float32)),
    ]
    N = helper.make_node
    nodes = [
        N("Sub", ["x", "mean"], ["xc"], name="sub_mean"),
        N("Div", ["xc", "std"], ["xn"], name="div_std"),
        N("Pad", ["xn", "pads"], ["xp"], name="pad"),
        N("Conv", ["xp", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3]),
        N("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["b1"], name="bn1",
          epsilon=1e-3),
        N("LeakyRelu", ["b1"], ["l1"], name="leaky", alpha=0.1),
        N("MaxPool", ["l1"], ["p1"], name="pool1", kernel_shape=[3, 3], strides=[2, 2],
          ceil_mode=1),
        N("Conv", ["p1", "W2"], ["c2"], name="dw", group=8, kernel_shape=[3, 3],
          auto_pad="SAME_UPPER"),
        N("PRelu", ["c2", "slope"], ["r2"], name="prelu"),
        N("Add", ["r2", "p1"], ["s2"], name="residual"),
        N("Clip", ["s2", "lo", "hi"], ["k2"], name="relu6"),
        N("Mul", ["k2", "two"], ["m2"], name="times2"),
        N("Sigmoid", ["m2"], ["g2"], name="sigmoid"),
        N("Tanh", ["m2"], ["t2"], name="tanh"),
        N("LRN", ["t2"], ["n2"], name="lrn", size=3, alpha=1e-2, beta=0.75, bias=1.0),
        N("Transpose", ["n2"], ["tr"], name="to_nhwc", perm=[0, 2, 3, 1]),
        N("Transpose", ["tr"], ["n3"], name="to_nchw", perm=[0, 3, 1, 2]),
        N("Conv", ["n3", "W3"], ["c3"], name="conv3", kernel_shape=[1, 1]),
        N("Concat", ["g2", "c3"], ["cat"], name="concat", axis=1),
        N("AveragePool", ["cat"], ["a3"], name="avg", kernel_shape=[2, 2], strides=[2, 2]),
        N("Identity", ["a3"], ["a4"], name="identity"),
        N("Shape", ["a4"], ["shp"], name="shape"),
        N("Gather", ["shp", "idx0"], ["n"], name="gather", axis=0),
        N("Unsqueeze", ["n", "axes0"], ["n1"], name="unsq_n"),
        N("Concat", ["n1", "minus1"], ["newshape"], name="cat_shape", axis=0),
        N("Reshape", ["a4", "newshape"], ["flat"], name="reshape"),
        N("MatMul", ["flat", "Wm"], ["mm"], name="matmul"),
        N("Add", ["mm", "bm"], ["fc1"], name="matmul_bias"),
        N("Relu", ["fc1"], ["h"], name="relu"),
        N("Dropout", ["h"], ["hd"], name="dropout"),
        N("Unsqueeze", ["hd", "axes2"], ["hu"], name="unsq"),
        N("Squeeze", ["hu", "axes2"], ["hs"], name="sq"),
        N("Gemm", ["hs", "Wg", "bg"], ["logits"], name="fc2", transB=1, alpha=0.5, beta=2.0),
        N("Softmax", ["logits"], ["prob"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "zoo", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 15, 15])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_operator_zoo_forward_and_rules():
    model = _zoo_model()
    onnx.checker.check_model(model)
    x = np.random.default_rng(3).standard_normal((4, 3, 15, 15), dtype=np.float32)
    net, n = check_forward(model, x)
    types = {layer.name: layer.type for layer in net.layers}
    assert types["matmul"] == "InnerProduct" and "matmul_bias" not in types   # bias merged
    assert "pad" not in types and net.layer("conv1").pad == (1, 1)            # Pad folded
    assert net.layer("bn1").folded_into == "conv1"                            # canonisation
    table = net.describe_rules("epsilon_plus_flat", top="fc2")
    for name, treatment in [("sub_mean", "identity (input normalisation)"),
                            ("div_std", "identity (input normalisation)"),
                            ("conv1", "flat"), ("bn1", "folded into 'conv1'"),
                            ("leaky", "pass"), ("prelu", "pass"), ("relu6", "pass"),
                            ("sigmoid", "pass"), ("tanh", "pass"), ("lrn", "identity"),
                            ("residual", "proportional"), ("dw", "alpha1beta0"),
                            ("fc2", "epsilon")]:
        line = next(l for l in table.splitlines() if f" {name} " in l)
        assert treatment in line, line
    R = net.relevance(x, -1, "epsilon_plus_flat", top="fc2")
    assert R.shape == x.shape and np.all(np.isfinite(R))


def test_rules_of_new_operators_in_every_composite():
    """Each new operator's treatment is the same in every composite: the activations (ReLU6,
    LeakyRelu, PRelu, Sigmoid, Tanh) pass relevance unchanged, the input normalisation passes
    it unchanged, the residual sum splits it proportionally (conservation with eps -> 0)."""
    net = lrpfast.Net.from_onnx(_zoo_model())
    x = np.random.default_rng(4).standard_normal((2, 3, 15, 15), dtype=np.float32)
    fwd = net.forward(x, blobs=[net.layer("residual").bottoms[0], net.layer("residual").tops[0]])
    for name in lrpfast.COMPOSITE_NAMES:
        comp = lrpfast.composite(name, low=-3.0, high=3.0) if name == "epsilon_gamma_box" \
            else lrpfast.composite(name)
        grad = comp.default is not None and comp.default.gradient_like
        acts = ["leaky", "prelu", "relu6", "sigmoid", "tanh"]
        blobs = {n: net.layer(n).tops[0] for n in acts + ["residual", "div_std"]}
        bottoms = {n: net.layer(n).bottoms for n in blobs}
        ro = sorted({b for n in blobs for b in bottoms[n]} | set(blobs.values()) | {"x"})
        out = net.relevance(x, 3, comp, top="fc2", readout=ro)
        if grad:
            continue   # the gradient-like methods multiply by the derivative instead
        for n in acts:
            top, bot = blobs[n], bottoms[n][0]
            if n in ("sigmoid", "tanh"):
                continue   # their bottom also feeds the other one: checked through the sum
            np.testing.assert_array_equal(out[bot], out[top], err_msg=f"{name}: {n}")
        both = out[blobs["sigmoid"]] + out[blobs["tanh"]]
        np.testing.assert_allclose(out[bottoms["sigmoid"][0]], both, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(out["x"], out[blobs["div_std"]], err_msg=name)
        # the residual branch's share: R_branch = branch * R_sum / sum (the branch's bottom
        # is read by the Add only; the other operand also feeds the depthwise Conv)
        r2, s2 = bottoms["residual"][0], blobs["residual"]
        den = fwd[s2] + comp.eps * np.where(fwd[s2] >= 0, 1, -1)   # the composite's stabiliser
        np.testing.assert_allclose(out[r2], fwd[r2] * out[s2] / den, rtol=1e-4, atol=1e-7,
                                   err_msg=f"{name}: residual sum")


# --------------------------------------------------------------------------- MobileNetV3 operators
def _se_model(rng):
    """Conv -> HardSwish (the ONNX operator) -> squeeze-and-excitation (GlobalAveragePool,
    1x1 Conv, Relu, 1x1 Conv, HardSigmoid, Mul with the gate as the *first* operand) -> strided
    Conv -> HardSwish as PaddlePaddle exports it (x + 3, Clip(0, 6), Mul by x, Div by 6) ->
    GlobalAveragePool -> Flatten -> Gemm. The Convs and the Gemm on the relevance path have no
    bias (so LRP-eps conserves relevance up to eps); the SE convs do."""
    def r(*s, scale=0.4):
        return (rng.standard_normal(s) * scale).astype(np.float32)

    w = dict(W1=r(6, 3, 3, 3), Ws1=r(3, 6, 1, 1), bs1=r(3), Ws2=r(6, 3, 1, 1), bs2=r(6),
             W2=r(4, 6, 3, 3), W3=r(5, 4, scale=1.0))
    inits = [_const(k, v) for k, v in w.items()] + [
        _const("three", np.array(3, np.float32)), _const("zero", np.array(0, np.float32)),
        _const("six", np.array(6, np.float32))]
    N = helper.make_node
    nodes = [
        N("Conv", ["x", "W1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        N("HardSwish", ["c1"], ["h1"], name="hswish1"),
        N("GlobalAveragePool", ["h1"], ["s0"], name="se_pool"),
        N("Conv", ["s0", "Ws1", "bs1"], ["s1"], name="se_fc1", kernel_shape=[1, 1]),
        N("Relu", ["s1"], ["s2"], name="se_relu"),
        N("Conv", ["s2", "Ws2", "bs2"], ["s3"], name="se_fc2", kernel_shape=[1, 1]),
        N("HardSigmoid", ["s3"], ["g"], name="se_gate", alpha=0.2, beta=0.5),
        N("Mul", ["g", "h1"], ["y1"], name="se_mul"),
        N("Conv", ["y1", "W2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
          strides=[2, 2]),
        N("Add", ["c2", "three"], ["a2"], name="hs2_add"),
        N("Clip", ["a2", "zero", "six"], ["k2"], name="hs2_clip"),
        N("Mul", ["c2", "k2"], ["m2"], name="hs2_mul"),
        N("Div", ["m2", "six"], ["h2"], name="hs2_div"),
        N("GlobalAveragePool", ["h2"], ["p2"], name="pool"),
        N("Flatten", ["p2"], ["f2"], name="flatten"),
        N("Gemm", ["f2", "W3"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 10, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


def _hardswish64(x):
    return x * np.clip(x / 6 + 0.5, 0, 1)


def _se_reference(x, w, R_top, rule, eps):
    """Float64 forward and relevance of ``_se_model`` with tests/reference.py's layer rules:
    the HardSwish layers pass relevance unchanged and the SE gate hands all of it to the gated
    tensor (lrpfast's stated treatments), everything else by the rule."""
    import reference as ref

    c1 = ref.conv_forward(x, w["W1"], pad=1)
    h1 = _hardswish64(c1)
    s = h1.mean(axis=(2, 3), keepdims=True)
    s = np.maximum(ref.conv_forward(s, w["Ws1"], w["bs1"]), 0)
    g = np.clip(0.2 * ref.conv_forward(s, w["Ws2"], w["bs2"]) + 0.5, 0, 1)
    y1 = g * h1
    c2 = ref.conv_forward(y1, w["W2"], stride=2, pad=1)
    h2 = _hardswish64(c2)
    p2 = h2.mean(axis=(2, 3), keepdims=True)
    logits = ref.ip_forward(p2, w["W3"])
    Rp = ref.ip_relevance(p2, w["W3"], None, R_top, rule).reshape(p2.shape)
    R = ref.pool_relevance(h2, Rp, "AVE", rule.kind, global_pooling=True, eps=eps)
    R = ref.conv_relevance(y1, w["W2"], None, R, rule, stride=2, pad=1)   # HardSwish: pass
    return logits, ref.conv_relevance(x, w["W1"], None, R, rule, pad=1)   # gate, HardSwish: pass


#: relevance vs the float64 reference: lrpfast runs in float32 (activations rounded to ~6e-8
#: relative, BLAS summation order), the rules' divisions amplify that by at most 1/eps-ish here
REL_RTOL = 1e-4


@pytest.mark.parametrize("rule", ["epsilon", "alpha2beta1"])
def test_hardswish_and_gate_relevance_match_float64_reference(rule):
    """HardSwish (both export forms) and HardSigmoid pass relevance unchanged, the
    squeeze-excitation gate hands all relevance to the gated tensor (the gate counts as a
    constant weight), the other layers follow the rule: against tests/reference.py in float64,
    and with LRP-eps the input relevance sums to the output's (conservation)."""
    import reference as ref
    from lrpfast import rules as R

    rng = np.random.default_rng(11)
    model, w = _se_model(rng)
    net = lrpfast.Net.from_onnx(model)
    types = {layer.name: layer.type for layer in net.layers}
    assert types["hswish1"] == types["hs2_add"] == "HardSwish"       # the Paddle chain fused
    assert "hs2_mul" not in types and types["se_mul"] == "Gate"
    assert net.layer("se_mul").bottoms == ["h1", "g"]                   # gated tensor first
    x = rng.standard_normal((3, 3, 10, 12)).astype(np.float32)
    check_forward(model, x, net)
    R_top = rng.standard_normal((3, 5)).astype(np.float32)
    if rule == "epsilon":
        eng, rr, eps = R.Epsilon(0.01), ref.epsilon(0.01), 0.01
    else:
        eng = lrpfast.Composite(default=R.AlphaBeta(2.0, 1.0), eps=1e-6)
        rr, eps = ref.alphabeta(2.0, 1.0), 1e-6
    logits, want = _se_reference(x.astype(np.float64), w, R_top, rr, eps)
    assert _rel(net.forward(x), logits) <= FWD_RTOL
    got = net.propagate(x, R_top, top="fc", rules=eng)
    assert _rel(got, want) <= REL_RTOL
    if rule == "epsilon":   # no bias on the relevance path: only eps absorbs relevance
        cons = net.propagate(x, R_top, top="fc", rules=R.Epsilon(1e-9))
        np.testing.assert_allclose(cons.sum(axis=(1, 2, 3)), R_top.sum(axis=1), rtol=1e-4,
                                   atol=1e-5)


def test_hardswish_and_gate_treatment_in_every_composite():
    """In every LRP composite the HardSwish layers hand on exactly the relevance they get, the
    Gate hands all of it to the gated tensor and none to the gate branch; describe_rules says
    so. (The gradient-like composites take the exact gradient: see the torch test below.)"""
    rng = np.random.default_rng(12)
    model, _ = _se_model(rng)
    net = lrpfast.Net.from_onnx(model)
    x = rng.standard_normal((2, 3, 10, 12)).astype(np.float32)
    blobs = ["c1", "h1", "g", "y1", "c2", "h2"]
    for name in lrpfast.COMPOSITE_NAMES:
        comp = lrpfast.composite(name, low=-3.0, high=3.0) if name == "epsilon_gamma_box" \
            else lrpfast.composite(name)
        table = net.describe_rules(comp, top="fc")
        for layer, treatment in [("hswish1", "pass"), ("hs2_add", "pass"),
                                 ("se_gate", "pass"), ("se_mul", "all to the gated input")]:
            line = next(l for l in table.splitlines() if f" {layer} " in l)
            assert treatment in line, line
        if comp.default is not None and comp.default.gradient_like:
            continue
        out = net.relevance(x, 1, comp, top="fc", readout=blobs)
        np.testing.assert_array_equal(out["c1"], out["h1"], err_msg=name)
        np.testing.assert_array_equal(out["h1"], out["y1"], err_msg=name)
        np.testing.assert_array_equal(out["c2"], out["h2"], err_msg=name)
        assert not out["g"].any(), name
        assert np.abs(out["y1"]).max() > 0, name


def test_gradient_through_hardswish_hardsigmoid_and_gate_matches_torch():
    """The gradient-like path of HardSwish, HardSigmoid and the SE gate (R_x = R g,
    R_g = sum of R x over the broadcast axes): lrpfast's ``gradient`` composite against
    torch's autograd in float64 on the MobileNetV3-shaped model."""
    torch = pytest.importorskip("torch")
    import onnx_models

    model, size = onnx_models.build("mobilenet_v3")
    x = np.random.default_rng(13).standard_normal((2, 3, size, size), dtype=np.float32)
    net = lrpfast.Net.from_torch(model, torch.from_numpy(x[:1]))
    assert {"HardSwish", "HardSigmoid", "Gate"} <= {layer.type for layer in net.layers}
    classes = [3, 7]
    m64 = model.double()
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    sel = m64(xt)[torch.arange(2), classes]
    (g,) = torch.autograd.grad(sel.sum(), xt)
    ref = (g * sel.detach()[:, None, None, None]).numpy()
    assert _rel(net.relevance(x, classes, "gradient"), ref) <= FWD_RTOL


@pytest.mark.parametrize("opset", [13, 17])
def test_hardswish_export_forms(opset):
    """PyTorch exports Hardswish as x * HardSigmoid(x) before opset 14 and as the HardSwish
    operator after: both become one HardSwish layer (no Eltwise PROD, which LRP cannot pass)."""
    torch = pytest.importorskip("torch")
    import onnx_models

    model, size = onnx_models.build("mobilenet_v3")
    x = np.random.default_rng(14).standard_normal((2, 3, size, size), dtype=np.float32)
    proto = onnx.load_from_string(lrpfast.onnx.export_torch(model, torch.from_numpy(x), opset))
    net, _ = check_forward(proto, x)
    types = [layer.type for layer in net.layers]
    assert types.count("HardSwish") == 7 and types.count("Gate") == 3
    assert "Eltwise" not in types or all(layer.op_name == "sum" for layer in net.layers
                                         if layer.type == "Eltwise")
    R = net.relevance(x, [0, 1], "epsilon_plus_flat")
    assert R.shape == x.shape and np.all(np.isfinite(R)) and np.abs(R).max() > 0


def test_input_shape_for_dynamic_height_and_width():
    """A model with dynamic H / W: a clear error saying to pass input_shape, and with it the
    net has that shape (the batch axis stays free); wrong input_shape values are refused."""
    model = _tiny([helper.make_node("Conv", ["x", "W"], ["y"], name="c", kernel_shape=[3, 3])],
                  [_const("W", np.ones((2, 3, 3, 3), np.float32))])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param, dims[2].dim_param, dims[3].dim_param = "N", "H", "W"
    with pytest.raises(OnnxImportError, match=r"input 'x' .*dynamic.*input_shape"):
        lrpfast.Net.from_onnx(model)
    net = lrpfast.Net.from_onnx(model, input_shape=(3, 9, 11))
    assert net.inputs == {"x": (3, 9, 11)} and net.shapes["y"] == (2, 7, 9)
    x = np.random.default_rng(15).standard_normal((2, 3, 9, 11), dtype=np.float32)
    check_forward(model, x, net)
    assert lrpfast.Net.from_onnx(model, input_shape={"x": (3, 5, 5)}).shapes["y"] == (2, 3, 3)
    for bad, what in [((3, 9), "rank 4"), ((4, 9, 11), "fixes dimension 1 to 3"),
                      ({"z": (3, 9, 11)}, "not inputs of the graph"), ((3, 0, 5), "positive")]:
        with pytest.raises(ValueError, match=what):
            lrpfast.Net.from_onnx(model, input_shape=bad)


# --------------------------------------------------------------------------- ConvTranspose
def _conv_transpose_model(rng, **attrs):
    """ConvTranspose (4 -> 6 channels, 3x3, with bias; ``attrs``) -> BatchNormalization ->
    Relu -> GlobalAveragePool -> Flatten -> Gemm, input (4, 5, 5)."""
    g = attrs.get("group", 1)
    w = dict(W=(rng.standard_normal((4, 6 // g, 3, 3)) * 0.5).astype(np.float32),
             B=(rng.standard_normal(6) * 0.3).astype(np.float32),
             s=(rng.random(6) + 0.5).astype(np.float32), b=(rng.standard_normal(6) * 0.3).astype(np.float32),
             m=(rng.standard_normal(6) * 0.3).astype(np.float32), v=(rng.random(6) + 0.5).astype(np.float32),
             W2=rng.standard_normal((5, 6)).astype(np.float32))
    N = helper.make_node
    nodes = [N("ConvTranspose", ["x", "W", "B"], ["c"], name="deconv", kernel_shape=[3, 3], **attrs),
             N("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn", epsilon=1e-5),
             N("Relu", ["n"], ["r"], name="relu"),
             N("GlobalAveragePool", ["r"], ["p"], name="pool"),
             N("Flatten", ["p"], ["f"], name="flatten"),
             N("Gemm", ["f", "W2"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "deconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        [_const(k, v) for k, v in w.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


def _transposed_conv_matrix(W, in_shape, out_shape, stride, pad, dilation, group):
    """The explicit (O*Ho*Wo, C*H*W) matrix of a transposed convolution, float64, from its
    definition: input pixel (c, i, j) adds W[c, o', ky, kx] to output pixel
    (g * O/group + o', i * s - p + ky * d, j * s - p + kx * d) of its group g."""
    C, H, Wd = in_shape
    O, Ho, Wo = out_shape
    Og = O // group
    M = np.zeros((O, Ho, Wo, C, H, Wd))
    for c in range(C):
        gi = c // (C // group)
        for oo in range(Og):
            for ky in range(W.shape[2]):
                for kx in range(W.shape[3]):
                    for i in range(H):
                        y = i * stride[0] - pad[0] + ky * dilation[0]
                        for j in range(Wd):
                            x = j * stride[1] - pad[1] + kx * dilation[1]
                            if 0 <= y < Ho and 0 <= x < Wo:
                                M[gi * Og + oo, y, x, c, i, j] += W[c, oo, ky, kx]
    return M.reshape(O * Ho * Wo, C * H * Wd)


CONV_T = {"s2p1": dict(strides=[2, 2], pads=[1, 1, 1, 1]),
          "s21_d12_g2": dict(strides=[2, 1], pads=[0, 1, 0, 1], dilations=[1, 2], group=2),
          "s3_output_shape": dict(strides=[3, 3], output_shape=[13, 13])}


@pytest.mark.parametrize("case", sorted(CONV_T))
@pytest.mark.parametrize("rule", ["epsilon", "alpha2beta1", "flat"])
def test_conv_transpose_forward_and_relevance_match_float64_reference(case, rule):
    """ConvTranspose (strides, pads, dilations, group, output_shape) with BatchNormalization
    folded into it: forward vs onnxruntime at every tensor; relevance at the input vs the rule
    applied to the transposed convolution's explicit matrix (float64, BatchNorm folded into
    its rows), the same rule a convolution gets in every composite."""
    import reference as ref
    from lrpfast import rules as R

    rng = np.random.default_rng(16)
    attrs = CONV_T[case]
    model, w = _conv_transpose_model(rng, **attrs)
    net = lrpfast.Net.from_onnx(model)
    dc = net.layer("deconv")
    assert dc.type == "Deconvolution" and net.layer("bn").folded_into == "deconv"
    x = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
    check_forward(model, x, net)
    M = _transposed_conv_matrix(w["W"].astype(np.float64), (4, 5, 5), net.shapes["c"],
                                dc.stride, dc.pad, dc.dilation, attrs.get("group", 1))
    a = w["s"] / np.sqrt(w["v"].astype(np.float64) + 1e-5)      # BatchNorm folded
    HW = int(np.prod(net.shapes["c"][1:]))
    Mf, bf = M * np.repeat(a, HW)[:, None], np.repeat(a * (w["B"] - w["m"]) + w["b"], HW)
    x64 = x.astype(np.float64).reshape(3, -1)
    n = (x64 @ Mf.T + bf).reshape((3,) + net.shapes["c"])
    r = np.maximum(n, 0)
    p = r.mean(axis=(2, 3), keepdims=True)
    R_top = rng.standard_normal((3, 5)).astype(np.float32)
    eps = ref.epsilon(0.01)   # the Gemm's rule and the pooling's stabiliser
    Rp = ref.ip_relevance(p, w["W2"], None, R_top, eps).reshape(p.shape)
    Rr = ref.pool_relevance(r, Rp, "AVE", "epsilon", global_pooling=True, eps=0.01)
    if rule == "flat":   # every connected input alike: R_i = sum_j [M_ji != 0] R_j / n_j
        P = (Mf != 0).astype(np.float64)
        want = (Rr.reshape(3, -1) / P.sum(axis=1)) @ P
        eng = lrpfast.Composite(default=R.Epsilon(0.01), by_type={"Convolution": R.Flat()},
                                eps=0.01)
    else:
        rr = ref.epsilon(0.01) if rule == "epsilon" else ref.alphabeta(2.0, 1.0)
        want = ref.linear_rule(x64, Mf, bf, Rr.reshape(3, -1), rr)
        eng = lrpfast.Composite(default=R.Epsilon(0.01), by_type={
            "Convolution": R.Epsilon(0.01) if rule == "epsilon" else R.AlphaBeta(2.0, 1.0)},
            eps=0.01)
    assert repr(eng.assign(net.layers)["deconv"]) == repr(eng.by_type["Convolution"])
    got = net.propagate(x, R_top, top="fc", rules=eng)
    assert _rel(got, want.reshape(x.shape)) <= REL_RTOL


def test_conv_transpose_from_torch():
    """torch's ConvTranspose2d (groups, dilation, stride, padding) exported and imported:
    forward equal to onnxruntime and torch; output_padding is refused by name."""
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(),
                          nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, groups=2, dilation=2),
                          nn.ReLU(), nn.ConvTranspose2d(6, 4, 2, stride=2)).eval()
    x = np.random.default_rng(17).standard_normal((2, 3, 12, 12), dtype=np.float32)
    proto = onnx.load_from_string(lrpfast.onnx.export_torch(model, torch.from_numpy(x)))
    net, _ = check_forward(proto, x)
    assert [layer.type for layer in net.layers].count("Deconvolution") == 2
    with torch.no_grad():
        assert _rel(net.forward(x), model(torch.from_numpy(x)).numpy()) <= FWD_RTOL
    model[4] = nn.ConvTranspose2d(6, 4, 3, stride=2, output_padding=1)
    with pytest.raises(OnnxImportError, match="output_padding"):
        lrpfast.Net.from_torch(model, torch.from_numpy(x))


# --------------------------------------------------------------------------- model zoo graphs
@pytest.mark.parametrize("name", ["bvlc_alexnet", "squeezenet", "zfnet512",
                                  *(pytest.param(n, marks=pytest.mark.slow)
                                    for n in ("resnet50", "vgg19", "densenet121"))])
def test_onnx_model_zoo_graphs(name):
    """The ONNX model zoo's graphs (Caffe2 exports, opset 9: Sum, LRN, Gemm, BatchNormalization,
    end-padded pools) that the onnx wheel ships as backend test data ("light" copies whose
    weights are constants). No trained ONNX image classifier ships in a PyPI package with only
    these operators: see the report in the test below."""
    path = os.path.join(LIGHT, f"light_{name}.onnx")
    if not os.path.exists(path):
        pytest.skip(f"{path} is not in this onnx wheel")
    model = onnx.load(path)
    net = lrpfast.Net(path)
    x = np.random.default_rng(6).standard_normal((1,) + next(iter(net.inputs.values())),
                                                 dtype=np.float32)
    check_forward(model, x, net)


# --------------------------------------------------------------------------- errors and API
def _tiny(op_nodes, inits=(), opset=17, shape=(3, 8, 8)):
    g = helper.make_graph(op_nodes, "tiny",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *shape])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
                          list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_unsupported_operator_error_names_node_op_opset_and_list():
    m = _tiny([helper.make_node("Erf", ["x"], ["y"], name="erf_1")])
    with pytest.raises(OnnxImportError) as e:
        lrpfast.Net.from_onnx(m)
    msg = str(e.value)
    for part in ("erf_1", "Erf", "opset 17", "Conv", "Gemm", "BatchNormalization"):
        assert part in msg, msg
    assert "Conv" in SUPPORTED_OPS and "Erf" not in SUPPORTED_OPS


@pytest.mark.parametrize("how", ["Net", "from_onnx", "from_onnx+input_shape"])
def test_conversion_error_names_the_file(tmp_path, how):
    path = tmp_path / "erf_model.onnx"
    onnx.save(_tiny([helper.make_node("Erf", ["x"], ["y"], name="erf_1")]), str(path))
    with pytest.raises(OnnxImportError) as e:
        if how == "Net":
            lrpfast.Net(str(path))
        elif how == "from_onnx":
            lrpfast.Net.from_onnx(path)
        else:
            lrpfast.Net.from_onnx(str(path), input_shape=(3, 8, 8))
    assert str(path) in str(e.value) and "erf_1" in str(e.value), str(e.value)


@pytest.mark.parametrize("nodes,inits,what", [
    ([helper.make_node("Conv", ["x", "W"], ["y"], pads=[0, 0, 1, 1], name="c")],
     [_const("W", np.ones((2, 3, 3, 3), np.float32))], "asymmetric padding"),
    ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                       name="a")], [], "count_include_pad"),
    ([helper.make_node("Mul", ["x", "k"], ["y"], name="m")],
     [_const("k", np.ones((3, 8, 1), np.float32))], "per-channel"),
    ([helper.make_node("Pad", ["x", "p"], ["y"], name="p", mode="reflect")],
     [_const("p", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], "zero Pad"),
    ([helper.make_node("Reshape", ["x", "s"], ["y"], name="r")],
     [_const("s", np.array([3, -1], np.int64))], "batch axis"),
    ([helper.make_node("Flatten", ["x"], ["y"], name="f", axis=2)], [], "batch axis"),
    ([helper.make_node("Constant", [], ["k"], name="cst", sparse_value=helper.make_sparse_tensor(
        helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
        helper.make_tensor("i", TensorProto.INT64, [1], [0]), [3])),
      helper.make_node("Add", ["x", "k"], ["y"], name="add")], [], "no dense value"),
    ([helper.make_node("Transpose", ["x"], ["t"], name="t", perm=[0, 2, 1, 3]),
      helper.make_node("Mul", ["x", "t"], ["y"], name="m2")], [], "neither broadcasts"),
    ([helper.make_node("ConvTranspose", ["x", "W"], ["y"], name="ct", strides=[2, 2],
                       output_padding=[1, 1])],
     [_const("W", np.ones((3, 2, 3, 3), np.float32))], "output_padding"),
    ([helper.make_node("ConvTranspose", ["x", "W"], ["y"], name="ct", strides=[2, 2],
                       auto_pad="SAME_UPPER")],
     [_const("W", np.ones((3, 2, 3, 3), np.float32))], "symmetrically"),
])
def test_refused_constructs_are_clear(nodes, inits, what):
    with pytest.raises(OnnxImportError, match=what):
        lrpfast.Net.from_onnx(_tiny(nodes, inits))


def test_path_bytes_and_modelproto_load_the_same(tmp_path):
    model = _zoo_model()
    path = tmp_path / "zoo.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(7).standard_normal((2, 3, 15, 15), dtype=np.float32)
    ref = lrpfast.Net(str(path)).forward(x)
    for src in (model, model.SerializeToString(), path):
        np.testing.assert_array_equal(lrpfast.Net.from_onnx(src).forward(x), ref)
    with pytest.raises(ValueError, match="its own weights"):
        lrpfast.Net(str(path), "weights.caffemodel")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage\xff\xff")
    with pytest.raises(ValueError, match="bad.onnx"):
        lrpfast.Net(str(bad))


def test_missing_onnx_package_says_what_to_install(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_zoo_model(), str(path))
    code = ("import sys; sys.modules['onnx'] = None\n"
            "import lrpfast\n"
            f"try:\n    lrpfast.Net({str(path)!r})\n"
            "except ImportError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert 'pip install "lrpfast[onnx]"' in out.stdout, out.stdout + out.stderr


def test_cli_heatmaps_with_an_onnx_model(tmp_path):
    from PIL import Image

    from lrpfast.cli import main

    path = tmp_path / "zoo.onnx"
    onnx.save(_zoo_model(), str(path))
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(8).integers(0, 255, (20, 20, 3), np.uint8)).save(img)
    out = tmp_path / "out"
    rc = main(["heatmaps", "--model", str(path), "--images", str(img), "--out", str(out),
               "--rules", "epsilon_plus_flat", "--formats", "png,npy"])
    assert rc == 0
    assert any(p.suffix == ".png" for p in out.iterdir())


def test_gradient_through_the_new_activations_matches_torch():
    """The gradient-like path of Clip (ReLU6), LeakyRelu, PRelu, Sigmoid and Tanh: lrpfast's
    ``gradient`` composite is the seed (the logit) times d logit / d x, here against torch's
    autograd in float64."""
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU6(), nn.Conv2d(6, 6, 3),
                          nn.LeakyReLU(0.2), nn.Conv2d(6, 6, 3), nn.PReLU(6), nn.Conv2d(6, 4, 1),
                          nn.Sigmoid(), nn.Conv2d(4, 4, 1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5)).eval()
    with torch.no_grad():
        model[5].weight.uniform_(0.05, 0.5)
    x = np.random.default_rng(9).standard_normal((3, 3, 10, 10), dtype=np.float32) * 2
    net = lrpfast.Net.from_torch(model, torch.from_numpy(x[:1]))
    assert [layer.type for layer in net.layers if layer.type in
            ("Clip", "ReLU", "PReLU", "Sigmoid", "TanH")] == ["Clip", "ReLU", "PReLU", "Sigmoid",
                                                             "TanH"]
    classes = [0, 2, 4]
    m64 = model.double()
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    out = m64(xt)
    sel = out[torch.arange(3), classes]
    (g,) = torch.autograd.grad(sel.sum(), xt)
    ref = (g * sel.detach()[:, None, None, None]).numpy()
    R = net.relevance(x, classes, "gradient")
    assert _rel(R, ref) <= FWD_RTOL


@pytest.mark.parametrize("opset", [13, 17, 20])
def test_exporter_opsets(opset):
    """The TorchScript exporter's opsets from 13 to 20 (the newest it supports in torch 2.13): the
    MobileNetV2 shape (depthwise Conv, Clip, residual Add, GlobalAveragePool, Gemm)."""
    torch = pytest.importorskip("torch")
    import onnx_models

    model, size = onnx_models.build("mobilenet_v2")
    x = np.random.default_rng(10).standard_normal((2, 3, size, size), dtype=np.float32)
    proto = onnx.load_from_string(lrpfast.onnx.export_torch(model, torch.from_numpy(x), opset))
    assert proto.opset_import[0].version == opset
    check_forward(proto, x)
