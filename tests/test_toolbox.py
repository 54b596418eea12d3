"""lrpfast.toolbox: the LRP Toolbox's plain-text models (current and legacy layout), its data
files, its python lrp() rules (toolbox mode) against a float64 reference of the toolbox's
formulas (tests/toolbox_reference.py), and the Caffe TanH / Sigmoid / Power layers."""
from __future__ import annotations

import lrpfast
import numpy as np
import pytest
import toolbox_reference as ref
from conftest import seeded_rng
from lrpfast import toolbox

#: per-map tolerance: max |R - R_ref| <= TOL * max |R_ref| for each image. lrpfast computes in
#: float32 and the reference in float64; the float32 rounding of a few chained layers is ~1e-6
#: relative, so 1e-4 (the issue's bound) leaves room without hiding a wrong formula (a wrong
#: share is off by O(1)).
TOL = 1e-4

VARIANTS = [("simple", None), ("epsilon", 0.01), ("epsilon", 1.0), ("alphabeta", 2.0),
            ("alphabeta", 1.0), ("alphabeta", 0.5), ("flat", None), ("ww", None)]


def _conv(rng, hf, wf, df, nf, sh=1, sw=1):
    W = rng.normal(0, 1 / np.sqrt(hf * wf * df), (hf, wf, df, nf))
    B = rng.normal(0, 0.1, nf)
    return ("Convolution", (hf, wf, df, nf, sh, sw), W.astype(np.float32).astype(np.float64),
            B.astype(np.float32).astype(np.float64))


def _linear(rng, m, n):
    W = rng.normal(0, 1 / np.sqrt(m), (m, n))
    B = rng.normal(0, 0.1, n)
    return ("Linear", (m, n), W.astype(np.float32).astype(np.float64),
            B.astype(np.float32).astype(np.float64))


def cnn_model(rng):
    """(10, 11, 2) input: Conv 3x2 -> Tanh -> SumPool 2x2/2 -> Conv 2x2 stride (1, 2) -> Rect ->
    MaxPool 2x2/1 (overlapping; ties among the zeros after Rect) -> Flatten -> Linear -> Rect ->
    Linear -> SoftMax. Weights float32-representable, so both sides use the same numbers."""
    c3 = _conv(rng, 2, 2, 4, 5, 1, 2)
    c3 = c3[:3] + ((c3[3] - 0.5).astype(np.float32).astype(np.float64),)   # negative biases: windows of zeros after the Rect (ties)
    return [_conv(rng, 3, 2, 2, 4), ("Tanh", (), None, None), ("SumPool", (2, 2, 2, 2), None, None),
            c3, ("Rect", (), None, None),
            ("MaxPool", (2, 2, 1, 1), None, None), ("Flatten", (), None, None),
            _linear(rng, 2 * 1 * 5, 7), ("Rect", (), None, None), _linear(rng, 7, 3),
            ("SoftMax", (), None, None)]


def mlp_model(rng):
    return [_linear(rng, 8, 12), ("Tanh", (), None, None), _linear(rng, 12, 10),
            ("Rect", (), None, None), _linear(rng, 10, 3), ("SoftMax", (), None, None)]


CNN_SHAPE = (10, 11, 2)


def _model_files(tmp_path_factory, name, build, x_shape):
    """(model records, its toolbox text file, float32 inputs) of a test model."""
    rng = seeded_rng("toolbox", name)
    model = build(rng)
    path = tmp_path_factory.mktemp("tb") / f"{name}.txt"
    path.write_text(ref.to_text(model))
    return model, path, rng.normal(0, 1, x_shape).astype(np.float32)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return _model_files(tmp_path_factory, "cnn", cnn_model, (3,) + CNN_SHAPE)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return _model_files(tmp_path_factory, "mlp", mlp_model, (4, 8))


def assert_maps_close(R, Rref, tol=TOL):
    R, Rref = np.asarray(R, np.float64), np.asarray(Rref, np.float64)
    assert R.shape == Rref.shape
    assert np.abs(Rref).max() > 0
    for n in range(R.shape[0]):
        scale = np.abs(Rref[n]).max()
        if scale == 0:   # no relevance reached this image (e.g. all units off after a Rect)
            assert np.abs(R[n]).max() <= 1e-30
            continue
        err = np.abs(R[n] - Rref[n]).max() / scale
        assert err <= tol, f"map {n}: relative error {err:.2e} > {tol:g}"


def seed_at_output(Y):
    """The toolbox demo's seed: the output times a one-hot mask of the top class."""
    mask = np.zeros_like(Y)
    mask[np.arange(len(Y)), Y.argmax(axis=1)] = 1
    return Y * mask


# ================================================================================ reading
def test_net_from_txt_by_extension_and_explicit_loader(cnn):
    _, path, X = cnn
    net = lrpfast.Net(str(path), input_shape=CNN_SHAPE)
    assert isinstance(net, toolbox.ToolboxNet) and isinstance(net, lrpfast.Net)
    net2 = toolbox.load_net(path, input_shape=CNN_SHAPE)
    assert net.toolbox_modules == net2.toolbox_modules == [
        "convolution0", "tanh1", "sumpool2", "convolution3", "rect4", "maxpool5", "flatten6",
        "linear7", "rect8", "linear9", "softmax10"]
    assert [l.type for l in net.layers] == [
        "Convolution", "TanH", "Pooling", "Power", "Convolution", "ReLU", "Pooling", "Flatten",
        "InnerProduct", "ReLU", "InnerProduct", "Softmax"]
    np.testing.assert_array_equal(net.forward(X), net2.forward(X))


def test_forward_matches_the_toolbox_in_both_layouts(cnn, mlp):
    model, path, X = cnn
    net = lrpfast.Net(str(path), input_shape=CNN_SHAPE)
    Y = ref.forward(model, X)[-1]
    np.testing.assert_allclose(net.forward(X), Y, rtol=1e-5, atol=1e-6)           # NHWC
    np.testing.assert_allclose(net.forward(X.transpose(0, 3, 1, 2)), Y, rtol=1e-5, atol=1e-6)
    # intermediate blobs come back in the layout of the input
    acts = ref.forward(model, X)
    b = net.forward(X, blobs=["sumpool2_scale"])["sumpool2_scale"]
    np.testing.assert_allclose(b, acts[3], rtol=1e-5, atol=1e-6)
    b = net.forward(X.transpose(0, 3, 1, 2), blobs=["sumpool2_scale"])["sumpool2_scale"]
    np.testing.assert_allclose(b, acts[3].transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expects shape"):
        net.forward(X[:, :, :5])
    m, mpath, MX = mlp
    mnet = lrpfast.Net(str(mpath))
    np.testing.assert_allclose(mnet.forward(MX), ref.forward(m, MX)[-1], rtol=1e-5, atol=1e-6)


def test_layout_choice_when_both_fit(tmp_path):
    """H == W == D: auto takes NHWC (the toolbox's layout); layout='nchw' forces NCHW."""
    rng = seeded_rng("toolbox", "square")
    model = [_conv(rng, 2, 2, 3, 2), ("Flatten", (), None, None), _linear(rng, 8, 2)]
    p = tmp_path / "sq.txt"
    p.write_text(ref.to_text(model))
    X = rng.normal(0, 1, (2, 3, 3, 3)).astype(np.float32)
    Y = ref.forward(model, X)[-1]
    np.testing.assert_allclose(lrpfast.Net(str(p)).forward(X), Y, rtol=1e-5, atol=1e-6)
    nchw = toolbox.load_net(p, layout="nchw")
    np.testing.assert_allclose(nchw.forward(X.transpose(0, 3, 1, 2)), Y, rtol=1e-5, atol=1e-6)
    assert toolbox.infer_input_shape(toolbox.read_model(p)) == (3, 3, 3)


def test_legacy_layout_is_read_when_the_current_one_fails(mlp, tmp_path):
    model, _, X = mlp
    p = tmp_path / "legacy.txt"
    p.write_text(ref.to_text(model, legacy=True))
    tm = toolbox.read_model(p)
    assert tm.layout == "legacy" and [l.kind for l in tm.layers] == [m[0] for m in model]
    net = lrpfast.Net(str(p))
    np.testing.assert_allclose(net.forward(X), ref.forward(model, X)[-1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("text, match", [
    ("Linear 2 2\n1 2 3\n0 0\n", "expected 4 values"),
    ("Linear 2 2\n1 2 3 x\n0 0\n", "'x' is not a number"),
    ("Linear 1 1\nnan\n0\n", "NaN"),
    ("Bogus 3\n", "unknown layer type 'Bogus'"),
    ("Convolution 2 2 1\n", "takes 6 integer parameters"),
    ("MaxPool 2 0 1 1\n", "must be >= 1"),
    ("", "no layers"),
])
def test_malformed_models_name_the_line(tmp_path, text, match):
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(toolbox.ToolboxFormatError, match=match) as e:
        toolbox.load_net(p, input_shape=(4,))
    assert "bad.txt" in str(e.value)


def test_shape_errors_and_missing_input_shape(tmp_path):
    rng = seeded_rng("toolbox", "shape")
    p = tmp_path / "c.txt"
    p.write_text(ref.to_text([_conv(rng, 3, 3, 2, 2), ("Rect", (), None, None)]))
    # no Linear: the smallest square input that ends at a 1 x 1 map (the toolbox's LeNet-5)
    assert lrpfast.Net(str(p)).toolbox_input_shape == (3, 3, 2)
    p.write_text(ref.to_text([("Rect", (), None, None), _conv(rng, 3, 3, 2, 2)]))
    with pytest.raises(toolbox.ToolboxFormatError, match="starts with Rect; pass input_shape"):
        lrpfast.Net(str(p))
    p.write_text(ref.to_text([_conv(rng, 3, 3, 2, 2), ("Rect", (), None, None)]))
    with pytest.raises(toolbox.ToolboxFormatError, match="filter depth 2 does not match"):
        lrpfast.Net(str(p), input_shape=(5, 5, 3))
    p.write_text(ref.to_text([_conv(rng, 2, 2, 1, 2), _linear(rng, 8, 2)]))
    with pytest.raises(toolbox.ToolboxFormatError, match="add Flatten"):
        lrpfast.Net(str(p), input_shape=(3, 3, 1))


def test_pickled_models_are_refused(tmp_path):
    p = tmp_path / "model.nn"
    p.write_bytes(b"\x80\x04not read")
    with pytest.raises(toolbox.ToolboxFormatError, match="pickled"):
        toolbox.load_net(p)


# ================================================================================ toolbox rules
@pytest.mark.parametrize("var, param", VARIANTS)
def test_lrp_matches_the_toolbox_rules_cnn(cnn, var, param):
    model, path, X = cnn
    net = lrpfast.Net(str(path), input_shape=CNN_SHAPE)
    R0 = seed_at_output(net.forward(X))
    R = net.lrp(R0, var, param)
    assert R.shape == X.shape                                    # NHWC in, NHWC out
    Rref = ref.lrp(model, X, R0, [(var, param)] * len(model))
    assert_maps_close(R, Rref)
    # NCHW in, NCHW out: the same numbers
    net.forward(X.transpose(0, 3, 1, 2))
    assert_maps_close(net.lrp(R0, var, param), Rref.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("var, param", VARIANTS)
def test_lrp_matches_the_toolbox_rules_mlp(mlp, var, param):
    model, path, X = mlp
    net = lrpfast.Net(str(path))
    R0 = seed_at_output(net.forward(X))
    assert_maps_close(net.lrp(R0, var, param), ref.lrp(model, X, R0, [(var, param)] * len(model)))


MIXES = [
    {0: ("flat", None), 2: ("alphabeta", 2.0), 3: ("ww", None), 5: ("flat", None),
     7: ("epsilon", 0.1), 9: ("epsilon", 0.01)},
    {0: ("ww", None), 2: ("epsilon", 0.5), 3: ("alphabeta", 1.0), 5: ("ww", None),
     7: ("alphabeta", 2.0)},                # unset modules: "simple", as in the toolbox
    # flat above the MaxPool sends relevance to windows of zeros (after the Rect): their tied
    # maxima share it equally
    {2: ("flat", None), 3: ("epsilon", 1.0), 5: ("alphabeta", 2.0), 7: ("ww", None),
     9: ("flat", None)},
]


def test_the_cnn_has_tied_maxima(cnn):
    """The MaxPool input has windows with several maxima (zeros after the Rect), so the tie
    rule is exercised by the per-layer mixes."""
    model, _, X = cnn
    x = ref.forward(model, X)[5]
    ties = sum(int(((x[:, i:i + 2, j:j + 2, :] == x[:, i:i + 2, j:j + 2, :].max(axis=(1, 2),
                     keepdims=True)).sum(axis=(1, 2)) > 1).sum())
               for i in range(x.shape[1] - 1) for j in range(x.shape[2] - 1))
    assert ties > 0


@pytest.mark.parametrize("mix", range(len(MIXES)))
def test_per_layer_rule_mixes(cnn, mix):
    model, path, X = cnn
    net = lrpfast.Net(str(path), input_shape=CNN_SHAPE)
    for k, (var, p) in MIXES[mix].items():
        net.set_lrp_parameters(k, var, p)
    R0 = seed_at_output(net.forward(X))
    variants = [MIXES[mix].get(k, ("simple", None)) for k in range(len(model))]
    assert_maps_close(net.lrp(R0), ref.lrp(model, X, R0, variants))
    # an explicit lrp_var overrides the presets, as nn.lrp(R, var, param) does
    assert_maps_close(net.lrp(R0, "epsilon", 0.1),
                      ref.lrp(model, X, R0, [("epsilon", 0.1)] * len(model)))
    # the same mix through the plain API, seeded with the logit below the SoftMax
    rules = toolbox.ToolboxRules(per_layer={net.toolbox_modules[k]: v
                                            for k, v in MIXES[mix].items()})
    R = net.relevance(X, [0, 2, 1], rules=rules)
    logits = ref.forward(model[:-1], X)[-1]
    seed = np.zeros_like(logits)
    seed[np.arange(3), [0, 2, 1]] = logits[np.arange(3), [0, 2, 1]]
    assert_maps_close(R, ref.lrp(model[:-1], X, seed, variants[:-1]))
    text = net.describe_rules(rules)
    assert "toolbox" in text and "relevance starts at 'linear9'" in text


def test_toolbox_rules_bad_settings(cnn):
    _, path, X = cnn
    net = lrpfast.Net(str(path), input_shape=CNN_SHAPE)
    with pytest.raises(ValueError, match="unknown lrp_var 'gamma'"):
        net.set_lrp_parameters(0, "gamma", 1)
    with pytest.raises(ValueError, match="call forward first"):
        net.lrp(np.zeros((1, 3)))
    net.forward(X)
    with pytest.raises(ValueError, match="needs param"):
        net.lrp(np.zeros((1, 3)), "epsilon")
    with pytest.raises(ValueError, match="no layer 99"):
        net.set_lrp_parameters(99, "flat")


# ================================================================================ writing
def test_write_back_as_toolbox_text_and_as_caffe(cnn, tmp_path):
    model, path, X = cnn
    net = lrpfast.Net(str(path), input_shape=CNN_SHAPE)
    out = tmp_path / "copy.txt"
    toolbox.write_model(net, out)
    back = toolbox.read_model(out)
    assert [l.header() for l in back.layers] == [" ".join([m[0], *map(str, m[1])]).strip()
                                                 for m in model]
    for layer, m in zip(back.layers, model):
        if m[2] is not None:
            np.testing.assert_array_equal(layer.W, m[2])   # float32 values, written exactly
            np.testing.assert_array_equal(layer.B, m[3])
    proto, weights = toolbox.write_caffe(net, tmp_path / "cnn")
    caffe_net = lrpfast.Net(proto, weights)
    Xc = X.transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(caffe_net.forward(Xc), net.forward(X))
    # the Caffe net (Flatten + InnerProduct with Caffe's (C, H, W) row order) writes back too
    toolbox.write_model(caffe_net, tmp_path / "again.txt")
    assert (tmp_path / "again.txt").read_text() == out.read_text()


def test_writer_refuses_what_the_toolbox_cannot_express(tmp_path):
    text = """name: "p" input: "data" input_shape { dim: 1 dim: 1 dim: 6 dim: 6 }
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
        convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }"""
    net = lrpfast.Net.from_text(text, {"c": [np.ones((2, 1, 3, 3), np.float32),
                                             np.zeros(2, np.float32)]})
    with pytest.raises(toolbox.ToolboxFormatError, match="layer 0 'c' \\(Convolution\\): padding"):
        toolbox.write_model(net, tmp_path / "x.txt")


# ================================================================================ data files
@pytest.mark.parametrize("ext", ["txt", "npy", "npz", "mat"])
def test_data_files_round_trip(tmp_path, ext):
    if ext == "mat":
        pytest.importorskip("scipy.io")
    X = seeded_rng("toolbox", "data", ext).normal(0, 1, (5, 7))
    p = tmp_path / f"d.{ext}"
    toolbox.write_data(X, p)
    back = toolbox.read_data(p)
    assert back.dtype == np.float64 and back.shape == X.shape
    np.testing.assert_array_equal(back, X)   # %.18e text and binary formats are exact


def test_data_file_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown data format 'csv'"):
        toolbox.read_data(tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError, match="not found"):
        toolbox.read_data(tmp_path / "none.npy")
    (tmp_path / "bad.txt").write_text("1 2\n3 x\n")
    with pytest.raises(ValueError, match="bad.txt"):
        toolbox.read_data(tmp_path / "bad.txt")
    np.savez(tmp_path / "two.npz", a=np.zeros(2), b=np.ones(2))
    with pytest.raises(ValueError, match="no array named 'data'"):
        toolbox.read_data(tmp_path / "two.npz")


# ================================================================================ Caffe layers
ACT_NET = """name: "act" input: "data" input_shape {{ dim: 1 dim: 2 dim: 5 dim: 5 }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: 3 kernel_size: 2 }} }}
layer {{ name: "act" type: "{act}" bottom: "conv" top: "act" }}
layer {{ name: "fc" type: "InnerProduct" bottom: "act" top: "fc"
        inner_product_param {{ num_output: 4 }} }}"""


@pytest.mark.parametrize("act, f, df", [
    ("TanH", np.tanh, lambda y: 1 - y * y),
    ("Sigmoid", lambda z: 1 / (1 + np.exp(-z)), lambda y: y * (1 - y)),
])
def test_caffe_tanh_and_sigmoid_layers(act, f, df):
    rng = seeded_rng("toolbox", act)
    w = {"conv": [rng.normal(0, 0.5, (3, 2, 2, 2)).astype(np.float32),
                  rng.normal(0, 0.1, 3).astype(np.float32)],
         "fc": [rng.normal(0, 0.3, (4, 48)).astype(np.float32), np.zeros(4, np.float32)]}
    net = lrpfast.Net.from_text(ACT_NET.format(act=act), w)
    x = rng.normal(0, 1, (2, 2, 5, 5)).astype(np.float32)
    z = net.forward(x, blobs=["conv"])["conv"].astype(np.float64)
    y = net.forward(x, blobs=["act"])["act"]
    np.testing.assert_allclose(y, f(z), rtol=1e-6, atol=1e-7)
    # LRP passes relevance through the activation unchanged; the gradient multiplies by f'
    R = net.relevance(x, 1, "epsilon", readout=["conv", "act"])
    np.testing.assert_array_equal(R["conv"], R["act"])
    G = net.relevance(x, 1, "gradient", readout=["conv", "act"])
    np.testing.assert_allclose(G["conv"], G["act"] * df(y.astype(np.float64)), rtol=1e-5,
                               atol=1e-7)
    assert f"{act:<13} pass" in net.describe_rules("epsilon")


# ================================================================================ default top
CONV_ONLY = """name: "nip" input: "data" input_shape {{ dim: 1 dim: 1 dim: 6 dim: 6 }}
layer {{ name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param {{ num_output: 3 kernel_size: 3 }} }}
layer {{ name: "r1" type: "ReLU" bottom: "c1" top: "c1" }}
layer {{ name: "c2" type: "Convolution" bottom: "c1" top: "c2"
        convolution_param {{ num_output: 4 kernel_size: 4 }} }}
{tail}"""


@pytest.mark.parametrize("tail, top, why", [
    ("", "c2", "no InnerProduct or Softmax: the last layer"),
    (('layer { name: "f" type: "Flatten" bottom: "c2" top: "f" }\n'
      'layer { name: "p" type: "Softmax" bottom: "f" top: "p" }'), "f",
     "no InnerProduct: the layer below the last Softmax"),
])
def test_default_top_without_innerproduct(tail, top, why):
    rng = seeded_rng("toolbox", "noip", top)
    w = {"c1": [rng.normal(0, 0.5, (3, 1, 3, 3)).astype(np.float32), np.zeros(3, np.float32)],
         "c2": [rng.normal(0, 0.5, (4, 3, 4, 4)).astype(np.float32), np.zeros(4, np.float32)]}
    net = lrpfast.Net.from_text(CONV_ONLY.format(tail=tail), w)
    assert net.top_layer().name == top
    x = rng.normal(0, 1, (2, 1, 6, 6)).astype(np.float32)
    R = net.relevance(x, -1, "epsilon")
    np.testing.assert_array_equal(R, net.relevance(x, -1, "epsilon", top=top))
    assert np.abs(R).sum() > 0
    assert f"relevance starts at '{top}' ({why})" in net.describe_rules("epsilon").splitlines()[0]
    with pytest.raises(ValueError, match="no InnerProduct"):
        net.top_layer(-2)


def test_pointwise_layers_on_cuda_say_they_are_not_supported_yet():
    cuda_emulation = pytest.importorskip("cuda_emulation")
    rng = seeded_rng("toolbox", "cuda")
    w = {"conv": [rng.normal(0, 0.5, (3, 2, 2, 2)).astype(np.float32), np.zeros(3, np.float32)],
         "fc": [rng.normal(0, 0.3, (4, 48)).astype(np.float32), np.zeros(4, np.float32)]}
    x = rng.normal(0, 1, (2, 2, 5, 5)).astype(np.float32)
    with cuda_emulation.active():
        net = lrpfast.Net.from_text(ACT_NET.format(act="TanH"), w, device="cuda")
        with pytest.raises(NotImplementedError, match=r"layer 'act' \(TanH\) is not supported "
                                                      r"on CUDA yet"):
            net.forward(x)


def test_a_caffe_prototxt_named_txt_is_still_a_caffe_net(tmp_path):
    p = tmp_path / "deploy.txt"
    p.write_text(CONV_ONLY.format(tail=""))
    net = lrpfast.Net(str(p))
    assert type(net) is lrpfast.Net and [l.name for l in net.layers] == ["c1", "r1", "c2"]


def test_caffe_innerproduct_on_a_feature_map_writes_as_flatten_and_linear(tmp_path):
    """Caffe's InnerProduct reads a (C, H, W) blob in (C, H, W) order; the toolbox file gets a
    Flatten and the Linear rows reordered to (H, W, D): the same outputs on NHWC inputs."""
    text = """name: "ip" input: "data" input_shape { dim: 1 dim: 2 dim: 5 dim: 4 }
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
        convolution_param { num_output: 3 kernel_h: 2 kernel_w: 1 stride: 2 } }
layer { name: "t" type: "TanH" bottom: "c" top: "c" }
layer { name: "fc" type: "InnerProduct" bottom: "c" top: "fc"
        inner_product_param { num_output: 4 } }"""
    rng = seeded_rng("toolbox", "ipmap")
    w = {"c": [rng.normal(0, 0.5, (3, 2, 2, 1)).astype(np.float32),
               rng.normal(0, 0.1, 3).astype(np.float32)],
         "fc": [rng.normal(0, 0.3, (4, 3 * 2 * 2)).astype(np.float32),
                rng.normal(0, 0.1, 4).astype(np.float32)]}
    net = lrpfast.Net.from_text(text, w)
    toolbox.write_model(net, tmp_path / "ip.txt")
    tm = toolbox.read_model(tmp_path / "ip.txt")
    assert [l.header() for l in tm.layers] == ["Convolution 2 1 2 3 2 2", "Tanh", "Flatten",
                                               "Linear 12 4"]
    x = rng.normal(0, 1, (2, 2, 5, 4)).astype(np.float32)
    tb = toolbox.load_net(tmp_path / "ip.txt", input_shape=(5, 4, 2))
    np.testing.assert_allclose(tb.forward(x.transpose(0, 2, 3, 1)), net.forward(x),
                               rtol=1e-5, atol=1e-6)
    Y = ref.forward([(l.kind, l.params, l.W, l.B) for l in tm.layers],
                    x.transpose(0, 2, 3, 1))[-1]
    np.testing.assert_allclose(net.forward(x), Y, rtol=1e-5, atol=1e-6)
