"""Caffe file I/O: schema, prototxt / caffemodel / binaryproto readers and writers.

Independent checks: layer counts come from grepping the prototxt text, blob values of the
real res10 caffemodel and of everything we write are compared with protobuf's own parser
(``pb.*.FromString``), and odd encodings (non-packed floats, hostile lengths) are built byte
by byte with the tiny encoder below, not with the module's writer.
"""
from __future__ import annotations

import collections
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from lrpfast.caffe import (
    CaffeFormatError,
    NetDef,
    parse_prototxt,
    pb,
    read_binaryproto,
    read_caffemodel,
    read_net,
    read_prototxt,
    write_binaryproto,
    write_caffemodel,
    write_model,
    write_prototxt,
)

REAL = ["bvlc_alexnet", "bvlc_googlenet", "bvlc_reference_caffenet", "res10_ssd_face"]
RES10_WEIGHTS = "res10_ssd_face/res10_300x300_ssd_iter_140000.caffemodel"
# model_file (conftest.py) finds these under $LRPFAST_MODELS or tests/data/models and skips
# the test when a file is missing (the res10 weights are not shipped).


# --- a tiny independent protobuf encoder for hand-made files --------------------------------

def varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = b""
    while True:
        byte, v = v & 0x7F, v >> 7
        if v:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def unpacked_floats(field: int, values, fmt="<f") -> bytes:
    wire = 5 if fmt == "<f" else 1
    return b"".join(varint(field << 3 | wire) + struct.pack(fmt, v) for v in values)


def shape_field(*dims) -> bytes:
    return ld(7, ld(1, b"".join(varint(d) for d in dims)))


def layer_v2(name: str, *blobs: bytes, ltype: str = "") -> bytes:
    body = ld(1, name.encode()) + (ld(2, ltype.encode()) if ltype else b"")
    return ld(100, body + b"".join(ld(7, b) for b in blobs))


SMALL_NET = """
name: "small"
input: "data"
input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
        inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip1" top: "prob" }
"""


def small_weights(seed=0):
    rng = np.random.default_rng(seed)
    return {"conv1": [rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                      rng.standard_normal(4).astype(np.float32)],
            "relu1": [],
            "ip1": [rng.standard_normal((5, 64)).astype(np.float32),
                    rng.standard_normal(5).astype(np.float32)]}


def assert_weights_equal(got, want, dtype=np.float32):
    assert list(got) == list(want)
    for name in want:
        assert len(got[name]) == len(want[name]), name
        for g, w in zip(got[name], want[name]):
            assert g.dtype == np.float32
            np.testing.assert_array_equal(g, np.asarray(w).astype(dtype).astype(np.float32))


# --- schema --------------------------------------------------------------------------------

def test_schema_defaults_and_enums_match_caffe():
    conv = pb.ConvolutionParameter()
    assert conv.bias_term is True and conv.group == 1 and conv.axis == 1
    assert list(conv.stride) == [] and conv.pad_h == 0
    lrn = pb.LRNParameter()
    assert (lrn.local_size, lrn.alpha, lrn.beta, lrn.k) == (5, 1.0, 0.75, 1.0)
    assert lrn.norm_region == pb.LRNParameter.ACROSS_CHANNELS == 0
    assert pb.InnerProductParameter().axis == 1 and pb.InnerProductParameter().bias_term
    scale = pb.ScaleParameter()
    assert (scale.axis, scale.num_axes, scale.bias_term) == (1, 1, False)
    assert pb.BatchNormParameter().eps == pytest.approx(1e-5)
    assert (pb.EltwiseParameter.PROD, pb.EltwiseParameter.SUM, pb.EltwiseParameter.MAX) == (0, 1, 2)
    assert pb.EltwiseParameter().operation == pb.EltwiseParameter.SUM
    pool = pb.PoolingParameter()
    assert (pool.pool, pool.stride, pool.pad, pool.round_mode) == (pb.PoolingParameter.MAX, 1, 0,
                                                                    pb.PoolingParameter.CEIL)
    assert (pb.PoolingParameter.AVE, pb.PoolingParameter.STOCHASTIC) == (1, 2)
    assert (pb.FlattenParameter().axis, pb.FlattenParameter().end_axis) == (1, -1)
    assert pb.DropoutParameter().dropout_ratio == 0.5
    assert pb.NetState().phase == pb.TEST == 1


def test_schema_field_numbers_on_the_wire():
    # Serialised bytes pin the field numbers Caffe uses.
    assert pb.NetParameter(layer=[pb.LayerParameter()]).SerializeToString() == b"\xa2\x06\x00"
    assert pb.NetParameter(layers=[pb.V1LayerParameter()]).SerializeToString() == b"\x12\x00"
    lp = pb.LayerParameter(name="a", type="b", blobs=[pb.BlobProto(data=[1.0])])
    assert lp.SerializeToString() == b"\x0a\x01a\x12\x01b\x3a\x06\x2a\x04" + struct.pack("<f", 1)
    assert pb.BlobProto(double_data=[2.0]).SerializeToString() == b"\x42\x08" + struct.pack("<d", 2)
    assert pb.LayerParameter(norm_param=pb.NormalizeParameter(eps=0.5)).SerializeToString() \
        == varint(206 << 3 | 2) + b"\x05\x25" + struct.pack("<f", 0.5)
    v1 = pb.V1LayerParameter(name="x", type=pb.V1LayerParameter.CONVOLUTION)
    assert v1.SerializeToString() == b"\x22\x01x\x28\x04"


def test_v1_enum_is_complete_and_mapped():
    values = {v.number: v.name for v in pb.V1LayerParameter.DESCRIPTOR.enum_types_by_name[
        "LayerType"].values}
    assert set(values) == set(pb.V1_LAYER_TYPES)
    expected = {"CONVOLUTION": 4, "INNER_PRODUCT": 14, "POOLING": 17, "RELU": 18, "LRN": 15,
                "DROPOUT": 6, "SOFTMAX": 20, "CONCAT": 3, "SPLIT": 22, "FLATTEN": 8,
                "ELTWISE": 25, "DATA": 5}
    assert {name: getattr(pb.V1LayerParameter, name) for name in expected} == expected


# --- real prototxts and the real caffemodel -------------------------------------------------

@pytest.mark.parametrize("model", REAL)
def test_real_prototxts_parse_with_grepped_layer_types(model_file, model):
    deploy = model_file(f"{model}/deploy.prototxt")
    text = deploy.read_text()
    # Layer-level "type:" lines are indented by two spaces in these files (fillers deeper).
    grepped = collections.Counter(re.findall(r'^  type: "(\w+)"', text, re.MULTILINE))
    net = read_prototxt(deploy)
    assert collections.Counter(layer.type for layer in net.layer) == grepped
    assert len(net.layer) == len(re.findall(r"^layer\s*\{", text, re.MULTILINE))
    netdef = read_net(deploy)
    assert isinstance(netdef, NetDef)
    assert len(netdef.layers) == len(net.layer)


def test_caffenet_details(model_file):
    net = read_net(model_file("bvlc_reference_caffenet/deploy.prototxt"))
    assert net.name == "CaffeNet" and net.inputs == [("data", (10, 3, 227, 227))]
    linear = [layer for layer in net.layers if layer.type in ("Convolution", "InnerProduct")]
    assert len(linear) == 8
    conv1, norm1 = net.layers[0], net.layers[3]
    cp = conv1.param.convolution_param
    assert (cp.num_output, list(cp.kernel_size), list(cp.stride), cp.bias_term) == (96, [11], [4], True)
    assert (conv1.bottoms, conv1.tops) == (["data"], ["conv1"])
    assert net.layers[1].bottoms == net.layers[1].tops == ["conv1"]  # in-place ReLU
    lrn = norm1.param.lrn_param
    assert norm1.type == "LRN" and lrn.local_size == 5 and lrn.k == 1.0
    assert lrn.alpha == pytest.approx(1e-4) and lrn.beta == 0.75
    groups = [layer.param.convolution_param.group for layer in linear[:5]]
    assert groups == [1, 2, 1, 2, 2]


def test_res10_ssd_params_parse_fully(model_file):
    net = read_net(model_file("res10_ssd_face/deploy.prototxt"))
    assert net.inputs == [("data", (1, 3, 300, 300))]
    by_name = {layer.name: layer for layer in net.layers}
    det = by_name["detection_out"]  # include { phase: TEST } -> kept in deploy
    d = det.param.detection_output_param
    assert (d.num_classes, d.share_location, d.background_label_id, d.keep_top_k) == (2, True, 0, 200)
    assert d.code_type == pb.PriorBoxParameter.CENTER_SIZE
    assert d.nms_param.nms_threshold == pytest.approx(0.45) and d.nms_param.top_k == 400
    assert d.confidence_threshold == pytest.approx(0.01)
    pbx = by_name["conv4_3_norm_mbox_priorbox"].param.prior_box_param
    assert list(pbx.min_size) == [30] and list(pbx.max_size) == [60]
    assert list(pbx.aspect_ratio) == [2] and pbx.flip and not pbx.clip
    assert list(pbx.variance) == pytest.approx([0.1, 0.1, 0.2, 0.2])
    assert (pbx.step, pbx.offset) == (8, 0.5)
    norm = by_name["conv4_3_norm"].param.norm_param
    assert not norm.across_spatial and not norm.channel_shared and norm.scale_filler.value == 20
    assert list(by_name["conv4_3_norm_mbox_loc_perm"].param.permute_param.order) == [0, 2, 3, 1]
    assert by_name["mbox_conf_reshape"].param.reshape_param.shape.dim[:] == [0, -1, 2]
    assert by_name["data_scale"].param.scale_param.bias_term
    dilated = [layer for layer in net.layers if layer.param.convolution_param.dilation]
    assert [list(layer.param.convolution_param.dilation) for layer in dilated] == [[2]]


def test_real_res10_caffemodel_matches_protobuf_and_prototxt(model_file):
    weights, types = read_caffemodel(model_file(RES10_WEIGHTS), with_types=True)
    assert [a.shape for a in weights["conv1_h"]] == [(32, 3, 7, 7), (32,)]
    assert [a.shape for a in weights["data_bn"]] == [(3,), (3,), (1,)]
    ref = pb.NetParameter.FromString((model_file(RES10_WEIGHTS)).read_bytes())
    assert list(weights) == [layer.name for layer in ref.layer]
    for layer in ref.layer:
        assert types[layer.name] == layer.type
        got = weights[layer.name]
        assert len(got) == len(layer.blobs)
        for a, blob in zip(got, layer.blobs):
            assert a.shape == tuple(blob.shape.dim)
            np.testing.assert_array_equal(a.ravel(), np.array(blob.data, np.float32))
            assert a.flags.c_contiguous and a.flags.aligned and a.flags.writeable
    # Every convolution of the deploy net has weights (num_output, C/group, k, k), and a bias
    # exactly when bias_term (default true) says so.
    net = read_net(model_file("res10_ssd_face/deploy.prototxt"))
    convs = [layer for layer in net.layers if layer.type == "Convolution"]
    assert len(convs) == 32
    for layer in convs:
        cp = layer.param.convolution_param
        w = weights[layer.name][0]
        assert w.shape[0] == cp.num_output and w.shape[2:] == (cp.kernel_size[0],) * 2
        assert [b.shape for b in weights[layer.name][1:]] == [(cp.num_output,)] * cp.bias_term
    assert sum(not layer.param.convolution_param.bias_term for layer in convs) > 0


# --- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["float", "double", "legacy", "v1", "v1_legacy_double"])
def test_caffemodel_round_trip(tmp_path, variant):
    net = parse_prototxt(SMALL_NET)
    weights = small_weights()
    weights["ip1"][1] = weights["ip1"][1].astype(np.float64) + 1e-3  # not exact in float32
    weights["scalar"] = [np.float32(3.5), np.zeros((0, 2), np.float32)]
    if "legacy" in variant:
        weights["scalar"] = [np.float32(3.5)]
    opts = {"double": "double" in variant, "legacy_shape": "legacy" in variant,
            "v1": variant.startswith("v1")}
    path = write_caffemodel(tmp_path / "m.caffemodel", weights, net, **opts)
    got, types = read_caffemodel(path, with_types=True)
    assert types == {"conv1": "Convolution", "relu1": "ReLU", "ip1": "InnerProduct",
                     "scalar": ""}
    for name, blobs in weights.items():
        for g, w in zip(got[name], blobs):
            w = np.asarray(w)
            want_shape = (1,) * (4 - w.ndim) + w.shape if opts["legacy_shape"] else w.shape
            assert g.shape == want_shape and g.dtype == np.float32
            np.testing.assert_array_equal(g.ravel(), w.astype(np.float32).ravel())
    # protobuf's own parser agrees with what was written
    ref = pb.NetParameter.FromString(Path(path).read_bytes())
    layers = ref.layers if opts["v1"] else ref.layer
    assert len(layers) == len(weights) and not (ref.layer if opts["v1"] else ref.layers)
    conv = layers[0]
    assert conv.name == "conv1"
    assert conv.type == (pb.V1LayerParameter.CONVOLUTION if opts["v1"] else "Convolution")
    blob = conv.blobs[0]
    if opts["legacy_shape"]:
        assert (blob.num, blob.channels, blob.height, blob.width) == (4, 3, 3, 3)
        assert not blob.HasField("shape")
    else:
        assert list(blob.shape.dim) == [4, 3, 3, 3]
    values = blob.double_data if opts["double"] else blob.data
    assert (len(blob.data), len(blob.double_data)) == ((0, 108) if opts["double"] else (108, 0))
    np.testing.assert_array_equal(np.array(values, np.float32), weights["conv1"][0].ravel())
    bias = layers[2].blobs[1]
    if opts["double"]:  # double_data keeps the float64 values exactly
        np.testing.assert_array_equal(np.array(bias.double_data), weights["ip1"][1])
    else:
        np.testing.assert_array_equal(np.array(bias.data, np.float32),
                                      weights["ip1"][1].astype(np.float32))


def test_write_caffemodel_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError, match="list of arrays"):
        write_caffemodel(tmp_path / "a", {"x": np.zeros(3)})
    with pytest.raises(ValueError, match="at most 4"):
        write_caffemodel(tmp_path / "b", {"x": [np.zeros((1,) * 5)]}, legacy_shape=True)
    with pytest.raises(ValueError, match="no V1"):
        write_caffemodel(tmp_path / "c", {"bn": [np.zeros(2)]},
                         parse_prototxt('layer { name: "bn" type: "BatchNorm" }'), v1=True)


@pytest.mark.parametrize("double", [False, True])
@pytest.mark.parametrize("legacy", [False, True])
def test_binaryproto_round_trip(tmp_path, double, legacy):
    mean = np.random.default_rng(1).uniform(0, 255, (3, 4, 5))
    path = write_binaryproto(tmp_path / "mean.binaryproto", mean, double=double,
                             legacy_shape=legacy)
    got = read_binaryproto(path)
    assert got.dtype == np.float32 and got.shape == ((1, 3, 4, 5) if legacy else (3, 4, 5))
    np.testing.assert_array_equal(got.ravel(), mean.astype(np.float32).ravel())
    blob = pb.BlobProto.FromString(Path(path).read_bytes())
    assert (blob.num, blob.channels) == ((1, 3) if legacy else (0, 0))


def test_binaryproto_written_by_protobuf_legacy_shape(tmp_path):
    blob = pb.BlobProto(num=1, channels=2, height=2, width=3, data=np.arange(12.0))
    (tmp_path / "m.binaryproto").write_bytes(blob.SerializeToString())
    got = read_binaryproto(tmp_path / "m.binaryproto")
    assert got.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(got.ravel(), np.arange(12, dtype=np.float32))


def test_non_packed_and_mixed_float_encodings(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.standard_normal(5000).astype(np.float32)  # long run: exercises growing windows
    b = rng.standard_normal(7)
    # a packed part, then a non-packed part, of the same field; the shape comes last
    blob1 = ld(5, a[:100].tobytes()) + unpacked_floats(5, a[100:]) + shape_field(50, 100)
    blob2 = unpacked_floats(8, b, "<d") + shape_field(7)  # non-packed double_data
    blob3 = varint(1 << 3) + varint(1) + unpacked_floats(5, a[:2])  # legacy num, 1 value short
    data = layer_v2("mix", blob1, blob2, ltype="InnerProduct")
    path = tmp_path / "mixed.caffemodel"
    path.write_bytes(data)
    got = read_caffemodel(path)
    np.testing.assert_array_equal(got["mix"][0], a.reshape(50, 100))
    np.testing.assert_array_equal(got["mix"][1], b.astype(np.float32))
    ref = pb.NetParameter.FromString(data)  # protobuf decodes the same bytes identically
    np.testing.assert_array_equal(np.array(ref.layer[0].blobs[0].data, np.float32), a)
    path.write_bytes(data + layer_v2("leg", blob3))
    with pytest.raises(CaffeFormatError, match=r"'leg'.*2 values.*\(1, 0, 0, 0\)"):
        read_caffemodel(path)


def test_legacy_shape_wins_over_shape_and_must_match(tmp_path):
    # num=1 channels=1 height=1 width=3 with 3 values -> (1, 1, 1, 3), as Caffe's FromProto
    blob = varint(1 << 3) + varint(1) + varint(2 << 3) + varint(1) + varint(3 << 3) + varint(1) \
        + varint(4 << 3) + varint(3) + ld(5, np.arange(3, dtype="<f4").tobytes())
    path = tmp_path / "l.caffemodel"
    path.write_bytes(layer_v2("fc", blob))
    assert read_caffemodel(path)["fc"][0].shape == (1, 1, 1, 3)
    # only num given: the others are 0, so 3 values do not fit
    path.write_bytes(layer_v2("fc", varint(1 << 3) + varint(3) + ld(5, b"\0" * 12)))
    with pytest.raises(CaffeFormatError, match=r"'fc'.*3 values.*\(3, 0, 0, 0\)"):
        read_caffemodel(path)


def test_write_prototxt_and_write_model(tmp_path):
    net = parse_prototxt(SMALL_NET)
    p = write_prototxt(net, tmp_path / "a.prototxt")
    assert read_prototxt(p) == net
    p2 = write_prototxt(SMALL_NET, tmp_path / "b.prototxt")
    assert Path(p2).read_text() == SMALL_NET
    with pytest.raises(CaffeFormatError):
        write_prototxt("layer { name: ", tmp_path / "c.prototxt")
    proto, model = write_model(tmp_path, SMALL_NET, small_weights())
    assert os.path.basename(proto) == "deploy.prototxt" and read_net(proto).name == "small"
    assert_weights_equal(read_caffemodel(model), small_weights())
    proto, model = write_model(tmp_path / "pre", SMALL_NET, small_weights(), double=True)
    assert proto.endswith("pre.prototxt") and model.endswith("pre.caffemodel")
    assert_weights_equal(read_caffemodel(model), small_weights())


# --- inputs, phases, V1 -----------------------------------------------------------------------

BODY = 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }'


@pytest.mark.parametrize("header, inputs", [
    ('input: "data" input_dim: 1 input_dim: 3 input_dim: 5 input_dim: 7',
     [("data", (1, 3, 5, 7))]),
    (('input: "data" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 } '
      'input: "aux" input_shape { dim: 2 dim: 9 }'), [("data", (2, 3, 4, 4)), ("aux", (2, 9))]),
    (('layer { name: "in" type: "Input" top: "data" top: "aux" '
      'input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }'),
     [("data", (1, 3, 8, 8)), ("aux", (1, 3, 8, 8))]),
    (('layer { name: "in" type: "Input" top: "data" top: "aux" '
      'input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } shape { dim: 1 dim: 2 } } }'),
     [("data", (1, 3, 8, 8)), ("aux", (1, 2))]),
])
def test_input_variants(header, inputs):
    net = read_net(parse_prototxt(header + "\n" + BODY))
    assert net.inputs == inputs
    assert [layer.name for layer in net.layers] == ["r"]  # Input layers are not layers


@pytest.mark.parametrize("header, message", [
    ('input: "data" input_dim: 1 input_dim: 3 input_dim: 5', "4 input_dim"),
    (('input: "data" input_dim: 1 input_dim: 3 input_dim: 5 input_dim: 5 '
      'input_shape { dim: 1 }'), "not both"),
    ('input: "data"', "no shape"),
    ('input: "data" input_shape { dim: 1 dim: 0 }', "positive"),
    ('layer { name: "in" type: "Input" top: "data" }', "shape"),
    (('layer { name: "in" type: "Input" top: "data" top: "x" input_param { shape { dim: 1 } '
      'shape { dim: 2 } shape { dim: 3 } } }'), "one per top"),
])
def test_input_errors(header, message):
    with pytest.raises(CaffeFormatError, match=message):
        read_net(parse_prototxt(header + "\n" + BODY))


PHASED = """
layer { name: "train_data" type: "Data" top: "data" top: "label" include { phase: TRAIN } }
layer { name: "test_data" type: "Data" top: "data" top: "label" include { phase: TEST } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
        include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
        exclude { phase: TEST } }
layer { name: "staged" type: "ReLU" bottom: "ip" top: "s" include { stage: "deep" } }
layer { name: "not_staged" type: "ReLU" bottom: "ip" top: "n" exclude { stage: "deep" } }
"""


def test_phase_and_stage_rules():
    test = read_net(parse_prototxt(PHASED))
    assert [layer.name for layer in test.layers] == ["test_data", "ip", "acc", "not_staged"]
    assert test.layers[0].type == "Data" and test.inputs == []  # data layers are kept as-is
    train = read_net(parse_prototxt(PHASED), phase="TRAIN", stages=["deep"])
    assert [layer.name for layer in train.layers] == ["train_data", "ip", "loss", "staged"]
    both = 'layer { name: "x" type: "ReLU" include { phase: TEST } exclude { phase: TRAIN } }'
    with pytest.raises(CaffeFormatError, match="both include and exclude"):
        read_net(parse_prototxt(both))


V1_NET = """
name: "old"
input: "data" input_dim: 1 input_dim: 3 input_dim: 10 input_dim: 10
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
         convolution_param { num_output: 4 kernel_size: 3 group: 1 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "norm1" type: LRN bottom: "conv1" top: "norm1" lrn_param { local_size: 3 } }
layers { name: "pool1" type: POOLING bottom: "norm1" top: "pool1"
         pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layers { name: "split" type: SPLIT bottom: "pool1" top: "a" top: "b" }
layers { name: "sum" type: ELTWISE bottom: "a" bottom: "b" top: "sum"
         eltwise_param { operation: MAX } }
layers { name: "cat" type: CONCAT bottom: "sum" bottom: "a" top: "cat" }
layers { name: "flat" type: FLATTEN bottom: "cat" top: "flat" }
layers { name: "fc" type: INNER_PRODUCT bottom: "flat" top: "fc"
         inner_product_param { num_output: 2 } }
layers { name: "drop" type: DROPOUT bottom: "fc" top: "fc" }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
layers { name: "d" type: DATA top: "x" include { phase: TRAIN } }
"""


def test_v1_layers_are_upgraded():
    net = read_net(parse_prototxt(V1_NET))
    assert net.inputs == [("data", (1, 3, 10, 10))]
    assert [layer.type for layer in net.layers] == [
        "Convolution", "ReLU", "LRN", "Pooling", "Split", "Eltwise", "Concat", "Flatten",
        "InnerProduct", "Dropout", "Softmax"]
    conv = net.layers[0].param
    assert conv.convolution_param.num_output == 4 and conv.convolution_param.bias_term
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert net.layers[2].param.lrn_param.local_size == 3
    assert net.layers[3].param.pooling_param.pool == pb.PoolingParameter.AVE
    assert net.layers[5].param.eltwise_param.operation == pb.EltwiseParameter.MAX
    assert net.layers[4].tops == ["a", "b"]


def test_v1_caffemodel_read_with_prototxt_types(tmp_path):
    weights = {"conv1": [np.ones((4, 3, 3, 3), np.float32), np.zeros(4, np.float32)],
               "fc": [np.ones((2, 16), np.float32)]}
    path = write_caffemodel(tmp_path / "v1.caffemodel", weights, parse_prototxt(V1_NET), v1=True)
    got, types = read_caffemodel(path, with_types=True)
    assert types == {"conv1": "Convolution", "fc": "InnerProduct"}
    assert_weights_equal(got, weights)


# --- errors ----------------------------------------------------------------------------------

def test_missing_files(tmp_path):
    for reader in (read_prototxt, read_net, read_caffemodel, read_binaryproto):
        with pytest.raises(FileNotFoundError):
            reader(tmp_path / "nope")


@pytest.mark.parametrize("text, message", [
    ("this is { not a prototxt", "protobuf text format"),
    ('layer { name: "a" type: "X" foo_param { x: 1 } }', "allow_unknown_fields"),
    ("", "no layers"),
    ('layer { type: "ReLU" }', "no name"),
    ('layer { name: "a" bottom: "x" }', "no type"),
    (('input: "d" input_shape { dim: 1 } layer { name: "a" type: "ReLU" bottom: "d" top: "b" } '
      'layer { name: "a" type: "ReLU" bottom: "b" top: "c" }'), "duplicate layer name"),
    (('input: "d" input_shape { dim: 1 } '
      'layer { name: "a" type: "ReLU" bottom: "d" top: "b" } '
      'layer { name: "c" type: "ReLU" bottom: "d" top: "b" }'), "already produced"),
    ('layers { name: "a" type: RELU } layer { name: "b" type: "ReLU" }', "both 'layer'"),
])
def test_prototxt_errors_name_file_and_layer(tmp_path, text, message):
    path = tmp_path / "bad.prototxt"
    path.write_text(text)
    with pytest.raises(CaffeFormatError, match=message) as info:
        read_net(path)
    assert str(path) in str(info.value)


def test_undefined_bottom_names_layer_and_blob():
    text = SMALL_NET.replace('bottom: "pool1"', 'bottom: "pool_typo"')
    with pytest.raises(CaffeFormatError, match=r"layer 'ip1'.*'pool_typo'") as info:
        read_net(parse_prototxt(text))
    assert info.value.layer == "ip1"


def test_unknown_fields_can_be_skipped():
    text = 'input: "d" input_shape { dim: 1 } layer { name: "a" type: "X" bottom: "d" ' \
           'top: "b" foo_param { x: 1 } }'
    net = read_net(parse_prototxt(text, allow_unknown_fields=True))
    assert [(layer.name, layer.type) for layer in net.layers] == [("a", "X")]


@pytest.fixture
def small_model(tmp_path):
    net = parse_prototxt(SMALL_NET)
    path = write_caffemodel(tmp_path / "small.caffemodel", small_weights(), net)
    return path, Path(path).read_bytes()


def top_level_boundaries(data: bytes) -> list[int]:
    """Offsets where a top-level NetParameter field ends (independent walk)."""
    pos, ends = 0, []
    while pos < len(data):
        # every top-level field our writer emits is a layer: 2-byte tag, length varint
        length, i, shift = 0, pos + 2, 0
        while True:
            length |= (data[i] & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if data[i - 1] < 0x80:
                break
        pos = i + length
        ends.append(pos)
    return ends


def test_truncated_caffemodel_always_raises(tmp_path, small_model):
    _, data = small_model
    boundaries = top_level_boundaries(data)
    assert boundaries[-1] == len(data) and len(boundaries) == 3
    rng = np.random.default_rng(3)
    cuts = set(rng.integers(0, len(data), 300).tolist()) | set(range(40)) \
        | {b - d for b in boundaries for d in (-1, 1, 2, 3)}
    cut_path = tmp_path / "cut.caffemodel"
    names = list(small_weights())
    for cut in sorted(c for c in cuts if 0 <= c < len(data)):
        cut_path.write_bytes(data[:cut])
        if cut in boundaries:  # a prefix of whole layers is itself a valid caffemodel
            got = read_caffemodel(cut_path)
            assert list(got) == names[:boundaries.index(cut) + 1]
            continue
        with pytest.raises(CaffeFormatError) as info:
            read_caffemodel(cut_path)
        assert str(cut_path) in str(info.value)


def test_garbage_bytes_raise(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "garbage.bin"
    for size in list(rng.integers(16, 4096, 100)) + [1, 2, 3]:
        path.write_bytes(rng.bytes(int(size)))
        with pytest.raises(CaffeFormatError):
            read_caffemodel(path)
    path.write_bytes(b"")
    for reader in (read_caffemodel, read_binaryproto):
        with pytest.raises(CaffeFormatError):
            reader(path)


@pytest.mark.parametrize("data, message", [
    (varint(100 << 3 | 2) + varint(1 << 62) + b"xx", "claims"),          # huge layer length
    (varint(100 << 3 | 2) + b"\xff" * 11, "longer than 10 bytes"),      # endless varint
    (layer_v2("big", ld(7, b"")[:-1] + varint(1 << 40) + b"\0" * 8), "claims"),
    (layer_v2("huge", shape_field(1 << 40, 1 << 20)), "0 values"),  # no absurd allocation
    (layer_v2("odd", ld(5, b"\0" * 6)), "multiple of 4"),
    (layer_v2("mm", ld(5, b"\0" * 20) + shape_field(2, 3)), r"5 values but its shape \(2, 3\)"),
    (layer_v2("", ld(5, b"\0" * 4)), "no name"),
    (ld(100, ld(1, b"\xff\xfe")), "UTF-8"),
    (varint(100 << 3 | 0) + b"\x01", "wire type 0"),
    (varint(0) + b"\x01", "field number 0"),
    (layer_v2("a", ld(5, b"\0" * 4)) + layer_v2("a", ld(5, b"\0" * 4)), "twice"),
])
def test_hostile_caffemodels(tmp_path, data, message):
    path = tmp_path / "h.caffemodel"
    path.write_bytes(data)
    with pytest.raises(CaffeFormatError, match=message):
        read_caffemodel(path)


def test_blob_shape_mismatch_names_layer(tmp_path):
    blob = pb.BlobProto(data=[1, 2, 3, 4, 5])
    blob.shape.dim.extend([2, 3])
    net = pb.NetParameter(layer=[pb.LayerParameter(name="conv9", type="Convolution",
                                                   blobs=[pb.BlobProto(data=[1]), blob])])
    path = tmp_path / "mm.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(CaffeFormatError, match=r"layer 'conv9'.*blob 1.*5 values") as info:
        read_caffemodel(path)
    assert info.value.layer == "conv9"


def test_wrong_file_kinds(tmp_path, small_model):
    model_path, _ = small_model
    proto_path = write_prototxt(SMALL_NET, tmp_path / "deploy.prototxt")
    mean_path = write_binaryproto(tmp_path / "mean.binaryproto", np.ones((3, 2, 2)))
    with pytest.raises(CaffeFormatError, match="binary"):
        read_prototxt(model_path)
    with pytest.raises(CaffeFormatError, match="binary"):
        read_net(mean_path)
    for path in (proto_path, mean_path):
        with pytest.raises(CaffeFormatError):
            read_caffemodel(path)
    for path in (proto_path, model_path):
        with pytest.raises(CaffeFormatError):
            read_binaryproto(path)


def test_real_caffemodel_is_not_a_prototxt_or_binaryproto(model_file):
    with pytest.raises(CaffeFormatError, match="wire type"):
        read_binaryproto(model_file(RES10_WEIGHTS))
    with pytest.raises(CaffeFormatError, match="binary"):
        read_prototxt(model_file(RES10_WEIGHTS))
    with pytest.raises(CaffeFormatError, match="wire type"):
        read_caffemodel(model_file("res10_ssd_face/deploy.prototxt"))
