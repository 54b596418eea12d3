"""lrpfast.detection: Caffe's PriorBox and DetectionOutput in Python, and explaining one SSD
detection. The real-model test compares with OpenCV's independent implementation (cv2.dnn runs
the PriorBox and DetectionOutput layers itself) and skips without the model files."""
from __future__ import annotations

import math

import lrpfast
import numpy as np
import pytest
from lrpfast.caffe import pb
from lrpfast.detection import SSD, decode_boxes, nms, prior_boxes


def _param(**kw):
    lp = pb.LayerParameter()
    p = lp.prior_box_param
    for k, v in kw.items():
        if isinstance(v, list):
            getattr(p, k).extend(v)
        else:
            setattr(p, k, v)
    return p


def test_prior_boxes_follow_caffe_order_and_geometry():
    p = _param(min_size=[30.0], max_size=[60.0], aspect_ratio=[2.0], flip=True, clip=False,
               variance=[0.1, 0.1, 0.2, 0.2], step=8.0, offset=0.5)
    boxes, var = prior_boxes((2, 3), (16, 24), p)
    assert boxes.shape == (2 * 3 * 4, 4) and var.shape == boxes.shape
    np.testing.assert_allclose(var[5], [0.1, 0.1, 0.2, 0.2], rtol=1e-7)   # float32 in the proto
    # cell (row 1, col 2): centre (2.5 * 8, 1.5 * 8) = (20, 12); its 4 priors, in Caffe's
    # order: min square, sqrt(min*max) square, ar 2, ar 1/2
    cx, cy = 20.0, 12.0
    s = math.sqrt(30 * 60)
    sizes = [(30, 30), (s, s), (30 * math.sqrt(2), 30 / math.sqrt(2)),
             (30 / math.sqrt(2), 30 * math.sqrt(2))]
    for k, (w, h) in enumerate(sizes):
        exp = [(cx - w / 2) / 24, (cy - h / 2) / 16, (cx + w / 2) / 24, (cy + h / 2) / 16]
        np.testing.assert_allclose(boxes[(1 * 3 + 2) * 4 + k], exp, rtol=1e-12)
    clipped, _ = prior_boxes((2, 3), (16, 24), _param(min_size=[30.0], clip=True))
    assert clipped.min() >= 0 and clipped.max() <= 1 and clipped.shape == (6, 4)
    with pytest.raises(ValueError, match="min_size"):
        prior_boxes((2, 3), (16, 24), _param())


def test_decode_and_nms():
    priors = np.array([[0.2, 0.2, 0.4, 0.6]])
    var = np.array([[0.1, 0.1, 0.2, 0.2]])
    np.testing.assert_allclose(decode_boxes(np.zeros((1, 4)), priors, var), priors)
    # centre moves by v0 * l0 * width; width scales by exp(v2 * l2)
    b = decode_boxes(np.array([[1.0, 0.0, math.log(2) / 0.2, 0.0]]), priors, var)
    np.testing.assert_allclose(b, [[0.32 - 0.2, 0.2, 0.32 + 0.2, 0.6]], rtol=1e-12)
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 0.9], [2, 2, 3, 3], [0, 0, 1, 0.4]], float)
    # IoU(0, 1) = 0.9 > 0.45: dropped; IoU(0, 3) = 0.4: kept
    assert nms(boxes, [0.9, 0.8, 0.7, 0.6], 0.45) == [0, 2, 3]
    assert nms(boxes, [0.9, 0.8, 0.7, 0.6], 0.45, score_threshold=0.65) == [0, 2]


# OpenCV and lrpfast compute the heads in float32 with different summation orders (relative
# error ~1e-5, see test_real_models); decoded boxes and probabilities agree to ~1e-5
DET_ATOL = 1e-4


def test_ssd_detections_match_opencv_and_are_explained(res10_astronaut):
    cv2 = pytest.importorskip("cv2")
    d, net, p = res10_astronaut
    ssd = SSD(net)
    assert ssd.priors.shape == (8892, 4) and ssd.conf_blob == "mbox_conf"
    dets = ssd.detect(p.x[None])[0]
    cv = cv2.dnn.readNetFromCaffe(str(d / "deploy.prototxt"),
                                  str(d / "res10_300x300_ssd_iter_140000.caffemodel"))
    cv.setInput(p.x[None])
    ref = cv.forward()[0, 0]
    ref = ref[ref[:, 2] > 0]                       # OpenCV pads to keep_top_k with zeros
    assert len(dets) == len(ref)
    strong = ref[:, 2] > 0.05                      # near-ties below may swap places
    for r, det in zip(ref[strong], dets):
        assert det.label == int(r[1])
        assert abs(det.score - r[2]) <= DET_ATOL
        np.testing.assert_allclose(det.box, r[3:7], atol=DET_ATOL)
    best = dets[0]
    assert best.score > 0.99 and best.conf_index == 2 * best.prior + 1
    R = ssd.explain(p.x[None], best)
    assert R.shape == (3, 300, 300)
    h = np.maximum(R.sum(axis=0), 0)
    x0, y0, x1, y1 = best.box_pixels(300, 300).round().astype(int)
    # most positive relevance of the face score lies on the detected face (~77% here)
    assert h[y0:y1, x0:x1].sum() > 0.5 * h.sum()
    # the same as seeding the logit by hand
    np.testing.assert_array_equal(
        R, net.relevance(p.x, best.conf_index, lrpfast.DEFAULT_RULES, top="mbox_conf")[0])
