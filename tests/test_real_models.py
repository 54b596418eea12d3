"""Whole-net tests on real Caffe files (tests/data/models; see its README.md).

* res10_ssd_face (a real trained SSD face detector, prototxt + caffemodel): lrpfast's forward
  pass against OpenCV 4.x's independent Caffe implementation (``cv2.dnn``), layer by layer, on a
  real photograph; relevance of the detector's face score lands on the face.
* bvlc_reference_caffenet, bvlc_alexnet, bvlc_googlenet (original deploy prototxts, weights
  generated here and written as .caffemodel files): build, forward, relevance under several
  composites, and conservation of relevance on bias-free variants.
* A reduced CaffeNet (same layer structure: conv / ReLU / max pooling / LRN / grouped conv /
  InnerProduct / Dropout / Softmax, 67x67 input, few channels) against the float64 whole-net
  reference of ``tests/reference.py`` (``RefNet``), forward and relevance, rule by rule.

Blob naming (Caffe's in-place semantics): ``net.forward(x, blobs=["conv1_h"])`` returns the
*final* version of blob ``conv1_h`` (after its in-place BatchNorm, Scale and ReLU), as Caffe's
``net.blobs["conv1_h"]`` would; ``"conv1_h#1"``, ``"conv1_h#2"``, ... name the successive
versions (the outputs of the first, second, ... layer writing that blob). OpenCV returns each
*layer's* own output; the tests map a layer to the version it writes.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import lrpfast
import reference as ref
from conftest import he_weights, seeded_rng
from lrpfast import rules as R

cv2 = pytest.importorskip("cv2")
skimage_data = pytest.importorskip("skimage.data")

# Forward agreement with OpenCV, relative L2 error ||a - b|| / ||b|| per blob. Both are float32
# engines summing the same products in different orders (im2col + BLAS blocking vs OpenCV's
# own kernels); with dot products of up to 9*256 terms through ~20 conv layers the observed
# error is <= 6e-6. 1e-4 leaves an order of magnitude for other BLAS builds/thread counts,
# while any real bug (a wrong pad/stride/dilation, a transposed weight, a BatchNorm eps or
# moving-average factor ignored, a wrong Permute order) gives errors of order 1e-2 .. 1.
FORWARD_RTOL = 1e-4
# Softmax outputs sum to 1 up to float32 rounding of a 1000-term sum.
SOFTMAX_ATOL = 1e-5
# Conservation: |sum R_input - seed| <= CONSERVATION_RTOL * sum |R_input|. The per-layer
# identities are exact in exact arithmetic on a bias-free net (see test_zoo_conservation);
# float32 sums over up to 9216 terms per layer, ~25 layers deep, lose ~1e-6 relative to the
# magnitude of what is summed (sum |R|, which for z/eps with mixed signs exceeds |seed|).
# A leak (a bias share, a padded tap, a max-pooling or Concat/Split bug) is >= 1e-2.
CONSERVATION_RTOL = 1e-4
# Reduced CaffeNet vs the float64 reference: float32 engine against float64 arithmetic on the
# same float32 weights/inputs; observed <= 1e-5 relative L2 error. 1e-4 catches any
# rule/geometry bug (those are O(1e-1)).
REFERENCE_RTOL = 1e-4


def rel_err(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb > 0 else float(np.linalg.norm(a))


def bgr_input(images, size, mean) -> np.ndarray:
    """RGB uint8 photos -> float32 (N, 3, size, size): resized, BGR, mean subtracted (Caffe)."""
    out = []
    for img in images:
        im = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        im = im[:, :, ::-1].astype(np.float32) - np.asarray(mean, np.float32)
        out.append(im.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out))


def version_name(ssa: str) -> str:
    """Public name of one version of a blob: the engine stores the first version bare."""
    return ssa if "#" in ssa else ssa + "#1"


# =============================================================================================
# res10 SSD face detector: forward vs OpenCV, relevance of the face score
# =============================================================================================
RES10_MEAN = (104.0, 177.0, 123.0)  # BGR mean the model was trained with (OpenCV's sample)
RES10_SKIPPED = [f"{n}_mbox_priorbox (PriorBox: unsupported)"
                 for n in ("conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2")] + [
    "mbox_priorbox (Concat: depends on a skipped layer)",
    "detection_out (DetectionOutput: unsupported)"]
# The astronaut's face in the 300x300 network input (x0, y0, x1, y1), as the detector itself
# finds it (OpenCV's DetectionOutput gives (105, 34)-(159, 103) at confidence 0.99999).
FACE_BOX = (105, 34, 159, 103)


@pytest.fixture(scope="module")
def res10(model_file):
    model = model_file("res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel")
    proto = model.parent / "deploy.prototxt"
    net = lrpfast.Net(proto, model, skip_unsupported=True)
    x = bgr_input([skimage_data.astronaut()], 300, RES10_MEAN)
    return net, lambda: _opencv_net(proto, model), x


def _opencv_net(proto, model):
    """A fresh cv2.dnn net per use: after forward(names) OpenCV's net keeps state that
    changes what a later forward() returns."""
    cvnet = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return cvnet


def test_res10_loads_with_skipped_detection_heads(res10):
    net, _, _ = res10
    assert net.skipped == RES10_SKIPPED
    assert net.inputs == {"data": (3, 300, 300)}
    assert net.outputs == ["mbox_loc", "mbox_conf_flatten"]
    types = {layer.type for layer in net.layers}
    assert {"BatchNorm", "Scale", "Eltwise", "Normalize", "Permute", "Flatten", "Concat",
            "Reshape", "Softmax"} <= types
    # without skip_unsupported the first PriorBox is reported by name, type and the supported
    with pytest.raises(ValueError, match=r"'conv4_3_norm_mbox_priorbox': unsupported type "
                                         r"'PriorBox' \(supported: .*Convolution"):
        lrpfast.Net(net.source, net.weights_source)


def test_res10_forward_matches_opencv_every_layer(res10):
    """Every layer below PriorBox/DetectionOutput (104 of them: conv, BatchNorm, Scale, ReLU,
    max pooling, Eltwise, Normalize, Permute, Flatten, Concat, Reshape, Softmax), compared
    output by output. Asked for a layer by name, OpenCV keeps that layer's own output instead
    of fusing it into the previous convolution, so all 104 are retrievable; each is compared
    with the version of the blob that layer writes in lrpfast (e.g. OpenCV 'conv1_h' = the
    convolution output 'conv1_h#1' before the in-place BatchNorm; 'conv1_relu' = 'conv1_h#4')."""
    net, new_cvnet, x = res10
    cvnet = new_cvnet()
    cv_names = [n for n in cvnet.getLayerNames() if "priorbox" not in n and n != "detection_out"]
    assert sorted(cv_names) == sorted(layer.name for layer in net.layers)
    assert len(cv_names) == 104
    cvnet.setInput(x)
    cv_out = dict(zip(cv_names, cvnet.forward(cv_names)))
    wanted = {layer.name: version_name(layer.tops[0]) for layer in net.layers}
    mine = net.forward(x, blobs=list(wanted.values()))
    errors = {}
    for name, blob in wanted.items():
        got, exp = mine[blob], np.asarray(cv_out[name])
        assert got.shape == exp.shape, (name, got.shape, exp.shape)
        assert np.all(np.isfinite(got)), name
        errors[name] = rel_err(got, exp)
    bad = {k: v for k, v in errors.items() if not v <= FORWARD_RTOL}
    assert not bad, f"layers differing from OpenCV (relative L2 > {FORWARD_RTOL}): {bad}"
    # the detection heads' inputs, named explicitly
    for head in ("mbox_loc", "mbox_conf", "mbox_conf_reshape", "mbox_conf_softmax",
                 "mbox_conf_flatten"):
        assert head in errors
    # the default outputs are the net's unconsumed blobs
    outs = net.forward(x)
    assert set(outs) == {"mbox_loc", "mbox_conf_flatten"}
    np.testing.assert_array_equal(outs["mbox_conf_flatten"], mine["mbox_conf_flatten#1"])


def test_res10_blob_names_follow_caffe_inplace_semantics(res10):
    """A plain blob name is its final version (Caffe); name#k is the k-th version."""
    net, new_cvnet, x = res10
    cvnet = new_cvnet()
    layers = ["conv1_h", "conv1_bn_h", "conv1_scale_h", "conv1_relu"]
    cvnet.setInput(x)
    cv_out = dict(zip(layers, cvnet.forward(layers)))
    got = net.forward(x, blobs=["conv1_h", "conv1_h#1", "conv1_h#2", "conv1_h#3", "conv1_h#4"])
    assert all(v.shape == (1, 32, 150, 150) for v in got.values())
    assert rel_err(got["conv1_h"], cv_out["conv1_relu"]) <= FORWARD_RTOL
    np.testing.assert_array_equal(got["conv1_h"], got["conv1_h#4"])
    for k, layer in enumerate(layers, 1):
        assert rel_err(got[f"conv1_h#{k}"], cv_out[layer]) <= FORWARD_RTOL, layer
    assert got["conv1_h"].min() >= 0 and got["conv1_h#3"].min() < 0  # after / before ReLU


@pytest.fixture(scope="module")
def res10_face(res10):
    """(net, x, flat index of the best prior's face logit in 'mbox_conf', its logit)."""
    net, new_cvnet, x = res10
    cvnet = new_cvnet()
    cvnet.setInput(x)
    det = cvnet.forward("detection_out")[0, 0]  # (num detections, 7): image, label, conf, x0, y0, x1, y1
    best = det[np.argmax(det[:, 2])]
    assert best[2] > 0.9, "the detector should find the astronaut's face"
    box = (best[3:7] * 300).round().astype(int)
    assert _iou(box, FACE_BOX) > 0.8, (box, FACE_BOX)
    out = net.forward(x, blobs=["mbox_conf", "mbox_conf_flatten"])
    logits = out["mbox_conf"][0].reshape(-1, 2)   # (priors, [background, face])
    probs = out["mbox_conf_flatten"][0].reshape(-1, 2)
    prior = int(np.argmax(logits[:, 1]))
    assert probs[prior, 1] > 0.99  # the highest face logit is a confident face prior
    return net, x, 2 * prior + 1, float(logits[prior, 1])


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter)


# Positive relevance inside the head region (the face box grown by half its size on each
# side: 16.5 % of the image) must be the majority: a map spread uniformly would put 16.5 %
# there, one on the wrong object or on the image border far less than half.
HEAD_SHARE_MIN = 0.5
# Observed: epsilon 0.84 / mu_w 8.8, cmp_alpha2_flat 0.98 / mu_w 16.8.
FACE_MU_W_MIN = 4.0


@pytest.mark.parametrize("rules", ["epsilon", "cmp_alpha2_flat"])
def test_res10_face_relevance_on_face(res10_face, rules):
    net, x, idx, _ = res10_face
    R_ = net.relevance(x, [idx], rules=rules, top="mbox_conf")
    assert R_.shape == x.shape and R_.dtype == np.float32
    assert np.all(np.isfinite(R_))
    heat = np.maximum(R_[0].sum(0), 0)
    assert heat.sum() > 0
    x0, y0, x1, y1 = FACE_BOX
    w, h = x1 - x0, y1 - y0
    hx0, hy0 = max(0, x0 - w // 2), max(0, y0 - h // 2)
    hx1, hy1 = min(300, x1 + w // 2), min(300, y1 + h // 2)
    share = heat[hy0:hy1, hx0:hx1].sum() / heat.sum()
    area = (hx1 - hx0) * (hy1 - hy0) / 300 ** 2
    assert share >= HEAD_SHARE_MIN, (share, area)
    # inside the tight face box (4 % of the image) the density of positive relevance is
    # several times the image average (mu_w of Kohlbrenner et al. 2020; uniform = 1)
    mu = heat[y0:y1, x0:x1].sum() / heat.sum()
    mu_w = mu * 300 ** 2 / (w * h)
    assert mu_w >= FACE_MU_W_MIN, mu_w
    # the single hottest pixel is inside the head region
    cy, cx = np.unravel_index(np.argmax(heat), heat.shape)
    assert hx0 <= cx < hx1 and hy0 <= cy < hy1


def test_res10_relevance_through_reshape_equals_concat_top(res10_face):
    """Seeding the same logit at 'mbox_conf_reshape' (8892, 2) instead of 'mbox_conf' (17784,)
    gives the same map: Reshape passes relevance on unchanged, indices count over the flat
    output in C order."""
    net, x, idx, _ = res10_face
    a = net.relevance(x, [idx], rules="epsilon", top="mbox_conf")
    b = net.relevance(x, [idx], rules="epsilon", top="mbox_conf_reshape")
    np.testing.assert_array_equal(a, b)
    # top=-1 (the layer below the lowest Softmax) is the Reshape as well
    assert net.top_layer(-1).name == "mbox_conf_reshape"


# =============================================================================================
# Model-zoo deploy prototxts with generated weights
# =============================================================================================
ZOO = ["bvlc_reference_caffenet", "bvlc_alexnet", "bvlc_googlenet"]
# an intermediate blob per net where relevance is read out as well (conservation holds there)
ZOO_MIDDLE = {"bvlc_reference_caffenet": "norm2", "bvlc_alexnet": "pool2",
              "bvlc_googlenet": "inception_4a/output"}
IMAGENET_MEAN = (104.0, 117.0, 123.0)


@pytest.fixture(scope="module", params=ZOO)
def zoo(request, model_file, tmp_path_factory):
    """A zoo net loaded from its prototxt and a generated caffemodel file (with small random
    biases), its bias-free twin (also from a file), and two real photos."""
    name = request.param
    proto = model_file(f"{name}/deploy.prototxt")
    skeleton = lrpfast.Net(proto)              # structure only: shapes for the weights
    weights = he_weights(skeleton, seeded_rng("zoo", name), bias_std=0.05)
    bias_free = {k: [v[0]] + [np.zeros_like(b) for b in v[1:]] for k, v in weights.items()}
    d = tmp_path_factory.mktemp(name.replace("/", "_"))
    paths = [lrpfast.caffe.write_caffemodel(d / f"{tag}.caffemodel", w, proto)
             for tag, w in (("weights", weights), ("bias_free", bias_free))]
    net = lrpfast.Net(proto, paths[0])
    net0 = lrpfast.Net(proto, paths[1])
    size = net.inputs["data"][1]
    x = bgr_input([skimage_data.astronaut(), skimage_data.chelsea()], size, IMAGENET_MEAN)
    return name, net, net0, x


def test_zoo_forward(zoo):
    _, net, net0, x = zoo
    prob = net.forward(x)
    assert prob.shape == (2, 1000) and prob.dtype == np.float32
    assert np.all(np.isfinite(prob)) and prob.min() >= 0
    np.testing.assert_allclose(prob.sum(1), 1.0, rtol=0, atol=SOFTMAX_ATOL)
    # He scaling keeps every InnerProduct output in a sane range (no vanishing, no overflow)
    ips = [layer for layer in net.layers if layer.type == "InnerProduct"]
    outs = net.forward(x, blobs=[version_name(layer.tops[0]) for layer in ips])
    for blob, v in outs.items():
        assert 1e-2 < float(v.std()) < 1e4, (blob, float(v.std()))
    # the two images give different predictions, and batching does not change results
    top = ips[-1].tops[0]
    logits = outs[version_name(top)]
    assert not np.allclose(logits[0], logits[1])
    single = net.forward(x[1:], blobs=[top])[top]
    np.testing.assert_allclose(single[0], net.forward(x, blobs=[top])[top][1], rtol=1e-5,
                               atol=1e-5 * float(np.abs(logits).max()))
    # the bias-free file gives a different net
    logits0 = net0.forward(x, blobs=[top])[top]
    assert not np.allclose(logits0, logits, rtol=1e-3, atol=1e-3)


ZOO_COMPOSITES = ["epsilon", "cmp_alpha2_flat", "cmp_alpha1", "wsquare", "preset_b_flat"]


@pytest.mark.parametrize("rules", [
    pytest.param(r, marks=() if r in ("epsilon", "cmp_alpha2_flat") else pytest.mark.slow)
    for r in ZOO_COMPOSITES])
def test_zoo_relevance_composites(zoo, rules):
    """Batch of 2 with different class selections (class 3, top-1): finite, input-shaped,
    and in deterministic mode each image's map is bit-identical to the map computed for it
    alone. (By default the two may take other gemm call shapes; the epsilon rule with
    eps = 1e-6 can then amplify float32 rounding of near-zero z without bound, so only
    deterministic mode promises agreement for every rule.)"""
    _, net, _, x = zoo
    R_ = net.relevance(x, [3, -1], rules=rules)
    assert R_.shape == x.shape and R_.dtype == np.float32
    assert np.all(np.isfinite(R_))
    assert np.all(np.abs(R_).reshape(2, -1).sum(1) > 0)
    before = lrpfast.get_deterministic()
    try:
        lrpfast.set_deterministic(True)
        R_d = net.relevance(x, [3, -1], rules=rules)
        alone = net.relevance(x[1:], -1, rules=rules)[0]
    finally:
        lrpfast.set_deterministic(before)
    np.testing.assert_array_equal(alone, R_d[1])


# Rules that conserve relevance exactly (in exact arithmetic) on these bias-free nets:
# * z / epsilon(1e-9): sum_i z_ij = z_j when b = 0. Relevance reaching a unit is proportional
#   to its post-ReLU activation (the layer above multiplies by x_i), so a unit with z_j <= 0
#   (dead, zero denominator) never holds relevance; the 1e-9 stabiliser costs ~1e-9/|z_j|.
# * flat, w^2: normalised over the non-padded inputs of each output (conservative by design).
# * alpha1beta0: sum_i z+_ij = z+_j with b = 0; z+_j = 0 only when z_j <= 0 (dead unit, no R).
# Max pooling (winner-take-all), LRN (identity), Dropout, Concat (slicing), Caffe's implicit
# splits (sum of the branches) and average pooling (z-rule on positive inputs) all conserve.
# Not checked: alpha2beta1 (a unit with z-_j = 0 but live gets alpha*R_j: rare, not excluded),
# and any rule with biases (their share is absorbed by design).
CONSERVING_RULES = {"z": R.Zero, "epsilon1e-9": lambda: R.Epsilon(1e-9), "flat": R.Flat,
                    "wsquare": R.WSquare, "alpha1beta0": lambda: R.AlphaBeta(1, 0)}


@pytest.mark.parametrize("rule", [
    pytest.param(r, marks=() if r != "wsquare" else pytest.mark.slow)
    for r in CONSERVING_RULES])
def test_zoo_conservation(zoo, rule):
    name, _, net0, x = zoo
    x1 = x[:1]
    top = net0.top_layer().tops[0]
    logits = net0.forward(x1, blobs=[top])[top][0]
    k = int(np.argmax(logits))
    mid = ZOO_MIDDLE[name]
    readout = ["data", mid]
    pool5 = "pool5/7x7_s1"
    if name == "bvlc_googlenet":
        readout.append(pool5)
    out = net0.relevance(x1, [k], rules=CONSERVING_RULES[rule](), readout=readout)
    assert out["data"].shape == x1.shape
    assert out[mid].shape == (1,) + net0.shapes[net0._ssa(mid)]
    expected = {blob: float(logits[k]) for blob in readout}
    if name == "bvlc_googlenet" and rule in ("flat", "wsquare"):
        # flat / w^2 ignore the activations: they also hand relevance to units that are 0
        # (dead ReLUs). GoogLeNet's average pooling pool5 (z-rule: proportional to its
        # inputs, lrpfast mode) cannot pass on what reaches a channel whose 7x7 input is
        # all zero: exactly that relevance is lost below pool5, nothing else.
        feat = net0.forward(x1, blobs=["inception_5b/output"])["inception_5b/output"][0]
        dead = ~feat.reshape(feat.shape[0], -1).any(axis=1)
        lost = float(out[pool5][0].reshape(-1)[dead].sum(dtype=np.float64))
        assert dead.any() and abs(lost) > 1e-2 * abs(expected["data"])  # the case is exercised
        expected["data"] -= lost
        expected[mid] -= lost
    for blob, rel in out.items():
        assert np.all(np.isfinite(rel)), blob
        total, scale = float(rel.sum(dtype=np.float64)), float(np.abs(rel).sum(dtype=np.float64))
        assert abs(total - expected[blob]) <= CONSERVATION_RTOL * max(scale, abs(expected[blob])), (
            f"{name} {rule} at {blob}: sum R = {total}, expected {expected[blob]}")


# =============================================================================================
# Reduced CaffeNet against the float64 reference (tests/reference.py RefNet)
# =============================================================================================
SMALL_CAFFENET = """name: "SmallCaffeNet"
input: "data"
input_shape { dim: 2 dim: 3 dim: 67 dim: 67 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 11 stride: 4 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
  convolution_param { num_output: 12 pad: 2 kernel_size: 5 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm2" type: "LRN" bottom: "pool2" top: "norm2"
  lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 } }
layer { name: "conv3" type: "Convolution" bottom: "norm2" top: "conv3"
  convolution_param { num_output: 16 pad: 1 kernel_size: 3 } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4"
  convolution_param { num_output: 16 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5"
  convolution_param { num_output: 12 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer { name: "pool5" type: "Pooling" bottom: "conv5" top: "pool5"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6"
  inner_product_param { num_output: 32 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
  inner_product_param { num_output: 32 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
  inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""


def _small_caffenet_reference_layers():
    L = ref.Layer
    def conv(n, b, o, k, s=1, p=0, g=1):
        return L(n, "Convolution", [b], [n],
                 {"num_output": o, "kernel": k, "stride": s, "pad": p, "group": g})

    def relu(n, b):
        return L(n, "ReLU", [b], [b], {})

    def pool(n, b):
        return L(n, "Pooling", [b], [n], {"pool": "MAX", "kernel": 3, "stride": 2})

    def lrn(n, b):
        return L(n, "LRN", [b], [n], {"local_size": 5, "alpha": 0.5, "beta": 0.75, "k": 1.0})

    def ip(n, b, o):
        return L(n, "InnerProduct", [b], [n], {"num_output": o})

    def drop(n, b):
        return L(n, "Dropout", [b], [b], {})

    return [conv("conv1", "data", 8, 11, s=4), relu("relu1", "conv1"), pool("pool1", "conv1"),
            lrn("norm1", "pool1"), conv("conv2", "norm1", 12, 5, p=2, g=2),
            relu("relu2", "conv2"), pool("pool2", "conv2"), lrn("norm2", "pool2"),
            conv("conv3", "norm2", 16, 3, p=1), relu("relu3", "conv3"),
            conv("conv4", "conv3", 16, 3, p=1, g=2), relu("relu4", "conv4"),
            conv("conv5", "conv4", 12, 3, p=1, g=2), relu("relu5", "conv5"),
            pool("pool5", "conv5"), ip("fc6", "pool5", 32), relu("relu6", "fc6"),
            drop("drop6", "fc6"), ip("fc7", "fc6", 32), relu("relu7", "fc7"),
            drop("drop7", "fc7"), ip("fc8", "fc7", 10), L("prob", "Softmax", ["fc8"], ["prob"])]


@pytest.fixture(scope="module")
def small_caffenet():
    net_s = lrpfast.Net.from_text(SMALL_CAFFENET)
    weights = he_weights(net_s, seeded_rng("small-caffenet"), bias_std=0.05)
    net = lrpfast.Net.from_text(SMALL_CAFFENET, weights)
    refnet = ref.RefNet(["data"], _small_caffenet_reference_layers(), weights)
    x = seeded_rng("small-caffenet-x").normal(0, 1, (2, 3, 67, 67)).astype(np.float32)
    return net, refnet, x


def test_small_caffenet_structure_matches_caffenet(model_file):
    """The reduced net has CaffeNet's layer sequence (types and wiring), only smaller."""
    big = lrpfast.Net(model_file("bvlc_reference_caffenet/deploy.prototxt"))
    small = lrpfast.Net.from_text(SMALL_CAFFENET)
    def sig(net):
        return [(x.name, x.type, x.bottoms_user, x.tops_user) for x in net.layers]
    assert sig(small) == sig(big)


def test_small_caffenet_forward_matches_reference(small_caffenet):
    net, refnet, x = small_caffenet
    blobs = refnet.forward(x)
    got = net.forward(x, blobs=["pool1", "norm1", "norm2", "pool5", "fc8", "prob"])
    for name, v in got.items():
        assert rel_err(v, blobs[name]) <= REFERENCE_RTOL, name


REFERENCE_RULES = {
    # id: (engine rules, reference rule per linear layer name -> Rule, pooling/Eltwise eps)
    "epsilon0.01": (lambda: R.Epsilon(0.01), lambda n: ref.epsilon(0.01), 0.01),
    "alpha1beta0": ("alpha1beta0", lambda n: ref.alphabeta(1, 0), 1e-6),
    "alpha2beta1": ("alpha2beta1", lambda n: ref.alphabeta(2, 1), 1e-6),
    "flat": ("flat", lambda n: ref.flat(), 1e-6),
    "wsquare": ("wsquare", lambda n: ref.wsquare(), 1e-6),
    "cmp_alpha2_flat": ("cmp_alpha2_flat", lambda n: ref.flat() if n == "conv1" else (
        ref.epsilon(1e-6) if n.startswith("fc") else ref.alphabeta(2, 1)), 1e-6),
    "gradient": ("gradient", lambda n: ref.gradient(), 1e-6),
}


@pytest.mark.parametrize("rule", list(REFERENCE_RULES))
def test_small_caffenet_relevance_matches_reference(small_caffenet, rule):
    net, refnet, x = small_caffenet
    engine_rules, ref_rule, eps = REFERENCE_RULES[rule]
    classes = [2, 7]
    got = net.relevance(x, classes, rules=engine_rules() if callable(engine_rules) else engine_rules)
    refnet.forward(x)
    logits = refnet.blob("fc8")
    seed = np.zeros_like(logits)
    seed[[0, 1], classes] = logits[[0, 1], classes]
    rules = {l.name: ref_rule(l.name) for l in refnet.layers
             if l.type in ("Convolution", "InnerProduct")}
    exp = refnet.relevance("fc8", seed, rules, eps=eps)
    assert got.shape == exp.shape
    assert rel_err(got, exp) <= REFERENCE_RTOL, rel_err(got, exp)
