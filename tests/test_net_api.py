"""The public contract of ``lrpfast.Net`` (the README's Use section) and every error path.

Small nets written here as prototxt text, weights from ``conftest.he_weights``; every test
seeds its own generator. Each error test checks that the message names what went wrong.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import lrpfast
from conftest import he_weights, seeded_rng
from lrpfast import rules as R

# Results that may only differ by float32 rounding: the same computation with differently
# shaped BLAS calls (batch of 1 vs N, several chunks vs one, other thread counts) may round
# differently (~1e-7 relative); anything else (a mixed-up image, a lost chunk) is O(1).
SAME_TOL = {"rtol": 1e-5, "atol": 1e-6}
# Sums of relevance that must equal a seed (conservation, linearity): float32 sums of a few
# thousand terms, relative to the magnitude of the terms (~1e-6); leaks are >= 1e-2.
SUM_RTOL = 1e-4


def close_sum(total, expected, scale):
    return abs(float(total) - float(expected)) <= SUM_RTOL * max(float(scale), abs(float(expected)))


# ----------------------------------------------------------------------------------------- nets
HEAD = 'name: "{name}"\ninput: "data"\ninput_shape {{ dim: 2 dim: 3 dim: 12 dim: 12 }}\n'
CONV1 = """layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""
# conv-relu-maxpool-conv-relu-IP-relu-IP(7)-Softmax
SMALL = HEAD.format(name="small") + CONV1 + """
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 6 kernel_size: 3 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "fc1" type: "InnerProduct" bottom: "conv2" top: "fc1"
  inner_product_param { num_output: 8 } }
layer { name: "relu3" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
  inner_product_param { num_output: 7 } }
layer { name: "prob" type: "Softmax" bottom: "fc2" top: "prob" }
"""
N_CLASSES = 7


def conv_bn_relu(channels: int) -> str:
    """conv1 (3x3, pad 1) -> BatchNorm -> Scale -> ReLU, in place on blob conv1."""
    return """layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: %d kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { use_global_stats: true } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
""" % channels


def build(text, seed, bias_std=0.1, **kw):
    """(net, weights) for prototxt text with He-scaled random weights."""
    skeleton = lrpfast.Net.from_text(text, skip_unsupported=kw.get("skip_unsupported", False))
    w = he_weights(skeleton, seeded_rng(seed), bias_std)
    return lrpfast.Net.from_text(text, w, **kw), w


def images(seed, n=2, shape=(3, 12, 12)):
    return seeded_rng(seed, "x").normal(0, 1, (n,) + shape).astype(np.float32)


@pytest.fixture(scope="module")
def small():
    net, w = build(SMALL, "small")
    return net, w, images("small")


@pytest.fixture(scope="module")
def small0():
    """SMALL without biases: flat / z conserve relevance exactly (in exact arithmetic)."""
    net, w = build(SMALL, "small0", bias_std=0.0)
    return net, w, images("small0")


# =============================================================================== construction
def test_unsupported_layer_type_names_layer_type_and_supported():
    text = HEAD.format(name="u") + CONV1 + """
layer { name: "sig1" type: "AbsVal" bottom: "pool1" top: "sig1" }
layer { name: "fc" type: "InnerProduct" bottom: "sig1" top: "fc" inner_product_param { num_output: 3 } }
"""
    with pytest.raises(lrpfast.LayerError, match=r"layer 3 'sig1': unsupported type 'AbsVal' "
                                                 r"\(supported: BatchNorm, .*Convolution") as e:
        lrpfast.Net.from_text(text)
    for t in lrpfast.supported_types():
        assert t in str(e.value)
    assert "skip_unsupported=True" in str(e.value)


def test_skip_unsupported_lists_skipped_layers_and_their_dependents():
    text = HEAD.format(name="skip") + CONV1 + """
layer { name: "sig1" type: "AbsVal" bottom: "pool1" top: "sig1" }
layer { name: "side" type: "InnerProduct" bottom: "sig1" top: "side" inner_product_param { num_output: 3 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "tanh" type: "BNLL" bottom: "fc" top: "t" }
"""
    net, _ = build(text, "skip", skip_unsupported=True)
    assert net.skipped == ["sig1 (AbsVal: unsupported)",
                           "side (InnerProduct: depends on a skipped layer)",
                           "tanh (BNLL: unsupported)"]
    assert [layer.name for layer in net.layers] == ["conv1", "relu1", "pool1", "fc"]
    assert "skipped: sig1 (AbsVal: unsupported)" in repr(net)
    x = images("skip")
    assert net.forward(x).shape == (2, 5)
    assert net.relevance(x, -1).shape == x.shape


def test_weights_with_wrong_shape_name_layer_and_both_shapes(small):
    _, w, _ = small
    bad = dict(w, conv1=[np.zeros((4, 3, 5, 5), np.float32), w["conv1"][1]])
    with pytest.raises(lrpfast.LayerError, match=r"layer 0 'conv1' \(Convolution\): weight blob 0 "
                                                 r"has shape \(4, 3, 5, 5\), expected \(4, 3, 3, 3\)"):
        lrpfast.Net.from_text(SMALL, bad)
    bad = dict(w, fc2=[w["fc2"][0], np.zeros(8, np.float32)])
    with pytest.raises(lrpfast.LayerError, match=r"'fc2' \(InnerProduct\): weight blob 1 has shape "
                                                 r"\(8,\), expected \(7,\)"):
        lrpfast.Net.from_text(SMALL, bad)


def test_missing_weights_for_a_layer(small, tmp_path):
    _, w, _ = small
    partial = {k: v for k, v in w.items() if k != "fc1"}
    with pytest.raises(lrpfast.LayerError, match=r"'fc1' \(InnerProduct\): expected 2 weight blobs "
                                                 r"with shapes \[\(8, 96\), \(8,\)\], got 0"):
        lrpfast.Net.from_text(SMALL, partial)
    # the same from files: the message also names the prototxt
    proto, model = lrpfast.caffe.write_model(str(tmp_path / "m"), SMALL, partial)
    with pytest.raises(lrpfast.LayerError, match=r"m\.prototxt: layer 5 'fc1'.*got 0"):
        lrpfast.Net(proto, model)
    # a bias missing (one blob of two)
    with pytest.raises(lrpfast.LayerError, match=r"'conv2' \(Convolution\): expected 2 weight "
                                                 r"blobs .*got 1"):
        lrpfast.Net.from_text(SMALL, dict(w, conv2=w["conv2"][:1]))


def test_non_finite_weights_rejected(small):
    _, w, _ = small
    bad = w["fc1"][0].copy()
    bad[0, 0] = np.nan
    with pytest.raises(lrpfast.LayerError, match=r"'fc1'.*weight blob 0 contains NaN"):
        lrpfast.Net.from_text(SMALL, dict(w, fc1=[bad, w["fc1"][1]]))


def test_legacy_4d_weight_shapes_accepted(small, tmp_path):
    net, w, x = small
    legacy = dict(w)
    legacy["fc1"] = [w["fc1"][0].reshape(1, 1, 8, 96), w["fc1"][1].reshape(1, 1, 1, 8)]
    legacy["fc2"] = [w["fc2"][0].reshape(1, 1, 7, 8), w["fc2"][1].reshape(1, 1, 1, 7)]
    np.testing.assert_array_equal(lrpfast.Net.from_text(SMALL, legacy).forward(x), net.forward(x))
    # and from a caffemodel written with the legacy num/channels/height/width fields
    proto, model = lrpfast.caffe.write_model(str(tmp_path / "legacy"), SMALL, w, legacy_shape=True)
    np.testing.assert_array_equal(lrpfast.Net(proto, model).forward(x), net.forward(x))
    # leading 1s are the only freedom: (1, 1, 96, 8) is not (8, 96)
    legacy["fc1"] = [w["fc1"][0].T.reshape(1, 1, 96, 8), w["fc1"][1]]
    with pytest.raises(lrpfast.LayerError, match=r"'fc1'.*\(1, 1, 96, 8\), expected \(8, 96\)"):
        lrpfast.Net.from_text(SMALL, legacy)


def test_undefined_bottom_blob():
    text = HEAD.format(name="b") + CONV1 + """
layer { name: "fc" type: "InnerProduct" bottom: "nope" top: "fc" inner_product_param { num_output: 3 } }
"""
    with pytest.raises(ValueError, match=r"'fc'.*bottom blob 'nope' is not produced by an earlier "
                                         r"layer"):
        lrpfast.Net.from_text(text)


def test_structure_only_net_refuses_forward(small):
    _, _, x = small
    net = lrpfast.Net.from_text(SMALL)
    assert net.shapes["fc2"] == (7,)
    with pytest.raises(ValueError, match="loaded without weights"):
        net.forward(x)
    with pytest.raises(ValueError, match="loaded without weights"):
        net.relevance(x, 0)


def test_device_cuda_raises_clearly(small):
    _, w, _ = small
    if lrpfast.info()["cuda_compiled"]:
        pytest.skip("this build has the CUDA engine")
    with pytest.raises(ValueError, match=r"device 'cuda' is not available.*CPU engine only"):
        lrpfast.Net.from_text(SMALL, w, device="cuda")
    with pytest.raises(ValueError, match=r"device 'tpu'"):
        lrpfast.Net.from_text(SMALL, w, device="tpu")


# ===================================================================================== inputs
def test_input_validation(small):
    net, _, x = small
    with pytest.raises(ValueError, match=r"'data' expects shape \(N, 3, 12, 12\), got \(2, 3, 12, 13\)"):
        net.forward(np.zeros((2, 3, 12, 13), np.float32))
    with pytest.raises(ValueError, match=r"expects shape \(N, 3, 12, 12\), got \(2, 432\)"):
        net.relevance(np.zeros((2, 432), np.float32), 0)
    with pytest.raises(ValueError, match=r"expects shape .*got \(1, 2, 3, 12, 12\)"):
        net.forward(np.zeros((1, 2, 3, 12, 12), np.float32))
    with pytest.raises(ValueError, match=r"must be numeric, got dtype <U1"):
        net.forward(np.full((2, 3, 12, 12), "a"))
    with pytest.raises(ValueError, match=r"must be numeric, got dtype object"):
        net.forward(np.empty((2, 3, 12, 12), object))
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[1, 2, 3, 4] = bad
        with pytest.raises(ValueError, match="contains NaN or infinity"):
            net.relevance(y, 0)
    with pytest.raises(ValueError, match="empty batch"):
        net.forward(np.zeros((0, 3, 12, 12), np.float32))
    with pytest.raises(ValueError, match=r"missing input 'data'"):
        net.forward({"image": x})


def test_inputs_converted_from_other_types(small):
    net, _, x = small
    ref = net.forward(x)
    np.testing.assert_array_equal(net.forward(x.astype(np.float64)), ref)

    class ArrayLike:
        def __array__(self, dtype=None, copy=None):
            return x

    np.testing.assert_array_equal(net.forward(ArrayLike()), ref)
    np.testing.assert_array_equal(net.forward(np.asfortranarray(x)), ref)
    xi = np.round(x * 10).astype(np.int16)
    np.testing.assert_array_equal(net.forward(xi), net.forward(xi.astype(np.float32)))
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(net.forward(torch.from_numpy(x)), ref)
    np.testing.assert_array_equal(net.relevance(torch.from_numpy(x), 3), net.relevance(x, 3))


# ==================================================================================== classes
def test_classes_errors(small):
    net, _, x = small
    with pytest.raises(ValueError, match=r"class 7 out of range 0\.\.6 \(-1 = top-1, -2 = top-5\)"):
        net.relevance(x, N_CLASSES)
    with pytest.raises(ValueError, match=r"classes\[1\]: class -3 out of range"):
        net.relevance(x, [0, -3])
    with pytest.raises(ValueError, match=r"classes\[0\]: class 9 out of range"):
        net.relevance(x, [[1, 9], 2])
    with pytest.raises(ValueError, match=r"need one entry per image \(2\), got 3"):
        net.relevance(x, [1, 2, 3])
    with pytest.raises(ValueError, match=r"need one entry per image \(2\), got 1"):
        net.relevance(x, [1])
    with pytest.raises(ValueError, match=r"classes\[0\] is an empty list"):
        net.relevance(x, [[], 1])
    with pytest.raises(ValueError, match="class_sets is empty"):
        net.relevance_multi(x, [])


def test_top1_and_top5_seeds(small0):
    net, _, x = small0
    logits = net.forward(x, blobs=["fc2"])["fc2"]
    top1 = logits.argmax(1)
    np.testing.assert_array_equal(net.relevance(x, -1, "epsilon"),
                                  net.relevance(x, [int(top1[0]), int(top1[1])], "epsilon"))
    # -2: the five highest logits, summed in one seed; flat conserves on a bias-free net, so
    # the input relevance sums to the sum of the five logits
    Rt5 = net.relevance(x, -2, rules="flat")
    for i in range(2):
        top5 = np.argsort(-logits[i])[:5]
        assert close_sum(Rt5[i].sum(dtype=np.float64), logits[i, top5].sum(),
                         np.abs(Rt5[i]).sum())
        # and it is the per-class relevances summed
        singles = sum(net.relevance(x[i:i + 1], int(k), rules="flat")[0] for k in top5)
        np.testing.assert_allclose(Rt5[i], singles, **SAME_TOL)
    # top-1 alone conserves its logit
    R1 = net.relevance(x, -1, rules="flat")
    for i in range(2):
        assert close_sum(R1[i].sum(dtype=np.float64), logits[i].max(), np.abs(R1[i]).sum())


@pytest.mark.parametrize("rules", ["epsilon", "z", "alpha2beta1", "cmp_alpha2_flat", "wsquare"])
def test_class_list_is_sum_of_single_class_relevances(small, rules):
    """Every rule here is linear in the seed (the coefficients depend on the forward pass
    only), so one pass with a list of classes equals the sum of the single-class passes."""
    net, _, x = small
    both = net.relevance(x, [[1, 4, 6], [0, 2]], rules=rules)
    a = net.relevance(x, [1, 0], rules=rules) + net.relevance(x, [4, 2], rules=rules) + \
        np.stack([net.relevance(x[:1], 6, rules=rules)[0], np.zeros_like(x[0])])
    scale = float(np.abs(both).max())
    np.testing.assert_allclose(both, a, rtol=1e-5, atol=1e-5 * scale)
    # a repeated class counts twice
    np.testing.assert_allclose(net.relevance(x, [[3, 3], [5, 5]], rules=rules),
                               2 * net.relevance(x, [3, 5], rules=rules), rtol=1e-5,
                               atol=1e-6 * scale)


# ================================================================================ top / readout
# fc1 -> Softmax "prob1"; then fc1 goes on (in-place ReLU) into fc2, the highest InnerProduct
TWO_HEADS = HEAD.format(name="two_heads") + CONV1 + """
layer { name: "fc1" type: "InnerProduct" bottom: "pool1" top: "fc1" inner_product_param { num_output: 9 } }
layer { name: "prob1" type: "Softmax" bottom: "fc1" top: "prob1" }
layer { name: "relu_fc1" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param { num_output: 5 } }
"""


def test_top_selection():
    net, _ = build(TWO_HEADS, "two_heads", bias_std=0.0)
    x = images("two_heads")
    assert net.top_layer().name == "fc2"            # default: the highest InnerProduct
    assert net.top_layer(-2).name == "fc2"
    assert net.top_layer(-1).name == "fc1"          # right below the lowest Softmax
    idx = net.layer("fc1").index
    assert net.top_layer(idx).name == "fc1" and net.top_layer("fc1").name == "fc1"
    fc = net.forward(x, blobs=["fc1#1", "fc2"])
    r_default = net.relevance(x, 4, rules="flat")
    assert r_default.shape == x.shape
    assert close_sum(r_default.sum(dtype=np.float64), fc["fc2"][:, 4].sum(),
                     np.abs(r_default).sum())
    r_soft = net.relevance(x, 8, rules="flat", top=-1)
    # the seed is fc1's output (before its in-place ReLU), flat conserves it
    assert close_sum(r_soft.sum(dtype=np.float64), fc["fc1#1"][:, 8].sum(), np.abs(r_soft).sum())
    np.testing.assert_array_equal(r_soft, net.relevance(x, 8, rules="flat", top="fc1"))
    np.testing.assert_array_equal(r_soft, net.relevance(x, 8, rules="flat", top=idx))
    with pytest.raises(ValueError, match=r"class 5 out of range 0\.\.4"):
        net.relevance(x, 5)                        # fc2 has 5 outputs, fc1 has 9
    # errors
    with pytest.raises(ValueError, match=r"relevance cannot pass a Softmax.*top=-1"):
        net.relevance(x, 0, top="prob1")
    with pytest.raises(IndexError, match=r"layer index 99 out of range"):
        net.relevance(x, 0, top=99)
    with pytest.raises(KeyError, match=r"no blob named 'nope'"):
        net.relevance(x, 0, top="nope")


def test_net_without_innerproduct_defaults_to_its_last_layer():
    text = HEAD.format(name="fcn") + CONV1 + """
layer { name: "score" type: "Convolution" bottom: "pool1" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 } }
"""
    net, _ = build(text, "fcn")
    x = images("fcn")
    # no InnerProduct and no Softmax: top=None starts at the last layer; -2 still asks for one
    np.testing.assert_array_equal(net.relevance(x, 0), net.relevance(x, 0, top="score"))
    with pytest.raises(ValueError, match=r"no InnerProduct layer; pass top="):
        net.relevance(x, 0, top=-2)
    with pytest.raises(ValueError, match=r"top=-1 needs a Softmax layer; the net has none"):
        net.relevance(x, 0, top=-1)
    # with top= it works; indices count over the flattened (3, 6, 6) output
    r = net.relevance(x, 3 * 36 - 1, top="score")
    assert r.shape == x.shape and np.all(np.isfinite(r))
    with pytest.raises(ValueError, match=r"class 108 out of range 0\.\.107"):
        net.relevance(x, 108, top="score")


def test_readout_intermediate_and_lists(small0):
    net, _, x = small0
    logits = net.forward(x, blobs=["fc2"])["fc2"]
    classes = [2, 5]
    seed = logits[[0, 1], classes]
    both = net.relevance(x, classes, rules="flat", readout=["pool1", "data", "fc1"])
    assert set(both) == {"pool1", "data", "fc1"}
    assert both["pool1"].shape == (2, 4, 6, 6) and both["fc1"].shape == (2, 8)
    for blob, rel in both.items():   # flat on a bias-free net conserves at every blob
        for i in range(2):
            assert close_sum(rel[i].sum(dtype=np.float64), seed[i], np.abs(rel[i]).sum()), blob
        np.testing.assert_array_equal(rel, net.relevance(x, classes, rules="flat", readout=blob))
    # relevance read out at the top itself is the seed
    top = net.relevance(x, classes, rules="flat", readout="fc2")
    expected = np.zeros_like(logits)
    expected[[0, 1], classes] = seed
    np.testing.assert_array_equal(top, expected)
    with pytest.raises(ValueError, match=r"blob 'prob' receives no relevance from layer 'fc2'"):
        net.relevance(x, classes, readout="prob")
    with pytest.raises(KeyError, match=r"no blob named 'nope'"):
        net.relevance(x, classes, readout="nope")


def test_inplace_versions_forward_and_readout(small):
    """'conv1' is the final version (after the in-place ReLU, as in Caffe); 'conv1#1' the
    convolution output before it."""
    net, _, x = small
    f = net.forward(x, blobs=["conv1", "conv1#1", "conv1#2", "conv1"])
    assert list(f) == ["conv1", "conv1#1", "conv1#2"]
    assert all(v.shape == (2, 4, 12, 12) for v in f.values())
    np.testing.assert_array_equal(f["conv1"], f["conv1#2"])
    np.testing.assert_array_equal(f["conv1"], np.maximum(f["conv1#1"], 0))
    assert f["conv1#1"].min() < 0
    # LRP rules pass a ReLU unchanged; the gradient masks it by x > 0
    lrp = net.relevance(x, 3, rules="epsilon", readout=["conv1", "conv1#1"])
    np.testing.assert_array_equal(lrp["conv1"], lrp["conv1#1"])
    g = net.relevance(x, 3, rules="gradient", readout=["conv1", "conv1#1"])
    np.testing.assert_array_equal(g["conv1#1"], g["conv1"] * (f["conv1#1"] > 0))
    assert np.abs(g["conv1"] - g["conv1#1"]).max() > 0


def residual_text(slope: float = 0.0, second_reader: bool = False) -> str:
    """conv1 + ReLU -> conv2; res = conv1 + conv2 (Eltwise SUM) -> ReLU in place -> fc.
    second_reader: a pooling layer reads the sum before its ReLU as well."""
    import nets
    layers = [nets.conv("conv1", "data", 4, kernel=3, pad=1), nets.relu("relu1", "conv1"),
              nets.conv("conv2", "conv1", 4, kernel=3, pad=1),
              nets.eltwise("res", ["conv1", "conv2"])]
    if second_reader:
        layers.append(nets.pool("side", "res", "AVE", 2, 2))
    layers += [nets.relu("res_relu", "res", negative_slope=slope), nets.ip("fc", "res", 5)]
    return nets.prototxt(layers, (2, 3, 12, 12), name="residual")


def test_residual_sum_and_relu_one_pass_same_bits():
    """A residual sum read only by its ReLU: the CPU engine computes both in one pass and keeps
    no sum (the relevance recomputes it). Every output, kept blob and relevance is bit for bit
    what the two layers computed in turn give (the same net with the fusion switched off), for
    LRP and gradient-type rules, readouts before the ReLU, and backward_relevance reusing the
    forward; a blob asked for by name is still computed."""
    from lrpfast.compat import RelPropOpts
    net, w = build(residual_text(), "residual")
    plain = lrpfast.Net.from_text(residual_text(), w)
    assert list(net._sum_relu) == ["res"]
    plain._sum_relu = {}
    x = images("residual", n=3)
    bits = lambda a: np.asarray(a).view(np.uint32)  # noqa: E731
    np.testing.assert_array_equal(bits(net.forward(x)), bits(plain.forward(x)))
    kept = net._local.last_forward[2]
    assert "res" not in kept and "res#2" in kept and "res" in plain._local.last_forward[2]
    f = net.forward(x, blobs=["res#1", "res", "conv1", "conv2"])
    np.testing.assert_array_equal(bits(f["res#1"]), bits(f["conv1"] + f["conv2"]))
    np.testing.assert_array_equal(bits(f["res"]), bits(np.maximum(f["res#1"], np.float32(0))))
    assert (f["res#1"] < 0).any()
    for rules in ("epsilon", "alpha2beta1", "z", "flat", "gradient", "guided_backprop",
                  "deconvnet", "epsilon_plus_flat"):
        a = net.relevance(x, [0, 3, 4], rules=rules, readout=["data", "res#1", "conv1"])
        b = plain.relevance(x, [0, 3, 4], rules=rules, readout=["data", "res#1", "conv1"])
        for k in a:
            np.testing.assert_array_equal(bits(a[k]), bits(b[k]), err_msg=f"{rules} {k}")
        assert np.abs(a["data"]).max() > 0
    net.forward(x)
    plain.forward(x)
    for code in (0, 2, 11):
        opts = RelPropOpts(relpropformulatype=code, epsstab=0.1, alphabeta_beta=1.0)
        np.testing.assert_array_equal(bits(net.backward_relevance(2, opts).R),
                                      bits(plain.backward_relevance(2, opts).R))


@pytest.mark.parametrize("slope,second_reader", [(0.1, False), (0.0, True)])
def test_residual_sum_kept_where_its_relu_cannot_take_it(slope, second_reader):
    """A leaky ReLU (its gate differs from the output's sign) or a second reader of the sum:
    the sum is computed and kept as before, and the relevance reads it."""
    net, _ = build(residual_text(slope, second_reader), ("residual", slope, second_reader))
    assert net._sum_relu == {}
    x = images("residual-kept")
    net.forward(x)
    assert "res" in net._local.last_forward[2]
    r = net.relevance(x, 1, rules="epsilon")
    assert np.isfinite(r).all() and np.abs(r).max() > 0


def _deep_chain(n_conv: int = 6, channels: int = 16, hw: int = 48) -> str:
    import nets
    layers, bottom = [], "data"
    for i in range(n_conv):
        layers += [nets.conv(f"c{i}", bottom, channels, kernel=3, pad=1),
                   nets.relu(f"r{i}", f"c{i}", inplace=False)]
        bottom = f"r{i}"
    layers.append(nets.ip("fc", bottom, 5))
    return nets.prototxt(layers, (2, 3, hw, hw), name="chain")


@pytest.mark.parametrize("which", ["small", "residual", "bn", "chain"])
def test_forward_keep_false_same_bits_less_memory(which):
    """forward(keep=False), the inference pass, frees each activation after its last reader:
    the outputs and any blob asked for (inside a folded BatchNorm chain, before an in-place
    ReLU) are bit for bit those of the keeping pass, also split into chunks; nothing is kept
    for backward_relevance, which then computes the forward pass again (same result); and the
    pass's peak of numpy allocations is well under the keeping pass's."""
    import tracemalloc
    from lrpfast.compat import RelPropOpts
    text = {"small": SMALL, "residual": residual_text(),
            "bn": HEAD.format(name="bn") + conv_bn_relu(4) + """layer { name: "fc" type:
  "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 3 } }
""", "chain": _deep_chain()}[which]
    net, w = build(text, ("keep", which))
    shape = net.inputs["data"]
    x = seeded_rng("keep", which, "x").normal(0, 1, (3,) + shape).astype(np.float32)
    bits = lambda a: np.asarray(a).view(np.uint32)  # noqa: E731
    inner = [b for b in ("conv1#1", "res#1", "conv2") if b.split("#")[0] in net.blob_versions]
    for names in (None, inner + [net.outputs[0]]):
        a = net.forward(x, blobs=names)
        b = net.forward(x, blobs=names, keep=False)
        for k in (a if isinstance(a, dict) else [None]):
            np.testing.assert_array_equal(bits(a[k] if k else a), bits(b[k] if k else b))
    assert net._local.last_forward is None and net._local.last_input is not None
    per_image = sum(net.layer_memory().values())
    small_chunks = lrpfast.Net.from_text(text, w, memory_limit=int(1.5 * per_image))
    assert len(small_chunks._chunks(3)) > 1
    # (a batch split differently may round differently outside deterministic mode: the same
    # chunks on both sides)
    np.testing.assert_array_equal(bits(small_chunks.forward(x, keep=False)),
                                  bits(small_chunks.forward(x)))
    opts = RelPropOpts(relpropformulatype=0, epsstab=0.01)
    kept = net.backward_relevance(1, opts).R
    net.forward(x, keep=False)
    np.testing.assert_array_equal(bits(net.backward_relevance(1, opts).R), bits(kept))
    if which == "chain":   # 6 conv + 6 ReLU outputs of 2*16*48*48 floats each
        peaks = {}
        for keep in (True, False):
            net.release()
            net.forward(x, keep=keep)   # warm: the operators' caches are not a pass's memory
            net._local.last_forward = None
            tracemalloc.start()
            try:
                net.forward(x, keep=keep)
                peaks[keep] = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        act = 3 * 16 * 48 * 48 * 4
        assert peaks[True] > 10 * act and peaks[False] < 4 * act, (peaks, act)


# ============================================================================ multi / chunking
def _count_forwards(net, monkeypatch):
    calls = []
    orig = net._run_forward

    def counting(xin, *a, **k):
        calls.append(next(iter(xin.values())).shape[0])
        return orig(xin, *a, **k)
    monkeypatch.setattr(net, "_run_forward", counting)
    return calls


def test_relevance_multi_equals_separate_calls_with_one_forward(small, monkeypatch, deterministic):
    net, _, x = small
    sets = [3, [1, 6], -1, [[0, 2], 5]]
    sep = np.stack([net.relevance(x, c, rules="cmp_alpha2_flat") for c in sets])
    calls = _count_forwards(net, monkeypatch)
    multi = net.relevance_multi(x, sets, rules="cmp_alpha2_flat")
    assert calls == [2]                 # one forward pass for all four class selections
    assert multi.shape == (4,) + x.shape
    np.testing.assert_array_equal(multi, sep)
    calls.clear()
    multi2 = net.relevance_multi(x, sets, rules="cmp_alpha2_flat", readout=["data", "pool1"])
    assert calls == [2]
    assert multi2["pool1"].shape == (4, 2, 4, 6, 6)
    np.testing.assert_array_equal(multi2["data"], multi)


@pytest.mark.parametrize("rules", ["cmp_alpha1_flat", "cmp_alpha2_flat"])
def test_relevance_multi_computes_zplus_once(small, monkeypatch, rules, deterministic):
    """z+ depends on the activations only: relevance_multi computes it once per layer for all
    class selections (not once per selection) and still equals separate calls bit for bit
    (in deterministic mode: relevance_multi runs the selections as one taller batch).
    (These composites give the mixed-sign input layer flat; alpha-beta there -- the x < 0
    path -- still computes its products per selection.)"""
    from lrpfast import ops
    net, _, x = small
    sets = [3, [1, 6], -1, 0]
    sep = np.stack([net.relevance(x, c, rules=rules) for c in sets])
    calls = []
    for cls in (ops.ConvOp, ops.InnerProductOp):
        orig = cls.fwd

        def counting(self, xx, kind="w", bias="b", _orig=orig):
            if kind == "pos":
                calls.append(xx.shape[0])
            return _orig(self, xx, kind, bias)
        monkeypatch.setattr(cls, "fwd", counting)
    orig_pair = ops.ConvOp.fwd_zplus

    def counting_pair(self, xx):   # z+ computed with z in the forward pass
        calls.append(xx.shape[0])
        return orig_pair(self, xx)
    monkeypatch.setattr(ops.ConvOp, "fwd_zplus", counting_pair)
    multi = net.relevance_multi(x, sets, rules=rules)
    np.testing.assert_array_equal(multi, sep)
    assert calls and all(n == x.shape[0] for n in calls), calls   # never on the tiled batch
    single_calls = len(calls)
    calls.clear()
    net.relevance(x, 3, rules=rules)
    assert len(calls) == single_calls    # as many z+ products as one selection needs


@pytest.mark.parametrize("rules", ["cmp_alpha1_flat", "cmp_alpha2_flat", "alpha1beta0"])
def test_zplus_comes_with_the_forward_pass(small, monkeypatch, rules, deterministic):
    """The forward pass computes an alpha-beta convolution's z+ together with z (one im2col,
    ops.ConvOp.fwd_zplus) where its input is >= 0, and the relevance is bit-identical to
    computing z+ in the relevance pass (in deterministic mode: by default the pair's stacked
    gemm may round differently); mixed-sign inputs (the data layer under alpha1beta0) keep the
    two-sided path."""
    from lrpfast import ops
    net, _, x = small
    states_seen = []
    orig = net._run_forward

    def capture(xin, *a, **k):
        blobs, states = orig(xin, *a, **k)
        states_seen.append(states)
        return blobs, states
    monkeypatch.setattr(net, "_run_forward", capture)
    fused = net.relevance(x, [3, 5], rules=rules)
    st = states_seen[-1]
    assert "zp" in st["conv2"]
    xin = np.maximum(net.forward(x, blobs=["pool1"])["pool1"], 0)
    np.testing.assert_array_equal(st["conv2"]["zp"], net.layer("conv2").op.fwd(xin, "pos", "pos"))
    assert "zp" not in st["conv1"]          # flat, or alpha-beta on the mixed-sign image
    monkeypatch.setattr(ops.ConvOp, "pairs_zplus", lambda self, xx: False)
    apart = net.relevance(x, [3, 5], rules=rules)
    assert "zp" not in states_seen[-1]["conv2"]
    np.testing.assert_array_equal(fused, apart)


# a residual block with BatchNorm (folded), a max pool and a Concat: relevance_multi's cut may
# land inside the block, with relevance pending on both branches
RES_NET = HEAD.format(name="res") + conv_bn_relu(6) + """
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3"
  convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "conv3" bottom: "conv1" top: "sum" }
layer { name: "relu3" type: "ReLU" bottom: "sum" top: "sum" }
layer { name: "pool1" type: "Pooling" bottom: "sum" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "side" type: "Convolution" bottom: "pool1" top: "side"
  convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "cat" type: "Concat" bottom: "pool1" bottom: "side" top: "cat" }
layer { name: "fc1" type: "InnerProduct" bottom: "cat" top: "fc1" inner_product_param { num_output: 9 } }
layer { name: "relu4" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param { num_output: 7 } }
"""


@pytest.mark.parametrize("rules", ["epsilon", "cmp_alpha2_flat", "alpha1beta0"])
def test_relevance_multi_cut_anywhere_equals_separate_calls(monkeypatch, rules, deterministic):
    """relevance_multi runs its class selections as one tiled batch above Net._class_cut and one
    selection at a time below it, on the chunk's own activations. Wherever the cut lies -- above
    the first layer, between any two (inside the residual block too, with relevance pending on
    both branches) or below the last -- the maps equal separate calls bit for bit, readouts at
    both sides of the cut included, with one class group or several (memory_limit)."""
    net, w = build(RES_NET, "res")
    x = images("res", n=3)
    sets = [3, [1, 6, 0], -1, [[0, 2], 5, 4], 2]
    readout = ["data", "pool1", "conv2"]
    sep = [net.relevance(x, c, rules=rules, readout=readout) for c in sets]
    n_plan = len(net._plan(net.top_layer(None), lrpfast.composites.as_composite(rules),
                           [net._ssa(r) for r in readout]))
    real_cut = lrpfast.Net._class_cut
    tiled = []
    groups = []
    real_groups = lrpfast.Net._class_groups
    for most in (None, 2):   # one group of all 5 selections; groups of 2, 2 and 1
        if most is not None:
            monkeypatch.setattr(lrpfast.Net, "_class_groups", lambda self, K, m, *a:
                                groups.append(K) or lrpfast.net._even_parts(K, most))
        for cut in range(n_plan + 1):
            monkeypatch.setattr(lrpfast.Net, "_class_cut", lambda self, plan, m, c=cut: c)
            multi = net.relevance_multi(x, sets, rules=rules, readout=readout)
            for r in readout:
                np.testing.assert_array_equal(multi[r], np.stack([s[r] for s in sep]),
                                              err_msg=f"cut {cut}, readout {r}, groups {most}")
    assert groups == [5] * (n_plan + 1)
    monkeypatch.setattr(lrpfast.Net, "_class_groups", real_groups)
    # the real cut: the first layer (top down) with an input of _CLASS_BATCH_FLOATS per chunk
    monkeypatch.setattr(lrpfast.Net, "_class_cut", real_cut)
    plan = net._plan(net.top_layer(None), lrpfast.composites.as_composite(rules), ["data"])
    sizes = {bt: int(np.prod(net.shapes[bt])) for bt in net.shapes}
    monkeypatch.setattr(lrpfast.net, "_CLASS_BATCH_FLOATS", 3 * sizes[net._ssa("cat")] + 1)
    cut = net._class_cut(plan, 3)
    assert [layer.name for layer, _ in plan][cut] == "pool1"   # its input is 3x cat's size
    assert all(3 * sizes[bt] < lrpfast.net._CLASS_BATCH_FLOATS
               for layer, _ in plan[:cut] for bt in layer.bottoms)
    # nothing below the cut is tiled
    orig_tile = lrpfast.net._tile
    monkeypatch.setattr(lrpfast.net, "_tile", lambda v, g, m: tiled.append(
        getattr(v, "shape", None)) or orig_tile(v, g, m))
    net.memory_limit = 1 << 30
    multi = net.relevance_multi(x, sets, rules=rules)
    np.testing.assert_array_equal(multi, np.stack([s["data"] for s in sep]))
    big = {(3,) + net.shapes[net._ssa("sum")], (3,) + net.shapes[net._ssa("conv2")]}
    assert tiled and not big & set(tiled)


def test_chunking_matches_one_chunk(small, monkeypatch):
    _, w, _ = small
    x = images("chunks", n=5)
    one = lrpfast.Net.from_text(SMALL, w)
    # one image per chunk (a limit below one sample is refused: test_sample_memory_refused)
    tiny = lrpfast.Net.from_text(SMALL, w, memory_limit=_per_sample_bytes(one))
    two = lrpfast.Net.from_text(SMALL, w, memory_limit=2 * _per_sample_bytes(tiny))  # 2 per chunk
    calls = _count_forwards(tiny, monkeypatch)
    sets = [2, -1, [[1, 2], 0, 3, -2, 6]]
    R_tiny = tiny.relevance_multi(x, sets, rules="alpha2beta1")
    assert calls == [1, 1, 1, 1, 1]
    calls2 = _count_forwards(two, monkeypatch)
    R_two = two.relevance_multi(x, sets, rules="alpha2beta1")
    assert calls2 == [2, 2, 1]
    R_one = one.relevance_multi(x, sets, rules="alpha2beta1")
    np.testing.assert_allclose(R_tiny, R_one, **SAME_TOL)
    np.testing.assert_allclose(R_two, R_one, **SAME_TOL)
    np.testing.assert_allclose(tiny.forward(x), one.forward(x), **SAME_TOL)
    assert tiny.forward(x).shape == (5, N_CLASSES)


def _per_sample_bytes(net):
    """What one image of ``net`` costs in the engine's chunk accounting (memory_limit // it
    is the chunk size), recomputed from the documented rule (see layer_memory): 8 bytes per
    kept float32 output, 16 more per element of the largest blob."""
    sizes = [int(np.prod(s)) for s in net.shapes.values()]
    return sum(sizes) * 8 + max(sizes) * 16


def test_batch_of_one_equals_batch(small):
    net, _, x = small
    for rules in ("epsilon", "cmp_alpha2_flat", "gradient"):
        batch = net.relevance(x, [4, 1], rules=rules)
        for i, c in enumerate([4, 1]):
            np.testing.assert_allclose(net.relevance(x[i:i + 1], c, rules=rules)[0], batch[i],
                                       **SAME_TOL)


def test_idempotent_and_activations_untouched(small):
    net, _, x = small
    before = net.forward(x, blobs=["conv1", "pool1", "fc2"])
    a = net.relevance(x, -1, rules="cmp_alpha2_flat")
    b = net.relevance(x, -1, rules="cmp_alpha2_flat")
    np.testing.assert_array_equal(a, b)
    after = net.forward(x, blobs=["conv1", "pool1", "fc2"])
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    x_copy = x.copy()
    net.relevance(x, -1)
    np.testing.assert_array_equal(x, x_copy)   # the input is not modified either


# ======================================================================================= GIL
BIG_CONV = """name: "big"
input: "data"
input_shape {{ dim: 1 dim: 64 dim: {s} dim: {s} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 64 kernel_size: 3 pad: 1 }} }}
"""


def _ticker(stop, ticks):
    while not stop.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.001)


def test_gil_released_during_native_compute():
    """A one-convolution net: its forward is a single native call. If the engine held the GIL
    during it, a Python thread would stall for the whole call; released, it keeps ticking
    (gaps of a few ms: the sleep, the interpreter's switch interval, OS scheduling)."""
    # size the problem so that one forward takes >= 0.3 s here
    s, dt = 64, 0.0
    while True:
        net, _ = build(BIG_CONV.format(s=s), f"gil{s}")
        x = seeded_rng("gil", s).normal(0, 1, (1, 64, s, s)).astype(np.float32)
        t0 = time.perf_counter()
        net.forward(x)
        dt = time.perf_counter() - t0
        if dt >= 0.3 or s >= 1024:
            break
        s *= 2
    if dt < 0.1:
        pytest.skip(f"the native call is too fast to measure ({dt:.3f} s)")
    for call in (lambda: net.forward(x),
                 lambda: net.relevance(x, 12345, rules="epsilon", top="conv")):
        stop, ticks = threading.Event(), []
        th = threading.Thread(target=_ticker, args=(stop, ticks))
        th.start()
        time.sleep(0.02)
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        stop.set()
        th.join()
        inside = [t for t in ticks if t0 <= t <= t1]
        gaps = np.diff([t0] + inside + [t1])
        assert len(inside) >= 5 and gaps.max() < 0.25 * (t1 - t0), (
            f"background thread stalled {gaps.max():.3f} s of a {t1 - t0:.3f} s call")


def test_concurrent_relevance_from_threads_matches_serial(small):
    net, _, x = small
    jobs = [(c, r) for c in (0, 3, -1) for r in ("epsilon", "cmp_alpha2_flat")]
    serial = [net.relevance(x, c, rules=r) for c, r in jobs]
    results = [None] * len(jobs)

    def work(k):
        c, r = jobs[k]
        for _ in range(3):
            results[k] = net.relevance(x, c, rules=r)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s, p in zip(serial, results):
        np.testing.assert_array_equal(s, p)


# ================================================================================ composites
def _rule_table(text):
    """describe_rules output -> {layer name: treatment}."""
    table = {}
    for line in text.splitlines()[2:]:
        parts = line.split(None, 3)
        table[parts[1]] = parts[3] if len(parts) > 3 else ""
    return table


def test_describe_rules_cmp_alpha2_flat(small):
    net, _, _ = small
    text = net.describe_rules("cmp_alpha2_flat")
    assert text.splitlines()[0].startswith("Composite cmp_alpha2_flat")
    t = _rule_table(text)
    assert t == {"conv1": "flat", "relu1": "pass", "pool1": "winner-take-all",
                 "conv2": "alpha2beta1", "relu2": "pass", "fc1": "epsilon(1e-06)",
                 "relu3": "pass", "fc2": "epsilon(1e-06)"}
    t2 = _rule_table(net.describe_rules(lrpfast.composite("cmp_alpha2_flat", flat_layers=2)))
    assert t2["conv1"] == t2["conv2"] == "flat" and t2["fc1"] == "epsilon(1e-06)"
    t3 = _rule_table(net.describe_rules(lrpfast.composite("preset_a", eps=0.25)))
    assert t3["conv1"] == "alpha1beta0" and t3["fc2"] == "epsilon(0.25)"
    t4 = _rule_table(net.describe_rules(lrpfast.Composite(default=R.Zero(), maxpool="average")))
    assert t4["pool1"].startswith("as average") and t4["conv2"] == "z"


def test_composite_priority_by_name_over_first_over_type(small):
    net, _, x = small
    comp = lrpfast.Composite(default=R.Epsilon(0.5), by_type={"Convolution": R.AlphaBeta(1, 0)},
                             first=(2, R.Flat()), by_name={"conv1": R.WSquare()})
    assigned = comp.assign(net.layers)
    assert assigned == {"conv1": R.WSquare(), "conv2": R.Flat(), "fc1": R.Epsilon(0.5),
                        "fc2": R.Epsilon(0.5)}
    # "first n" counts Convolution and InnerProduct layers
    comp3 = lrpfast.Composite(default=R.Epsilon(0.5), first=(3, R.Flat()))
    assert comp3.assign(net.layers)["fc1"] == R.Flat()
    # the same assignment written by name only gives the same relevance
    by_name = lrpfast.Composite(default=R.Epsilon(0.5), by_name={
        "conv1": R.WSquare(), "conv2": R.Flat()})
    np.testing.assert_array_equal(net.relevance(x, 2, rules=comp), net.relevance(x, 2, rules=by_name))
    assert not np.allclose(net.relevance(x, 2, rules=comp), net.relevance(x, 2, rules="epsilon"))


@pytest.mark.parametrize("name", lrpfast.COMPOSITE_NAMES)
def test_every_named_composite_runs(small, name):
    net, _, x = small
    kw = {"low": -3.0, "high": 3.0} if name == "epsilon_gamma_box" else {}
    r = net.relevance(x, [1, -1], rules=lrpfast.composite(name, **kw))
    assert r.shape == x.shape and r.dtype == np.float32 and np.all(np.isfinite(r))
    assert np.abs(r).sum() > 0
    if name != "epsilon_gamma_box":
        np.testing.assert_array_equal(r, net.relevance(x, [1, -1], rules=name))


def test_invalid_composites_and_rule_parameters(small):
    net, _, x = small
    with pytest.raises(ValueError, match=r"unknown composite 'nope'; known: cmp_alpha1, "):
        lrpfast.composite("nope")
    with pytest.raises(ValueError, match=r"unknown composite 'cmp_alpha3'"):
        net.relevance(x, 0, rules="cmp_alpha3")
    with pytest.raises(ValueError, match=r"alpha - beta = 1.*alpha=1, beta=1"):
        R.AlphaBeta(1, 1)
    with pytest.raises(ValueError, match=r"alpha - beta = 1.*alpha=0, beta=-1"):
        R.AlphaBeta(0, -1)
    for bad in (-1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"Epsilon: eps must be a finite number >= 0"):
            R.Epsilon(bad)
    with pytest.raises(ValueError, match=r"Gamma: gamma must be >= 0"):
        R.Gamma(-0.1)
    with pytest.raises(ValueError, match=r"ZBox: low must be <= high"):
        R.ZBox(1.0, -1.0)
    with pytest.raises(ValueError, match=r"epsilon_gamma_box needs the input bounds"):
        lrpfast.composite("epsilon_gamma_box")
    with pytest.raises(ValueError, match=r"flat_layers needs a \*_flat composite"):
        lrpfast.composite("cmp_alpha1", flat_layers=2)
    with pytest.raises(ValueError, match=r"first=\(n, rule\) needs n >= 0"):
        lrpfast.Composite(default=R.Flat(), first=(-1, R.Flat()))
    with pytest.raises(ValueError, match=r"maxpool must be 'wta' or 'average', got 'max'"):
        lrpfast.Composite(default=R.Flat(), maxpool="max")
    with pytest.raises(TypeError, match=r"'epsilon' is not an lrpfast rule"):
        lrpfast.Composite(default="epsilon")
    with pytest.raises(TypeError, match=r"rules must be a composite name, an lrpfast rule.*"
                                        r"Composite.*got int"):
        net.relevance(x, 0, rules=3)
    with pytest.raises(ValueError, match=r"no layers named \['conv9'\] in the net"):
        net.relevance(x, 0, rules=lrpfast.Composite(default=R.Flat(), by_name={"conv9": R.Zero()}))
    with pytest.raises(ValueError, match=r"no rule for layer 'conv1' \(Convolution\)"):
        net.relevance(x, 0, rules=lrpfast.Composite(by_type={"InnerProduct": R.Zero()}))


# ============================================================================ info / threads
def test_info_and_cli():
    info = lrpfast.info()
    assert set(info) >= {"version", "blas", "threads", "cuda_compiled", "gpus"}
    assert info["version"] == lrpfast.__version__
    assert info["threads"] == lrpfast.get_num_threads() >= 1
    assert isinstance(info["cuda_compiled"], bool) and info["blas"]
    out = subprocess.run([sys.executable, "-m", "lrpfast", "info"], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    for key in ("version", "blas", "threads", "cuda_compiled", "gpus"):
        assert key in out.stdout
    assert lrpfast.__version__ in out.stdout
    ver = subprocess.run([sys.executable, "-m", "lrpfast", "--version"], capture_output=True,
                         text=True, timeout=120, check=False)
    assert ver.returncode == 0 and f"lrpfast {lrpfast.__version__}" in ver.stdout


def test_set_num_threads(small):
    net, _, x = small
    before = lrpfast.get_num_threads()
    cpus = lrpfast.info()["cpus"]
    for bad in (0, -2, 4097):
        with pytest.raises(ValueError, match=r"set_num_threads: need 1 <= n <= 4096"):
            lrpfast.set_num_threads(bad)
    assert lrpfast.get_num_threads() == before
    try:
        ref = net.relevance(x, -1, rules="cmp_alpha2_flat")
        assert lrpfast.set_num_threads(1) == 1
        assert lrpfast.get_num_threads() == 1
        np.testing.assert_allclose(net.relevance(x, -1, rules="cmp_alpha2_flat"), ref, **SAME_TOL)
        # more threads than CPUs only slow down: capped, with a warning
        with pytest.warns(RuntimeWarning, match=f"may run on {cpus} CPUs"):
            assert lrpfast.set_num_threads(cpus + 3) == cpus
        assert lrpfast.get_num_threads() == cpus
        np.testing.assert_allclose(net.relevance(x, -1, rules="cmp_alpha2_flat"), ref, **SAME_TOL)
    finally:
        lrpfast.set_num_threads(before)


# ===================================================================== splits / in-place / BN
# conv1 (after its in-place ReLU) is read by two layers (Caffe's implicit split)
SPLIT = HEAD.format(name="split") + CONV1 + """
layer { name: "ipa" type: "InnerProduct" bottom: "pool1" top: "ipa" inner_product_param { num_output: 6 } }
layer { name: "ipb" type: "InnerProduct" bottom: "pool1" top: "ipb" inner_product_param { num_output: 6 } }
layer { name: "sum" type: "Eltwise" bottom: "ipa" bottom: "ipb" top: "sum" eltwise_param { operation: SUM } }
"""
EXPLICIT_SPLIT = HEAD.format(name="split") + CONV1 + """
layer { name: "splitter" type: "Split" bottom: "pool1" top: "p_a" top: "p_b" }
layer { name: "ipa" type: "InnerProduct" bottom: "p_a" top: "ipa" inner_product_param { num_output: 6 } }
layer { name: "ipb" type: "InnerProduct" bottom: "p_b" top: "ipb" inner_product_param { num_output: 6 } }
layer { name: "sum" type: "Eltwise" bottom: "ipa" bottom: "ipb" top: "sum" eltwise_param { operation: SUM } }
"""


@pytest.mark.parametrize("rules", ["epsilon", "alpha2beta1", "flat"])
def test_implicit_split_adds_the_branches(rules):
    net, w = build(SPLIT, "split")
    x = images("split")
    out = net.relevance(x, [1, 4], rules=rules, top="sum", readout=["ipa", "ipb", "pool1", "data"])
    # each branch alone, seeded with what the Eltwise gave it
    for blob in ("pool1", "data"):
        a = net.propagate(x, out["ipa"], top="ipa", rules=rules, readout=blob)
        b = net.propagate(x, out["ipb"], top="ipb", rules=rules, readout=blob)
        scale = float(np.abs(out[blob]).max())
        np.testing.assert_allclose(out[blob], a + b, rtol=1e-5, atol=1e-6 * scale)
        assert np.abs(a).sum() > 0 and np.abs(b).sum() > 0
    # the explicit Split layer gives the same numbers
    explicit = lrpfast.Net.from_text(EXPLICIT_SPLIT, w)
    np.testing.assert_allclose(explicit.relevance(x, [1, 4], rules=rules, top="sum"),
                               out["data"], **SAME_TOL)
    # the Eltwise SUM splits its relevance in proportion to the operands (z-rule)
    s = net.forward(x, blobs=["ipa", "ipb", "sum"])
    for i, c in enumerate([1, 4]):
        assert out["ipa"][i, c] == pytest.approx(s["ipa"][i, c], rel=1e-4, abs=1e-5)
        assert out["ipb"][i, c] == pytest.approx(s["ipb"][i, c], rel=1e-4, abs=1e-5)


def test_propagate_validates_r_top(small, deterministic):
    net, _, x = small
    with pytest.raises(ValueError, match=r"R_top must have the shape of layer 'fc2''s output "
                                         r"\(2, 7\), got \(2, 6\)"):
        net.propagate(x, np.zeros((2, 6), np.float32), top="fc2")
    bad = np.zeros((2, 7), np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"R_top contains NaN"):
        net.propagate(x, bad, top="fc2")
    # propagate with the seed relevance() would use gives relevance()'s result
    logits = net.forward(x, blobs=["fc2"])["fc2"]
    seed = np.zeros_like(logits)
    seed[:, 3] = logits[:, 3]
    np.testing.assert_array_equal(net.propagate(x, seed, top="fc2", rules="cmp_alpha2_flat"),
                                  net.relevance(x, 3, rules="cmp_alpha2_flat"))


BN_NET = HEAD.format(name="bn") + conv_bn_relu(4) + """
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 5 } }
"""


def test_batchnorm_folding_and_tops_inside_the_chain():
    net, w = build(BN_NET, "bn")
    plain = lrpfast.Net.from_text(BN_NET, w, fold_batchnorm=False)
    x = images("bn")
    # the folded forward is one product x W' + b' instead of three passes: float32 rounding only
    want = plain.forward(x)
    np.testing.assert_allclose(net.forward(x), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    t = _rule_table(net.describe_rules("epsilon"))
    assert t["bn1"] == "folded into 'conv1'" and t["scale1"] == "folded into 'conv1'"
    assert "BatchNorm/Scale folded in" in t["conv1"]
    assert _rule_table(plain.describe_rules("epsilon"))["bn1"] == "epsilon(1e-06)"
    # z rule: folding is exact (conv -> BN -> Scale is one linear map, biases absorbed)
    for top, cls in (("fc", 3), ("scale1", 100), ("conv1", 100)):
        a = net.relevance(x, cls, rules="z", top=top)
        b = plain.relevance(x, cls, rules="z", top=top)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))
    # a top at the conv itself seeds its own output (before the BatchNorm)
    conv_out = net.forward(x, blobs=["conv1#1"])["conv1#1"].reshape(2, -1)[:, 100]
    r = net.relevance(x, 100, rules="flat", top="conv1")
    for i in range(2):
        assert close_sum(r[i].sum(dtype=np.float64), conv_out[i], np.abs(r[i]).sum())
    # a top in the middle of a folded chain is refused with a way out
    with pytest.raises(ValueError, match=r"top layer 'bn1' \(BatchNorm\) is folded into 'conv1' "
                                         r"with the layers up to 'scale1'.*fold_batchnorm=False"):
        net.relevance(x, 0, top="bn1")
    assert plain.relevance(x, 0, top="bn1").shape == x.shape


def test_folded_chain_runs_as_one_product_and_its_inner_blobs_on_request(monkeypatch):
    net, w = build(BN_NET, "bn")
    plain = lrpfast.Net.from_text(BN_NET, w, fold_batchnorm=False)
    x = images("bn")
    calls = {"bn1": 0, "scale1": 0}
    for name in calls:
        layer = net.layer(name)

        def counted(xs, layer=layer, f=layer.forward):
            calls[layer.name] += 1
            return f(xs)
        monkeypatch.setattr(layer, "forward", counted)
    out = net.forward(x)
    fc_end = net.forward(x, blobs=["conv1#3", "fc"])
    assert calls == {"bn1": 0, "scale1": 0}   # the chain's per-channel passes did not run
    # its end is the folded product, 1e-6-close to the three unfolded passes
    end = plain.forward(x, blobs=["conv1#3"])["conv1#3"]
    np.testing.assert_allclose(fc_end["conv1#3"], end, rtol=1e-5, atol=1e-6 * np.abs(end).max())
    # blobs inside the chain come unfolded, exactly as the unfolded net computes them, and
    # asking for them changes nothing downstream (the same bits for the chain's end and fc)
    inner = net.forward(x, blobs=["conv1#1", "conv1#2", "conv1#3", "fc"])
    assert calls == {"bn1": 1, "scale1": 0}
    ref = plain.forward(x, blobs=["conv1#1", "conv1#2"])
    np.testing.assert_array_equal(inner["conv1#1"], ref["conv1#1"])
    np.testing.assert_array_equal(inner["conv1#2"], ref["conv1#2"])
    np.testing.assert_array_equal(inner["conv1#3"], fc_end["conv1#3"])
    np.testing.assert_array_equal(inner["fc"], fc_end["fc"])
    np.testing.assert_array_equal(inner["fc"], out)
    # a pass kept by forward() lacks the chain's inner blobs: a relevance seeded at conv1's
    # own output recomputes them (the same numbers as on a fresh net) instead of failing
    fresh, _ = build(BN_NET, "bn")
    net.forward(x)
    kept = net._local.last_input   # the very arrays, as the pipeline passes them
    np.testing.assert_array_equal(net.relevance(kept, 100, rules="flat", top="conv1"),
                                  fresh.relevance(x, 100, rules="flat", top="conv1"))
    net.forward(x)
    np.testing.assert_array_equal(net.relevance(net._local.last_input, 3, rules="flat"),
                                  fresh.relevance(x, 3, rules="flat"))


def test_memory_accounting_counts_what_a_pass_keeps_and_chunks_evenly():
    net, w = build(BN_NET, "bn")
    plain = lrpfast.Net.from_text(BN_NET, w, fold_batchnorm=False)
    mem, mem_plain = net.layer_memory(), plain.layer_memory()
    # the folded chain's inner blobs (conv1's own output, bn1's) are not kept by a pass
    size = int(np.prod(net.shapes["conv1#3"]))
    assert max(int(np.prod(s)) for s in net.shapes.values()) == size   # conv1's: the largest
    assert mem["bn1"] == 0 and mem["conv1"] == size * 16   # only the largest blob's term
    assert mem_plain["bn1"] == mem["scale1"] == size * 8
    assert mem_plain["conv1"] == size * (8 + 16)
    # the largest blob takes 16 bytes more per element
    sizes = {t: int(np.prod(s)) for t, s in plain.shapes.items()}
    assert sum(mem_plain.values()) == sum(sizes.values()) * 8 + max(sizes.values()) * 16
    assert sum(mem.values()) == net._bytes_per_sample() == \
        sum(mem_plain.values()) - 2 * size * 8
    # chunks as even as possible, the larger first
    net.memory_limit = 7 * net._bytes_per_sample()
    assert net._chunks(8) == [(0, 4), (4, 8)]
    assert net._chunks(7) == [(0, 7)]
    net.memory_limit = 3 * net._bytes_per_sample()
    assert net._chunks(8) == [(0, 3), (3, 6), (6, 8)]
    assert net._chunks(10) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    net.memory_limit = net._bytes_per_sample()
    assert net._chunks(3) == [(0, 1), (1, 2), (2, 3)]
    # relevance_multi tiles a chunk's activations per group of classes next to the chunk's own
    # pass: room for 3 passes of 2 images -> groups of 2 classes, evenly
    bps = net._bytes_per_sample()
    net.memory_limit = 3 * bps * 2
    assert net._class_groups(5, 2) == [(0, 2), (2, 4), (4, 5)]
    net.memory_limit = 2 * bps * 2 - 1   # room for less than 2 passes: one class at a time
    assert net._class_groups(3, 2) == [(0, 1), (1, 2), (2, 3)]
    # tiles of only the layers above relevance_multi's cut, half a sample: room for 4 of them
    net.memory_limit = 3 * bps * 2
    assert net._class_groups(10, 2, bps // 2) == [(0, 4), (4, 7), (7, 10)]
    # ... and arrays within what the allocator reuses: 3 selections of 2 images at most
    net.memory_limit = 1 << 40
    third = lrpfast.net._REUSED_BYTES // 6
    assert net._class_groups(10, 2, 1, third) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert net._class_groups(10, 2, 1, third + 1) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert net._class_groups(3, 2, 1, lrpfast.net._REUSED_BYTES) == [(0, 1), (1, 2), (2, 3)]


def test_forward_blob_errors(small):
    net, _, x = small
    with pytest.raises(KeyError, match=r"no blob named 'nope' in the net \(blobs: data, conv1"):
        net.forward(x, blobs=["nope"])
    with pytest.raises(KeyError, match=r"no layer named 'nope'"):
        net.layer("nope")
    out = net.forward(x, blobs=["fc2", "prob"])
    np.testing.assert_allclose(out["prob"].sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(net.forward(x), out["prob"])
