"""Explaining SSD detections: Caffe's PriorBox and DetectionOutput, decoded in Python.

An SSD (Liu et al. 2016, "SSD: Single Shot MultiBox Detector"; Caffe's ``ssd`` branch) ends in
PriorBox layers (fixed anchor boxes per feature-map cell), a confidence head (``mbox_conf``:
one logit per prior and class, flattened prior-major) and a location head (``mbox_loc``: four
offsets per prior), combined by DetectionOutput (decode + per-class non-maximum suppression).
lrpfast's engine loads such a net with ``Net(..., skip_unsupported=True)``, which drops
PriorBox/DetectionOutput; :class:`SSD` recomputes both here from the prototxt's parameters, so
that a detection can be explained by its index in the detection output: relevance starts at
the logit ``mbox_conf[prior * num_classes + label]`` of the prior the detection came from.

PriorBox (per feature map of size ``fh x fw`` on an image of ``H x W``; ``step`` defaults to
``H / fh``, ``W / fw``): for each cell, centre ``((j + offset) * step_w, (i + offset) *
step_h)``, for each ``min_size`` a square of that side, then (if given) a square of side
``sqrt(min_size * max_size)``, then for each aspect ratio ``ar != 1`` (and ``1 / ar`` with
``flip``) a box ``min_size * sqrt(ar)`` wide and ``min_size / sqrt(ar)`` high; coordinates are
divided by the image size (and clipped to [0, 1] with ``clip``).

DetectionOutput (``code_type: CENTER_SIZE``, variances from the priors): a prior of centre
``(pcx, pcy)`` and size ``(pw, ph)`` with offsets ``l`` and variances ``v`` gives the box of
centre ``(v0 l0 pw + pcx, v1 l1 ph + pcy)`` and size ``(exp(v2 l2) pw, exp(v3 l3) ph)``. Per
class other than the background, the priors scoring above ``confidence_threshold`` (the
softmax probability), best ``top_k`` first, go through greedy non-maximum suppression (a box is
dropped when its intersection over union with a kept one exceeds ``nms_threshold``); the best
``keep_top_k`` of all classes remain, best first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional

import numpy as np

__all__ = ["SSD", "Detection", "prior_boxes", "decode_boxes", "nms"]


@dataclass
class Detection:
    """One detection of :meth:`SSD.detect`.

    Attributes
    ----------
    image : index of the image in the batch.
    label : class index (0 is the background in Caffe's SSDs).
    score : softmax probability of ``label`` at the prior.
    box : (x0, y0, x1, y1) relative to the input image (0..1, as Caffe's detection_out).
    prior : index of the prior box the detection came from.
    conf_index : flat index in the confidence blob (``prior * num_classes + label``): the
        ``classes=`` value that explains this detection.
    """

    image: int
    label: int
    score: float
    box: np.ndarray
    prior: int
    conf_index: int

    def box_pixels(self, height: int, width: int) -> np.ndarray:
        """The box in pixels of a ``height x width`` image (float, x0, y0, x1, y1)."""
        return self.box * np.array([width, height, width, height], np.float64)


def prior_boxes(feature_hw, image_hw, param) -> tuple:
    """Caffe PriorBox for one feature map: ``(boxes (P, 4), variances (P, 4))`` float64 with
    ``P = fh * fw * priors per cell``; ``param`` is the layer's ``prior_box_param`` message."""
    fh, fw = int(feature_hw[0]), int(feature_hw[1])
    H, W = float(image_hw[0]), float(image_hw[1])
    mins = list(param.min_size)
    maxs = list(param.max_size)
    if not mins:
        raise ValueError("PriorBox: min_size is required")
    if maxs and len(maxs) != len(mins):
        raise ValueError(f"PriorBox: {len(maxs)} max_size for {len(mins)} min_size")
    ars = [1.0]
    for ar in param.aspect_ratio:
        for a in ([ar, 1.0 / ar] if param.flip else [ar]):
            if all(abs(a - b) > 1e-6 for b in ars):
                ars.append(a)
    if param.HasField("step_h") or param.HasField("step_w"):
        sh, sw = float(param.step_h), float(param.step_w)
    elif param.HasField("step"):
        sh = sw = float(param.step)
    else:
        sh, sw = H / fh, W / fw
    off = float(param.offset) if param.HasField("offset") else 0.5
    sizes = []   # (w, h) of the priors of one cell, in Caffe's order
    for k, m in enumerate(mins):
        sizes.append((m, m))
        if maxs:
            s = math.sqrt(m * maxs[k])
            sizes.append((s, s))
        for a in ars[1:]:
            sizes.append((m * math.sqrt(a), m / math.sqrt(a)))
    wh = np.array(sizes, np.float64)                                     # (A, 2)
    cy, cx = np.meshgrid((np.arange(fh) + off) * sh, (np.arange(fw) + off) * sw, indexing="ij")
    c = np.stack([cx.ravel(), cy.ravel()], axis=1)[:, None, :]           # (fh*fw, 1, 2)
    lo = (c - wh[None] / 2) / np.array([W, H])
    hi = (c + wh[None] / 2) / np.array([W, H])
    boxes = np.concatenate([lo, hi], axis=2).reshape(-1, 4)
    if param.clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    var = list(param.variance) or [0.1]
    if len(var) == 1:
        var = var * 4
    if len(var) != 4:
        raise ValueError(f"PriorBox: need 1 or 4 variances, got {len(var)}")
    return boxes, np.tile(np.asarray(var, np.float64), (boxes.shape[0], 1))


def decode_boxes(loc, priors, variances) -> np.ndarray:
    """CENTER_SIZE decoding: offsets ``loc`` (P, 4) against ``priors`` (P, 4) -> boxes
    (P, 4) x0, y0, x1, y1 (see the module docstring)."""
    loc = np.asarray(loc, np.float64).reshape(-1, 4)
    pw, ph = priors[:, 2] - priors[:, 0], priors[:, 3] - priors[:, 1]
    pcx, pcy = (priors[:, 0] + priors[:, 2]) / 2, (priors[:, 1] + priors[:, 3]) / 2
    cx = variances[:, 0] * loc[:, 0] * pw + pcx
    cy = variances[:, 1] * loc[:, 1] * ph + pcy
    w = np.exp(variances[:, 2] * loc[:, 2]) * pw
    h = np.exp(variances[:, 3] * loc[:, 3]) * ph
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _area(a) -> np.ndarray:
    return np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)


def _iou(b, others) -> np.ndarray:
    """Caffe's JaccardOverlap of normalised boxes (no +1), one box against (K, 4)."""
    ix = np.clip(np.minimum(b[2], others[:, 2]) - np.maximum(b[0], others[:, 0]), 0, None)
    iy = np.clip(np.minimum(b[3], others[:, 3]) - np.maximum(b[1], others[:, 1]), 0, None)
    inter = ix * iy
    union = _area(b) + _area(others) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes, scores, threshold: float, top_k: Optional[int] = None,
        score_threshold: float = 0.0) -> List[int]:
    """Greedy non-maximum suppression (Caffe's ApplyNMSFast with eta = 1): indices of the kept
    boxes, best score first."""
    scores = np.asarray(scores, np.float64)
    order = [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] > score_threshold]
    if top_k is not None and top_k > -1:
        order = order[:top_k]
    keep: List[int] = []
    for i in order:
        if not keep or np.all(_iou(boxes[i], boxes[keep]) <= threshold):
            keep.append(i)
    return keep


class SSD:
    """An SSD loaded with ``Net(..., skip_unsupported=True)``, with its PriorBox and
    DetectionOutput layers recomputed in Python (module docstring).

    Args:
        net: the lrpfast.Net (its prototxt is read again for the skipped layers' parameters).
        output: name of the DetectionOutput layer (default: the only one).
    """

    def __init__(self, net, output: Optional[str] = None) -> None:
        from . import caffe
        netdef = net._prototxt_source
        netdef = netdef if isinstance(netdef, caffe.NetDef) else caffe.read_net(netdef)
        layers = {ly.name: ly for ly in netdef.layers}
        outs = [ly for ly in netdef.layers if ly.type == "DetectionOutput"
                and (output is None or ly.name == output)]
        if len(outs) != 1:
            raise ValueError(f"{net.source}: expected one DetectionOutput layer"
                             f"{'' if output is None else f' named {output!r}'}, found "
                             f"{len(outs)}")
        det = outs[0]
        if len(det.bottoms) != 3:
            raise ValueError(f"{det.name}: DetectionOutput needs loc, conf and prior bottoms")
        self.net, self.layer = net, det
        p = det.param.detection_output_param
        self.num_classes = int(p.num_classes)
        self.background = int(p.background_label_id)
        self.nms_threshold = float(p.nms_param.nms_threshold)
        self.top_k = int(p.nms_param.top_k) if p.nms_param.HasField("top_k") else None
        self.keep_top_k = int(p.keep_top_k)
        self.confidence_threshold = float(p.confidence_threshold)
        if not p.share_location:
            raise ValueError(f"{det.name}: only share_location: true is supported")
        if p.code_type != 2:   # PriorBoxParameter.CodeType: CORNER = 1, CENTER_SIZE = 2
            raise ValueError(f"{det.name}: only code_type CENTER_SIZE is supported")
        self.loc_blob, self.probs_blob, prior_blob = det.bottoms
        # the confidence logits: the Concat that the Softmax/Flatten chain starts from
        self.conf_blob = self._logits_of(self.probs_blob, layers)
        concat = next(ly for ly in netdef.layers if prior_blob in ly.tops)
        pbs = [next(ly for ly in netdef.layers if b in ly.tops) for b in concat.bottoms] \
            if concat.type == "Concat" else [concat]
        image = next(iter(net.inputs.values()))[1:]
        boxes, variances = [], []
        for pb in pbs:
            if pb.type != "PriorBox":
                raise ValueError(f"{pb.name}: expected a PriorBox layer, got {pb.type}")
            fshape = net.shapes[net._ssa(pb.bottoms[0])]
            b, v = prior_boxes(fshape[-2:], image, pb.param.prior_box_param)
            boxes.append(b)
            variances.append(v)
        self.priors = np.concatenate(boxes)
        self.variances = np.concatenate(variances)
        n_conf = int(np.prod(net.shapes[net._ssa(self.conf_blob)]))
        if n_conf != self.priors.shape[0] * self.num_classes:
            raise ValueError(f"{net.source}: {self.priors.shape[0]} priors x "
                             f"{self.num_classes} classes != {n_conf} confidences in "
                             f"'{self.conf_blob}'")

    def _logits_of(self, probs_blob: str, layers) -> str:
        """Follow Flatten/Softmax/Reshape down from the probabilities to the logits blob."""
        by_top = {t: ly for ly in layers.values() for t in ly.tops}
        blob = probs_blob
        while blob in by_top and by_top[blob].type in ("Flatten", "Softmax", "Reshape"):
            blob = by_top[blob].bottoms[0]
        return blob

    def detect(self, x: Any) -> List[List[Detection]]:
        """DetectionOutput for the batch ``x``: per image, the detections best first."""
        out = self.net.forward(x, blobs=[self.loc_blob, self.probs_blob], keep=False)
        loc = np.asarray(out[self.loc_blob], np.float64)
        probs = np.asarray(out[self.probs_blob], np.float64)
        n = loc.shape[0]
        P, C = self.priors.shape[0], self.num_classes
        result = []
        for i in range(n):
            boxes = decode_boxes(loc[i], self.priors, self.variances)
            sc = probs[i].reshape(P, C)
            dets = []
            for c in range(C):
                if c == self.background:
                    continue
                for k in nms(boxes, sc[:, c], self.nms_threshold, self.top_k,
                             self.confidence_threshold):
                    dets.append(Detection(i, c, float(sc[k, c]), boxes[k], int(k), int(k * C + c)))
            dets.sort(key=lambda d: -d.score)
            if self.keep_top_k > -1:
                dets = dets[:self.keep_top_k]
            result.append(dets)
        return result

    def explain(self, x: Any, detection: Detection, rules: Any = None, **kw: Any) -> np.ndarray:
        """Relevance (C, H, W) of one detection: LRP from the detection's confidence logit
        (``classes=detection.conf_index`` at ``top=`` the confidence blob) for its image."""
        from .composites import DEFAULT_RULES
        xi = {k: np.asarray(v)[detection.image:detection.image + 1]
              for k, v in self.net._check_input(x).items()}
        R = self.net.relevance(xi, detection.conf_index, DEFAULT_RULES if rules is None else rules,
                               top=self.conf_blob, **kw)
        return R[0]
